"""Attribution priors for scvi-tools models (SCVI, SCANVI, TOTALVI, ...) and
:class:`SCAREVI`, scARE built on scvi-tools.

Needs scvi-tools (``pip install -e ".[sc]"``).
"""

from attreg_sc.scvi_tools.model import PRIOR_OPTIONS, AttributionPriorModelMixin, with_prior
from attreg_sc.scvi_tools.plan import (
    AttributionPriorPlanMixin,
    PriorConfig,
    attribution_prior_plan,
    latent_encoder,
)


def __getattr__(name: str):
    if name == "SCAREVI":  # imports scvi-tools' model classes: only when asked for
        from attreg_sc.scvi_tools.scarevi import SCAREVI

        return SCAREVI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCAREVI",
    "with_prior",
    "AttributionPriorModelMixin",
    "AttributionPriorPlanMixin",
    "attribution_prior_plan",
    "PriorConfig",
    "latent_encoder",
    "PRIOR_OPTIONS",
]
