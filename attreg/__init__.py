"""attreg: differentiable attribution priors for any PyTorch model.

Add ``w_A * L_A`` to a task loss, where ``L_A`` compares the (differentiable)
attributions of a model, or of one of its submodules, with a binary ground truth
over the input features.

Examples
--------
>>> import torch, attreg
>>> model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
>>> gt = torch.tensor([1., 1., 1., 0., 0., 0.])
>>> prior = attreg.AttributionPrior(model, gt, method="eg", weight=1.0)
>>> x = torch.randn(64, 6)
>>> loss = model(x).pow(2).mean() + prior(x)
>>> loss.backward()
"""

from attreg import (
    constraint,
    cpu_matmul,
    functional,
    losses,
    penalties,
    reducers,
    reparameterizers,
    transfer,
)
from attreg._validation import validate_ground_truth
from attreg.attr import (
    Attribution,
    ExpectedGradients,
    GradientShap,
    InputGradient,
    InputXGradient,
    IntegratedGradients,
    LinearPrefix,
    NoiseTunnel,
)
from attreg.constraint import ShareConstraint, ShareTarget
from attreg.cpu_allocator import retain_freed_cpu_memory
from attreg.cpu_matmul import set_cpu_matmul
from attreg.fast_paths import fast_paths, fast_paths_enabled, set_fast_paths
from attreg.prior import (
    AttributionPenalty,
    AttributionPrior,
    ExclusionPrior,
    PriorSet,
    RightForRightReasons,
)

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "AttributionPenalty",
    "AttributionPrior",
    "ExclusionPrior",
    "ExpectedGradients",
    "GradientShap",
    "InputGradient",
    "InputXGradient",
    "IntegratedGradients",
    "LinearPrefix",
    "NoiseTunnel",
    "PriorSet",
    "RightForRightReasons",
    "ShareConstraint",
    "ShareTarget",
    "constraint",
    "cpu_matmul",
    "fast_paths",
    "fast_paths_enabled",
    "functional",
    "losses",
    "penalties",
    "reducers",
    "reparameterizers",
    "retain_freed_cpu_memory",
    "set_cpu_matmul",
    "set_fast_paths",
    "transfer",
    "validate_ground_truth",
]
