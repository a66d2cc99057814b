"""Smoke tests: the examples run on a small setting and show what they claim."""

import importlib.util
import pathlib

import pytest

import attreg_sc as asc

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_spurious_feature_example_moves_attribution_to_gt(tmp_path, capsys):
    mod = load("spurious_feature")
    out = tmp_path / "r.json"
    res = mod.main(["--epochs", "10", "--json", str(out)])
    base, prior = res["baseline (w_A=0)"], res["prior (w_A=3)"]
    assert prior["gt_share"] > 0.8
    assert prior["gt_share"] > base["gt_share"] + 0.2
    assert prior["acc_shifted_test"] > base["acc_shifted_test"]
    assert out.exists() and "GT share" in capsys.readouterr().out


def test_tutorial_classifier_quick(tmp_path):
    res = load("tutorial_classifier").main(["--epochs", "4", "--out", str(tmp_path)])
    assert set(res) == {"baseline", "prior"}
    assert res["prior"]["gt_share"] > res["baseline"]["gt_share"]
    assert (tmp_path / "tutorial_classifier.png").stat().st_size > 1000


def test_tutorial_pbmc_quick(tmp_path):
    res = load("tutorial_pbmc").main(
        ["--max-epochs", "2", "--n-random", "2", "--out", str(tmp_path)]
    )
    assert set(res) == {"baseline", "scARE"}
    assert (tmp_path / "tutorial_pbmc_fssf.png").exists()


def test_tutorial_markers_quick():
    res = load("tutorial_markers").main(["--max-epochs", "2", "--n-top", "10"])
    assert set(res) == {"baseline", "two priors"}
    assert len(res["baseline"]) > 0


