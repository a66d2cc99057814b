"""scverse interop: AnnData outputs that scanpy uses directly; post-hoc attributions."""

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import attreg_sc as asc
from attreg_sc.metrics import attribution_summary


@pytest.fixture(scope="module")
def fitted():
    adata = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=2)
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    m = asc.SCARE(adata, gt=adata.var["is_gt"].to_numpy(), n_latent=4)
    m.train(max_epochs=3, enable_progress_bar=False)
    return adata, m


def test_scanpy_runs_on_exported_latent(fitted, tmp_path):
    adata, m = fitted
    out = adata.copy()
    out.obsm["X_scare"] = m.get_latent_representation(out)  # as scvi-tools' tutorials do
    assert out.obsm["X_scare"].shape == (300, 4)
    sc.pp.neighbors(out, use_rep="X_scare", n_neighbors=10)
    sc.tl.umap(out)
    sc.tl.leiden(out, flavor="igraph", n_iterations=2)
    assert out.obsm["X_umap"].shape == (300, 2) and out.obs["leiden"].nunique() > 1
    out.write_h5ad(tmp_path / "o.h5ad")  # scvi-tools' setup entries are h5ad-serialisable
    back = ad.read_h5ad(tmp_path / "o.h5ad")
    assert np.array_equal(back.obsm["X_scare"], out.obsm["X_scare"])


def test_post_hoc_attributions_stored_and_summarised(fitted):
    adata, m = fitted
    a = adata.copy()
    attr = m.get_attributions(a, method="eg", n_samples=2, key_added="scare_attributions")
    assert np.array_equal(a.layers["scare_attributions"], attr)
    summary = attribution_summary(attr, a.var_names, a.obs["cell_type"])
    assert summary.shape == (3, 60) and (summary.to_numpy() >= 0).all()
    ig = m.get_attributions(a, method="ig", n_steps=600, internal_batch_size=19200)
    # IG completeness on the encoder target: rows sum to F(x) - F(0) (ReLU kinks: many steps)
    import torch

    enc = m.module.z_encoder.eval()
    with torch.no_grad():
        x = torch.log1p(torch.as_tensor(adata.X.toarray(), dtype=torch.float32))
        b = torch.from_numpy(m._data_for(adata).batch_codes[:, None])
        f_x = enc(x, b)[0].loc.sum(1)
        f_0 = enc(torch.zeros_like(x), b)[0].loc.sum(1)
    assert np.abs(ig.sum(1) - (f_x - f_0).numpy()).max() < 0.02
