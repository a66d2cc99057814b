"""The README's commands: the test command is exactly what CI runs, and the single-cell
example runs (shortened: one epoch, two random gene sets)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    (command,) = [b.strip() for b in _blocks("bash") if "pytest" in b]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == command


def test_readme_single_cell_example_runs(tmp_path, monkeypatch):
    (code,) = [b for b in _blocks("python") if "import attreg_sc" in b]
    shortened = (
        code.replace("model.train()", "model.train(max_epochs=1, enable_progress_bar=False)")
        .replace('"cell_type")', '"cell_type", n_random=2)')
    )
    assert shortened != code  # the example still has the calls the test shortens
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(shortened, "README.md", "exec"), namespace)
    assert namespace["adata"].obsm["X_scare"].shape[1] == namespace["model"].module.n_latent
    assert (tmp_path / "run1" / "model.pt").is_file()
