"""The one place attreg_sc reaches into scvi-tools' (and anndata's) private modules.

attreg_sc supports scvi-tools 1.4 and 1.5 (``scvi-tools>=1.4,<1.6``). Everything it needs
that scvi-tools does not export publicly is imported or worked around here, so that a
scvi-tools release that moves one of them breaks one module, and
``tests/test_compat.py`` checks each name on the installed version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import rich.pretty  # noqa: F401 - scvi-tools 1.4.2's view_anndata_setup uses it unimported
import scvi
import torch
from scvi.data._constants import (
    _FIELD_REGISTRIES_KEY,
    _MODEL_NAME_KEY,
    _SCVI_UUID_KEY,
    _SETUP_ARGS_KEY,
    _SETUP_METHOD_NAME,
)
from scvi.data._utils import _check_if_view
from scvi.model._utils import parse_device_args, use_distributed_sampler
from scvi.model.base._save_load import _initialize_model

__all__ = [
    "SCVI_VERSION",
    "SUPPORTED",
    "FIELD_REGISTRIES_KEY",
    "MODEL_NAME_KEY",
    "SCVI_UUID_KEY",
    "SETUP_ARGS_KEY",
    "SETUP_METHOD_NAME",
    "check_if_view",
    "initialize_model",
    "parse_device",
    "named_like_scvi",
    "uses_distributed_sampler",
    "library_size_prior",
    "chunked_library_size",
    "backed_rows_without_chunk_cache",
]

FIELD_REGISTRIES_KEY = _FIELD_REGISTRIES_KEY
MODEL_NAME_KEY = _MODEL_NAME_KEY
SCVI_UUID_KEY = _SCVI_UUID_KEY
SETUP_ARGS_KEY = _SETUP_ARGS_KEY
SETUP_METHOD_NAME = _SETUP_METHOD_NAME

#: the installed scvi-tools as ``(major, minor)``
SCVI_VERSION = tuple(int(p) for p in scvi.__version__.split(".")[:2])
#: the scvi-tools versions attreg_sc is tested with
SUPPORTED = ((1, 4), (1, 5))


def check_if_view(adata, copy_if_view: bool = True) -> None:
    """scvi-tools' check that ``adata`` is not a view (copied in place if allowed)."""
    _check_if_view(adata, copy_if_view=copy_if_view)


def initialize_model(cls, adata, registry: dict, attr_dict: dict):
    """A model of ``cls`` built from a saved registry and attributes (scvi-tools' own
    loading step), without weights."""
    return _initialize_model(cls, adata, registry, attr_dict, None)


def parse_device(accelerator: str, device: int | str) -> torch.device:
    """The torch device scvi-tools' ``load`` would pick."""
    _, _, torch_device = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch",
        validate_single_device=True,
    )
    return torch_device


def uses_distributed_sampler(strategy) -> bool:
    """Whether scvi-tools shards the data over processes for this Lightning strategy."""
    return bool(strategy) and use_distributed_sampler(strategy)


@contextlib.contextmanager
def named_like_scvi(model) -> Iterator[None]:
    """Inside, ``model`` is seen by scvi-tools' base class as an ``SCVI``: its constructor
    accepts ``adata=None`` and ``registry=None`` (the module is built when ``train`` gets
    a data module) only for classes *named* SCVI, a test of the name rather than of the
    class. The instance's class is a subclass named ``SCVI`` for the duration only."""
    cls = type(model)
    model.__class__ = _scvi_named(cls)
    try:
        yield
    finally:
        model.__class__ = cls


_NAMED: dict[type, type] = {}


def _scvi_named(cls: type) -> type:
    if cls not in _NAMED:
        _NAMED[cls] = type("SCVI", (cls,), {"__module__": cls.__module__})
    return _NAMED[cls]


def library_size_prior(adata_manager, n_batch: int):
    """scvi-tools' ``_init_library_size`` (per batch: mean and variance of the log library
    size), with the library sizes summed over chunks of rows: scvi-tools' version copies
    each batch's rows (the whole matrix of a backed file) into memory. The same values
    up to float rounding (``tests/test_compat.py``)."""
    import numpy as np
    from scvi import REGISTRY_KEYS

    from attreg_sc.validation import row_totals

    data = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    batch = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
    totals = np.asarray(row_totals(data), dtype=np.float64)
    means, variances = np.zeros(n_batch), np.ones(n_batch)
    with np.errstate(divide="ignore"):
        logs = np.where(totals > 0, np.log(np.where(totals > 0, totals, 1.0)), 0.0)
    for b in np.unique(batch):
        values = logs[batch == b]
        means[int(b)] = np.float32(values.mean())
        variances[int(b)] = np.float32(values.var())
    return means.reshape(1, -1), variances.reshape(1, -1)


@contextlib.contextmanager
def chunked_library_size() -> Iterator[None]:
    """Inside, scvi-tools' models compute their library-size prior with
    :func:`library_size_prior` (bounded memory on backed data)."""
    import importlib

    modules = []
    for name in ("scvi.model._scvi", "scvi.model._scanvi"):
        module = importlib.import_module(name)
        if hasattr(module, "_init_library_size"):
            modules.append((module, module._init_library_size))
            module._init_library_size = library_size_prior
    try:
        yield
    finally:
        for module, original in modules:
            module._init_library_size = original


def _uncached_worth_it(adata) -> bool:
    """Whether ``adata`` is a backed .h5ad whose counts are CSR rows in unfiltered chunked
    datasets, read through a file opened with a chunk cache."""
    import h5py

    manager = getattr(adata, "file", None)
    handle = getattr(manager, "_file", None)
    if not adata.isbacked or not isinstance(handle, h5py.File) or not handle.id.valid:
        return False
    if handle.id.get_access_plist().get_cache()[2] == 0:
        return False  # already without a cache (a file the user opened so)
    group = handle.get("X")
    if not isinstance(group, h5py.Group) or group.attrs.get("encoding-type") != "csr_matrix":
        return False
    for name in ("data", "indices"):
        dataset = group.get(name)
        if not isinstance(dataset, h5py.Dataset) or dataset.chunks is None:
            return False
        if dataset.id.get_create_plist().get_nfilters():
            return False  # compressed: a chunk is decoded whole, and the cache reuses it
    return True


@contextlib.contextmanager
def backed_rows_without_chunk_cache(adata) -> Iterator[bool]:
    """Inside, a backed .h5ad's rows are read through a handle opened without HDF5's chunk
    cache (``rdcc_nbytes=0``); yields whether it was.

    anndata opens backed files with h5py's default chunk cache (a few MB per dataset). Random
    minibatches of rows touch a different chunk per row, so each row read brings a whole
    chunk through the cache, and the cost grows with the file (``docs/benchmarks.md``);
    without the cache HDF5 reads only the bytes asked for. HDF5 shares one open file (and
    its cache settings) between all handles of a process, so anndata's handle is closed and
    the file reopened: objects taken from ``adata.X`` before are invalid afterwards (take
    them again). Only CSR counts in unfiltered chunked datasets qualify (a compressed chunk
    is decoded whole on every read without the cache). On exit anndata's own handle is
    reopened, with the same file and mode.
    """
    if not _uncached_worth_it(adata):
        yield False
        return
    import h5py

    manager = adata.file
    filename, mode = manager.filename, manager._filemode
    manager.close()
    try:
        manager._file = h5py.File(filename, mode, rdcc_nbytes=0)
    except OSError:  # a speed path only: train through anndata's own handle then
        manager.open()
        yield False
        return
    try:
        yield True
    finally:
        manager.close()
        manager.open()