def test_tutorial_panel_quick(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    panel, evaluation = load("tutorial_panel").main(
        ["--sizes", "10", "20", "--n-top", "300", "--max-epochs", "3", "--out", str(tmp_path)]
    )
    assert panel.genes[:4] == ["CD3E", "MS4A1", "CD14", "NKG7"]  # the required markers
    assert len(panel.genes) == 20 and (tmp_path / "panel_coverage.png").exists()
    assert set(evaluation["panel"]) == {"attreg_sc", "highly variable", "random"}


def test_tutorial_cli_quick(tmp_path):
    work = load("tutorial_cli").main(["--workdir", str(tmp_path), "--max-epochs", "2"])
    assert (work / "report" / "index.html").exists() and (work / "fssf.csv").exists()


def test_scvi_tools_example_smoke():
    import pytest

    pytest.importorskip("scvi")
    shares = load("scvi_tools_prior").main(["--max-epochs", "3"])
    assert set(shares) == {"SCVI", "SCVI + attreg prior"}


def test_direction_prior_study_runs_one_configuration(tmp_path):
    import json
    import math

    out = tmp_path / "d.jsonl"
    load("direction_prior_study").main(
        ["--out", str(out), "--data", "pbmc68k", "--configs", "random share w30",
         "--seeds", "0", "--epochs", "2", "--n-random", "2"]
    )
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["config"] == "random share w30" and row["epochs"] == 2
    for key in ("share_per_dim", "fssf_gt", "fssf_random", "reconstruction"):
        assert math.isfinite(row[key]), key
    assert 0.0 <= row["share_per_dim"] <= 1.0


def test_latent_blocks_study_runs_one_configuration(tmp_path):
    import json
    import math

    out = tmp_path / "b.jsonl"
    load("latent_blocks_study").main(
        ["--out", str(out), "--configs", "blocks", "--seeds", "0", "--epochs", "2",
         "--n-random", "2"]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["gene_set"] for r in rows} == {"MAPK", "NF-kB"}
    assert all(math.isfinite(r["fssf_block"]) and math.isfinite(r["reconstruction"])
               for r in rows)


def test_target_share_toy_runs_every_form():
    res = load("target_share_toy").main(["--steps", "60"])
    assert set(res) == {(n, f) for n in (3, 15) for f in ("fixed", "geco", "target_share")}
    assert all(0.0 <= r["own"] <= 1.0 and 0.0 <= r["posthoc"] <= 1.0 for r in res.values())


def test_target_share_pilot_runs_one_epoch(tmp_path):
    out = tmp_path / "pilot.json"
    rows = load("target_share_pilot").main(
        ["--max-epochs", "1", "--n-random", "2", "--json", str(out)]
    )
    assert [r["model"] for r in rows] == ["baseline", "w_attr 30", "target share 0.9"] * 2
    assert rows[2]["weight"] != 30.0  # the multiplier moved
    assert out.exists()


def test_label_steering_diagnosis_runs_one_seed():
    out = load("label_steering_diagnosis").main(
        ["--seeds", "0", "--epochs", "1", "--n-random", "2"]
    )
    assert len(out["informativeness"]) == 1 and len(out["models"]) == 5
    target = [r for r in out["models"] if r["model"] == "global GT, target share 0.9"][0]
    assert 0.0 <= target["training_share"] <= 1.0


def test_target_share_panel_runs_one_set_and_reports(tmp_path, capsys):
    mod = load("target_share_panel")
    out = tmp_path / "panel.jsonl"
    args = ["--data", "wu2020", "--sets", "GO:0006412", "--seeds", "0", "--epochs", "1",
            "--n-random", "2", "--out", str(out)]
    mod.main(args)
    rows = [__import__("json").loads(x) for x in out.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["baseline", "w_attr 30", "target 0.9"]
    assert all(r["set"] == "GO:0006412" and r["expressed"] <= r["genes"] for r in rows)
    assert rows[2]["weight"] != 30.0 and rows[1]["weight"] is None
    mod.main(args)  # a rerun skips the rows present
    assert len(out.read_text().splitlines()) == 3
    mod.main(["--report", str(out)])
    assert "GO:0006412" in capsys.readouterr().out
    # references within the cell type, compared with the rows above at the same weight
    label = tmp_path / "label.jsonl"
    mod.main([*args[:-1], str(label), "--variants", "label30"])
    rows = [__import__("json").loads(x) for x in label.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["baseline", "label w_attr 30"]
    mod.main(["--label-report", str(out), str(label)])
    table = capsys.readouterr().out
    assert "| wu2020 | GO:0006412 |" in table and "| 30 | 1 |" in table


def test_target_share_panel_report_seeds_restrict_the_means(tmp_path, capsys):
    """``--report --report-seeds S``: the means, the goal and the step over seed S only;
    ``--report`` of several files reads them as one."""
    import json

    import pandas as pd

    mod = load("target_share_panel")
    path = tmp_path / "panel.jsonl"
    rows = []
    for seed, fssf_, secs in ((0, 0.7, 1.0), (1, 0.1, 3.0)):
        for model, f, share, bio, s in (("baseline", -0.9, 0.05, 0.7, 1.0),
                                        ("w_attr 30", fssf_, 0.85, 0.69, secs),
                                        ("target 0.9", fssf_, 0.9, 0.69, secs)):
            rows.append(dict(data="wu2020", half="development", set="GO:1", model=model,
                             seed=seed, genes=40, expressed=40, variable=20, epochs=10,
                             seconds_per_epoch=s, fssf_gt=f, fssf_random=-0.9,
                             share_per_dim=share, reconstruction=100.0, bio=bio,
                             subclusters=4, weight=None if model != "target 0.9" else 50.0))
    path.write_text("\n".join(json.dumps(r) for r in rows))
    both = mod.report(path)
    assert both.loc[("wu2020", "development", "GO:1", "w_attr 30"), "fssf_gt"] == (
        pytest.approx(0.4))
    first, later = tmp_path / "seed0.jsonl", tmp_path / "seed1.jsonl"  # seeds kept apart
    first.write_text("\n".join(json.dumps(r) for r in rows[:3]))
    later.write_text("\n".join(json.dumps(r) for r in rows[3:]))
    pd.testing.assert_frame_equal(mod.report([first, later]), both)
    one = mod.report(path, seeds=[0])
    assert one.loc[("wu2020", "development", "GO:1", "w_attr 30"), "seeds"] == 1
    mod.main(["--report", str(path), "--report-seeds", "0"])
    text = capsys.readouterr().out
    assert "w_attr 30 meets the goal on: development 1/1" in text and "| 1.00x |" in text
    mod.main(["--report", str(first), str(later), "--report-seeds", "1"])
    text = capsys.readouterr().out
    assert "w_attr 30 meets the goal on: development 0/1" in text and "| 3.00x |" in text
    assert "per half and dataset: development wu2020 0/1; criteria missed (pairs): fssf 1" in text


def test_target_share_panel_block_variants_score_the_block(tmp_path, capsys):
    """``--variants block``: the set's prior on dimensions 0-4; every row, the baseline's
    included, also scored on those dimensions; the report reads the goal both ways."""
    import json

    mod = load("target_share_panel")
    out = tmp_path / "blocks.jsonl"
    mod.main(["--data", "wu2020", "--sets", "GO:0006412", "--seeds", "0", "--epochs", "1",
              "--n-random", "2", "--out", str(out), "--variants", "block"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["baseline", "block w_attr 30", "block target 0.9"]
    for r in rows:
        assert -1 <= r["fssf_gt_block"] <= 1 and 0 <= r["share_per_dim_block"] <= 1
        # the whole latent's mean share is the mean of the block's and the rest's
        assert abs(r["share_per_dim"] - (r["share_per_dim_block"] + r["share_off_block"]) / 2
                   ) < 1e-9
    mod.main(["--block-report", str(out)])
    table = capsys.readouterr().out
    assert "| wu2020 | development | GO:0006412 |" in table
    assert "block target 0.9, read on the block" in table
    assert "block target 0.8" not in table  # not run yet: not summarised
    # --variants block08 into the same file: the baseline is reused, the new prior joins
    mod.main(["--data", "wu2020", "--sets", "GO:0006412", "--seeds", "0", "--epochs", "1",
              "--n-random", "2", "--out", str(out), "--variants", "block08"])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["model"] for r in rows][3:] == ["block target 0.8"]
    assert "share_per_dim_block" in rows[3]
    capsys.readouterr()
    mod.main(["--block-report", str(out), "--report-seeds", "0"])
    table = capsys.readouterr().out
    assert "block target 0.8, read on the block" in table
    assert "| block target 0.8 | wu2020 |" in table
    # another block size: its own file and baseline, scored on dimensions 0-2
    three = tmp_path / "blocks3.jsonl"
    mod.main(["--data", "wu2020", "--sets", "GO:0006412", "--seeds", "0", "--epochs", "1",
              "--n-random", "2", "--out", str(three), "--variants", "block08",
              "--block-dims", "3"])
    rows = [json.loads(x) for x in three.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["baseline", "block3 target 0.8"]
    for r in rows:  # the whole latent's mean share: 3 block dimensions, 7 others
        assert abs(r["share_per_dim"] - (3 * r["share_per_dim_block"]
                                         + 7 * r["share_off_block"]) / 10) < 1e-9
    capsys.readouterr()
    mod.main(["--block-report", str(three)])
    table = capsys.readouterr().out
    assert "block3 target 0.8, read on the block" in table
    assert "| data | half | set |" not in table  # the per-pair table is the 5-dim study's
    for bad in (["--variants", "block08", "--block-dims", "10"],  # the latent has 10
                ["--block-dims", "3"],  # not a block study
                ["--variants", "block", "--block-dims", "3", "--frontier"]):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            mod.main(["--data", "wu2020", *bad])
        assert "--block-dims" in capsys.readouterr().err  # refused before any training


def test_target_share_panel_goal_needs_every_criterion():
    import pandas as pd

    mod = load("target_share_panel")
    base = dict(expressed=40, fssf_gt=-0.9, fssf_random=-0.9, share_per_dim=0.1,
                reconstruction=100.0, bio=0.70, subclusters=10, seconds_per_epoch=1.0,
                weight=float("nan"))
    good = dict(base, fssf_gt=0.7, share_per_dim=0.85, reconstruction=102.0, bio=0.67,
                subclusters=14, seconds_per_epoch=1.2, weight=300.0)
    rows = {("d", "development", "ok"): good,
            ("d", "development", "bio"): dict(good, bio=0.64),
            ("d", "development", "recon"): dict(good, reconstruction=104.0),
            ("d", "development", "split"): dict(good, subclusters=16),
            ("d", "development", "fssf"): dict(good, fssf_gt=0.55),
            ("d", "development", "slow"): dict(good, seconds_per_epoch=1.5)}
    index, data = [], []
    for key, new in rows.items():
        index += [(*key, "baseline"), (*key, "target 0.9")]
        data += [base, new]
    mean = pd.DataFrame(data, index=pd.MultiIndex.from_tuples(index))
    table = mod.goal_table(mean).set_index("set")
    assert table["goal"].to_dict() == {"ok": True, "bio": False, "recon": False,
                                       "split": False, "fssf": False, "slow": False}
    assert table["goal_but_step"].to_dict() == dict(table["goal"].to_dict(), slow=True)
    assert table["missed"].to_dict() == {"ok": "", "bio": "bio", "recon": "reconstruction",
                                         "split": "subclusters", "fssf": "fssf", "slow": ""}
    assert abs(table.loc["ok", "recon"] - 0.02) < 1e-12
    assert abs(table.loc["ok", "subclusters"] - 1.4) < 1e-12


def test_target_share_panel_pancreas_maps_the_sets_to_mouse(tmp_path):
    """``--data pancreas`` reads the file ``scripts/make_pancreas.py`` writes (not
    shipped) and gives the panel's sets as mouse symbols; without the file it says how
    to make it."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    mod = load("target_share_panel")
    with pytest.raises(ValueError, match="--pancreas PATH.*scripts/make_pancreas.py"):
        mod.load("pancreas", "development")
    genes = ["Cd74", "Mapk1", "Rps6", "Actb"]
    fake = ad.AnnData(sp.csr_matrix(np.ones((4, 4), np.float64)),
                      obs=pd.DataFrame({"cell_type": pd.Categorical(list("aabb"))},
                                       index=[f"c{i}" for i in range(4)]),
                      var=pd.DataFrame(index=genes))
    path = tmp_path / "pancreas.h5ad"
    fake.write_h5ad(path)
    adata, batch_key, label_key, sets = mod.load("pancreas", "development", path)
    assert adata.X.dtype == np.float32 and batch_key is None and label_key == "cell_type"
    human = asc.datasets.go_panel("development")
    assert set(sets) == set(human)
    for term, mouse in sets.items():
        assert mouse == asc.datasets.mouse_symbols(human[term])
        assert all(g[0].isupper() and g[1:] == g[1:].lower() for g in mouse)
    unlabelled = tmp_path / "other.h5ad"
    ad.AnnData(fake.X).write_h5ad(unlabelled)
    with pytest.raises(ValueError, match="no obs\\['cell_type'\\]"):
        asc.datasets.pancreas(unlabelled)
