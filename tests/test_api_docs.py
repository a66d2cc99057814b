"""The API reference covers every public name, and attreg_sc's public callables document
their parameters (numpy style)."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
from pkgutil import resolve_name

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"
PUBLIC_MODULES = [
    "attreg",
    "attreg.attr",
    "attreg.reducers",
    "attreg.reparameterizers",
    "attreg.penalties",
    "attreg.functional",
    "attreg.losses",
    "attreg_sc",
    "attreg_sc.gt",
    "attreg_sc.metrics",
    "attreg_sc.pl",
    "attreg_sc.report",
    "attreg_sc.datasets",
    "attreg_sc.distributions",
    "attreg_sc.train",
    "attreg_sc.train.callbacks",
    "attreg_sc.validation",
    "attreg_sc.files",
    "attreg_sc.settings",
    "attreg_sc.priors",
    "attreg_sc.module",
    "attreg_sc.fast.encoder_prefix",
]


def _public(modname: str):
    mod = importlib.import_module(modname)
    for name in getattr(mod, "__all__", []):
        yield f"{modname}.{name}", getattr(mod, name)


def _documented() -> list:
    objects = []
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"^::: (\S+)", page.read_text(), re.M):
            obj = resolve_name(target)
            objects.append(obj)
            if inspect.ismodule(obj):
                objects += [getattr(obj, n) for n in getattr(obj, "__all__", [])]
    return objects


def test_every_public_name_is_in_the_api_reference():
    documented = _documented()
    missing = [
        qual
        for modname in PUBLIC_MODULES
        for qual, obj in _public(modname)
        if not inspect.ismodule(obj)
        and not isinstance(obj, (str, int, float, tuple, dict))  # constants: in the module page
        and not any(obj is d for d in documented)
    ]
    assert not missing, missing


def _callables(prefix: str):
    for modname in PUBLIC_MODULES:
        if not modname.startswith(prefix):
            continue
        for qual, obj in _public(modname):
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield qual, obj


@pytest.mark.parametrize("prefix", ["attreg_sc", "attreg"])
def test_public_callables_document_their_parameters(prefix):
    lacking = []
    for qual, obj in _callables(prefix):
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        func = obj.__init__ if inspect.isclass(obj) else obj
        if inspect.isclass(obj) and not getattr(func, "__module__", "").startswith("attreg"):
            continue  # the constructor of torch / object: no parameters of ours
        try:
            params = [
                p
                for p in inspect.signature(func).parameters.values()
                if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL,)
            ]
        except (TypeError, ValueError):
            params = []
        doc = (inspect.getdoc(obj) or "") + (inspect.getdoc(func) if inspect.isclass(obj) else "")
        has_section = "Parameters\n----------" in doc or "Attributes\n----------" in doc
        if params and not has_section:
            lacking.append(qual)
    assert not lacking, f"{len(lacking)} without a Parameters section: {lacking}"
