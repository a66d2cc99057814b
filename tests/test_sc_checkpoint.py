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
