"""Evaluation of scARE models: FSSF and companions."""

from attreg_sc.metrics.evaluation import (
    active_dimensions,
    attribution_share,
    attribution_summary,
    dimension_shares,
    gt_polarization,
    integration_metrics,
    label_separation,
    scib_integration_metrics,
)
from attreg_sc.metrics.fssf import FSSFResult, fssf, fssf_from_encoder, leiden_subclusters

__all__ = [
    "FSSFResult",
    "fssf",
    "fssf_from_encoder",
    "leiden_subclusters",
    "active_dimensions",
    "attribution_share",
    "dimension_shares",
    "attribution_summary",
    "gt_polarization",
    "label_separation",
    "integration_metrics",
    "scib_integration_metrics",
]
