"""Model folders: saves that delete nothing they did not write, and loads that are safe by
construction whatever the bytes (a checksum is not a signature: these tests recompute it,
as anyone editing a file can)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attreg_sc as asc
from attreg_sc._io import MAGIC, read_safe_payload
from attreg_sc.files import ModelFileError


def _adata():
    a = asc.datasets.synthetic(n_cells=120, n_genes=24, n_gt_genes=5, n_batches=2, seed=3)
    asc.SCARE.setup_anndata(a, batch_key="batch")
    return a


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model with a per-cell GT (a CSR matrix in the file), saved with its AnnData."""
    a = _adata()
    rng = np.random.default_rng(0)
    cells = sp.csr_matrix(rng.random((a.n_obs, a.n_vars)) < 0.2)
    model = asc.SCARE(a, n_latent=3, n_hidden=8, gt=asc.gt.from_cell_matrix(a, cells))
    model.train(max_epochs=1, enable_progress_bar=False)
    folder = tmp_path_factory.mktemp("saved") / "model"
    model.save(folder, save_anndata=True)
    return folder, a, model


def _payload(folder: Path) -> dict:
    return read_safe_payload(folder / "model.pt", "model")


def _write_raw(path: Path, payload) -> None:
    """What an attacker does: any payload, with a correct header and checksum."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    path.write_bytes(MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def _crafted(saved, tmp_path, mutate) -> Path:
    folder, _, _ = saved
    payload = copy.deepcopy(_payload(folder))
    mutate(payload)
    out = tmp_path / "crafted"
    out.mkdir()
    _write_raw(out / "model.pt", payload)
    return out


# -- saving ----------------------------------------------------------------------------
def test_overwrite_replaces_only_the_models_own_files(saved, tmp_path):
    _, a, model = saved
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "cells.h5ad").write_bytes(b"the user's cells")
    (folder / "notes.txt").write_text("notes")
    (folder / "figures").mkdir()
    (folder / "figures" / "umap.png").write_bytes(b"png")
    model.save(folder, overwrite=True)
    other = asc.SCARE(a, n_latent=3, n_hidden=8)
    other.save(folder, overwrite=True)  # a second save over the first
    assert (folder / "cells.h5ad").read_bytes() == b"the user's cells"
    assert (folder / "notes.txt").read_text() == "notes"
    assert (folder / "figures" / "umap.png").read_bytes() == b"png"
    assert sorted(p.name for p in folder.iterdir()) == [
        "cells.h5ad", "figures", "model.pt", "notes.txt"]
    loaded = asc.SCARE.load(folder, a)
    for name, value in other.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], value), name


def test_existing_folder_needs_overwrite(saved, tmp_path):
    _, _, model = saved
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match="overwrite=True"):
        model.save(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


def test_saving_into_a_file_is_refused_and_the_file_kept(saved, tmp_path):
    _, _, model = saved
    target = tmp_path / "important.h5ad"
    target.write_bytes(b"data")
    with pytest.raises(FileExistsError, match="is a file"):
        model.save(target, overwrite=True)
    assert target.read_bytes() == b"data"


@pytest.mark.parametrize("prefix", ["a/b", "../x", ".", ".."])
def test_prefix_with_a_folder_part_is_refused(saved, tmp_path, prefix):
    _, _, model = saved
    with pytest.raises(ValueError, match="prefix"):
        model.save(tmp_path / "run", prefix=prefix)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_killed_saves_staging_folder_is_removed_and_nothing_else(saved, tmp_path):
    _, _, model = saved
    folder = tmp_path / "run"
    folder.mkdir()
    stale = folder / ".attreg-staging-0123456789abcdef"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half")
    lookalikes = [".attreg-staging-0123", ".attreg-staging-notours12345678",
                  "attreg-staging-0123456789abcdef"]
    for name in lookalikes:
        (folder / name).mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (folder / ".attreg-staging-fedcba9876543210").symlink_to(elsewhere)
    model.save(folder, overwrite=True)
    assert not stale.exists()
    for name in lookalikes:
        assert (folder / name).is_dir(), name
    assert (elsewhere / "keep.txt").read_text() == "keep"  # a link is not followed
    assert (folder / "model.pt").is_file()


# -- what is read ----------------------------------------------------------------------
def test_model_file_linked_out_of_the_folder_is_refused(saved, tmp_path):
    folder, a, _ = saved
    out = tmp_path / "linked"
    out.mkdir()
    (out / "model.pt").symlink_to(folder / "model.pt")
    with pytest.raises(ValueError, match="model.pt"):
        asc.SCARE.load(out, a)


def test_model_file_linked_to_a_device_is_refused(tmp_path):
    out = tmp_path / "zero"
    out.mkdir()
    (out / "model.pt").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="model.pt"):
        asc.SCARE.load(out, _adata())


def test_model_file_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    out = tmp_path / "fifo"
    out.mkdir()
    os.mkfifo(out / "model.pt")
    code = textwrap.dedent(f"""
        import attreg_sc as asc
        try:
            asc.SCARE.load({str(out)!r})
        except ValueError as err:
            print("refused:", err)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert "refused:" in done.stdout and "model.pt" in done.stdout, done.stderr[-2000:]


