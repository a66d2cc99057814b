"""Several processes through Lightning's DDP, as scvi-tools exposes it
(``train(accelerator="cpu", devices=2, strategy="ddp")``), run as a script
(``examples/train_ddp.py``): two gloo processes with 128 cells each per step train to the
result of one process with 256 cells per step, within tolerance (the two runs draw their
minibatches and noise differently, so they are not bitwise equal)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attreg_sc as asc

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    a = asc.datasets.synthetic(n_cells=600, n_genes=60, n_gt_genes=10, seed=1)
    a.write_h5ad(folder / "data.h5ad")
    (folder / "gt.txt").write_text("\n".join(a.var_names[a.var["is_gt"].to_numpy()]))
    return folder, a


def _run(folder: Path, devices: int, batch_size: int, out: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable, str(SCRIPT), str(folder / "data.h5ad"), "--batch-key", "batch",
        "--genes", str(folder / "gt.txt"), "--accelerator", "cpu", "--devices", str(devices),
        "--threads", "1", "--max-epochs", "40", "--batch-size", str(batch_size),
        "--n-latent", "4", "--out", str(folder / out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((folder / out / "summary.json").read_text())


def test_two_gloo_processes_match_one_process(data):
    folder, adata = data
    two = _run(folder, devices=2, batch_size=128, out="two")
    one = _run(folder, devices=1, batch_size=256, out="one")
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["epochs"] == one["epochs"] == 40
    # the same objective reached (measured: 1-4% apart)
    assert two["reconstruction_loss_train"] == pytest.approx(one["reconstruction_loss_train"],
                                                             rel=0.1)
    shares = {}
    for name in ("one", "two"):
        a = adata.copy()
        m = asc.SCARE.load(folder / name, a)
        attr = np.abs(m.get_attributions(n_samples=4))
        shares[name] = float(attr[:, a.var["is_gt"].to_numpy()].sum() / attr.sum())
    assert shares["two"] == pytest.approx(shares["one"], abs=0.1), shares
    assert shares["two"] > 0.3  # the prior acted in both (GT = 1/6 of the genes)
