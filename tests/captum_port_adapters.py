"""captum's names on attreg's classes, for the ported captum test files.

The ported files (``tests/test_captum_port_*.py``) are captum's own tests
(https://github.com/pytorch/captum, ``tests/attr/``; BSD 3-Clause License, Copyright (c)
2019, PyTorch team), with captum's assertions and expected values kept and only the
classes under test replaced by attreg's through this module. Their configurations and
models come from ``captum.testing`` (installed with captum, the test oracle).
"""

from __future__ import annotations

from typing import Any

import attreg
from attreg.attr import NoiseTunnel  # noqa: F401  (re-exported for the ports)


class InputXGradient(attreg.InputXGradient):
    """captum's ``InputXGradient(forward_func)``."""


class Saliency(attreg.InputGradient):
    """captum's ``Saliency``: the input gradient, absolute by default (``abs=True``)."""

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        abs: bool = True,  # noqa: A002 - captum's argument name
        additional_forward_args: Any = None,
    ) -> Any:
        attr = super().attribute(inputs, target, additional_forward_args)
        if not abs:
            return attr
        return tuple(a.abs() for a in attr) if isinstance(attr, tuple) else attr.abs()


class IntegratedGradients(attreg.IntegratedGradients):
    """captum's ``IntegratedGradients(forward_func, multiply_by_inputs=True)``: the
    baselines may come second, positionally, as in captum."""


class GradientShap(attreg.GradientShap):
    """captum's ``GradientShap(forward_func, multiply_by_inputs=True)``."""

    def __init__(self, forward_func: Any, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, multiply_by_inputs=multiply_by_inputs)
