"""scARE's additions to scvi-tools' training: the prior in the training plan
(:func:`attreg_sc.train.attribution_prior_plan`) and Lightning callbacks
(:mod:`attreg_sc.train.callbacks`)."""

from attreg_sc.train.callbacks import NonFiniteLossError
from attreg_sc.train.plan import (
    AttributionPriorPlanMixin,
    PriorConfig,
    attribution_prior_plan,
    latent_encoder,
)

__all__ = [
    "AttributionPriorPlanMixin",
    "NonFiniteLossError",
    "PriorConfig",
    "attribution_prior_plan",
    "latent_encoder",
]
