"""attreg_sc._compat: every private scvi-tools name attreg_sc uses, checked on the installed
scvi-tools (CI runs this file on 1.4 and on 1.5), with the behaviour attreg_sc relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

pytest.importorskip("scvi")

import numpy as np  # noqa: E402
import scvi  # noqa: E402
import torch  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

from attreg_sc import _compat  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_installed_scvi_tools_is_a_supported_version():
    assert _compat.SCVI_VERSION in _compat.SUPPORTED, (
        f"scvi-tools {scvi.__version__} is not in attreg_sc's tested versions "
        f"{_compat.SUPPORTED}"
    )


def test_supported_versions_match_the_package_requirement():
    # pyproject.toml itself: installed metadata can be stale (an old egg-info on sys.path)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = project["optional-dependencies"]["sc"]
    (spec,) = [Requirement(r) for r in requires if Requirement(r).name == "scvi-tools"]
    for major, minor in _compat.SUPPORTED:
        assert Version(f"{major}.{minor}.0") in spec.specifier, (major, minor, str(spec))
    newest = max(_compat.SUPPORTED)
    assert Version(f"{newest[0]}.{newest[1] + 1}.0") not in spec.specifier


def test_registry_keys_are_the_strings_scvi_tools_saves():
    # the keys a saved model's registry is read with: a rename in scvi-tools must fail here
    assert _compat.SETUP_ARGS_KEY == "setup_args"
    assert _compat.SETUP_METHOD_NAME == "setup_method_name"
    assert _compat.MODEL_NAME_KEY == "model_name"
    assert _compat.FIELD_REGISTRIES_KEY == "field_registries"
    assert isinstance(_compat.SCVI_UUID_KEY, str) and _compat.SCVI_UUID_KEY


def _small_adata():
    from scvi.data import synthetic_iid

    return synthetic_iid(batch_size=40, n_genes=30, n_batches=2, n_labels=2)


def test_check_if_view_copies_a_view_in_place_and_refuses_without_copy():
    adata = _small_adata()
    view = adata[:10]
    assert view.is_view
    with pytest.raises(ValueError):
        _compat.check_if_view(view, copy_if_view=False)
    _compat.check_if_view(view, copy_if_view=True)
    assert not view.is_view


def test_parse_device_returns_the_cpu_device():
    assert _compat.parse_device("cpu", "auto") == torch.device("cpu")


def test_uses_distributed_sampler_for_ddp_strategies_only():
    assert _compat.uses_distributed_sampler("ddp")
    assert _compat.uses_distributed_sampler("ddp_find_unused_parameters_true")
    assert not _compat.uses_distributed_sampler(None)
    assert not _compat.uses_distributed_sampler("auto")


def test_named_like_scvi_renames_for_the_duration_only():
    from attreg_sc import SCARE

    adata = _small_adata()
    SCARE.setup_anndata(adata, batch_key="batch")
    model = SCARE(adata, n_latent=3, n_hidden=8)
    with _compat.named_like_scvi(model):
        assert type(model).__name__ == "SCVI"
        assert isinstance(model, SCARE)
    assert type(model) is SCARE
    with pytest.raises(RuntimeError), _compat.named_like_scvi(model):
        raise RuntimeError("inside")
    assert type(model) is SCARE  # restored on an error too


def test_initialize_model_builds_the_saved_architecture_without_weights():
    from attreg_sc import SCARE

    adata = _small_adata()
    SCARE.setup_anndata(adata, batch_key="batch")
    model = SCARE(adata, n_latent=4, n_hidden=16)
    attr = {
        "init_params_": model.init_params_,
        "registry_": model.adata_manager.registry,
    }
    rebuilt = _compat.initialize_model(SCARE, adata, model.adata_manager.registry, attr)
    assert isinstance(rebuilt, SCARE)
    assert rebuilt.module.n_latent == 4
    shapes = {k: tuple(v.shape) for k, v in model.module.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.module.state_dict().items()} == shapes
    # fresh weights, not the first model's
    first = next(iter(model.module.parameters()))
    assert not torch.equal(first, next(iter(rebuilt.module.parameters())))


def test_view_setup_args_prints_on_this_version(tmp_path, capsys):
    # scvi-tools 1.4.2's view_anndata_setup uses rich.pretty without importing it:
    # attreg_sc._compat imports it, so viewing a saved model's setup works on both versions
    from attreg_sc import SCARE

    adata = _small_adata()
    SCARE.setup_anndata(adata, batch_key="batch")
    model = SCARE(adata, n_latent=3, n_hidden=8)
    model.save(tmp_path / "m")
    SCARE.view_setup_args(tmp_path / "m")
    out = capsys.readouterr().out
    assert "batch_key" in out


def test_version_parsed_from_the_installed_package():
    parts = scvi.__version__.split(".")
    assert _compat.SCVI_VERSION == (int(parts[0]), int(parts[1]))


def test_chunked_library_size_prior_matches_scvi_tools(tmp_path):
    import anndata as ad
    import scipy.sparse as sp
    from scvi.model._utils import _init_library_size

    from attreg_sc import SCARE

    adata = _small_adata()
    adata.X = sp.csr_matrix(adata.X)
    SCARE.setup_anndata(adata, batch_key="batch")
    manager = SCARE._get_most_recent_anndata_manager(adata)
    theirs = _init_library_size(manager, 2)
    ours = _compat.library_size_prior(manager, 2)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # the model built on a backed file gets the same prior as in memory
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    SCARE.setup_anndata(backed, batch_key="batch")
    model = SCARE(backed, n_latent=3, n_hidden=8)
    np.testing.assert_allclose(model.module.library_log_means.numpy(), theirs[0], rtol=1e-6)
    np.testing.assert_allclose(model.module.library_log_vars.numpy(), theirs[1], rtol=1e-5)
    assert _init_library_size.__module__ == "scvi.model._utils"  # restored after the build
    import scvi.model._scvi as scvi_model_module

    assert scvi_model_module._init_library_size is _init_library_size


def _cache_bytes(adata) -> int:
    return adata.file._file.id.get_access_plist().get_cache()[2]


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_backed_rows_without_chunk_cache_reopens_the_same_file_and_restores_it(tmp_path, mode):
    import anndata as ad
    import scipy.sparse as sp

    adata = _small_adata()
    adata.X = sp.csr_matrix(adata.X)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed=mode)
    default = _cache_bytes(backed)
    assert default > 0
    rows = np.array([1, 7, 30, 55])
    with _compat.backed_rows_without_chunk_cache(backed) as uncached:
        assert uncached
        assert _cache_bytes(backed) == 0
        assert backed.file._filemode == mode
        np.testing.assert_array_equal(backed.X[rows].toarray(), adata.X[rows].toarray())
    assert backed.file.is_open and _cache_bytes(backed) == default
    assert backed.file._filemode == mode
    np.testing.assert_array_equal(backed.X[rows].toarray(), adata.X[rows].toarray())
    # an error inside leaves anndata's own handle open again
    with pytest.raises(RuntimeError, match="inside"):
        with _compat.backed_rows_without_chunk_cache(backed):
            raise RuntimeError("inside")
    assert backed.file.is_open and _cache_bytes(backed) == default
    backed.file.close()


def test_backed_rows_keep_the_cache_where_it_serves(tmp_path):
    import anndata as ad
    import scipy.sparse as sp

    adata = _small_adata()
    with _compat.backed_rows_without_chunk_cache(adata) as uncached:  # in memory
        assert not uncached
    adata.X = sp.csr_matrix(adata.X)
    # compressed chunks are decoded whole on every read without the cache: kept
    adata.write_h5ad(tmp_path / "gzip.h5ad", compression="gzip")
    backed = ad.read_h5ad(tmp_path / "gzip.h5ad", backed="r")
    handle = backed.file._file
    with _compat.backed_rows_without_chunk_cache(backed) as uncached:
        assert not uncached and backed.file._file is handle
    backed.file.close()
    # cells stored by gene (CSC): not rows of a minibatch
    adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(tmp_path / "csc.h5ad")
    backed = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    handle = backed.file._file
    with _compat.backed_rows_without_chunk_cache(backed) as uncached:
        assert not uncached and backed.file._file is handle
    backed.file.close()
