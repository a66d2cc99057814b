"""Saved models and checkpoints cannot run code when loaded, and damage is detected.

A crafted pickle whose unpickling runs ``os.system``-like code is handed to every place
that reads a file a user gives us (``SCARE.load``, ``train(resume=True)``, the CLI): each
refuses it with a clear error and the code never runs.
"""

import hashlib
import io
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import attreg_sc as asc
from attreg_sc import cli
from attreg_sc._io import MAGIC, from_safe, load_versioned, save_versioned, to_safe
from attreg_sc.files import MODEL_FORMAT_VERSION as FORMAT_VERSION

MARKER = "attreg_pwned_marker"


class _Exploit:
    """Unpickling this calls ``open(path, "w")`` (a stand-in for ``os.system``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_bytes(marker_path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "x": _Exploit(marker_path)}, buffer)
    return buffer.getvalue()


def _with_valid_header(data: bytes) -> bytes:
    return MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data


@pytest.fixture(scope="module")
def adata():
    a = asc.datasets.synthetic(n_cells=120, n_genes=30, n_gt_genes=5, seed=0)
    asc.SCARE.setup_anndata(a, batch_key="batch")
    return a


QUIET = {"enable_progress_bar": False}


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain-pickle", "checksummed-pickle"])
def test_malicious_model_file_is_refused_and_runs_nothing(adata, tmp_path, wrapped):
    marker = tmp_path / MARKER
    data = _malicious_bytes(marker)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.pt").write_bytes(_with_valid_header(data) if wrapped else data)
    match = "safe load refuses" if wrapped else "no attreg header"
    with pytest.raises(ValueError, match=match):
        asc.SCARE.load(folder, adata)
    m = asc.SCARE(adata, n_latent=2)
    with pytest.raises(ValueError, match=match):
        m.train(max_epochs=1, ckpt_path=folder / "model.pt", **QUIET)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(adata.var_names[:5]))
    code = cli.main(
        ["fssf", str(folder), str(path), "--genes", str(genes), "--cell-type-key", "cell_type",
         "--out", str(tmp_path / "f.csv")]
    )  # fmt: skip
    assert code == 2
    assert not marker.exists()  # the exploit never ran
    # the same bytes do run code through an unsafe load: the test's exploit is real
    torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


def test_flipped_bytes_are_detected_with_the_file_named(adata, tmp_path):
    m = asc.SCARE(adata, n_latent=2)
    m.save(tmp_path / "run")
    path = tmp_path / "run" / "model.pt"
    raw = bytearray(path.read_bytes())
    for offset in (len(raw) // 2, len(raw) // 2 + 64):  # inside the tensor data
        raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"{path}.*checksum"):
        asc.SCARE.load(tmp_path / "run", adata)


def test_non_finite_weights_are_refused(adata, tmp_path):
    m = asc.SCARE(adata, n_latent=2)
    m.save(tmp_path / "run")
    path = tmp_path / "run" / "model.pt"
    payload = load_versioned(path, FORMAT_VERSION, "model")
    key = next(k for k, v in payload["model_state_dict"].items() if v.is_floating_point())
    payload["model_state_dict"][key][...] = float("nan")
    save_versioned(path, payload)
    with pytest.raises(ValueError, match="non-finite weights"):
        asc.SCARE.load(tmp_path / "run", adata)


def test_saved_files_load_with_weights_only(adata, tmp_path):
    gt = adata.var["is_gt"].to_numpy()
    m = asc.SCARE(adata, gt=gt, n_latent=2)
    m.train(max_epochs=1, checkpoint_path=tmp_path / "ckpt.pt", **QUIET)
    m.save(tmp_path / "run")
    for path in (tmp_path / "run" / "model.pt", tmp_path / "ckpt.pt"):
        raw = path.read_bytes()
        body = raw[raw.index(b"\n") + 1 :]
        torch.load(io.BytesIO(body), weights_only=True)  # raises if anything is unsafe
    assert sorted(os.listdir(tmp_path / "run")) == ["model.pt"]


@settings(max_examples=30, deadline=None)
@given(
    arr=hnp.arrays(
        st.sampled_from([np.bool_, np.int64, np.int32, np.float32, np.float64, np.uint8]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    ),
    words=st.lists(st.text(max_size=5), max_size=4),
)
def test_safe_encoding_round_trips_numpy_payloads(arr, words):
    payload = {"a": arr, "s": np.array(words, dtype=object), "n": [np.int64(3), (1.5, "x")]}
    back = from_safe(to_safe(payload))
    np.testing.assert_array_equal(back["a"], arr)
    assert back["a"].dtype == arr.dtype
    assert back["s"].tolist() == words
    assert back["n"] == [3, (1.5, "x")]
