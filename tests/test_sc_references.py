"""``references="label"``: SCARE's EG references drawn within each cell's label."""

import logging

import numpy as np
import pytest
import scvi
import torch

import attreg.attr.expected_gradients as eg_module
import attreg_sc as asc

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
QUIET = {"enable_progress_bar": False, "early_stopping": False}


@pytest.fixture(scope="module")
def adata():
    a = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=1)
    asc.SCARE.setup_anndata(a, batch_key="batch", labels_key="cell_type")
    return a


def _spy(monkeypatch):
    calls = []
    real = eg_module.group_reference_index

    def spy(groups, n_samples, generator, device):
        idx = real(groups, n_samples, generator, device)
        calls.append((groups.clone(), idx.clone()))
        return idx

    monkeypatch.setattr(eg_module, "group_reference_index", spy)
    return calls


def test_training_draws_each_cells_references_within_its_label(adata, monkeypatch):
    calls = _spy(monkeypatch)
    scvi.settings.seed = 0
    model = asc.SCARE(adata, gt="is_gt", n_latent=4, references="label")
    model.train(max_epochs=2, batch_size=64, **QUIET)
    assert model.prior_settings.references == "label"
    assert calls, "the prior never drew references within labels"
    n_labels = adata.obs["cell_type"].nunique()
    for groups, idx in calls:
        assert groups.dtype == torch.long and groups.ndim == 1
        assert 0 <= int(groups.min()) and int(groups.max()) < n_labels
        assert len(groups.unique()) >= 2  # the minibatch's labels, not a constant
        shared = torch.bincount(groups)[groups] >= 2
        assert bool((groups[idx][:, shared] == groups[shared]).all())
    assert np.isfinite(model.history["attribution_loss_train"].to_numpy(float)).all()


def test_batch_references_never_group(adata, monkeypatch):
    calls = _spy(monkeypatch)
    scvi.settings.seed = 0
    model = asc.SCARE(adata, gt="is_gt", n_latent=4)
    model.train(max_epochs=1, batch_size=64, **QUIET)
    assert model.prior_settings.references == "batch" and calls == []


def test_label_references_change_the_prior_but_not_the_plain_model(adata):
    """Same seed: the prior's loss differs between the two kinds of references; without
    a prior (w_attr 0) the setting has nothing to act on and the runs are identical."""
    def run(**kw):
        scvi.settings.seed = 0
        m = asc.SCARE(adata, gt="is_gt", n_latent=4, **kw)
        m.train(max_epochs=2, batch_size=64, **QUIET)
        return m

    a, b = run(references="batch"), run(references="label")
    la, lb = (m.history["attribution_loss_train"].to_numpy(float) for m in (a, b))
    assert not np.allclose(la, lb)
    z0, z1 = (run(w_attr=0.0, references=r).get_latent_representation()
              for r in ("batch", "label"))
    np.testing.assert_array_equal(z0, z1)


def test_saved_models_keep_the_setting(adata, tmp_path):
    scvi.settings.seed = 0
    model = asc.SCARE(adata, gt="is_gt", n_latent=4, references="label")
    model.train(max_epochs=1, batch_size=64, **QUIET)
    model.save(tmp_path / "m")
    loaded = asc.SCARE.load(tmp_path / "m", adata=adata)
    assert loaded.prior_settings.references == "label"


def test_bad_references_are_refused_before_training():
    a = asc.datasets.synthetic(n_cells=100, n_genes=30, n_gt_genes=5, seed=2)
    asc.SCARE.setup_anndata(a)  # no labels_key
    with pytest.raises(ValueError, match="labels_key"):
        asc.SCARE(a, gt="is_gt", references="label")
    with pytest.raises(ValueError, match="attribution='eg'"):
        asc.SCARE(a, gt="is_gt", references="label", attribution="ig")
    with pytest.raises(ValueError, match="unknown references"):
        asc.SCARE(a, gt="is_gt", references="type")
    one = a.copy()
    one.obs["one"] = "x"
    asc.SCARE.setup_anndata(one, labels_key="one")
    with pytest.raises(ValueError, match=r"1 registered label"):
        asc.SCARE(one, gt="is_gt", references="label")


