"""Smoke tests: the examples run on a small setting and show what they claim."""

import importlib.util
import pathlib

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
