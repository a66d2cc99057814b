"""Gene panels (attreg_sc.panel, issue 29): the selection's axioms, its behaviour on data
whose cell types are made by known marker genes, its options and their checks, the
GT-free sparsity prior it can train with, the coverage plot and the command line."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import attreg_sc as asc
from attreg.functional import gini_coefficient
from attreg_sc.cli import main
from attreg_sc.panel import PanelSettings, greedy_panel, group_importance, select_panel

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
FAST = dict(max_epochs=40, n_latent=4, n_hidden=32, n_samples=4)
SIZES = {"common": 240, "middle": 90, "rare": 30}


def marker_data(seed: int = 0) -> ad.AnnData:
    """Three cell types (240, 90 and 30 cells), each made by its own 3 marker genes (30x
    expressed), and 31 genes that vary the same way in every cell."""
    rng = np.random.default_rng(seed)
    n_genes = 40
    labels = np.repeat(list(SIZES), list(SIZES.values()))
    base = rng.uniform(1.0, 6.0, n_genes)
    mean = np.tile(base, (len(labels), 1))
    for k, name in enumerate(SIZES):
        mean[labels == name, 3 * k : 3 * k + 3] *= 30.0
    mean *= rng.lognormal(0.0, 0.3, (len(labels), 1))  # library size
    counts = rng.poisson(mean).astype(np.float32)
    names = [f"m{k}_{j}" for k in range(3) for j in range(3)]
    names += [f"noise{i}" for i in range(n_genes - 9)]
    return ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame({"cell_type": pd.Categorical(labels)},
                         index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=names),
    )


MARKERS = {name: {f"m{k}_{j}" for j in range(3)} for k, name in enumerate(SIZES)}


@pytest.fixture(scope="module")
def data():
    return marker_data()


@pytest.fixture(scope="module")
def panel(data):
    return select_panel(data, [3, 9], cell_type_key="cell_type", seed=0, **FAST)


# -- the selection's axioms ------------------------------------------------------------
@settings(deadline=None, max_examples=60)
@given(
    st.integers(2, 12),
    st.integers(1, 4),
    st.integers(0, 10_000),
    st.floats(0.0, 3.0),
)
def test_greedy_panel_axioms(n_genes, n_groups, seed, redundancy):
    """No gene twice, only allowed genes, required genes first, the asked size when there
    are enough candidates, and nested: a smaller panel is the start of a larger one."""
    rng = np.random.default_rng(seed)
    importance = rng.random((n_genes, n_groups))
    x = rng.normal(size=(20, n_genes))
    allowed = rng.random(n_genes) < 0.8
    required = [int(g) for g in np.flatnonzero(allowed)[:1]]
    order = list(rng.permutation(n_groups))
    n = int(rng.integers(1, n_genes + 1))
    genes, served = greedy_panel(importance, order, n, expression=x,
                                 redundancy=redundancy, required=required, allowed=allowed)
    assert len(set(genes)) == len(genes)
    assert all(allowed[g] for g in genes)
    assert genes[: len(required)] == required and served[: len(required)] == [-1] * len(required)
    assert len(genes) == min(n, int(allowed.sum()))
    smaller, _ = greedy_panel(importance, order, max(1, n - 1), expression=x,
                              redundancy=redundancy, required=required, allowed=allowed)
    assert genes[: len(smaller)] == smaller


def test_greedy_panel_turns_and_redundancy():
    importance = np.array([[0.5, 0.0], [0.45, 0.0], [0.05, 0.2], [0.0, 0.8]])
    # group 1 goes first and takes gene 3; then group 0 its best, gene 0
    assert greedy_panel(importance, [1, 0], 2) == ([3, 0], [1, 0])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    x[:, 1] = x[:, 0] + 0.2 * rng.normal(size=200)  # gene 1 copies gene 0 (r ~ 0.98)
    x[:, 2] = -x[:, 0] + 0.5 * rng.normal(size=200)  # gene 2: anti-correlated, kept
    plain, _ = greedy_panel(importance, [0], 3)
    discounted, _ = greedy_panel(importance, [0], 3, expression=x, redundancy=1.0)
    assert plain == [0, 1, 2]
    assert discounted == [0, 2, 1]  # the copy waits behind a gene with its own signal
    # the discount is 1 - r: the copy's score is 0.45 * (1 - r) with r from the data
    r = np.corrcoef(x, rowvar=False)[0, 1]
    assert 0.95 < r < 1 and 0.45 * (1 - r) < 0.05


@settings(deadline=None, max_examples=60)
@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=6), st.integers(0, 10_000))
def test_weighted_turns_give_each_group_its_share_within_one_turn(weights, seed):
    """Axiom of the weighted turns (Tijdeman's bound): after every turn t, each of the K
    groups has taken its share of t turns within 1 - 1/(2K - 2); equal weights are the
    plain rotation in ``order``."""
    rng = np.random.default_rng(seed)
    n_groups, n_genes = len(weights), 60
    importance = rng.random((n_genes, n_groups))
    order = [int(k) for k in rng.permutation(n_groups)]
    genes, served = greedy_panel(importance, order, n_genes, turn_weights=weights)
    share = np.asarray(weights) / np.sum(weights)
    taken = np.zeros(n_groups)
    for t, k in enumerate(served, start=1):
        taken[k] += 1
        bound = 1.0 - 1.0 / (2 * n_groups - 2) if n_groups > 1 else 0.0
        assert np.all(np.abs(taken - share * t) <= bound + 1e-9), (t, taken, share * t)
    equal, served_equal = greedy_panel(importance, order, n_genes,
                                       turn_weights=[2.5] * n_groups)
    assert (equal, served_equal) == greedy_panel(importance, order, n_genes)
    assert served_equal == [order[t % n_groups] for t in range(n_genes)]


@pytest.mark.parametrize("weights", [[1.0], [1.0, 0.0], [1.0, float("nan")], [1.0, -2.0]])
def test_weighted_turns_refuse_bad_weights(weights):
    with pytest.raises(ValueError, match="turn_weights must be 2 positive finite numbers"):
        greedy_panel(np.ones((4, 2)), [0, 1], 2, turn_weights=weights)


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 5), st.integers(2, 30), st.integers(1, 20), st.integers(0, 10_000))
def test_group_importance_columns_are_distributions(n_dims, n_cells, n_genes, seed):
    rng = np.random.default_rng(seed)
    shares = rng.random((n_dims, n_cells, n_genes))
    shares /= shares.sum(-1, keepdims=True)
    weights = rng.random(n_dims)
    weights /= weights.sum()
    groups = rng.choice(["a", "b", "c"], n_cells)
    imp, names = group_importance(np.tensordot(weights, shares, axes=1), groups)
    for k, g in enumerate(names):  # the mean over the group's cells, by definition
        np.testing.assert_allclose(imp[:, k], shares[:, groups == g].mean(1).T @ weights)
    assert imp.shape == (n_genes, len(set(groups))) and sorted(names) == sorted(set(groups))
    np.testing.assert_allclose(imp.sum(0), 1.0, rtol=1e-10)
    assert (imp >= 0).all()


# -- behaviour on data with known markers ------------------------------------------------
def test_every_cell_type_gets_its_marker_first_the_rare_one_included(panel):
    first = panel.genes_at(3)
    for name, markers in MARKERS.items():
        assert len(markers & set(first)) == 1, (name, first)
    assert panel.table["selected_for"].iloc[0] == "rare"  # the rarest type's turn first


def test_the_markers_outrank_every_gene_without_signal(data):
    """Trained to convergence (40 epochs leave one noise gene above a marker)."""
    p = select_panel(data, 9, cell_type_key="cell_type", seed=0, redundancy=0.0,
                     **{**FAST, "max_epochs": 150})
    assert set(p.genes) == set().union(*MARKERS.values())


def test_the_table_and_the_coverage(panel, data):
    t = panel.table
    assert list(t.columns) == ["gene", "rank", "attribution_share", "selected_for",
                               "cell_types", "mean_counts"]
    assert t["gene"].tolist() == panel.genes and t["rank"].tolist() == list(range(1, 10))
    counts = np.asarray(data[:, panel.genes].X.mean(0)).ravel()
    np.testing.assert_allclose(t["mean_counts"], counts, rtol=1e-5)
    imp = panel.importance.loc[panel.genes]
    for name in imp.columns:  # the type's 3 (= 9 genes // 3 types) most important genes
        top = set(imp[name].nlargest(3).index)
        serving = {g for g, c in zip(t["gene"], t["cell_types"], strict=True)
                   if name in c.split(",")}
        assert serving == top and serving
    cov = panel.coverage()
    assert cov.shape == (9, 3) and (np.diff(cov.to_numpy(), axis=0) >= 0).all()
    assert (cov.to_numpy() <= 1 + 1e-9).all()
    np.testing.assert_allclose(panel.importance.sum(0), 1.0, rtol=1e-5)


def test_reproducible_from_the_seed_and_the_input_left_alone(data):
    before = data.copy()
    a = select_panel(data, 6, cell_type_key="cell_type", seed=3, **FAST)
    b = select_panel(data, 6, cell_type_key="cell_type", seed=3, **FAST)
    assert a.genes == b.genes
    pd.testing.assert_frame_equal(a.table, b.table)
    assert (data.X != before.X).nnz == 0
    assert list(data.obs.columns) == list(before.obs.columns)
    assert data.uns.keys() == before.uns.keys() and data.var.equals(before.var)


def test_required_excluded_and_no_cell_types(data):
    p = select_panel(data, 5, required=["noise3"], excluded=["m0_0", "m1_0"], seed=0, **FAST)
    assert p.genes[0] == "noise3" and p.table["selected_for"].iloc[0] == "required"
    assert not {"m0_0", "m1_0"} & set(p.genes)
    assert set(p.importance.columns) == {"all cells"}


def test_a_trained_model_is_reused(data):
    trained = select_panel(data, 3, cell_type_key="cell_type", seed=0, **FAST)
    again = select_panel(data, 3, cell_type_key="cell_type", model=trained.model, seed=0,
                         **FAST)
    assert again.genes == trained.genes and again.model is trained.model


def test_turns_in_proportion_to_cell_type_size(data, panel):
    """``turn_exponent=1``: each type chooses its share of the panel by its cells (240, 90
    and 30 cells: 8, 3 and 1 of 12 genes, within one turn); 0 (default): equal turns."""
    weighted = select_panel(data, 12, cell_type_key="cell_type", model=panel.model,
                            turn_exponent=1.0, seed=0, **FAST)
    equal = select_panel(data, 12, cell_type_key="cell_type", model=panel.model, seed=0,
                         **FAST)
    total = sum(SIZES.values())
    for name, n_cells in SIZES.items():
        chosen = int((weighted.table["selected_for"] == name).sum())
        assert abs(chosen - 12 * n_cells / total) < 1.0, (name, chosen)
        assert int((equal.table["selected_for"] == name).sum()) == 4
    assert weighted.settings.turn_exponent == 1.0


def test_latent_dimensions_take_turns_after_the_cell_types(data, panel):
    """``latent_turns``: after the cell types (rarest first), each latent dimension with at
    least half an equal share of the latent variance takes a turn, largest first; the
    panel stays nested and the table's cell-type columns are unchanged."""
    n = 15
    latent = select_panel(data, [6, n], cell_type_key="cell_type", model=panel.model,
                          latent_turns=True, seed=0, **FAST)
    variance = panel.model.get_latent_representation().var(0)  # every cell is explained
    share = variance / variance.sum()
    dims = [f"latent {d}" for d in np.argsort(-share, kind="stable")
            if share[d] >= 0.5 / len(share)]
    assert dims  # some dimension carries variance
    rotation = ["rare", "middle", "common", *dims]
    expected = [rotation[t % len(rotation)] for t in range(n)]
    assert list(latent.table["selected_for"]) == expected
    assert latent.genes[:6] == latent.genes_at(6)
    assert list(latent.importance.columns) == list(panel.importance.columns)
    with pytest.raises(ValueError, match="latent_turns must be True or False"):
        PanelSettings(latent_turns="yes")


def test_principal_components_take_turns_with_their_largest_loading(data, panel):
    """``pca_turns=k``: after the cell types, the first k principal components of the
    explained cells' log-normalized expression take turns, each choosing its free gene
    with the largest squared loading."""
    from attreg_sc.panel import _log_normalized

    chosen = select_panel(data, 10, cell_type_key="cell_type", model=panel.model,
                          pca_turns=2, redundancy=0.0, seed=0, **FAST)
    table = chosen.table
    assert list(table["selected_for"][:5]) == ["rare", "middle", "common", "PC 1", "PC 2"]
    x = _log_normalized(data.X)  # every cell is explained
    vt = np.linalg.svd(x - x.mean(0), full_matrices=False)[2]
    names = np.asarray(data.var_names)
    for turn in (3, 4):
        free = ~np.isin(names, table["gene"][:turn])
        loading = np.where(free, vt[turn - 3] ** 2, -np.inf)
        assert table["gene"][turn] == names[int(np.argmax(loading))]
    with pytest.raises(ValueError, match="pca_turns must be an integer >= 0"):
        PanelSettings(pca_turns=-1)


def test_cell_types_take_a_second_turn_for_the_genes_within_them(data, panel, monkeypatch):
    """``within_turns``: after the cell types' turns, each type takes a second turn
    (largest first) for the gene with the largest share of attributions whose EG
    references were drawn within the type; a model without the types as labels, or no
    cell types, is refused."""
    import attreg.attr.expected_gradients as eg_module
    from attreg_sc.panel import _shares

    draws = []
    real = eg_module.group_reference_index

    def spy(groups, n_samples, generator, device):
        draws.append(groups.clone())
        return real(groups, n_samples, generator, device)

    monkeypatch.setattr(eg_module, "group_reference_index", spy)
    chosen = select_panel(data, [6, 12], cell_type_key="cell_type", within_turns=True,
                          redundancy=0.0, seed=0, **FAST)
    table = chosen.table
    rotation = ["rare", "middle", "common", "within common", "within middle", "within rare"]
    assert list(table["selected_for"]) == rotation * 2
    assert chosen.genes[:6] == chosen.genes_at(6)
    # every within-type draw grouped the explained cells (all of them, one chunk) by type
    types = np.asarray(data.obs["cell_type"].astype(str))
    assert len(draws) == FAST["n_latent"]
    for groups in draws:
        codes = groups.numpy()
        assert len(codes) == data.n_obs
        for t in SIZES:  # one code per type, and the code's cells are the type's
            assert len(set(codes[types == t])) == 1
        assert len(set(codes)) == len(SIZES)
    # the first second turn is the largest type's best gene by those attributions
    model = chosen.model
    variance = model.get_latent_representation().var(0)
    weights = variance / variance.sum()
    within = sum(
        weights[d] * _shares(model.get_attributions(
            reducer=d, n_samples=FAST["n_samples"], seed=d, references="label",
            batch_size=data.n_obs))
        for d in range(FAST["n_latent"])
    )
    importance, names = group_importance(within, types)
    names_ = np.asarray(data.var_names)
    score = np.where(np.isin(names_, table["gene"][:3]), -np.inf,
                     importance[:, list(names).index("common")])
    assert table["gene"][3] == names_[int(np.argmax(score))]
    with pytest.raises(ValueError, match="within_turns=True.*pass cell_type_key"):
        select_panel(data, 5, within_turns=True, **FAST)
    with pytest.raises(ValueError, match="the model has no labels.*labels_key='cell_type'"):
        select_panel(data, 5, cell_type_key="cell_type", model=panel.model,
                     within_turns=True, **FAST)
    with pytest.raises(ValueError, match="within_turns must be True or False"):
        PanelSettings(within_turns=1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n=0), ValueError, "n must be a positive integer"),
        (dict(n=[5, True]), ValueError, "n must be a positive integer"),
        (dict(n=40, excluded=["m0_0"]), ValueError, "needs at least that many candidates"),
        (dict(n=2, required=["m0_0", "m0_1", "m0_2"]), ValueError, "do not fit a panel of 2"),
        (dict(n=5, required=["NOPE"]), KeyError, "required genes not in adata.var_names"),
        (dict(n=5, required=["m0_0"], excluded=["m0_0"]), ValueError, "both required and"),
        (dict(n=5, cell_type_key="tissue"), KeyError, "cell_type_key 'tissue' is not an obs"),
        (dict(n=5, n_latent=0), ValueError, "n_latent must be an integer >= 1"),
        (dict(n=5, redundancy=-1.0), ValueError, "redundancy must be a finite number >= 0"),
        (dict(n=5, turn_exponent=-0.5), ValueError, "turn_exponent must be a finite number"),
        (dict(n=5, w_sparsity=float("nan")), ValueError, "w_sparsity must be a finite"),
        (dict(n=5, n_explained=1), ValueError, "n_explained must be an integer >= 2"),
        (dict(n=5, n_latnet=3), TypeError, "unknown options \\['n_latnet'\\]"),
    ],
)
def test_bad_input_is_refused_before_training(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        select_panel(data, **kwargs)


def test_missing_cell_types_and_a_model_of_other_genes_are_refused(data, panel):
    holes = data.copy()
    holes.obs["cell_type"] = holes.obs["cell_type"].cat.add_categories("x")
    holes.obs.loc[holes.obs_names[:3], "cell_type"] = np.nan
    with pytest.raises(ValueError, match="has missing values"):
        select_panel(holes, 5, cell_type_key="cell_type", **FAST)
    with pytest.raises(ValueError, match="trained on other genes or cells"):
        select_panel(data[:, :30].copy(), 5, model=panel.model, **FAST)
    with pytest.raises(ValueError, match="trained on other genes or cells"):
        select_panel(data[:200].copy(), 5, model=panel.model, **FAST)
    with pytest.raises(ValueError, match="n must be an integer in 1..9"):
        panel.genes_at(10)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        PanelSettings(seed=-1)


# -- the GT-free sparsity prior ------------------------------------------------------------
def _gini_of_mean_attribution(model) -> float:
    import torch

    attr = np.abs(model.get_attributions(reducer="sum", n_samples=4))
    return float(gini_coefficient(torch.from_numpy(attr.mean(0))))


def test_the_sparsity_prior_concentrates_the_attribution_and_survives_a_save(data, tmp_path):
    ginis = {}
    for w in (0.0, 1.0):
        a = data.copy()
        asc.SCARE.setup_anndata(a)
        import torch

        torch.manual_seed(0)
        m = asc.SCARE(a, n_latent=4, n_hidden=32, w_sparsity=w)
        assert (m.prior_config is not None) == (w > 0)
        m.train(max_epochs=40, threads=1, early_stopping=False, enable_progress_bar=False)
        ginis[w] = _gini_of_mean_attribution(m)
    assert "attribution_loss_train" in m.history
    assert ginis[1.0] > ginis[0.0] + 0.05, ginis
    m.save(tmp_path / "m", overwrite=True)
    loaded = asc.SCARE.load(tmp_path / "m", a)
    assert loaded.prior_settings.w_sparsity == 1.0 and loaded.prior_config is not None
    m.set_prior(None, w_sparsity=0.0)  # removing it removes the prior
    assert m.prior_config is None


def test_the_sparsity_prior_composes_with_a_gt_and_is_checked():
    from attreg_sc.settings import PriorSettings

    with pytest.raises(ValueError, match="w_sparsity must be a finite number >= 0"):
        PriorSettings(w_sparsity=-1.0)
    with pytest.raises(ValueError, match="w_attr=0 turns every prior off"):
        PriorSettings(w_sparsity=1.0, w_attr=0.0)  # not a silent no-op
    a = asc.datasets.synthetic(n_cells=200, n_genes=30, n_gt_genes=5, seed=0)
    asc.SCARE.setup_anndata(a)
    m = asc.SCARE(a, n_latent=3, gt="is_gt", w_sparsity=0.5)
    assert len(m.prior_config.ground_truths) == 1
    m.train(max_epochs=2, threads=1, early_stopping=False, enable_progress_bar=False)
    assert np.isfinite(m.history["attribution_loss_train"].to_numpy(float)).all()


def test_the_sparsity_term_is_one_minus_the_gini_of_the_mean_attribution():
    import torch

    from attreg_sc.priors import build_prior_set
    from attreg_sc.settings import PriorSettings

    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 3)
    x = torch.rand(16, 6)
    gt = np.array([1, 1, 0, 0, 0, 0], bool)
    settings = PriorSettings(w_sparsity=2.0, reducer="sum", n_samples=2)
    both = build_prior_set(enc, {"g": gt}, n_latent=3, settings=settings,
                           generator=torch.Generator().manual_seed(1))
    assert set(both.priors) == {"gt0", "sparsity"}
    alone = build_prior_set(enc, {}, n_latent=3, settings=settings,
                            generator=torch.Generator().manual_seed(1))
    assert set(alone.priors) == {"sparsity"}
    penalty = alone.priors["sparsity"]
    attr = torch.rand(16, 6)
    expected = 1.0 - gini_coefficient(attr.abs().mean(0))
    torch.testing.assert_close(penalty.penalty(attr), expected)
    value = alone(x)
    assert value.requires_grad and 0.0 <= float(value) <= 2.0  # weight 2 x a value in [0, 1]