def test_a_pickle_from_elsewhere_is_refused(tmp_path):
    out = tmp_path / "foreign"
    out.mkdir()
    torch.save({"model_state_dict": {}}, out / "model.pt")
    with pytest.raises(ModelFileError, match="no attreg header"):
        asc.SCARE.load(out, _adata())


# -- crafted fields: each refused, naming the file and the field -----------------------
def _init_kwargs(p):
    return p["attr_dict"]["init_params_"]["kwargs"]["kwargs"]


def _set_size(name, value):
    def mutate(p):
        _init_kwargs(p)[name] = value
    return mutate


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        ("n_hidden", _set_size("n_hidden", 100_000_000)),
        ("n_layers", _set_size("n_layers", 1_000_000)),
        ("n_latent", _set_size("n_latent", 10_000_000)),
        ("init_params_", _set_size("n_hidden", 9)),  # within caps, not the weights' shape
        ("n_layers", _set_size("n_layers", -1)),
        ("n_hidden", _set_size("n_hidden", "8")),
    ],
)
def test_sizes_are_checked_before_anything_is_built(saved, tmp_path, field, mutate):
    folder = _crafted(saved, tmp_path, mutate)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelFileError) as err:
        asc.SCARE.load(folder, saved[1])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "model.pt" in str(err.value) and field in str(err.value)
    assert grown_mb < 200  # nothing of the asked-for size was allocated


@pytest.mark.parametrize(
    ("field", "value"),
    [("module", "x"), ("is_trained_", "no"), ("adata", None), ("__class__", "SCVI"),
     ("history_", "not a dict")],
)
def test_attributes_come_from_an_allow_list(saved, tmp_path, field, value):
    def mutate(p):
        p["attr_dict"][field] = value

    with pytest.raises(ModelFileError, match=field):
        asc.SCARE.load(_crafted(saved, tmp_path, mutate), saved[1])


@pytest.mark.parametrize("method", ["train", "__init__", "load", "setup_mudata", "save"])
def test_setup_method_comes_from_an_allow_list(saved, tmp_path, method):
    def mutate(p):
        p["attr_dict"]["registry_"]["setup_method_name"] = method

    with pytest.raises(ModelFileError, match="setup_method_name"):
        asc.SCARE.load(_crafted(saved, tmp_path, mutate), saved[1])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("w_attr", float("nan"), "w_attr"), ("w_attr", -1.0, "w_attr"),
     ("reducer", "nonsense", "reducer"), ("n_samples", 10**9, "n_samples"),
     ("unknown_option", 1, "unknown_option")],
)
def test_prior_options_get_the_constructors_checks(saved, tmp_path, option, value, message):
    def mutate(p):
        p["extra"]["prior"]["settings"][option] = value

    with pytest.raises(ModelFileError, match=message):
        asc.SCARE.load(_crafted(saved, tmp_path, mutate), saved[1])


def _gt_csr(p):
    (gt,) = p["extra"]["prior"]["ground_truths"].values()
    assert gt["kind"] == "cell"
    return gt


@pytest.mark.parametrize("how", ["negative_index", "index_too_large", "indptr_huge",
                                 "indptr_decreasing", "wrong_shape"])
def test_per_cell_gt_structure_is_checked_before_scipy(saved, tmp_path, how):
    def mutate(p):
        gt = _gt_csr(p)
        indices = gt["indices"]["__attreg_ndarray__"]
        indptr = gt["indptr"]["__attreg_ndarray__"]
        if how == "negative_index":
            indices[3] = -5
        elif how == "index_too_large":
            indices[3] = 10**6
        elif how == "indptr_huge":
            indptr[5] = 10**7
        elif how == "indptr_decreasing":
            indptr[5], indptr[6] = indptr[6].clone(), indptr[5].clone() - 100
        else:
            gt["shape"] = [10**9, 10**9]

    with pytest.raises(ModelFileError, match="gt"):
        asc.SCARE.load(_crafted(saved, tmp_path, mutate), saved[1])


