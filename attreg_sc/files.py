"""Model folders: saving that deletes nothing it did not write, and loading that is safe
by construction.

The folder has scvi-tools' layout (``{prefix}model.pt`` and, with ``save_anndata=True``,
``{prefix}adata.h5ad``), but ``model.pt`` is attreg_sc's safe format
(:func:`attreg_sc._io.save_versioned`): tensors, numbers, strings, lists and dicts only,
read back with ``torch.load(weights_only=True)``, so a file cannot run code. A checksum is
not a signature, so the reader trusts nothing in the file: every field is checked before
it is used (docs/reliability.md, "The contract of a model file"):

* only a regular file inside the folder is read (no symlink out of it, no device, FIFO or
  socket), of at most :data:`attreg_sc._io.MAX_FILE_BYTES`;
* the payload's structure and every field's type are checked, and the attributes a file
  may set on a model and the setup method it may call come from allow-lists;
* every size (genes, batches, hidden width, layers, latent, GT shapes) is checked against
  caps and against the weights' own shapes, on a model built on PyTorch's ``meta`` device
  (no memory), before the real model is built;
* sparse GT structures get the checks counts get; prior settings go through
  :class:`~attreg_sc.settings.PriorSettings`' own checks; weights must be finite;
* loading onto an AnnData whose genes differ is refused, naming the first differing gene.

Each refusal is a :class:`ModelFileError` naming the file and the field.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attreg_sc._io import (
    MAX_FILE_BYTES,
    UnsafeFileError,
    from_safe,
    read_regular_file,
    read_safe_payload,
    save_versioned,
    write_h5ad_safely,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ModelFileError",
    "save_model",
    "read_model_file",
    "load_model",
    "SavedModel",
    "MODEL_FORMAT_VERSION",
    "LIMITS",
]

#: 1: attreg_sc.scvi_tools.SCAREVI (attreg 0.1); 2: the one SCARE model
MODEL_FORMAT_VERSION = 2
MODEL_FILE, ADATA_FILE = "model.pt", "adata.h5ad"
_STAGING = ".attreg-staging-"
#: caps on the sizes a file may ask for (checked before anything is built)
LIMITS = {
    "n_hidden": 65_536,
    "n_latent": 4_096,
    "n_layers": 64,
    "genes": 2_000_000,
    "categories": 1_000_000,
    "cells": 2**31 - 1,
    "gt_groups": 100_000,
    "history_rows": 1_000_000,
    "text": 10_000,
}
#: attributes a file may set on a model, and the type each must have
_ALLOWED_ATTRIBUTES = {
    "is_trained_": bool,
    "train_indices_": np.ndarray,
    "test_indices_": np.ndarray,
    "validation_indices_": np.ndarray,
    "history_": dict,
    "get_normalized_function_name_": str,
    "run_name_": str,
    "run_id_": str,
    "registry_": dict,
    "init_params_": dict,
}
_SETUP_METHODS = ("setup_anndata",)
_PLAIN = (bool, int, float, str, type(None))


class ModelFileError(ValueError):
    """A model file (or folder) that is refused: what is wrong and where, by file and
    field."""


# -- saving ----------------------------------------------------------------------------
def _check_prefix(prefix: str | None) -> str:
    prefix = prefix or ""
    if not isinstance(prefix, str) or os.sep in prefix or (os.altsep and os.altsep in prefix):
        raise ValueError(f"prefix must be a file-name prefix without a folder, got {prefix!r}.")
    if prefix in (".", ".."):
        raise ValueError(f"prefix {prefix!r} is not a file-name prefix.")
    return prefix


def _remove_stale_staging(folder: Path, prefix: str) -> None:
    """Staging folders a killed save of this prefix left behind (only this module's
    names: ``.{prefix}attreg-staging-<hex>``)."""
    pattern = re.compile(re.escape(f".{prefix}{_STAGING[1:]}") + r"[0-9a-f]{16}")
    for entry in folder.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def save_model(
    model,
    dir_path: str | os.PathLike,
    prefix: str | None = None,
    overwrite: bool = False,
    save_anndata: bool = False,
    extra: dict | None = None,
) -> None:
    """Write ``model`` into the folder ``dir_path`` with scvi-tools' semantics: an existing
    folder is refused unless ``overwrite``, and then only the model's own files
    (``{prefix}model.pt`` and, with ``save_anndata``, ``{prefix}adata.h5ad``) are replaced;
    every other file of the folder stays. The files are written into a staging folder
    inside ``dir_path`` and moved into place (each ``os.replace`` atomic); a staging folder
    left by a killed save is removed by the next save. A path that is a file is refused.

    ``extra`` (plain values and arrays) is stored alongside, e.g. the prior.

    Parameters
    ----------
    model
        A scvi-tools model (with attreg_sc's mixin).
    dir_path
        The folder.
    prefix
        File-name prefix (no folder part).
    overwrite
        Replace the model's own files in an existing folder.
    save_anndata
        Also write ``adata.h5ad``.
    extra
        Plain values to store (the prior).
    """
    dir_path = Path(dir_path)
    prefix = _check_prefix(prefix)
    if dir_path.exists() and not dir_path.is_dir():
        raise FileExistsError(
            f"{dir_path} is a file, not a folder; a model is saved into a folder. Choose "
            "another path (nothing was written)."
        )
    if dir_path.exists() and not overwrite:
        raise ValueError(
            f"{dir_path} already exists. Please provide another directory for saving, or "
            "overwrite=True to replace the model's own files in it (others are kept)."
        )
    payload = {
        "format_version": MODEL_FORMAT_VERSION,
        "model_class": type(model).__name__,
        "model_state_dict": {k: v.detach().cpu() for k, v in model.module.state_dict().items()},
        "var_names": [str(v) for v in model.get_var_names()],
        "attr_dict": {
            a: v for a, v in model._get_user_attributes() if a in _ALLOWED_ATTRIBUTES
        },
        "extra": extra or {},
    }
    dir_path.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(dir_path, prefix)
    staging = dir_path / f".{prefix}{_STAGING[1:]}{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        written = [f"{prefix}{MODEL_FILE}"]
        save_versioned(staging / written[0], payload)
        if save_anndata:
            if model.adata is None:
                raise ValueError("save_anndata=True, but the model has no AnnData.")
            written.append(f"{prefix}{ADATA_FILE}")
            write_h5ad_safely(model.adata.copy(), staging / written[1])
        for name in reversed(written):  # the model file last: it names a complete save
            target = dir_path / name
            if target.is_dir() and not target.is_symlink():
                raise FileExistsError(
                    f"{target} is a folder; the model's file cannot replace it."
                )
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- reading ---------------------------------------------------------------------------
def _fail(path, field: str, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {field}: {problem}")


def _expect(value, kind, path, field: str):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _fail(path, field, f"expected {names}, found {type(value).__name__}.")
    return value


def _plain(value, path, field: str, depth: int = 0):
    """``value`` if it is made of plain values, lists and dicts only."""
    if depth > 8:
        raise _fail(path, field, "nested too deeply.")
    if isinstance(value, _PLAIN):
        if isinstance(value, str) and len(value) > LIMITS["text"]:
            raise _fail(path, field, f"a text of {len(value)} characters.")
        if isinstance(value, float) and not np.isfinite(value):
            raise _fail(path, field, f"a non-finite number {value}.")
        return value
    if isinstance(value, (list, tuple)):
        if len(value) > LIMITS["categories"]:
            raise _fail(path, field, f"a list of {len(value)} items.")
        return [_plain(v, path, f"{field}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufUO" and value.ndim <= 2:
        return value
    if isinstance(value, dict):
        return {
            _expect(k, str, path, f"{field} key"): _plain(v, path, f"{field}.{k}", depth + 1)
            for k, v in value.items()
        }
    raise _fail(path, field, f"a {type(value).__name__} where plain values are expected.")


def _size(value, path, field: str, cap: int, low: int = 0) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise _fail(path, field, f"expected an integer, found {value!r}.")
    if not low <= int(value) <= cap:
        raise _fail(path, field, f"{value} is outside {low}..{cap}.")
    return int(value)


@dataclass
class SavedModel:
    """A model file's checked contents (:func:`read_model_file`).

    Attributes
    ----------
    path
        The file.
    model_class, format_version
        What the file says it holds.
    state_dict, var_names, attr_dict, registry
        The weights, genes, allowed attributes and scvi-tools registry.
    prior
        The prior's stored form (``None``: none).
    """

    path: Path
    model_class: str
    state_dict: dict
    var_names: list[str]
    attr_dict: dict
    registry: dict
    prior: dict | None
    format_version: int


def read_model_file(
    dir_path: str | os.PathLike, prefix: str | None = None, max_bytes: int | None = None
) -> SavedModel:
    """The checked contents of a saved model folder (never runs code from the file).

    Files of attreg_sc's earlier hand-written ``SCARE`` are refused with the command that
    converts them; ``SCAREVI`` files of attreg 0.1 are read.

    Parameters
    ----------
    dir_path
        The model folder.
    prefix
        File-name prefix.
    max_bytes
        Size cap of the file (default :data:`attreg_sc._io.MAX_FILE_BYTES`).
    """
    import torch

    folder = Path(dir_path)
    prefix = _check_prefix(prefix)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no saved model folder at {str(dir_path)!r} (expected a folder holding "
            f"{prefix}{MODEL_FILE}); save the model with its save() method first."
        )
    path = folder / f"{prefix}{MODEL_FILE}"
    try:
        raw = read_safe_payload(
            path,
            "saved model",
            hint="Save the model with its save() method first.",
            inside=folder,
            max_bytes=max_bytes,
        )
        payload = from_safe(raw)
    except UnsafeFileError as err:
        raise ModelFileError(str(err)) from None
    except RecursionError:
        raise _fail(path, "payload", "nested too deeply.") from None
    _expect(payload, dict, path, "payload")
    if "init" in payload and "state_dict" in payload:  # attreg_sc's hand-written SCARE
        raise ModelFileError(
            f"{path} was written by attreg_sc's earlier hand-written SCARE, whose network has "
            "no counterpart in the scvi-tools model (affine LayerNorm, covariates at the "
            "first layer only). Convert it with:  attreg-sc convert "
            f"{folder} NEW_FOLDER --data DATA.h5ad  (re-fits the model with the file's "
            "settings, GTs and seed on the data)."
        )
    version = payload.get("format_version")
    if type(version) is not int or version not in (1, MODEL_FORMAT_VERSION):
        raise _fail(
            path, "format_version", f"{version!r}; this attreg_sc reads 1 and "
            f"{MODEL_FORMAT_VERSION}. Re-save it with the attreg version that wrote it."
        )
    expected = {"format_version", "model_class", "model_state_dict", "var_names", "attr_dict",
                "extra"}
    unknown = sorted(map(str, set(payload) - expected))
    if unknown:
        raise _fail(path, "payload", f"unknown fields {unknown}.")
    model_class = _expect(payload.get("model_class"), str, path, "model_class")
    state = _expect(payload.get("model_state_dict"), dict, path, "model_state_dict")
    for key, value in state.items():
        _expect(key, str, path, "model_state_dict key")
        if not isinstance(value, torch.Tensor):
            raise _fail(path, f"model_state_dict[{key!r}]", f"a {type(value).__name__}, "
                        "not a tensor.")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise _fail(path, f"model_state_dict[{key!r}]", "non-finite weights: the model "
                        "diverged before it was saved or the file was altered; re-train it.")
    var_names = payload.get("var_names")
    if isinstance(var_names, np.ndarray):
        var_names = var_names.tolist()
    _expect(var_names, list, path, "var_names")
    if not var_names or len(var_names) > LIMITS["genes"]:
        raise _fail(path, "var_names", f"{len(var_names)} genes (1..{LIMITS['genes']}).")
    if not all(isinstance(v, str) for v in var_names):
        raise _fail(path, "var_names", "gene names must be strings.")
    if len(set(var_names)) != len(var_names):
        raise _fail(path, "var_names", "gene names repeat.")
    attr_dict = _attributes(_expect(payload.get("attr_dict"), dict, path, "attr_dict"), path)
    for required in ("registry_", "init_params_", "is_trained_"):
        if required not in attr_dict:
            raise _fail(path, f"attr_dict.{required}", "missing.")
    registry = attr_dict.pop("registry_")
    extra = _expect(payload.get("extra", {}), dict, path, "extra")
    prior = extra.get("prior") or None
    if prior is not None:
        _expect(prior, dict, path, "extra.prior")
    return SavedModel(path, model_class, state, list(var_names), attr_dict, registry, prior,
                      version)


def _attributes(attr_dict: dict, path) -> dict:
    """The attributes a file may set, each of its type; anything else is refused."""
    out = {}
    for name, value in attr_dict.items():
        field = f"attr_dict.{name}"
        if name not in _ALLOWED_ATTRIBUTES:
            raise _fail(path, field, f"not an attribute a model file may set (allowed: "
                        f"{sorted(_ALLOWED_ATTRIBUTES)}).")
        kind = _ALLOWED_ATTRIBUTES[name]
        if name.endswith("indices_") and value is None:
            out[name] = None
            continue
        if name == "history_" and value is None:
            out[name] = None
            continue
        _expect(value, kind, path, field)
        if kind is np.ndarray:
            if value.ndim != 1 or value.dtype.kind not in "iu" or value.size > LIMITS["cells"]:
                raise _fail(path, field, "expected a vector of cell positions.")
            if value.size and (value.min() < 0 or value.max() >= LIMITS["cells"]):
                raise _fail(path, field, "cell positions out of range.")
        elif kind is str and len(value) > LIMITS["text"]:
            raise _fail(path, field, f"a text of {len(value)} characters.")
        out[name] = value
    if "get_normalized_function_name_" in out and out["get_normalized_function_name_"] not in (
        "get_normalized_expression",
    ):
        raise _fail(path, "attr_dict.get_normalized_function_name_",
                    f"{out['get_normalized_function_name_']!r} is not "
                    "'get_normalized_expression'.")
    if out.get("history_") is not None:
        out["history_"] = _history(out["history_"], path)
    if "init_params_" in out:
        out["init_params_"] = _init_params(out["init_params_"], path)
    if "registry_" in out:
        out["registry_"] = _plain(out["registry_"], path, "attr_dict.registry_")
    return out


def _history(history: dict, path) -> dict:
    import pandas as pd

    out = {}
    for key, frame in history.items():
        field = f"attr_dict.history_[{key!r}]"
        _expect(key, str, path, "attr_dict.history_ key")
        _expect(frame, pd.DataFrame, path, field)
        if len(frame) > LIMITS["history_rows"] or frame.shape[1] > 16:
            raise _fail(path, field, f"a table of shape {frame.shape}.")
        for column in frame.columns:
            values = np.asarray(frame[column])
            if values.dtype.kind == "O" and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                values = values.astype(np.float64)
            if values.dtype.kind not in "iuf":
                raise _fail(path, field, "non-numeric values.")
        out[key] = frame
    return out


def _init_params(params: dict, path) -> dict:
    field = "attr_dict.init_params_"
    if set(params) != {"kwargs", "non_kwargs"}:
        raise _fail(path, field, "expected the keys 'kwargs' and 'non_kwargs'.")
    non_kwargs = _expect(params["non_kwargs"], dict, path, f"{field}.non_kwargs")
    kwargs = _expect(params["kwargs"], dict, path, f"{field}.kwargs")
    out_kwargs = {}
    for group, values in kwargs.items():
        out_kwargs[group] = _expect(values, dict, path, f"{field}.kwargs.{group}")
    merged = {**non_kwargs, **{k: v for g in out_kwargs.values() for k, v in g.items()}}
    for name, value in merged.items():
        _plain(value, path, f"{field}.{name}")
    for name, cap, low in (
        ("n_hidden", LIMITS["n_hidden"], 1),
        ("n_latent", LIMITS["n_latent"], 1),
        ("n_layers", LIMITS["n_layers"], 1),
    ):
        if name in merged:
            _size(merged[name], path, f"{field}.{name}", cap, low)
    if "dropout_rate" in merged:
        rate = merged["dropout_rate"]
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise _fail(path, f"{field}.dropout_rate", f"{rate!r} is not in [0, 1).")
    return {"kwargs": out_kwargs, "non_kwargs": dict(non_kwargs)}


def _registry(saved: SavedModel, cls) -> tuple[str, dict]:
    """The setup method (allow-listed) and its checked arguments."""
    from attreg_sc._compat import MODEL_NAME_KEY, SETUP_ARGS_KEY, SETUP_METHOD_NAME

    path, registry = saved.path, saved.registry
    method = registry.get(SETUP_METHOD_NAME, "setup_anndata")
    if method not in _SETUP_METHODS or not hasattr(cls, method):
        raise _fail(path, "attr_dict.registry_.setup_method_name",
                    f"{method!r} is not a setup method this loader calls ({list(_SETUP_METHODS)}).")
    args = registry.get(SETUP_ARGS_KEY)
    if not isinstance(args, dict):
        raise _fail(path, "attr_dict.registry_.setup_args", "missing: the file does not "
                    "hold the original setup arguments.")
    import inspect

    accepted = set(inspect.signature(getattr(cls, method)).parameters) - {"adata", "cls"}
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise _fail(path, "attr_dict.registry_.setup_args", f"unknown arguments {unknown}.")
    for key, value in args.items():
        ok = value is None or isinstance(value, (str, bool)) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
        if not ok:
            raise _fail(path, f"attr_dict.registry_.setup_args.{key}",
                        f"{value!r} is not a column name, a list of them, a flag or None.")
    name = registry.get(MODEL_NAME_KEY)
    if name is not None and not isinstance(name, str):
        raise _fail(path, "attr_dict.registry_.model_name", "not a text.")
    return method, args


def _check_genes(saved: SavedModel, adata) -> None:
    names = [str(v) for v in adata.var_names]
    if names == saved.var_names:
        return
    if len(names) != len(saved.var_names):
        detail = f"the AnnData has {len(names)} genes, the model {len(saved.var_names)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(names, saved.var_names, strict=True)) if a != b)
        detail = (f"the first difference is gene {i}: {names[i]!r} in the AnnData, "
                  f"{saved.var_names[i]!r} in the model")
    raise ValueError(
        f"the AnnData's genes differ from the model's ({detail}); give an AnnData with the "
        "model's genes in its order (adata[:, model_genes]), or map new data with "
        "prepare_query_anndata / load_query_data (scvi-tools' query mapping)."
    )


def _expected_shapes(cls, adata, registry, attr_dict) -> dict:
    """The state dict shapes of the model the file describes, built on the ``meta``
    device (no memory)."""
    import torch

    from attreg_sc._compat import initialize_model

    with torch.device("meta"):
        model = initialize_model(cls, adata, registry, dict(attr_dict))
    return {k: tuple(v.shape) for k, v in model.module.state_dict().items()}


def _match_state(saved: SavedModel, expected: dict) -> dict:
    """The file's state dict for the module: shapes checked against ``expected``; heads
    whose output the loss never read, which the module does not have, are dropped
    (attreg 0.1's files and scvi-tools' own state dicts)."""
    state = dict(saved.state_dict)
    unread = ("decoder.px_dropout_decoder.", "decoder.px_r_decoder.")  # heads the loss never read
    for key in list(state):
        if key.startswith(unread) and key not in expected:
            state.pop(key)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise _fail(saved.path, "model_state_dict",
                    f"does not fit the model it describes (missing {missing[:3]}, "
                    f"unexpected {extra[:3]}).")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise _fail(saved.path, f"model_state_dict[{key!r}]",
                        f"has shape {tuple(state[key].shape)}; the model the file describes "
                        f"(its init_params_ and registry) needs {shape}.")
    return state


def _check_sizes(saved: SavedModel) -> None:
    """Caps on the registry's sizes, before anything is built from them."""
    from attreg_sc._compat import FIELD_REGISTRIES_KEY

    fields = saved.registry.get(FIELD_REGISTRIES_KEY, {})
    if not isinstance(fields, dict):
        raise _fail(saved.path, "attr_dict.registry_.field_registries", "not a mapping.")
    for name, entry in fields.items():
        if not isinstance(entry, dict):
            raise _fail(saved.path, f"attr_dict.registry_.field_registries.{name}",
                        "not a mapping.")
        stats = entry.get("summary_stats", {})
        if not isinstance(stats, dict):
            raise _fail(saved.path, f"attr_dict.registry_.field_registries.{name}",
                        "summary_stats is not a mapping.")
        for key, value in stats.items():
            _size(value, saved.path,
                  f"attr_dict.registry_.field_registries.{name}.summary_stats.{key}",
                  max(LIMITS["genes"], LIMITS["categories"]))
    base = "attr_dict.registry_.field_registries"
    x_field = fields.get("X")
    if not isinstance(x_field, dict):
        raise _fail(saved.path, f"{base}.X", "missing: the file does not say where the counts are.")
    n_vars = x_field.get("summary_stats", {}).get("n_vars")
    if n_vars != len(saved.var_names):
        raise _fail(saved.path, f"{base}.X.summary_stats.n_vars",
                    f"{n_vars!r}, but var_names lists {len(saved.var_names)} genes.")
    for name, entry in fields.items():
        state = entry.get("state_registry", {})
        if not isinstance(state, dict):
            raise _fail(saved.path, f"{base}.{name}.state_registry", "not a mapping.")
        for key, value in state.items():
            field = f"{base}.{name}.state_registry.{key}"
            if isinstance(value, np.ndarray):
                if value.ndim != 1 or value.dtype.kind not in "iufbUO":
                    raise _fail(saved.path, field, f"an array of shape {value.shape} and "
                                f"dtype {value.dtype}.")
                if value.dtype.kind == "O" and not all(isinstance(v, str) for v in value):
                    raise _fail(saved.path, field, "holds values that are not texts.")
                if key == "categorical_mapping" and len(set(value.tolist())) != len(value):
                    raise _fail(saved.path, field, "categories repeat.")
            else:
                _plain(value, saved.path, field)
        columns = state.get("column_names")
        if name == "X" and columns is not None and (
            not isinstance(columns, np.ndarray) or columns.tolist() != saved.var_names
        ):
            raise _fail(saved.path, f"{base}.X.state_registry.column_names",
                        "does not list the file's var_names.")


def load_model(
    cls,
    dir_path: str | os.PathLike,
    adata=None,
    accelerator: str = "auto",
    device: int | str = "auto",
    prefix: str | None = None,
    allowed_classes: tuple[str, ...] = (),
):
    """scvi-tools' ``load`` steps on a checked file; returns ``(model, saved)``.

    Parameters
    ----------
    cls
        The model class.
    dir_path
        The model folder.
    adata
        The AnnData (``None``: the folder's ``adata.h5ad`` if any; ``False``: none).
    accelerator, device
        Where to put the model (scvi-tools' arguments).
    prefix
        File-name prefix.
    allowed_classes
        Other class names whose files this class reads.
    """
    from attreg_sc._compat import MODEL_NAME_KEY, initialize_model, parse_device

    torch_device = parse_device(accelerator, device)
    saved = read_model_file(dir_path, prefix)
    registry = saved.registry
    name = registry.get(MODEL_NAME_KEY, saved.model_class)
    if not isinstance(name, str):
        raise _fail(saved.path, "attr_dict.registry_.model_name", f"{name!r} is not a text.")
    if name != cls.__name__ and name not in allowed_classes:
        raise ModelFileError(
            f"{dir_path} holds a {name} model; load it with {name}.load, not "
            f"{cls.__name__}.load."
        )
    method, setup_args = _registry(saved, cls)
    _check_sizes(saved)
    if adata is None:
        adata = _read_saved_anndata(saved, Path(dir_path), prefix)
    elif adata is False:
        adata = None
    if adata is not None:
        _check_genes(saved, adata)
        try:
            getattr(cls, method)(adata, source_registry=registry, **setup_args)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise _fail(saved.path, "attr_dict.registry_", f"scvi-tools cannot read it "
                        f"({type(err).__name__}: {err}).") from None
        except ValueError as err:
            raise ValueError(f"the AnnData cannot be set up as the model in {saved.path} "
                             f"was: {err}") from None
    try:
        expected = _expected_shapes(cls, adata, registry, saved.attr_dict)
    except Exception as err:  # a file's values scvi-tools' constructors refuse
        raise _fail(saved.path, "attr_dict.init_params_", f"the model cannot be built from "
                    f"it ({type(err).__name__}: {err}).") from None
    state = _match_state(saved, expected)
    model = initialize_model(cls, adata, registry, dict(saved.attr_dict))
    model.module.on_load(model, pyro_param_store=None)
    model.module.load_state_dict(state)
    model.to_device(torch_device)
    model.module.eval()
    return model, saved


def _read_saved_anndata(saved: SavedModel, folder: Path, prefix: str | None):
    """The folder's ``adata.h5ad`` (a regular file inside it), or ``None`` with a
    warning."""
    import io

    import anndata

    path = folder / f"{prefix or ''}{ADATA_FILE}"
    if not os.path.lexists(path):
        logger.warning(
            "%s holds no saved AnnData and none was given: the model is loaded without "
            "data (pass adata= to use it on cells).",
            folder,
        )
        return None
    try:
        data = read_regular_file(path, "saved AnnData", inside=folder, max_bytes=MAX_FILE_BYTES)
    except UnsafeFileError as err:
        raise ModelFileError(str(err)) from None
    try:
        return anndata.read_h5ad(io.BytesIO(data))
    except Exception as err:  # anndata/h5py raise many types for a damaged file
        raise ModelFileError(f"{path} is not a readable .h5ad file: {err}") from None


def packed_ground_truth(g) -> dict:
    """A GT as plain arrays (what a file stores)."""
    from attreg_sc.gt import GroupedGroundTruth

    if isinstance(g, np.ndarray):
        return {"kind": "vector", "mask": np.asarray(g, dtype=bool)}
    if isinstance(g, GroupedGroundTruth):
        return {"kind": "grouped", "codes": g.codes, "table": g.table, "groups": list(g.groups)}
    m = g.matrix
    return {"kind": "cell", "indptr": m.indptr, "indices": m.indices, "shape": list(m.shape)}


def unpacked_ground_truth(d: Any, n_genes: int, path, field: str):
    """A GT from a file, every array checked before it is used (a broken CSR structure
    would crash scipy)."""
    import scipy.sparse as sp

    from attreg_sc.gt import CellGroundTruth, GroupedGroundTruth
    from attreg_sc.validation import check_sparse_structure

    _expect(d, Mapping, path, field)
    kind = d.get("kind")
    if kind == "vector":
        mask = _array(d.get("mask"), path, f"{field}.mask", "b", (n_genes,))
        return mask.astype(bool)
    if kind == "grouped":
        table = _array(d.get("table"), path, f"{field}.table", "b", (None, n_genes))
        if not 1 <= table.shape[0] <= LIMITS["gt_groups"]:
            raise _fail(path, f"{field}.table", f"{table.shape[0]} groups.")
        codes = _array(d.get("codes"), path, f"{field}.codes", "iu", (None,))
        if codes.size and (codes.min() < -1 or codes.max() >= table.shape[0]):
            raise _fail(path, f"{field}.codes", f"group codes outside -1..{table.shape[0] - 1}.")
        groups = d.get("groups")
        if (not isinstance(groups, list) or len(groups) != table.shape[0]
                or not all(isinstance(g, str) for g in groups)):
            raise _fail(path, f"{field}.groups", "expected one group name per table row.")
        return GroupedGroundTruth(codes.astype(np.int64), table.astype(bool), groups)
    if kind == "cell":
        shape = d.get("shape")
        if isinstance(shape, tuple):
            shape = list(shape)
        if (not isinstance(shape, list) or len(shape) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)):
            raise _fail(path, f"{field}.shape", f"{shape!r} is not [n_cells, n_genes].")
        n_cells = _size(shape[0], path, f"{field}.shape[0]", LIMITS["cells"], 1)
        if shape[1] != n_genes:
            raise _fail(path, f"{field}.shape", f"{shape[1]} genes; the model has {n_genes}.")
        indptr = _array(d.get("indptr"), path, f"{field}.indptr", "iu", (n_cells + 1,))
        indices = _array(d.get("indices"), path, f"{field}.indices", "iu", (None,))

        class _Raw:  # the arrays as check_sparse_structure reads them, before scipy
            format = "csr"

        raw = _Raw()
        raw.shape, raw.indptr, raw.indices = (n_cells, n_genes), indptr, indices
        raw.data = np.broadcast_to(np.True_, indices.shape)
        try:
            check_sparse_structure(raw, name=f"{path}: {field}")
        except ValueError as err:  # InvalidDataError: this is a file's field
            raise ModelFileError(str(err)) from None
        m = sp.csr_matrix(
            (np.ones(len(indices), dtype=bool), indices.astype(np.int64),
             indptr.astype(np.int64)),
            shape=(n_cells, n_genes),
        )
        return CellGroundTruth(m)
    raise _fail(path, f"{field}.kind", f"{kind!r} is not 'vector', 'grouped' or 'cell'.")


def _array(value, path, field: str, kinds: str, shape: tuple) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
        raise _fail(path, field, f"expected an array of kind {kinds!r}, found "
                    f"{type(value).__name__} {getattr(value, 'dtype', '')}.")
    if value.ndim != len(shape) or any(s is not None and n != s for n, s in
                                       zip(value.shape, shape, strict=True)):
        raise _fail(path, field, f"has shape {value.shape}; expected {shape} (None: any).")
    return value
