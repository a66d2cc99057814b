"""Multi-process data-parallel training with ``torch.distributed`` DDP.

Every process holds the same AnnData (in memory or backed) and the same model; each
global minibatch (the same on every rank: the order comes from the seed) is split into
one shard per rank (``idx[rank::world_size]``). ``DistributedDataParallel`` averages the
gradients, so a step equals a single-process step on the global minibatch up to the
randomness drawn per shard (reparameterization noise, dropout, EG references), which
each rank draws from its own seeded stream. The attribution prior's
``autograd.grad(..., create_graph=True)`` only differentiates with respect to the
attribution points, so DDP's gradient hooks fire once, in the final ``backward``.

Launch (CPU: gloo; GPU: nccl, one process per GPU)::

    torchrun --nproc-per-node 2 examples/train_ddp.py data.h5ad --batch-key batch
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 examples/train_ddp.py data.h5ad

Examples
--------
>>> import attreg_sc.train.distributed as D
>>> D.shard(list(range(10)), rank=1, world_size=3)
[1, 4, 7]
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from attreg_sc.train.trainer import (
    TrainingPlan,
    _split,
    make_optimizer,
    minibatch,
    training_step,
)

__all__ = ["shard", "train_data_parallel"]

logger = logging.getLogger(__name__)


def shard(indices, rank: int, world_size: int):
    """The part of a global minibatch that ``rank`` processes."""
    return indices[rank::world_size]


def train_data_parallel(model, plan: TrainingPlan) -> dict[str, list[float]]:
    """Train a :class:`~attreg_sc.SCARE` model with DDP in an initialised process group.

    ``plan.batch_size`` is the *global* minibatch size. Returns this rank's history (mean
    terms of its shards per epoch). No validation split or early stopping (the
    validation loss would need a gather); checkpoints are written by rank 0.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: launch with torchrun, or call "
            "torch.distributed.init_process_group('gloo' or 'nccl') first."
        )
    rank, world = dist.get_rank(), dist.get_world_size()
    data, module = model.data, model.module
    rng = np.random.default_rng(plan.seed)  # same global order on every rank
    torch.manual_seed(plan.seed + 1000 * rank)  # per-shard noise and dropout
    if model.priors is not None:
        model._generator.manual_seed(plan.seed + 1000 * rank)
    train_idx, _ = _split(data.n_cells, 0.0, rng)
    codes = torch.from_numpy(data.batch_codes)
    device = model.device
    ddp = DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )
    # the fused CPU Adam kernel made about 3 in 100 gloo processes abort at interpreter
    # exit, after training ("terminate called without an active exception"; 0 in 220
    # with the per-tensor loop): fused on CUDA only
    opt = make_optimizer(ddp.parameters(), plan, fused=device.type == "cuda")
    prior = model._prior_loss if model.priors is not None and plan.w_attribution > 0 else None
    history: dict[str, list[float]] = {
        k: [] for k in ("loss", "reconstruction", "kl", "attribution")
    }
    for epoch in range(plan.max_epochs):
        ddp.train()
        order = rng.permutation(train_idx)
        terms = []
        for start in range(0, len(order), plan.batch_size):
            batch = np.sort(order[start : start + plan.batch_size])
            if len(batch) < 2 * world:
                continue  # every shard needs two cells (EG references): same on all ranks
            idx = shard(batch, rank, world)
            terms.append(
                training_step(
                    ddp,
                    opt,
                    *minibatch(data, codes, idx, device),
                    idx,
                    plan,
                    plan.kl_weight(epoch),
                    prior,
                )
            )
        mean = torch.stack(terms).mean(0).tolist()
        for k, v in zip(history, mean, strict=True):
            history[k].append(v)
        logger.info("rank %d epoch %d: %s", rank, epoch, mean)
    module.eval()
    return history
