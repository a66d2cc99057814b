"""The reproduction study script runs end to end on tiny settings (marked slow)."""

import importlib.util
import pathlib

import pytest

EX = pathlib.Path(__file__).resolve().parents[1] / "examples" / "reproduce_paper.py"


@pytest.mark.slow
def test_reproduce_paper_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("reproduce_paper", EX)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--quick", "--out", str(tmp_path)])
    text = (tmp_path / "reproduction.md").read_text()
    assert text.startswith("# Reproduction") and "**Verdict.**" in text
    assert (tmp_path / "figures" / "reproduction_tradeoff.png").exists()
