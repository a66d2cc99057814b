"""attreg_sc with direction-complete priors: reducers, latent blocks, FSSF variants."""

import numpy as np
import pytest
import torch

import attreg
import attreg_sc as asc
from attreg.reducers import Index, OutputUnits, RandomDirections
from attreg_sc.metrics import active_dimensions, dimension_shares, fssf_from_encoder

GT4 = np.array([True, True, False, False])


QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def adata():
    a = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=0)
    asc.SCARE.setup_anndata(a, batch_key="batch")
    return a


def _prior_set(model):
    """The priors the model's training plan builds (the same recipe, on a stand-in)."""
    from attreg_sc.priors import build_prior_set

    cfg = model.prior_config
    n_latent = model.module.n_latent
    return build_prior_set(
        torch.nn.Linear(model.adata.n_vars, n_latent), cfg.ground_truths, n_latent=n_latent,
        generator=torch.Generator(), settings=cfg.settings, latent_blocks=cfg.blocks,
    )


def _methods(model):
    return {name: p.method.reducer for name, p in _prior_set(model).priors.items()}


def test_default_reducer_is_a_random_direction_and_the_paper_sum_stays(adata):
    gt = adata.var["is_gt"].to_numpy()
    assert isinstance(_methods(asc.SCARE(adata, gt=gt))["gt0"], RandomDirections)
    red = _methods(asc.SCARE(adata, gt=gt, reducer="sum"))["gt0"]
    assert isinstance(red, attreg.reducers.Sum)
    per_dim = _methods(asc.SCARE(adata, gt=gt, reducer="per_dimension", n_latent=4))["gt0"]
    assert isinstance(per_dim, OutputUnits) and per_dim.units == [0, 1, 2, 3]


def test_latent_blocks_give_each_gt_its_dims_and_an_exclusion_on_the_rest(adata):
    gt = adata.var["is_gt"].to_numpy()
    other = ~gt & (np.arange(adata.n_vars) < 30)
    m = asc.SCARE(
        adata, gt={"mapk": gt, "nfkb": other}, n_latent=6, latent_blocks={"mapk": 2, "nfkb": [4]}
    )
    red = _methods(m)
    assert red["gt0"].units == [0, 1] and red["gt1"].units == [4]
    assert red["gt0_exclusion"].units == [2, 3, 4, 5]
    assert red["gt1_exclusion"].units == [0, 1, 2, 3, 5]
    assert isinstance(_prior_set(m).priors["gt0_exclusion"], attreg.ExclusionPrior)
    summed = asc.SCARE(adata, gt={"a": gt}, reducer="sum", n_latent=4, latent_blocks={"a": 2})
    assert isinstance(_methods(summed)["gt0"], Index)
    none = asc.SCARE(adata, gt={"a": gt}, n_latent=4, latent_blocks={"a": 2}, w_exclusion=0)
    assert list(_prior_set(none).priors) == ["gt0"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"latent_blocks": {"zzz": 2}}, KeyError, "not GT names"),
        ({"latent_blocks": {"a": 2, "b": [1]}}, ValueError, "overlap"),
        ({"latent_blocks": {"a": [9]}}, ValueError, "must be dimensions in 0..3"),
        ({"latent_blocks": {"a": 0}}, ValueError, "needs 1..100000 dimensions"),
        ({"latent_blocks": {"a": [1, 1]}}, ValueError, "repeats a dimension"),
        ({"reducer": "max"}, ValueError, "unknown reducer"),
        ({"n_directions": 0}, ValueError, "n_directions must be an integer"),
        ({"w_exclusion": float("nan")}, ValueError, "w_exclusion"),
        ({"reducer": "l2", "latent_blocks": {"a": 2}}, ValueError, "latent block"),
    ],
)
def test_bad_direction_settings_fail_before_training(adata, kwargs, error, match):
    gt = adata.var["is_gt"].to_numpy()
    gts = {"a": gt, "b": ~gt & (np.arange(adata.n_vars) < 30)}
    with pytest.raises(error, match=match):
        asc.SCARE(adata, gt=gts, n_latent=4, **kwargs)


