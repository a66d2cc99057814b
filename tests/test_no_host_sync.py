"""The attribution prior queues its work without host synchronisation (issue #4's GPU
rule): attreg's priors on any module, and the prior scARE's training plan adds to
scvi-tools' step (scvi-tools' own step validates its distributions' arguments, which reads
device values; that part is scvi-tools').

No GPU here, so the ``meta`` device stands in for the accelerator: meta tensors hold no
data, so code that reads a device value on the host (``.item()``, ``bool(t)``,
``nonzero``) cannot run on it, and a dispatch mode records every copy from the CPU to
the device. :func:`attreg.transfer.to_device` is told to treat ``meta`` as it treats CUDA
(pinning is skipped: a pinned buffer needs CUDA); every host-to-device copy must then be a
non-blocking one. A per-cell GT stored as a sparse matrix is the exception: its rows are
sliced on the host (one copy of the minibatch's positions); per-group GTs are gathered on
the device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import attreg
import attreg_sc as asc
from attreg import transfer
from attreg.transfer import to_device

_DATA_DEPENDENT = ("nonzero", "masked_select", "_unique", "unique_consecutive", "_local_scalar")


class HostSyncRecorder(TorchDispatchMode):
    """Records blocking host-to-device copies and host reads of device data."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if any(k in name for k in _DATA_DEPENDENT) and devices - {"cpu"}:
            self.events.append(f"{name} reads a device tensor on the host")
        if name.startswith("aten._to_copy") and args[0].device.type == "cpu":
            target = kwargs.get("device")
            if target is not None and torch.device(target).type != "cpu":
                if not kwargs.get("non_blocking", False):
                    self.events.append(f"blocking copy of {tuple(args[0].shape)} to {target}")
        if name.startswith("aten.copy_") and devices == {"cpu", "meta"} and not args[2:]:
            self.events.append(f"blocking copy_ of {tuple(args[1].shape)}")
        return func(*args, **kwargs)


@pytest.fixture
def meta_as_accelerator(monkeypatch):
    monkeypatch.setattr(transfer, "ASYNC_DEVICE_TYPES", ("cuda", "meta"))
    monkeypatch.setattr(transfer, "_pinned", lambda t: t)


@pytest.fixture(scope="module")
def adata():
    return asc.datasets.synthetic(n_cells=120, n_genes=40, n_cell_types=3, n_gt_genes=8, seed=0)


def _ground_truth(adata, kind: str):
    if kind == "vector":
        return adata.var["is_gt"].to_numpy()
    if kind == "per cell":
        rng = np.random.default_rng(0)
        return asc.gt.from_cell_matrix(adata, rng.random(adata.shape) < 0.2)
    genes = list(adata.var_names)
    groups = sorted(adata.obs["cell_type"].astype(str).unique())
    return asc.gt.from_groups(
        adata, "cell_type", {g: genes[3 * i : 3 * i + 5] for i, g in enumerate(groups)}
    )


def _prior_events(adata, gt_kind="vector", **prior) -> list[str]:
    """Events of the training plan's prior on two minibatches (after one unrecorded call:
    the prior is built lazily, once per run), with the model on the meta device."""
    import scvi

    a = adata.copy()
    asc.SCARE.setup_anndata(a, batch_key="batch")
    scvi.settings.seed = 0
    model = asc.SCARE(a, gt=_ground_truth(a, gt_kind), w_attr=1.0, **prior)
    if gt_kind != "vector":
        model._register_cell_indices()
    loader = model._make_data_loader(a, batch_size=32, shuffle=False)
    batches = [dict(t) for _, t in zip(range(3), loader, strict=False)]
    plan = model._training_plan_cls(model.module, prior=model.prior_config)
    plan.train()
    recorder = HostSyncRecorder()

    def step(tensors, device, record: bool) -> None:
        tensors = {k: to_device(v, device) for k, v in tensors.items()}
        plan._captured = (torch.log1p(tensors["X"]), tensors["batch"])
        plan._first_out = None
        if record:
            with recorder:
                plan._attribution_loss(tensors).backward()
        else:
            plan._attribution_loss(tensors).backward()

    step(batches[0], "cpu", record=False)  # builds the prior (its check reads values)
    plan.to("meta")
    for part in (plan._vector_priors, plan._label_prior):
        if part is not None:
            part.to("meta")
    plan._cell_gts = {
        k: tuple(t.to("meta") for t in g) if isinstance(g, tuple) else g
        for k, g in plan._cell_gts.items()
    }
    for tensors in batches[1:]:
        step(tensors, "meta", record=True)
    return recorder.events


@pytest.mark.parametrize(
    "prior",
    [
        {},
        {"attribution": "ig", "n_steps": 5},
        {"attribution": "eg", "n_samples": 3, "reducer": "mean", "reparameterizer": "sigmoid"},
        {"target": "model", "loss": "mae"},
        {"reducer": "l2"},
        {"reducer": "sum"},
        {"reducer": "per_dimension"},
        {"reducer": "random_direction", "n_directions": 3, "attribution": "ig", "n_steps": 3},
    ],
    ids=["eg", "ig", "eg-k3-mean", "model-target", "l2-autograd", "sum", "per-dim", "ig-3dirs"],
)
def test_the_plans_prior_makes_no_host_synchronisation(adata, meta_as_accelerator, prior):
    assert _prior_events(adata, **prior) == []


def test_per_group_ground_truth_rows_are_gathered_on_the_device(adata, meta_as_accelerator):
    assert _prior_events(adata, "per cell type") == []


def test_the_recorder_sees_a_blocking_copy_and_a_host_read(adata, meta_as_accelerator):
    # a sparse per-cell GT is sliced on the host: the positions are read (on meta: refused)
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        _prior_events(adata, "per cell")
    recorder = HostSyncRecorder()
    with recorder, pytest.raises((RuntimeError, NotImplementedError)):
        bool(torch.ones(3, device="meta").any())
    assert recorder.events == ["aten._local_scalar_dense.default reads a device tensor on the host"]


def test_to_device_keeps_values_and_skips_tensors_already_there():
    t = torch.arange(6.0).reshape(2, 3)
    assert to_device(t, "cpu") is t
    moved = to_device(t, "meta")
    assert moved.device.type == "meta" and moved.shape == t.shape and moved.dtype == t.dtype


def test_output_weights_are_made_on_the_requested_device():
    for reducer in (attreg.reducers.Sum(), attreg.reducers.Mean(), attreg.reducers.Index(1)):
        w = reducer.output_weights(4, "meta")
        assert w.device.type == "meta" and w.shape == (4,)
        assert torch.equal(reducer.output_weights(4), reducer.output_weights(4, "cpu"))


@pytest.mark.parametrize("method", ["eg", "ig", "input_x_gradient"])
@pytest.mark.parametrize("per_sample_gt", [False, True], ids=["gt-vector", "gt-matrix"])
def test_core_prior_on_any_module_makes_no_host_synchronisation(
    meta_as_accelerator, method, per_sample_gt
):
    model = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    vector = (torch.arange(20) < 5).float()
    prior = attreg.AttributionPrior(
        model.to("meta"),
        None if per_sample_gt else vector,
        method=method,
        check_inputs=False,  # validation reads the data: done once, before training
        generator=torch.Generator().manual_seed(0),  # draws on the CPU, copied async
    ).to("meta")
    x = torch.randn(8, 20, device="meta")
    gt = vector.expand(8, 20).to("meta") if per_sample_gt else None
    recorder = HostSyncRecorder()
    with recorder:
        loss = prior(x) if gt is None else prior(x, gt=gt)
        loss.backward()
    assert recorder.events == []