# -- plot and command line -----------------------------------------------------------------
def test_coverage_plot_draws_one_line_per_cell_type(panel, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    fig = asc.pl.panel_coverage(panel, save=str(tmp_path / "c.png"))
    assert len(fig.axes[0].get_legend().get_texts()) == 3
    assert (tmp_path / "c.png").stat().st_size > 0


def test_cli_panel_writes_one_folder(tmp_path, capsys):
    data = marker_data(1)
    path = tmp_path / "ref.h5ad"
    data.write_h5ad(path)
    (tmp_path / "req.txt").write_text("noise5\n")
    (tmp_path / "exc.txt").write_text("m2_0\n")
    out = tmp_path / "panel"
    argv = ["panel", path, "--n", 4, 8, "--cell-type-key", "cell_type", "--required",
            tmp_path / "req.txt", "--excluded", tmp_path / "exc.txt", "--max-epochs", 5,
            "--n-latent", 3, "--no-progress", "--out", out]
    assert main([str(a) for a in argv]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["coverage.csv", "coverage.png", "evaluation.csv", "panel.csv",
                     "panel_4.txt", "panel_8.txt", "run.json"]
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert set(zip(evaluation["size"], evaluation["panel"], strict=True)) == {
        (n, p) for n in (4, 8) for p in ("attreg_sc", "highly variable", "random")}
    assert evaluation[["knn_overlap", "cell_type_accuracy"]].notna().all().all()
    table = pd.read_csv(out / "panel.csv")
    assert table["gene"].iloc[0] == "noise5" and "m2_0" not in set(table["gene"])
    assert (out / "panel_4.txt").read_text().split() == table["gene"].tolist()[:4]
    assert main([str(a) for a in argv]) == 2  # no --overwrite: the folder is kept
    assert "exists" in capsys.readouterr().err
    bad = ["panel", path, "--n", 4, "--cell-type-key", "nope", "--out", tmp_path / "x"]
    assert main([str(a) for a in bad]) == 2
    assert "nope" in capsys.readouterr().err


def test_evaluate_panel_separates_markers_from_noise(data):
    from attreg_sc.panel import evaluate_panel, reference_panels

    markers = sorted(set().union(*MARKERS.values()))
    noise = [g for g in data.var_names if g.startswith("noise")][:9]
    good = evaluate_panel(data, markers, "cell_type")
    bad = evaluate_panel(data, noise, "cell_type")
    assert good["cell_type_accuracy"] > 0.95 and bad["cell_type_accuracy"] < 0.6
    assert good["knn_overlap"] > bad["knn_overlap"]
    everything = evaluate_panel(data, list(data.var_names))
    assert everything == {"knn_overlap": 1.0}
    refs = reference_panels(data, 9, seed=0)
    assert len(set(refs["random"])) == 9 and refs == reference_panels(data, 9, seed=0)
    assert len(set(refs["highly variable"])) == 9
    assert len(set(refs["highly variable"]) & set(markers)) >= 5  # markers vary most
    with pytest.raises(KeyError, match="panel genes not in adata.var_names"):
        evaluate_panel(data, ["nope"])
    with pytest.raises(ValueError, match="n_neighbors must be an integer"):
        evaluate_panel(data, markers, n_neighbors=0)
