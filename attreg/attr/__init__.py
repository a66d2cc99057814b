"""Attribution methods, one module each, with captum's call shape
``Method(forward_func, ...).attribute(inputs, ...)``."""

from attreg.attr._base import Attribution
from attreg.attr._gradients import gradients_at
from attreg.attr.expected_gradients import ExpectedGradients
from attreg.attr.gradient_shap import GradientShap
from attreg.attr.input_gradient import InputGradient, InputXGradient
from attreg.attr.integrated_gradients import IntegratedGradients
from attreg.attr.layer import LayerTarget, sum_trailing
from attreg.attr.linear_prefix import LinearPrefix
from attreg.attr.noise_tunnel import NoiseTunnel
from attreg.attr.quadrature import QUADRATURE_RULES, quadrature

__all__ = [
    "Attribution",
    "ExpectedGradients",
    "GradientShap",
    "IntegratedGradients",
    "InputGradient",
    "InputXGradient",
    "LayerTarget",
    "LinearPrefix",
    "NoiseTunnel",
    "QUADRATURE_RULES",
    "gradients_at",
    "quadrature",
    "sum_trailing",
]
