"""SCARE with a target share (``target_share=``): the settings' checks, the multipliers in
the history, validation leaving them alone, and exact resume carrying them."""

import logging

import numpy as np
import pytest
import scvi
import torch

import attreg_sc as asc
from attreg_sc._io import from_safe, read_safe_payload, save_versioned
from attreg_sc.settings import PriorSettings

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
KW = dict(batch_size=128, threads=1, early_stopping=False, enable_progress_bar=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_share=1.0), "target_share must be None or a number in \\(0, 1\\)"),
        (dict(target_share=True), "target_share must be None or a number"),
        (dict(target_share=0.8, loss="mse", reparameterizer="abs_minmax"),
         "target_share needs reparameterizer='share' and loss='outside_share'"),
        (dict(target_share=0.8, w_attr=0.0), "w_attr is the multiplier's starting value"),
    ],
)
def test_bad_target_share_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PriorSettings(**kwargs)
    adata = asc.datasets.synthetic(n_cells=200, n_genes=50, n_gt_genes=5, seed=0)
    asc.SCARE.setup_anndata(adata)
    with pytest.raises(ValueError, match=match):  # the model's door: before any training
        asc.SCARE(adata, gt="is_gt", **kwargs)


@pytest.fixture(scope="module")
def adata():
    a = asc.datasets.synthetic(n_cells=1200, n_genes=200, n_gt_genes=20, seed=1)
    asc.SCARE.setup_anndata(a, batch_key="batch")
    return a


def _model(adata, **kw):
    scvi.settings.seed = 0
    return asc.SCARE(adata, gt="is_gt", n_latent=4, seed=2, **kw)


def test_the_multiplier_moves_toward_the_target_and_is_in_the_history(adata):
    m = _model(adata, target_share=0.6, w_attr=5.0)
    m.train(max_epochs=25, **KW)
    weight = m.history["prior_weight_gt0"].to_numpy(float).ravel()
    share = m.history["prior_share_gt0"].to_numpy(float).ravel()
    assert len(weight) == len(share) == 25
    # 20 of 200 genes: the untrained share is near 0.1, so the weight first rises
    assert share[0] < 0.45 and weight[0] > 5.0
    assert abs(share[-1] - 0.6) < 0.1, share
    # training steps only: validation calls leave the multipliers alone
    (constraint,) = m.trainer.lightning_module.share_constraints().values()
    assert constraint.state()["steps"] == 25 * m.trainer.num_training_batches
    assert constraint.multiplier == pytest.approx(weight[-1])


def test_a_fixed_weight_has_no_multipliers(adata):
    m = _model(adata)
    m.train(max_epochs=1, **KW)
    assert not any(k.startswith("prior_weight") for k in m.history)


def test_resume_carries_the_multipliers(adata, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    kw = dict(KW, plan_kwargs={"n_epochs_kl_warmup": 2})
    first = _model(adata, target_share=0.6, w_attr=5.0)
    first.train(max_epochs=2, checkpoint_path=ckpt, **kw)
    saved = from_safe(read_safe_payload(ckpt, "checkpoint"))["attreg_sc"]["constraints"]
    assert set(saved) == {"gt0"} and saved["gt0"]["steps"] > 0
    resumed = _model(adata, target_share=0.6, w_attr=5.0)
    resumed.train(max_epochs=4, ckpt_path=ckpt, **kw)
    straight = _model(adata, target_share=0.6, w_attr=5.0)
    straight.train(max_epochs=4, **kw)
    for key, value in straight.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key
    for key in ("prior_weight_gt0", "prior_share_gt0"):
        np.testing.assert_array_equal(
            resumed.history[key].to_numpy(float).ravel(),
            straight.history[key].to_numpy(float).ravel(),
        )
    # a resume that would change the target is refused, naming it
    other = _model(adata, target_share=0.7, w_attr=5.0)
    with pytest.raises(ValueError, match="cannot resume.*target_share"):
        other.train(max_epochs=4, ckpt_path=ckpt, **kw)
    # altered multipliers are refused as the file is read
    checkpoint = from_safe(read_safe_payload(ckpt, "checkpoint"))
    checkpoint["attreg_sc"]["constraints"]["gt0"]["log_multiplier"] = float("inf")
    altered = tmp_path / "altered.pt"
    save_versioned(altered, checkpoint)
    with pytest.raises(ValueError, match="target-share multipliers are malformed"):
        _model(adata, target_share=0.6, w_attr=5.0).train(max_epochs=4, ckpt_path=altered, **kw)


def test_prior_summary_reports_each_gt_and_dimension(adata):
    genes = adata.var_names.to_numpy()
    gt = adata.var["is_gt"].to_numpy()
    other = np.zeros_like(gt)
    other[~gt] = True
    other[np.flatnonzero(~gt)[15:]] = False  # 15 other genes: a second, smaller GT
    scvi.settings.seed = 0
    m = asc.SCARE(adata, n_latent=4, seed=2, gt={"planted": genes[gt], "other": genes[other]},
                  target_share=0.6, w_attr=5.0, latent_blocks={"planted": 2, "other": 2})
    with pytest.raises(RuntimeError, match="train first"):
        m.prior_summary()
    m.train(max_epochs=8, **KW)
    s = m.prior_summary(n_samples=2)
    assert s.index.tolist() == [(g, d) for g in ("planted", "other") for d in range(4)]
    assert s["in_block"].tolist() == [True, True, False, False, False, False, True, True]
    for i, name in enumerate(("planted", "other")):
        last = float(m.history[f"prior_weight_gt{i}"].iloc[-1, 0])
        assert (s.loc[name, "weight"] == last).all()
        assert (s.loc[name, "genes"] == int(m.gt_diagnostics_.loc[name, "genes"])).all()
    assert s.loc["other", "genes"].iloc[0] == 15
    assert ((s["gt_share"] >= 0) & (s["gt_share"] <= 1)).all()
    # the post-hoc shares equal dimension_shares' for the same draws
    from attreg_sc.metrics import dimension_shares
    direct = dimension_shares(m, gt, n_samples=2).drop(index="sum")["gt_share"].to_numpy()
    np.testing.assert_allclose(s.loc["planted", "gt_share"].to_numpy(), direct)
    fixed = _model(adata, w_attr=5.0)
    fixed.train(max_epochs=1, **KW)
    assert fixed.prior_summary(n_samples=2)["weight"].isna().all()


def test_prior_summary_leaves_out_per_cell_gts(adata):
    names = np.asarray(adata.var_names)
    grouped = asc.gt.from_groups(adata, "cell_type",
                                 {"type0": list(names[adata.var["is_gt"].to_numpy()])})
    scvi.settings.seed = 0
    m = asc.SCARE(adata, n_latent=2, gt=grouped, w_attr=5.0)
    m.train(max_epochs=1, **KW)
    s = m.prior_summary(n_samples=2)
    assert s.empty and s.index.names == ["gt", "dimension"]
    assert {"gt_share", "weight", "expressed", "verdict"} <= set(s.columns)