@pytest.mark.parametrize("how", ["string", "missing", "extra", "nan", "shape"])
def test_state_dict_entries_are_checked(saved, tmp_path, how):
    key = "z_encoder.mean_encoder.weight"

    def mutate(p):
        state = p["model_state_dict"]
        if how == "string":
            state[key] = "weights"
        elif how == "missing":
            del state[key]
        elif how == "extra":
            state["injected.weight"] = torch.zeros(2)
        elif how == "nan":
            state[key] = torch.full_like(state[key], float("nan"))
        else:
            state[key] = torch.zeros(4, 4)

    field = "injected.weight" if how == "extra" else key
    with pytest.raises(ModelFileError, match=field.replace(".", r"\.")):
        asc.SCARE.load(_crafted(saved, tmp_path, mutate), saved[1])


def test_loading_onto_other_genes_names_the_first_difference(saved):
    folder, a, _ = saved
    reordered = a[:, a.var_names[::-1]].copy()
    with pytest.raises(ValueError, match=rf"{a.var_names[0]}"):
        asc.SCARE.load(folder, reordered)
    renamed = a.copy()
    renamed.var_names = [f"x{i}" for i in range(a.n_vars)]
    with pytest.raises(ValueError, match="x0"):
        asc.SCARE.load(folder, renamed)


def test_a_valid_folder_loads_to_the_same_latent(saved):
    folder, a, model = saved
    loaded = asc.SCARE.load(folder, a)
    np.testing.assert_array_equal(loaded.get_latent_representation(),
                                  model.get_latent_representation())


# -- fuzz: any change to any field loads or is refused with ModelFileError --------------
def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj and len(obj) < 64:
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, 2**31, 10**12, float("nan"), float("inf"), -0.0]),
    st.floats(allow_nan=True), st.text(max_size=20), st.lists(st.integers(), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(lambda n: torch.zeros(n), st.integers(0, 5)),
    st.builds(lambda n: torch.full((n,), -7, dtype=torch.int64), st.integers(1, 5)),
)


@contextlib.contextmanager
def _memory_limit(extra_bytes: int = 2 * 2**30):
    """At most ``extra_bytes`` more address space than now: an allocation a file asks for
    that passes the checks raises MemoryError here instead of exhausting the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    limit = size + extra_bytes if hard == resource.RLIM_INFINITY else min(size + extra_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _fuzz(saved, tmp_path_factory, data):
    folder, a, _ = saved
    base = _payload(folder)
    paths = list(_leaves(base))
    payload = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = payload
        for k in path[:-1]:
            node = node[k]
        if data.draw(st.booleans(), label="delete") and isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            node[path[-1]] = data.draw(_VALUES)
    out = tmp_path_factory.mktemp("fuzz")
    _write_raw(out / "model.pt", payload)
    if data.draw(st.booleans(), label="truncate"):  # cut the payload, checksum recomputed
        raw = (out / "model.pt").read_bytes()
        body = raw[raw.index(b"\n") + 1:]
        cut = body[: data.draw(st.integers(0, len(body) - 1), label="keep bytes")]
        (out / "model.pt").write_bytes(
            MAGIC + hashlib.sha256(cut).hexdigest().encode() + b"\n" + cut)
    try:
        with _memory_limit():
            model = asc.SCARE.load(out, a)
    except ModelFileError:
        return
    except ValueError as err:  # refusals that are about the AnnData given, not the file
        assert "genes differ" in str(err) or "cannot be set up as the model" in str(err), err
        return
    # accepted: it must be a working model
    latent = model.get_latent_representation()
    assert latent.shape[0] == a.n_obs and np.isfinite(latent).all()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_model_files_load_or_are_refused_cleanly(saved, tmp_path_factory, data):
    _fuzz(saved, tmp_path_factory, data)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_model_files_load_or_are_refused_cleanly_long(saved, tmp_path_factory, data):
    _fuzz(saved, tmp_path_factory, data)


def test_fuzz_helpers_reach_every_field(saved):
    paths = list(_leaves(_payload(saved[0])))
    tops = {p[0] for p in paths}
    assert {"model_state_dict", "attr_dict", "extra", "var_names", "format_version"} <= tops
    assert any("init_params_" in p for p in paths) and any("settings" in p for p in paths)
