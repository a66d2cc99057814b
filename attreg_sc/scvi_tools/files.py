"""Saving and loading scvi-tools models without running code from the file.

scvi-tools 1.4 reads ``model.pt`` with ``torch.load(weights_only=False)``: a file handed to
it can run any code. Models with attreg_sc's priors are written in attreg_sc's safe,
checksummed format instead (:func:`attreg_sc._io.save_versioned`): tensors, numbers,
strings, lists and dicts only, read back with ``weights_only=True``. The layout of the
folder is scvi-tools' (``model.pt`` and, with ``save_anndata=True``, ``adata.h5ad``); the
loading steps are scvi-tools' own (``setup_anndata`` with the saved registry, the model
built from its saved init parameters, then the weights).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from attreg_sc._io import load_versioned, save_versioned, write_h5ad_safely

logger = logging.getLogger(__name__)

__all__ = ["save_model", "read_model_file", "load_model", "MODEL_FORMAT_VERSION"]

MODEL_FORMAT_VERSION = 1
MODEL_FILE, ADATA_FILE = "model.pt", "adata.h5ad"


def _user_attributes(model) -> dict[str, Any]:
    attrs = {a: v for a, v in model._get_user_attributes() if a.endswith("_")}
    return attrs


def save_model(
    model,
    dir_path: str | os.PathLike,
    prefix: str | None = None,
    overwrite: bool = False,
    save_anndata: bool = False,
    extra: dict | None = None,
) -> None:
    """Write ``model`` to ``dir_path`` as one unit (a staged folder renamed into place).

    ``extra`` (plain values and arrays) is stored alongside, e.g. the prior's settings.
    """
    dir_path = Path(dir_path)
    if dir_path.exists() and not overwrite:
        raise FileExistsError(f"{dir_path} already exists; pass overwrite=True to replace it.")
    prefix = prefix or ""
    payload = {
        "format_version": MODEL_FORMAT_VERSION,
        "model_class": type(model).__name__,
        "model_state_dict": dict(model.module.state_dict()),
        "var_names": [str(v) for v in model.get_var_names()],
        "attr_dict": _user_attributes(model),
        "extra": extra or {},
    }
    dir_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dir_path.parent, prefix=f".{dir_path.name}.partial."))
    try:
        save_versioned(staging / f"{prefix}{MODEL_FILE}", payload)
        if save_anndata:
            write_h5ad_safely(model.adata.copy(), staging / f"{prefix}{ADATA_FILE}")
        if dir_path.exists():
            old = Path(tempfile.mkdtemp(dir=dir_path.parent, prefix=f".{dir_path.name}.old."))
            os.replace(dir_path, old / "x")
            os.replace(staging, dir_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, dir_path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_model_file(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
    """The payload of a saved model folder (never runs code from the file)."""
    path = Path(dir_path) / f"{prefix or ''}{MODEL_FILE}"
    return load_versioned(
        path,
        MODEL_FORMAT_VERSION,
        "attreg_sc scvi-tools model",
        hint="Save the model with its save() method first.",
    )


def load_model(
    cls,
    dir_path: str | os.PathLike,
    adata=None,
    accelerator: str = "auto",
    device: int | str = "auto",
    prefix: str | None = None,
):
    """scvi-tools' ``load`` steps on a safe file; returns ``(model, extra)``."""
    import anndata
    import numpy as np
    from scvi.data._constants import _MODEL_NAME_KEY, _SETUP_ARGS_KEY, _SETUP_METHOD_NAME
    from scvi.model._utils import parse_device_args
    from scvi.model.base._save_load import _initialize_model, _validate_var_names

    _, _, torch_device = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    payload = read_model_file(dir_path, prefix)
    attr_dict = payload["attr_dict"]
    registry = attr_dict.pop("registry_")
    saved_class = registry.get(_MODEL_NAME_KEY, payload["model_class"])
    if saved_class != cls.__name__:
        raise ValueError(
            f"{dir_path} holds a {saved_class} model; load it with {saved_class}.load, "
            f"not {cls.__name__}.load."
        )
    if adata is None:
        saved = Path(dir_path) / f"{prefix or ''}{ADATA_FILE}"
        if saved.exists():
            adata = anndata.read_h5ad(saved)
        else:
            logger.warning(
                "%s holds no saved AnnData and none was given: the model is loaded without "
                "data (pass adata= to use it on cells).",
                dir_path,
            )
    var_names = np.asarray(payload["var_names"], dtype=object)
    if adata is not None:
        _validate_var_names(adata, var_names)
        method_name = registry.get(_SETUP_METHOD_NAME, "setup_anndata")
        getattr(cls, method_name)(adata, source_registry=registry, **registry[_SETUP_ARGS_KEY])
    model = _initialize_model(cls, adata, registry, attr_dict, None)
    model.module.on_load(model, pyro_param_store=None)
    model.module.load_state_dict(payload["model_state_dict"])
    model.to_device(torch_device)
    model.module.eval()
    return model, payload.get("extra", {})