def test_post_hoc_attributions_within_labels(adata, monkeypatch):
    """get_attributions / dimension_shares with references="label" draw each cell's
    references among the cells of its label in the same chunk, in the cells' order."""
    from attreg_sc.metrics import dimension_shares

    scvi.settings.seed = 0
    model = asc.SCARE(adata, gt="is_gt", n_latent=3)
    model.train(max_epochs=1, batch_size=64, **QUIET)
    calls = _spy(monkeypatch)
    attr = model.get_attributions(reducer=0, references="label", batch_size=100, n_samples=2)
    assert attr.shape == (adata.n_obs, adata.n_vars) and np.isfinite(attr).all()
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    got = np.concatenate([g.numpy() for g, _ in calls])
    np.testing.assert_array_equal(got, codes)  # one call per chunk of 100 cells, in order
    plain = model.get_attributions(reducer=0, batch_size=100, n_samples=2)
    assert not np.allclose(attr, plain)
    calls.clear()
    shares = dimension_shares(model, adata.var["is_gt"].to_numpy(), n_samples=2,
                              references="label")
    assert len(calls) > 0 and ((shares["gt_share"] >= 0) & (shares["gt_share"] <= 1)).all()
    with pytest.raises(ValueError, match="method='eg'"):
        model.get_attributions(method="ig", references="label")
    with pytest.raises(ValueError, match="unknown references"):
        model.get_attributions(references="cell")


def test_scanvi_unlabelled_cells_belong_to_no_group(monkeypatch):
    """``with_prior(SCANVI)``: the unlabelled category is not a cell type. Its cells draw
    their references among all the minibatch's cells (group -1), and the labelled cells
    never draw an unlabelled one; post hoc too. With one labelled category left, refused."""
    from attreg_sc.mixin import with_prior

    a = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=1)
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    labels[::3] = "unknown"
    a.obs["label"] = labels
    model_cls = with_prior(scvi.model.SCANVI)
    model_cls.setup_anndata(a, batch_key="batch", labels_key="label",
                            unlabeled_category="unknown")
    calls = _spy(monkeypatch)
    scvi.settings.seed = 0
    model = model_cls(a, n_latent=4)
    model.set_prior(a.var["is_gt"].to_numpy(), references="label")
    unknown = model._unlabeled_code()
    assert unknown is not None
    model.train(max_epochs=1, batch_size=64, **QUIET)
    assert calls, "the prior never drew references within labels"
    for groups, idx in calls:
        assert unknown not in groups.tolist() and bool((groups == -1).any())
        labelled = groups >= 0
        shared = labelled & (torch.bincount(groups.clamp(min=0))[groups.clamp(min=0)] >= 2)
        assert bool((groups[idx][:, shared] == groups[shared]).all())
        assert bool((groups[idx][:, shared] >= 0).all())
    calls.clear()
    model.get_attributions(indices=np.arange(64), references="label", batch_size=64)
    (groups, _), = calls
    codes = model.adata_manager.get_from_registry(scvi.REGISTRY_KEYS.LABELS_KEY)[:64].ravel()
    assert groups.tolist() == np.where(codes == unknown, -1, codes).tolist()

    one = a[a.obs["label"].isin(["unknown", labels[1]])].copy()
    model_cls.setup_anndata(one, batch_key="batch", labels_key="label",
                            unlabeled_category="unknown")
    lone = model_cls(one, n_latent=4)
    with pytest.raises(ValueError, match="1 registered label.*besides an unlabelled"):
        lone.set_prior(one.var["is_gt"].to_numpy(), references="label")


def test_labels_alone_in_most_minibatches_are_named_before_training(caplog):
    """A label with too few cells for a partner in most minibatches is named, with its
    count, before training; common labels, or a batch large enough, are not."""
    a = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=1)
    labels = a.obs["cell_type"].astype(str).to_numpy().copy()
    labels[:2] = "rare"
    a.obs["label"] = labels
    asc.SCARE.setup_anndata(a, batch_key="batch", labels_key="label")
    model = asc.SCARE(a, gt="is_gt", n_latent=4, references="label")
    with caplog.at_level(logging.WARNING, logger="attreg_sc"):
        model.train(max_epochs=1, batch_size=32, **QUIET)
    lone = [r.getMessage() for r in caplog.records if "alone in their label" in r.getMessage()]
    assert len(lone) == 1 and "rare (2 cells)" in lone[0] and "32 cells" in lone[0]
    assert "0.7% of the labelled cells" in lone[0]  # 2 of 300
    for common in sorted(set(labels) - {"rare"}):
        assert f"{common} (" not in lone[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attreg_sc"):
        model.train(max_epochs=1, batch_size=300, train_size=1.0, **QUIET)  # one minibatch
    assert not [r for r in caplog.records if "alone in their label" in r.getMessage()]
