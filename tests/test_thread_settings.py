"""Library code leaves torch's thread count as the user set it (scanpy's kNN raised it
from 1 to the number of cores, and later training in the process ran differently)."""

import numpy as np
import pytest
import torch

import attreg_sc as asc
from attreg_sc.report import evaluate, write_report


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained():
    adata = asc.datasets.synthetic(n_cells=240, n_genes=40, n_gt_genes=8, seed=0)
    gt = adata.var["is_gt"].to_numpy()
    model = asc.SCARE(adata, gt=gt, n_latent=3, seed=0)
    model.train(max_epochs=2, progress_bar=False)
    return adata, gt, model


ENTRY_POINTS = {
    "SCARE.train": lambda a, gt, m: asc.SCARE(a, gt=gt, n_latent=2).train(
        max_epochs=1, progress_bar=False
    ),
    "get_latent_representation": lambda a, gt, m: m.get_latent_representation(),
    "get_attributions": lambda a, gt, m: m.get_attributions(),
    "fssf": lambda a, gt, m: asc.metrics.fssf(m, gt, "cell_type", n_random=2, min_cells=20),
    "leiden_subclusters": lambda a, gt, m: asc.metrics.leiden_subclusters(
        m.get_latent_representation()
    ),
    "markers": lambda a, gt, m: asc.gt.mutual_information_markers(a, "gt_state", None, 5),
    "synthetic": lambda a, gt, m: asc.datasets.synthetic(n_cells=50, n_genes=20, n_gt_genes=4),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_public_entry_points_keep_torch_threads(trained, one_thread, name):
    ENTRY_POINTS[name](*trained)
    assert torch.get_num_threads() == 1, name


def test_evaluation_and_report_keep_torch_threads(trained, one_thread, tmp_path):
    adata, gt, model = trained
    ev = evaluate({"m": model}, gt, "cell_type", adata, n_random=2)
    assert torch.get_num_threads() == 1
    write_report(ev, tmp_path / "report")  # UMAPs per cell type: scanpy's kNN again
    assert torch.get_num_threads() == 1
    assert np.isfinite(ev.summary()["fssf_gt"]).all()
