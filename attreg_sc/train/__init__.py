"""Training loop of scARE."""

from attreg_sc.train.trainer import NonFiniteLossError, TrainingPlan, train_module

__all__ = ["TrainingPlan", "train_module", "NonFiniteLossError"]
