"""A run's outputs are one unit: staged, renamed into place, locked, never over an input;
``attreg-sc train`` refuses an existing folder, resumes an interrupted run, and leaves
nothing half-written behind after a failure (kills, full disks, concurrent writers)."""

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import attreg_sc as asc
from attreg_sc._io import read_safe_payload
from attreg_sc.cli import main
from attreg_sc.output_folder import OutputFolder, OutputFolderError


def load_checkpoint(path):
    return read_safe_payload(path, "checkpoint")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- OutputFolder -------------------------------------------------------------------
def test_success_renames_the_staged_folder_into_place(tmp_path):
    with OutputFolder(tmp_path / "run") as staging:
        assert staging.name == ".run.partial"
        (staging / "a.txt").write_text("a")
        assert not (tmp_path / "run").exists()  # nothing visible before the end
    assert listing(tmp_path) == ["run"]  # no staging folder, no lock left
    assert (tmp_path / "run" / "a.txt").read_text() == "a"


def test_an_error_leaves_no_partial_output(tmp_path):
    with pytest.raises(RuntimeError), OutputFolder(tmp_path / "run") as staging:
        (staging / "a.txt").write_text("a")
        raise RuntimeError("failed mid-run")
    assert listing(tmp_path) == []


def test_an_error_keeps_only_the_checkpoint_for_a_resume(tmp_path):
    folder = OutputFolder(tmp_path / "run")
    with pytest.raises(RuntimeError), folder as staging:
        folder.checkpoint.write_bytes(b"ckpt")
        (staging / "model").mkdir()
        raise RuntimeError
    assert listing(tmp_path) == [".run.partial"]
    assert listing(tmp_path / ".run.partial") == ["checkpoint.pt"]
    with pytest.raises(OutputFolderError, match="--resume to continue it"):
        OutputFolder(tmp_path / "run").__enter__()
    with OutputFolder(tmp_path / "run", resume=True) as staging:
        assert (staging / "checkpoint.pt").read_bytes() == b"ckpt"
    assert listing(tmp_path) == ["run"] and listing(tmp_path / "run") == []