def test_blocks_and_reducer_survive_save_and_load(adata, tmp_path):
    gt = adata.var["is_gt"].to_numpy()
    gts = {"a": gt, "b": ~gt & (np.arange(adata.n_vars) < 30)}
    m = asc.SCARE(adata, gt=gts, n_latent=4, latent_blocks={"a": 2, "b": 1}, n_directions=2)
    m.train(max_epochs=2, **QUIET)
    m.save(tmp_path / "run")
    back = asc.SCARE.load(tmp_path / "run", adata)
    assert back.prior_config.blocks == {"a": [0, 1], "b": [2]}
    assert back.prior_settings.n_directions == 2
    np.testing.assert_allclose(back.get_latent_representation(), m.get_latent_representation())


def _per_dim_share(model, gt):
    return dimension_shares(model, gt, n_samples=2).drop(index="sum")["gt_share"].mean()


def test_random_direction_prior_moves_every_dimension_onto_the_gt(adata):
    """The sum prior can be met by the sum alone; the direction prior reaches each dim."""
    gt = adata.var["is_gt"].to_numpy()
    shares = {}
    for name, kw in {
        "baseline": dict(w_attr=0.0),
        "random": dict(w_attr=1e3, reducer="random_direction"),
    }.items():
        import scvi

        scvi.settings.seed = 0
        m = asc.SCARE(adata, gt=gt, n_latent=4, seed=0, **kw)
        m.train(max_epochs=15, early_stopping=False, **QUIET)
        shares[name] = _per_dim_share(m, gt)
    assert shares["random"] > shares["baseline"] + 0.15, shares


def test_dimension_shares_table_and_active_dimensions(adata):
    gt = adata.var["is_gt"].to_numpy()
    m = asc.SCARE(adata, gt=gt, n_latent=3, seed=0)
    m.train(max_epochs=2, **QUIET)
    table = dimension_shares(m, gt, n_samples=2)
    assert table.index.tolist() == ["0", "1", "2", "sum"]
    assert table["gt_share"].between(0, 1).all()
    z = m.get_latent_representation()
    np.testing.assert_allclose(table.loc["1", "var"], z[:, 1].var(), rtol=1e-5)
    assert active_dimensions(z, threshold=0.0) == 3
    assert active_dimensions(np.c_[z[:, :1], np.zeros(len(z))]) <= 1


# -- FSSF variants ----------------------------------------------------------------------
def _three_subclusters(n=30, seed=0):
    """Subclusters A, B, C; GT genes 0-1 and other genes 2-3 at different levels."""
    rng = np.random.default_rng(seed)
    levels = {"A": (10, 0), "B": (0, 10), "C": (5, 5)}
    sizes = {"A": n, "B": n + 7, "C": n - 5}
    x = np.concatenate(
        [np.tile(np.array([g, g, o, o], np.float32), (sizes[k], 1)) for k, (g, o) in levels.items()]
    )
    x += rng.integers(0, 2, x.shape)
    sub = np.repeat(list(levels), list(sizes.values())).astype(object)
    return x, sub, sizes


def _enc_both(x, b):
    return np.stack([x[:, :2].sum(1), x[:, 2:].sum(1)], 1)


def _enc_gt(x, b):
    return np.stack([x[:, :2].sum(1), np.zeros(len(x))], 1)


def test_gt_score_does_not_depend_on_the_number_of_control_sets():
    x, sub, _ = _three_subclusters()
    types = np.array(["T"] * len(x))
    runs = [fssf_from_encoder(_enc_both, x, GT4, types, sub, n_random=r, seed=3) for r in (0, 7)]
    np.testing.assert_array_equal(runs[0].table["score"], runs[1].table["score"])
    np.testing.assert_array_equal(runs[0].table["n_g"], runs[1].table["n_g"])


def test_pair_vote_maps_every_swapped_cell_into_one_of_the_two_subclusters():
    x, sub, _ = _three_subclusters()
    types = np.array(["T"] * len(x))
    strict = fssf_from_encoder(_enc_both, x, GT4, types, sub, n_random=0)
    pair = fssf_from_encoder(_enc_both, x, GT4, types, sub, n_random=0, vote="pair")
    assert (pair.table.n_g + pair.table.n_o == pair.table.n_t).all()
    # A <-> B swaps land in C under the strict vote: counted in n_t only
    ab = strict.table[(strict.table.subcluster_a == "A") & (strict.table.subcluster_b == "B")]
    assert int(ab.n_g.iloc[0] + ab.n_o.iloc[0]) < int(ab.n_t.iloc[0])


def test_exchange_pairing_swaps_couples_one_to_one():
    x, sub, sizes = _three_subclusters()
    types = np.array(["T"] * len(x))
    r = fssf_from_encoder(_enc_gt, x, GT4, types, sub, n_random=0, pairing="exchange")
    for _, row in r.table.iterrows():
        assert row.n_t == 2 * min(sizes[row.subcluster_a], sizes[row.subcluster_b])
    assert (r.table.score == 1.0).all()


