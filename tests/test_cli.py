import json

import numpy as np
import pandas as pd
import pytest

import attreg_sc as asc
from attreg_sc.cli import main


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    adata = asc.datasets.synthetic(n_cells=300, n_genes=60, n_gt_genes=10, seed=0)
    path = d / "data.h5ad"
    adata.write_h5ad(path)
    genes = d / "gt.txt"
    genes.write_text("\n".join(adata.var_names[:10]))
    gmt = d / "sets.gmt"
    gmt.write_text(
        "setA\tdesc\t" + "\t".join(adata.var_names[:10]) + "\n"
        "setB\tdesc\t" + "\t".join(adata.var_names[10:20]) + "\n"
    )
    return d, path, genes, gmt


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("cmd", ["train", "fssf", "report", "markers", "panel", "demo", "convert"])
def test_help_for_every_command(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: attreg-sc" in capsys.readouterr().out


def test_train_fssf_report_markers_end_to_end(h5ad, capsys):
    d, data, genes, gmt = h5ad
    out = d / "run"
    code, text, _ = run(
        [
            "train",
            data,
            "--genes",
            genes,
            "--gmt",
            f"{gmt}:setB",
            "--batch-key",
            "batch",
            "--max-epochs",
            3,
            "--n-latent",
            3,
            "--no-progress",
            "--out",
            out,
        ],
        capsys,
    )
    assert code == 0 and "X_scare" in text
    import anndata as ad

    res = ad.read_h5ad(out / "adata.h5ad")
    assert res.obsm["X_scare"].shape == (300, 3)
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == 3 and {"reconstruction", "kl", "attribution"} <= set(hist.columns)
    model = asc.SCARE.load(out / "model", res)
    assert set(model.prior_config.ground_truths) == {"gt", "setB"}

    code, text, _ = run(
        [
            "fssf",
            out / "model",
            data,
            "--gmt",
            f"{gmt}:setA",
            "--cell-type-key",
            "cell_type",
            "--n-random",
            3,
            "--out",
            d / "fssf.csv",
        ],
        capsys,
    )
    assert code == 0
    table = pd.read_csv(d / "fssf.csv")
    assert table["score"].between(-1, 1).all() and len(table) > 0

    code, text, _ = run(
        [
            "report",
            "--model",
            f"scARE={out / 'model'}",
            data,
            "--genes",
            genes,
            "--cell-type-key",
            "cell_type",
            "--label-key",
            "gt_state",
            "--n-random",
            2,
            "--out",
            d / "report",
        ],
        capsys,
    )
    assert code == 0 and "index.html" in text
    html = (d / "report" / "index.html").read_text()
    for png in ("loss.png", "fssf.png", "umap_scare.png", "labels.png", "gt_share.png"):
        assert (d / "report" / png).stat().st_size > 1000 and png in html
    summary = json.loads((d / "report" / "summary.json").read_text())
    assert "fssf_gt" in summary["scARE"]
    for key in ("gt_share_per_dimension", "max_subclusters", "move_median", "active_dimensions"):
        assert key in summary["scARE"], key
    assert 0 <= summary["scARE"]["gt_share_per_dimension"] <= 1
    assert "GT share per latent dimension" in html

    code, text, _ = run(
        [
            "markers",
            data,
            "--label",
            "gt_state",
            "--groupby",
            "cell_type",
            "--n-top",
            5,
            "--out",
            d / "markers.gmt",
        ],
        capsys,
    )
    assert code == 0
    sets = asc.gt.read_gmt(d / "markers.gmt")
    assert len(sets) == 3 and all(len(v) == 5 for v in sets.values())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "missing.h5ad", "--out", "x"], "file not found: missing.h5ad"),
        (["train", "{genes}", "--out", "x"], "is not a readable .h5ad file"),
        (["train", "{data}", "--genes", "nope.txt", "--out", "x"], "gene list not found"),
        (["train", "{data}", "--gmt", "nope.gmt", "--out", "x"], "GMT file not found"),
        (["train", "{data}", "--gmt", "{gmt}:setZ", "--out", "x"], "setZ"),
        (["train", "{data}", "--batch-key", "donor", "--out", "x"], "'donor' is not a column"),
        (
            [
                "fssf",
                "{dir}",
                "{data}",
                "--genes",
                "{genes}",
                "--cell-type-key",
                "cell_type",
                "--out",
                "x",
            ],
            "no saved model",
        ),
        (["markers", "{data}", "--label", "time", "--out", "x"], "--label 'time' not in"),
        (["train", "{data}", "--genes", "{dir}", "--out", "x"], "is a folder, where a file"),
    ],
)
def test_clear_errors(h5ad, capsys, argv, message, tmp_path):
    d, data, genes, gmt = h5ad
    bad_genes = tmp_path / "g.txt"
    bad_genes.write_text("NOT_A_GENE\n")
    fill = {"{data}": data, "{genes}": genes, "{gmt}": gmt, "{dir}": tmp_path}
    argv = [fill.get(a, a) if not a.startswith("{gmt}") else f"{gmt}{a[5:]}" for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert message in err and err.startswith("attreg-sc")


def test_genes_not_found_error(h5ad, capsys, tmp_path):
    d, data, _, _ = h5ad
    g = tmp_path / "g.txt"
    g.write_text("NOT_A_GENE OTHER\n")
    code, _, err = run(["train", data, "--genes", g, "--out", tmp_path / "o"], capsys)
    assert code == 2 and "0 of 2 genes found" in err


def test_demo_quick(tmp_path, capsys):
    code, text, _ = run(
        ["demo", "--out", tmp_path / "demo", "--max-epochs", 2, "--n-random", 2, "--no-progress"],
        capsys,
    )
    assert code == 0
    assert "PBMC 3k" in text and "scARE" in text and "baseline" in text
    summary = pd.read_csv(tmp_path / "demo" / "summary.csv", index_col=0)
    assert set(summary.index) == {"baseline", "scARE"}
    assert np.isfinite(summary["fssf_gt"]).all()
    assert (tmp_path / "demo" / "index.html").exists()


def test_report_html_puts_figures_beside_numbers_and_states_the_run(h5ad, capsys):
    """The report's structure, parsed: run facts, alt text, figure and table side by side,
    counts as integers (no headless browser is installable offline)."""
    from html.parser import HTMLParser

    d, data, genes, _ = h5ad
    out = d / "run_r"
    argv = ["train", data, "--genes", genes, "--batch-key", "batch", "--max-epochs", 2]
    assert run([*argv, "--n-latent", 3, "--no-progress", "--out", out], capsys)[0] == 0
    argv = ["report", "--model", f"mine={out / 'model'}", data, "--genes", genes]
    argv += ["--cell-type-key", "cell_type", "--n-random", 2, "--no-progress"]
    assert run([*argv, "--out", d / "rep"], capsys)[0] == 0
    page = (d / "rep" / "index.html").read_text()

    class Structure(HTMLParser):
        def __init__(self):
            super().__init__()
            self.imgs, self.pairs, self.stack = [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "div" and attrs.get("class") == "pair":
                self.pairs.append({"img": False, "table": False})
                self.stack.append("pair")
            elif tag == "div":
                self.stack.append("div")
            if tag == "img":
                self.imgs.append(attrs)
            if "pair" in self.stack and tag in ("img", "table"):
                self.pairs[-1][tag] = True

        def handle_endtag(self, tag):
            if tag == "div" and self.stack:
                self.stack.pop()

    parsed = Structure()
    parsed.feed(page)
    assert parsed.imgs and all(len(a.get("alt", "")) > 20 for a in parsed.imgs)
    assert sum(p["img"] and p["table"] for p in parsed.pairs) >= 3  # figure beside numbers
    for fact in ("300 cells x 60 genes", "2 batch(es)", "attreg", "torch", "Python"):
        assert fact in page, fact
    assert "<td>mine</td>" in page and "w_attr" in page and "epochs" in page
    summary = pd.read_csv(d / "rep" / "summary.csv", index_col=0)
    n_pairs = summary.loc["mine", "n_pairs"]
    assert f"<td>{n_pairs}</td>" in page and f"{n_pairs}.000" not in page


def test_cli_help_verbose_and_flags(h5ad, capsys, tmp_path):
    d, data, genes, _ = h5ad
    from attreg_sc.cli import _parser

    help_text = _parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--n-hidden", "--n-layers", "--likelihood", "--patience", "--allow-non-integer"):
        assert flag in help_text
    assert "(default: 30.0)" in help_text  # defaults shown
    for action in _parser()._subparsers._group_actions[0].choices["train"]._actions:
        assert action.help, action.dest  # every option explained
    # -v after the subcommand, and markers refuses options it would ignore
    argv = ["markers", data, "--label", "gt_state", "--n-top", 3, "--out", tmp_path / "m.gmt"]
    assert run([*argv, "-v"], capsys)[0] == 0
    with pytest.raises(SystemExit):
        run([*argv, "--batch-key", "batch"], capsys)
    # an error's suggested fix is a flag that exists
    import anndata as ad

    adata = ad.read_h5ad(data)
    adata.X = adata.X * 0.5
    adata.write_h5ad(tmp_path / "half.h5ad")
    code, _, err = run(["train", tmp_path / "half.h5ad", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "--allow-non-integer" in err
    argv = ["train", tmp_path / "half.h5ad", "--allow-non-integer", "--max-epochs", 1]
    assert run([*argv, "--no-progress", "--out", tmp_path / "o"], capsys)[0] == 0


def test_fssf_checks_layer_and_batch_key_against_the_model(h5ad, capsys):
    d, data, genes, _ = h5ad
    out = d / "run_k"
    argv = ["train", data, "--genes", genes, "--batch-key", "batch", "--max-epochs", 1]
    assert run([*argv, "--n-latent", 2, "--no-progress", "--out", out], capsys)[0] == 0
    argv = ["fssf", out / "model", data, "--genes", genes, "--cell-type-key", "cell_type"]
    argv += ["--n-random", 1, "--no-progress", "--out", d / "f.csv"]
    assert run([*argv, "--batch-key", "batch"], capsys)[0] == 0  # the model's own: accepted
    code, _, err = run([*argv, "--batch-key", "cell_type"], capsys)
    assert code == 2 and "--batch-key cell_type differs from the model's ('batch'" in err


def test_scvi_tools_flag_is_accepted_and_per_group_gts_train(h5ad, capsys):
    """--scvi-tools (attreg 0.1) is a no-op now; a per-group GT (MI markers within each
    cell type) trains through the CLI."""
    d, data, genes, _ = h5ad
    argv = ["train", data, "--genes", genes, "--batch-key", "batch", "--scvi-tools"]
    assert run([*argv, "--max-epochs", 1, "--no-progress", "--out", d / "flag"], capsys)[0] == 0
    argv = ["train", data, "--markers-by", "batch", "--markers-groupby", "cell_type"]
    argv += ["--n-markers", 5, "--batch-key", "batch", "--max-epochs", 1]
    assert run([*argv, "--n-latent", 2, "--no-progress", "--out", d / "grouped"], capsys)[0] == 0
    history = pd.read_csv(d / "grouped" / "history.csv")
    assert np.isfinite(history["attribution"]).all()


def test_convert_refits_a_model_of_the_hand_written_scare(tmp_path, capsys):
    """Files of attreg 0.1's hand-written SCARE are refused by SCARE.load with the command
    that converts them; the command re-fits the model from the file's settings and GTs."""
    from pathlib import Path

    legacy = Path(__file__).parent / "data" / "legacy"
    adata = asc.datasets.synthetic(n_cells=200, n_genes=30, n_gt_genes=6, seed=0)
    with pytest.raises(asc.ModelFileError, match="attreg-sc convert"):
        asc.SCARE.load(legacy / "old_scare", adata)
    argv = ["convert", legacy / "old_scare", tmp_path / "new", "--data", legacy / "data.h5ad"]
    code, text, err = run([*argv, "--max-epochs", 2, "--no-progress"], capsys)
    assert code == 0, err
    new = asc.SCARE.load(tmp_path / "new", adata)
    assert new.prior_settings.w_attr == 5.0 and new.module.n_latent == 3
    assert new.module.n_hidden == 16 if hasattr(new.module, "n_hidden") else True
    assert list(new.prior_config.ground_truths) == ["gt"]
    assert new.registry_["setup_args"]["batch_key"] == "batch"
    code, _, err = run(["convert", legacy / "old_scarevi", tmp_path / "x", "--data",
                        legacy / "data.h5ad"], capsys)
    assert code == 2 and "load it with SCARE.load" in err


def test_legacy_scarevi_files_load_into_scare():
    from pathlib import Path

    legacy = Path(__file__).parent / "data" / "legacy"
    adata = asc.datasets.synthetic(n_cells=200, n_genes=30, n_gt_genes=6, seed=0)
    model = asc.SCARE.load(legacy / "old_scarevi", adata)
    np.testing.assert_allclose(
        model.get_latent_representation(), np.load(legacy / "old_scarevi_latent.npy"), atol=1e-6
    )
    assert model.prior_settings.w_attr == 5.0


def test_references_within_a_column_train_and_reload(h5ad, capsys):
    """--references-within registers the column as the labels and draws EG references
    within them; the saved model carries both; a missing column is named."""
    d, data, genes, _ = h5ad
    argv = ["train", data, "--genes", genes, "--batch-key", "batch", "--max-epochs", 1,
            "--n-latent", 2, "--no-progress"]
    code, _, err = run([*argv, "--references-within", "cell_type", "--out", d / "within"], capsys)
    assert code == 0, err
    import anndata as ad

    model = asc.SCARE.load(d / "within" / "model", ad.read_h5ad(data))
    assert model.prior_settings.references == "label"
    assert model.registry_["setup_args"]["labels_key"] == "cell_type"
    code, _, err = run([*argv, "--references-within", "no_such", "--out", d / "bad"], capsys)
    assert code != 0 and "no_such" in err
