"""Checkpoints: a killed training resumes from its Lightning checkpoint
(``train(ckpt_path=...)``) to the same final weights and history (CPU, same seeds); a
resume with other data, GT or settings is refused naming each difference; a damaged or
altered checkpoint is refused before it is used."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scvi
import torch

import attreg_sc as asc
from attreg_sc._io import from_safe, read_safe_payload, save_versioned

QUIET = {"enable_progress_bar": False}

SETUP = textwrap.dedent(
    """
    import logging, torch, scvi, attreg_sc as asc
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    adata = asc.datasets.synthetic(n_cells=400, n_genes=80, n_gt_genes=10, seed=3)
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    def make():
        scvi.settings.seed = 11
        return asc.SCARE(adata, gt="is_gt", n_latent=3, seed=5)
    KW = dict(max_epochs=8, batch_size=64, threads=1, early_stopping_patience=50,
              plan_kwargs={"n_epochs_kl_warmup": 3}, enable_progress_bar=False)
    """
)


def _checkpoint_epoch(path) -> int:
    try:
        return read_safe_payload(path, "checkpoint")["epoch"]
    except (ValueError, FileNotFoundError):  # not there, or being replaced
        return -1


def test_killed_training_resumes_to_the_same_weights_and_history(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    script = SETUP + textwrap.dedent(
        f"""
        import time
        from lightning.pytorch.callbacks import Callback
        class Slow(Callback):  # slow the run down so that it can be killed mid-way
            def on_train_batch_end(self, *args):
                time.sleep(0.02)
        m = make()
        m.train(checkpoint_path={str(ckpt)!r}, callbacks=[Slow()], **KW)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _checkpoint_epoch(ckpt) < 2:
            if proc.poll() is not None:
                pytest.fail("the training ended before it could be killed")
            time.sleep(0.05)
        else:
            if _checkpoint_epoch(ckpt) < 2:
                pytest.fail("no checkpoint written")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = _checkpoint_epoch(ckpt)
    assert 2 <= killed_at < 7  # killed before the end

    ns: dict = {}
    exec(SETUP, ns)
    resumed = ns["make"]()
    resumed.train(checkpoint_path=ckpt, ckpt_path=ckpt, **ns["KW"])
    straight = ns["make"]()
    straight.train(**ns["KW"])
    for key, value in straight.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    assert sorted(resumed.history) == sorted(straight.history)
    for key, frame in straight.history.items():
        np.testing.assert_array_equal(
            resumed.history[key].to_numpy(float).ravel(), frame.to_numpy(float).ravel(), key
        )


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run stopped after 2 epochs with its checkpoint."""
    path = tmp_path_factory.mktemp("ck") / "ckpt.pt"
    ns: dict = {}
    exec(SETUP, ns)
    m = ns["make"]()
    m.train(**{**ns["KW"], "max_epochs": 2}, checkpoint_path=path)
    return ns, path


def _other_data(ns):
    a = asc.datasets.synthetic(n_cells=400, n_genes=80, n_gt_genes=10, seed=3)
    a.X.data[0] += 1  # one count more
    asc.SCARE.setup_anndata(a, batch_key="batch")
    return a


@pytest.mark.parametrize(
    "change, match",
    [
        ("w_attr", "prior.w_attr: checkpoint '30.0', now '5.0'"),
        ("gt", "prior.ground_truths"),
        ("n_latent", "model.n_latent: checkpoint '3', now '4'"),
        ("batch_size", "train.batch_size: checkpoint '64', now '32'"),
        ("data", "data.counts_per_cell"),
        ("seed", "scvi.seed"),
    ],
)
def test_resume_with_other_settings_is_refused_naming_them(interrupted, change, match):
    ns, path = interrupted
    kw = dict(ns["KW"])
    scvi.settings.seed = 11
    adata = ns["adata"]
    model_kw = dict(gt="is_gt", n_latent=3, seed=5)
    if change == "w_attr":
        model_kw["w_attr"] = 5.0
    elif change == "gt":
        model_kw["gt"] = list(adata.var_names[:4])
    elif change == "n_latent":
        model_kw["n_latent"] = 4
    elif change == "batch_size":
        kw["batch_size"] = 32
    elif change == "data":
        adata = _other_data(ns)
    m = asc.SCARE(adata, **model_kw)
    if change == "seed":
        scvi.settings.seed = 12
    with pytest.raises(ValueError, match=f"cannot resume.*{match}"):
        m.train(ckpt_path=path, **kw)
    assert not m.is_trained


def test_a_longer_run_may_resume(interrupted):
    ns, path = interrupted
    m = ns["make"]()
    m.train(ckpt_path=path, **{**ns["KW"], "max_epochs": 3})
    assert len(m.history["train_loss"]) == 3


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("epoch", -100, "epoch is -100"),
        ("epoch", 5.5, "epoch is 5.5"),
        ("global_step", -1, "global_step is -1"),
        ("rng", "garbage", "random states is malformed"),
        ("torch_rng", torch.zeros(3, dtype=torch.uint8), "torch random state is malformed"),
        ("section", None, "no attreg_sc section"),
        ("epoch", 8, "leaves nothing to train"),
    ],
)
def test_an_altered_checkpoint_is_refused_before_use(interrupted, tmp_path, field, value, match):
    ns, path = interrupted
    checkpoint = from_safe(read_safe_payload(path, "checkpoint"))
    if field in ("epoch", "global_step"):
        checkpoint[field] = value
    elif field == "rng":
        checkpoint["attreg_sc"]["rng"] = value
    elif field == "torch_rng":
        checkpoint["attreg_sc"]["rng"]["torch"] = value
    elif field == "section":
        checkpoint.pop("attreg_sc")
    altered = tmp_path / "altered.pt"
    save_versioned(altered, checkpoint)  # a valid checksum: the fields are what is checked
    m = ns["make"]()
    with pytest.raises(ValueError, match=match):
        m.train(ckpt_path=altered, **ns["KW"])


def test_checkpoints_are_written_atomically_in_the_safe_format(interrupted, tmp_path):
    ns, path = interrupted
    raw = path.read_bytes()
    assert raw.startswith(b"attreg-file 1 sha256:")
    import io

    torch.load(io.BytesIO(raw[raw.index(b"\n") + 1 :]), weights_only=True)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(IsADirectoryError, match="give the checkpoint file"):
        ns["make"]().train(checkpoint_path=tmp_path, **ns["KW"])
    with pytest.raises(ValueError, match="only local checkpoint files"):
        ns["make"]().train(ckpt_path="https://example.org/ckpt.pt", **ns["KW"])


def test_a_checkpoint_from_before_a_new_setting_resumes_at_its_default(interrupted, tmp_path):
    """A checkpoint written before a prior setting existed (its fingerprint lacks
    ``prior.references``) ran at that setting's default: it resumes with the default and is
    refused, naming the setting, with another value."""
    ns, path = interrupted
    checkpoint = from_safe(read_safe_payload(path, "checkpoint"))
    fingerprint = checkpoint["callbacks"]["attreg_sc.ResumeGuard"]["fingerprint"]
    assert fingerprint.pop("prior.references") == repr("batch")
    older = tmp_path / "older.pt"
    save_versioned(older, checkpoint)
    m = ns["make"]()
    m.train(ckpt_path=older, **{**ns["KW"], "max_epochs": 3})
    assert len(m.history["train_loss"]) == 3
    adata = ns["adata"].copy()
    adata.obs["group"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    asc.SCARE.setup_anndata(adata, batch_key="batch", labels_key="group")
    other = asc.SCARE(adata, gt="is_gt", n_latent=3, seed=5, references="label")
    with pytest.raises(ValueError, match=r"cannot resume.*prior.references: checkpoint "
                                         r"\"'batch'\", now \"'label'\""):
        other.train(ckpt_path=older, **ns["KW"])
