"""Checkpoints: a killed training resumes to the same final weights (CPU, same seed)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import attreg_sc as asc
from attreg_sc.train.trainer import load_checkpoint

SETUP = textwrap.dedent(
    """
    import torch, attreg_sc as asc
    torch.set_num_threads(2)
    adata = asc.datasets.synthetic(n_cells=400, n_genes=80, n_gt_genes=10, seed=3)
    def make():
        return asc.SCARE(adata, batch_key="batch", gt=adata.var["is_gt"].to_numpy(),
                         n_latent=3, seed=11)
    KW = dict(max_epochs=8, batch_size=64, kl_warmup_epochs=3, patience=50,
              progress_bar=False)
    """
)


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    script = SETUP + textwrap.dedent(
        f"""
        import time
        m = make()
        orig = m.module.loss
        def slow(*a, **k):  # slow the run down so that it can be killed mid-way
            time.sleep(0.01)
            return orig(*a, **k)
        m.module.loss = slow
        m.train(checkpoint_path={str(ckpt)!r}, **KW)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if ckpt.exists() and load_checkpoint(ckpt)["epoch"] >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint written")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert 2 <= killed_at < 7  # killed before the end

    ns: dict = {}
    exec(SETUP, ns)
    torch.set_num_threads(2)
    resumed = ns["make"]()
    resumed.train(checkpoint_path=ckpt, resume=True, **ns["KW"])
    full = ns["make"]()
    full.train(**ns["KW"])
    for k, v in full.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[k], v), k
    assert resumed.history["loss"] == pytest.approx(full.history["loss"])
    assert len(resumed.history["loss"]) == 8


def test_resume_errors(tmp_path):
    a = asc.datasets.synthetic(n_cells=100, n_genes=40, n_gt_genes=5)
    m = asc.SCARE(a, n_latent=2)
    with pytest.raises(ValueError, match="needs checkpoint_path"):
        m.train(max_epochs=1, resume=True, progress_bar=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        m.train(max_epochs=1, resume=True, checkpoint_path=tmp_path / "x.pt", progress_bar=False)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint written by this attreg_sc"):
        m.train(max_epochs=1, resume=True, checkpoint_path=tmp_path / "bad.pt", progress_bar=False)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 2-epoch run with a checkpoint, and the settings it used."""
    ckpt = tmp_path_factory.mktemp("resume") / "ckpt.pt"
    adata = asc.datasets.synthetic(n_cells=120, n_genes=40, n_gt_genes=5, seed=1)
    gt = adata.var["is_gt"].to_numpy()
    kw = dict(batch_size=32, kl_warmup_epochs=1, progress_bar=False, checkpoint_path=ckpt)
    asc.SCARE(adata, gt=gt, n_latent=2, w_attr=10.0).train(max_epochs=2, **kw)
    return adata, gt, kw


def _other_counts(adata):
    other = adata.copy()
    other.X = other.X.copy()
    other.X[0, 0] += 1
    return other


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda a, g, kw: (a, g, {"w_attr": 20.0}, kw), "model.w_attr"),
        (lambda a, g, kw: (a, g, {}, {**kw, "batch_size": 64}), "batch_size"),
        (lambda a, g, kw: (a, g, {}, {**kw, "lr": 1e-2}), "lr"),
        (lambda a, g, kw: (a, ~g, {}, kw), "ground_truths"),
        (lambda a, g, kw: (_other_counts(a), g, {}, kw), "data.counts_per_cell"),
        (lambda a, g, kw: (a[:, ::-1].copy(), g[::-1], {}, kw), "data.genes"),
    ],
    ids=["w_attr", "batch_size", "lr", "gt", "counts", "genes"],
)
def test_incompatible_resume_is_refused_naming_the_setting(interrupted, change, named):
    adata, gt, kw = interrupted
    adata, gt, model_kw, train_kw = change(adata, gt, kw)
    m = asc.SCARE(adata, gt=gt, n_latent=2, **{"w_attr": 10.0, **model_kw})
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    with pytest.raises(ValueError, match=rf"cannot resume .*{named}: checkpoint"):
        m.train(max_epochs=4, resume=True, **train_kw)
    assert all(torch.equal(v, m.module.state_dict()[k]) for k, v in before.items())


def test_a_longer_resume_is_accepted(interrupted):
    adata, gt, kw = interrupted
    m = asc.SCARE(adata, gt=gt, n_latent=2, w_attr=10.0)
    m.train(max_epochs=3, resume=True, **kw)
    assert len(m.history["loss"]) == 3