def test_move_fraction_is_one_when_the_gt_alone_decides_and_small_when_ignored():
    x, sub, _ = _three_subclusters()
    types = np.array(["T"] * len(x))
    gt_only = fssf_from_encoder(_enc_gt, x, GT4, types, sub, n_random=0)
    assert gt_only.table["move_median"].tolist() == pytest.approx([1.0] * 3, abs=0.05)
    summary = gt_only.summary()
    assert summary.loc["T", "n_subclusters"] == 3 and summary.loc["T", "n_pairs"] == 3

    def enc_other(c, b):
        return np.stack([np.zeros(len(c)), c[:, 2:].sum(1)], 1)

    ignored = fssf_from_encoder(enc_other, x, GT4, types, sub, n_random=0)
    assert ignored.table["move_median"].abs().max() < 0.05


def test_unknown_fssf_variant_is_refused():
    x, sub, _ = _three_subclusters()
    with pytest.raises(ValueError, match="unknown vote"):
        fssf_from_encoder(_enc_gt, x, GT4, np.array(["T"] * len(x)), sub, vote="some")
    with pytest.raises(ValueError, match="unknown pairing"):
        fssf_from_encoder(_enc_gt, x, GT4, np.array(["T"] * len(x)), sub, pairing="some")


def test_fssf_on_a_latent_block_uses_only_those_dimensions(adata):
    gt = adata.var["is_gt"].to_numpy()
    m = asc.SCARE(adata, gt=gt, n_latent=4, seed=0)
    m.train(max_epochs=3, **QUIET)
    kw = dict(n_random=2, min_cells=50)
    block = asc.metrics.fssf(m, gt, "cell_type", latent_dims=[1, 2], **kw)
    slow = asc.metrics.fssf(m, gt, "cell_type", latent_dims=[1, 2], fast=False, **kw)
    assert block.table.drop(columns="move_median").equals(slow.table.drop(columns="move_median"))
    whole = asc.metrics.fssf(m, gt, "cell_type", **kw)
    assert not block.subclusters.equals(whole.subclusters)  # clustered in the block only


def test_early_stopping_monitors_the_trained_objective_after_the_prior_warm_up(adata):
    """Validation selects by ELBO + w_A L_A, and only once the prior is on: selecting by
    the ELBO restored pre-prior weights (GT share back at baseline)."""
    import scvi

    gt = adata.var["is_gt"].to_numpy()
    scvi.settings.seed = 0
    m = asc.SCARE(adata, gt=gt, w_attr=1e3, n_latent=4, seed=0)
    m.train(max_epochs=14, prior_warmup_epochs=8, early_stopping_patience=2, **QUIET)
    h = {k: v.to_numpy(float).ravel() for k, v in m.history.items()}
    assert np.all(h["attribution_loss_validation"][:8] == 0)  # the prior is off: the ELBO
    assert np.all(h["attribution_loss_validation"][8:] > 0)
    val, elbo = h["validation_loss"][8:], h["elbo_validation"][8:]
    assert all(o > e + 100 for o, e in zip(val, elbo, strict=True))  # w_A L_A included
    assert len(h["train_loss"]) > 8 + 2  # no stop on the jump when the prior switches on


def test_validation_prior_uses_fixed_draws_and_leaves_the_training_stream(adata):
    gt = adata.var["is_gt"].to_numpy()
    m = asc.SCARE(adata, gt=gt, w_attr=1e3, n_latent=4, seed=0)
    plan = m._training_plan_cls(m.module, prior=m.prior_config)
    tensors = next(iter(m._make_data_loader(adata, indices=np.arange(50), batch_size=50)))
    plan.eval()
    torch.manual_seed(0)
    plan.forward(tensors)  # builds the prior
    before = plan.prior_generator.get_state()
    vals = []
    for _ in "ab":
        torch.manual_seed(0)
        vals.append(float(plan.forward(tensors)[2].loss))
    assert vals[0] == vals[1]  # common random numbers across epochs
    assert torch.equal(plan.prior_generator.get_state(), before)
    plan.train()
    train = set()
    for _ in "abc":
        torch.manual_seed(0)
        train.add(float(plan.forward(tensors)[2].loss))
    assert len(train) > 1  # training draws stay fresh