def test_existing_folder_is_replaced_only_with_overwrite_and_only_at_the_end(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("old")
    with pytest.raises(OutputFolderError, match="exists; pass --overwrite"):
        OutputFolder(tmp_path / "run").__enter__()
    with OutputFolder(tmp_path / "run", overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (tmp_path / "run" / "old.txt").exists()  # the old run stays until the end
    assert listing(tmp_path) == ["run"]
    assert listing(tmp_path / "run") == ["new.txt"]


@pytest.mark.parametrize("where", ["the folder itself", "a link to the folder", "a parent"])
def test_a_folder_holding_an_input_is_never_written(tmp_path, where):
    (tmp_path / "in" / "deep").mkdir(parents=True)
    data = tmp_path / "in" / "deep" / "data.h5ad"
    data.write_bytes(b"input")
    out = {
        "the folder itself": tmp_path / "in" / "deep",
        "a link to the folder": tmp_path / "link",
        "a parent": tmp_path / "in",
    }[where]
    (tmp_path / "link").symlink_to(tmp_path / "in" / "deep")
    with pytest.raises(OutputFolderError, match="holds the input"):
        OutputFolder(out, overwrite=True, inputs=[data]).__enter__()
    assert data.read_bytes() == b"input"


def test_two_runs_cannot_share_an_output_folder(tmp_path):
    first = OutputFolder(tmp_path / "run")
    first.__enter__()
    with pytest.raises(OutputFolderError, match="another run is writing"):
        OutputFolder(tmp_path / "run", overwrite=True).__enter__()
    first.__exit__(None, None, None)
    assert listing(tmp_path) == ["run"]


def test_unwritable_destination_and_missing_space_fail_before_the_run(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputFolderError, match="cannot write to"):
        OutputFolder(tmp_path / "file" / "run").__enter__()
    with pytest.raises(OutputFolderError, match="is a file"):
        OutputFolder(tmp_path / "file").__enter__()
    with pytest.raises(OutputFolderError, match="MiB free"):
        OutputFolder(tmp_path / "run", needed_bytes=2**62).__enter__()
    assert listing(tmp_path) == ["file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_parent_fails_before_the_run(tmp_path):  # pragma: no cover - CI not root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="cannot write to"):
            OutputFolder(ro / "run").__enter__()
    finally:
        ro.chmod(0o700)


def test_nothing_to_resume(tmp_path):
    with pytest.raises(OutputFolderError, match="nothing to resume"):
        OutputFolder(tmp_path / "run", resume=True).__enter__()
    assert listing(tmp_path) == []


# -- attreg-sc train -----------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    adata = asc.datasets.synthetic(n_cells=200, n_genes=40, n_gt_genes=8, seed=0)
    adata.write_h5ad(d / "data.h5ad")
    (d / "gt.txt").write_text("\n".join(adata.var_names[:8]))
    return d


def train_args(d: Path, out, *extra) -> list[str]:
    return [
        "train",
        str(d / "data.h5ad"),
        "--genes",
        str(d / "gt.txt"),
        "--max-epochs",
        "2",
        "--n-latent",
        "2",
        "--no-progress",
        "--out",
        str(out),
        *map(str, extra),
    ]


def test_cli_refuses_to_write_over_its_inputs_or_an_existing_run(inputs, tmp_path, capsys):
    before = {p.name: sha(p) for p in inputs.iterdir() if p.is_file()}
    assert main(train_args(inputs, inputs, "--overwrite")) == 2
    assert "holds the input" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(train_args(inputs, out)) == 0
    first = sha(out / "model" / "model.pt")
    assert main(train_args(inputs, out, "--seed", 1)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sha(out / "model" / "model.pt") == first  # untouched
    assert main(train_args(inputs, out, "--seed", 1, "--overwrite")) == 0
    assert sha(out / "model" / "model.pt") != first
    assert listing(tmp_path) == ["run"]
    assert listing(out) == ["adata.h5ad", "history.csv", "model", "run.json"]
    assert {p.name: sha(p) for p in inputs.iterdir() if p.is_file()} == before
    # a report may not replace the folder of a model it reads
    report = ["report", "--model", f"m={out / 'model'}", inputs / "data.h5ad"]
    report += ["--genes", inputs / "gt.txt", "--cell-type-key", "cell_type", "--overwrite"]
    assert main([*map(str, report), "--out", str(out)]) == 2
    assert "holds the input" in capsys.readouterr().err
    assert listing(out) == ["adata.h5ad", "history.csv", "model", "run.json"]


@pytest.mark.parametrize("command", ["markers", "fssf"])
def test_cli_output_file_may_not_be_an_input(inputs, command, capsys):
    data = inputs / "data.h5ad"
    before = sha(data)
    argv = {
        "markers": ["markers", data, "--label", "cell_type"],
        "fssf": [
            "fssf",
            inputs,
            data,
            "--cell-type-key",
            "cell_type",
            "--genes",
            inputs / "gt.txt",
        ],
    }[command]
    assert main([*map(str, argv), "--out", str(data)]) == 2
    assert "is the input" in capsys.readouterr().err
    assert sha(data) == before


def _limited(limit: int):
    def pre():  # a file-size limit stands in for a full disk: writes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return pre


CLI = [sys.executable, "-m", "attreg_sc.cli"]


@pytest.mark.parametrize(
    ("limit", "extra", "code", "message"),
    [
        (20_000, [], 1, "could not be read or written"),  # the first checkpoint fails
        (100_000, ["--checkpoint-every", 100], 2, "could not write the outputs"),  # the h5ad
    ],
    ids=["checkpoint", "h5ad"],
)
def test_full_disk_gives_a_clear_error_and_no_partial_output(
    inputs, tmp_path, limit, extra, code, message
):
    out = tmp_path / "run"
    run = subprocess.run(
        CLI + train_args(inputs, out, *extra),
        preexec_fn=_limited(limit),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == code, run.stderr  # not a crash (SIGSEGV gave -11)
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert listing(tmp_path) == []


@pytest.mark.slow
def test_killed_cli_run_leaves_only_its_checkpoint_and_resumes(inputs, tmp_path):
    out = tmp_path / "run"
    argv = train_args(inputs, out)
    argv[argv.index("--max-epochs") + 1] = "400"
    proc = subprocess.Popen(CLI + argv, stderr=subprocess.PIPE)
    staging = tmp_path / ".run.partial" / "checkpoint.pt"
    try:
        deadline = time.time() + 120
        while not (staging.exists() and load_checkpoint(staging)["epoch"] >= 1):
            assert time.time() < deadline and proc.poll() is None, "no checkpoint written"
            time.sleep(0.01)
        # a second run into the same folder is refused while the first holds the lock
        other = subprocess.run(CLI + argv + ["--overwrite"], capture_output=True, text=True)
        assert other.returncode == 2 and "another run is writing" in other.stderr
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not out.exists()
    assert listing(tmp_path / ".run.partial") == ["checkpoint.pt"]
    epoch = load_checkpoint(staging)["epoch"]
    changed = subprocess.run(
        CLI + argv + ["--resume", "--batch-size", "64"], capture_output=True, text=True
    )
    assert changed.returncode == 2 and "batch_size: checkpoint '128', now '64'" in changed.stderr
    argv[argv.index("--max-epochs") + 1] = str(epoch + 3)
    done = subprocess.run(CLI + argv + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert listing(tmp_path) == ["run"]
    assert len((out / "history.csv").read_text().splitlines()) == epoch + 3 + 1
