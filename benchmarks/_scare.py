"""One training step of the one model, outside Lightning (for step benchmarks).

The step is what a Lightning step of ``SCARE.train`` runs: the minibatch's rows gathered
from the registered counts by scvi-tools' own dataset (sparse rows densified), the
training plan's ``training_step`` (module forward, loss, the prior from the captured
encoder inputs, scARE's per-epoch metric bookkeeping), backward, and the plan's own
optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

import attreg_sc as asc


def scare_step(adata, device: str = "cpu", **model_kwargs) -> Callable[[np.ndarray], None]:
    """A step function ``step(cell_indices)`` of a fresh ``SCARE(adata, **model_kwargs)``
    (``adata`` set up with ``SCARE.setup_anndata``)."""
    model = asc.SCARE(adata, **model_kwargs)
    plan = model._training_plan_cls(model.module, prior=model.prior_config, n_epochs_kl_warmup=10)
    plan.to(device).train()
    opt = plan.configure_optimizers()["optimizer"]  # as Lightning builds it
    dataset = model.adata_manager.create_torch_dataset()

    def step(idx: np.ndarray) -> None:
        rows = dataset[np.sort(idx)]  # scvi-tools' row gather (densified)
        tensors = {
            k: torch.from_numpy(np.asarray(v)).to(device, non_blocking=True)
            for k, v in rows.items()
        }
        loss = plan.training_step(tensors, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step
