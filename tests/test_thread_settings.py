"""Library code leaves torch's thread count as the user set it (scanpy's kNN raised it
from 1 to the number of cores, and later training in the process ran differently)."""

import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attreg_sc as asc
from attreg_sc.report import evaluate, write_report
from attreg_sc.train.threads import ThreadPolicy, busy_cores_elsewhere, recommended_threads


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def trained():
    adata = asc.datasets.synthetic(n_cells=240, n_genes=40, n_gt_genes=8, seed=0)
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    gt = adata.var["is_gt"].to_numpy()
    model = asc.SCARE(adata, gt=gt, n_latent=3, seed=0)
    model.train(max_epochs=2, **QUIET)
    return adata, gt, model


ENTRY_POINTS = {
    "SCARE.train": lambda a, gt, m: asc.SCARE(a, gt=gt, n_latent=2).train(max_epochs=1, **QUIET),
    "get_latent_representation": lambda a, gt, m: m.get_latent_representation(),
    "get_attributions": lambda a, gt, m: m.get_attributions(),
    "fssf": lambda a, gt, m: asc.metrics.fssf(m, gt, "cell_type", n_random=2, min_cells=20),
    "leiden_subclusters": lambda a, gt, m: asc.metrics.leiden_subclusters(
        m.get_latent_representation()
    ),
    "markers": lambda a, gt, m: asc.gt.mutual_information_markers(a, "gt_state", None, 5),
    "synthetic": lambda a, gt, m: asc.datasets.synthetic(n_cells=50, n_genes=20, n_gt_genes=4),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_public_entry_points_keep_torch_threads(trained, one_thread, name):
    ENTRY_POINTS[name](*trained)
    assert torch.get_num_threads() == 1, name


def test_evaluation_and_report_keep_torch_threads(trained, one_thread, tmp_path):
    adata, gt, model = trained
    ev = evaluate({"m": model}, gt, "cell_type", adata, n_random=2)
    assert torch.get_num_threads() == 1
    write_report(ev, tmp_path / "report")  # UMAPs per cell type: scanpy's kNN again
    assert torch.get_num_threads() == 1
    assert np.isfinite(ev.summary()["fssf_gt"]).all()


# -- threads= for training ------------------------------------------------------------
@given(busy=st.floats(0, 64), cores=st.integers(1, 64))
def test_recommended_threads_uses_the_free_cores_and_at_least_one(busy, cores):
    n = recommended_threads(busy, cores)
    assert 1 <= n <= cores
    assert n == max(1, cores - int(busy + 0.5))
    assert recommended_threads(busy + 1, cores) <= n  # more load, never more threads


def test_busy_cores_elsewhere_subtracts_this_process_from_the_machine():
    """The measurement's arithmetic on readings the test sets: the machine's busy CPU time
    minus this process's own, per wall second (no dependence on what else runs)."""
    from attreg_sc.train import threads as T

    start, end = T._Sample(), T._Sample()
    start.wall, start.own, start.machine = 100.0, 5.0, (1000.0, 4000.0)
    end.wall, end.own, end.machine = 102.0, 7.0, (1007.0, 4008.0)  # 7 s busy, 2 s ours
    assert busy_cores_elsewhere(start, now=end) == pytest.approx((7.0 - 2.0) / 2.0)
    end.machine = (1001.0, 4008.0)  # less machine time than our own: never negative
    assert busy_cores_elsewhere(start, now=end) == 0.0


def test_busy_cores_elsewhere_sees_a_load_the_test_controls():
    """A child process spinning on a core is load from elsewhere: what it used (its own
    CPU time, measured) is counted, whatever else the machine is doing; this process's
    spinning is not (other load only adds to the measurement)."""
    import multiprocessing
    import resource
    import time

    from attreg_sc.train import threads as T

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = T._Sample()
    child = multiprocessing.get_context("fork").Process(target=spin, args=(1.0,))
    child.start()
    spin(0.5)  # this process spins too
    child.join()
    end = T._Sample()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    measured = busy_cores_elsewhere(start, now=end)
    wall = end.wall - start.wall
    # at least what the child used (tick rounding: 2 ticks of slack), however loaded
    assert measured * wall >= child_cpu - 2 / os.sysconf("SC_CLK_TCK") - 0.05


@pytest.mark.parametrize("setting", [1, "auto"])
def test_training_threads_are_restored(trained, setting):
    from lightning.pytorch.callbacks import Callback

    adata, gt, _ = trained
    before = torch.get_num_threads()
    seen = []

    class Spy(Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    model = asc.SCARE(adata, gt=gt, n_latent=2)
    model.train(max_epochs=2, threads=setting, callbacks=[Spy()], **QUIET)
    assert torch.get_num_threads() == before
    assert seen and (setting == "auto" or set(seen) == {1})


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "all"])
def test_bad_threads_setting(bad):
    with pytest.raises(ValueError, match="threads must be"):
        ThreadPolicy(bad)


def test_cli_threads_option_is_checked(capsys):
    from attreg_sc.cli import main

    with pytest.raises(SystemExit):
        main(["train", "x.h5ad", "--out", "o", "--threads", "0"])
    assert "--threads takes 'auto' or an integer" in capsys.readouterr().err
