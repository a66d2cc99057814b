"""Deprecated: attreg 0.1's ``attreg_sc.scvi_tools``. Everything it held is the one model
now: ``attreg_sc.SCARE`` (was ``SCAREVI``), ``attreg_sc.with_prior`` and
``attreg_sc.AttributionPriorModelMixin``."""

from __future__ import annotations

import warnings

_MOVED = {
    "SCAREVI": "SCARE",
    "with_prior": "with_prior",
    "AttributionPriorModelMixin": "AttributionPriorModelMixin",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import attreg_sc

    warnings.warn(
        f"attreg_sc.scvi_tools.{name} is deprecated; use attreg_sc.{_MOVED[name]}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(attreg_sc, _MOVED[name])
