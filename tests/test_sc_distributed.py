"""DDP with 2 gloo processes on CPU equals a single process on the same global batches.

Each rank draws its own noise (seed + 1000 * rank); the single-process reference
replays those per-shard streams, sums the shard gradients and divides by the world size,
which is what DDP's gradient averaging computes.
"""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attreg_sc as asc
from attreg_sc.train.distributed import shard, train_data_parallel
from attreg_sc.train.trainer import TrainingPlan, _split, make_optimizer

WORLD, EPOCHS, BATCH, SEED = 2, 2, 32, 0


def make_model():
    adata = asc.datasets.synthetic(n_cells=200, n_genes=40, n_gt_genes=5, seed=1)
    return asc.SCARE(
        adata, batch_key="batch", gt=adata.var["is_gt"].to_numpy(), n_latent=2, seed=SEED
    )


def plan():
    return TrainingPlan(max_epochs=EPOCHS, batch_size=BATCH, w_attribution=100.0, seed=SEED)


def _worker(rank, path):
    dist.init_process_group("gloo", init_method=f"file://{path}.init", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    m = make_model()
    train_data_parallel(m, plan())
    if rank == 0:
        torch.save(m.module.state_dict(), f"{path}.pt")
    dist.barrier()
    dist.destroy_process_group()


def single_process_reference():
    torch.set_num_threads(1)
    m = make_model()
    module, p = m.module, plan()
    rng = np.random.default_rng(p.seed)
    train_idx, _ = _split(m.data.n_cells, 0.0, rng)
    torch_states, gen_states = [], []
    for r in range(WORLD):
        torch.manual_seed(p.seed + 1000 * r)
        torch_states.append(torch.get_rng_state())
        gen_states.append(torch.Generator().manual_seed(p.seed + 1000 * r).get_state())
    opt = make_optimizer(module.parameters(), p, fused=False)  # as DDP on the CPU
    codes = torch.from_numpy(m.data.batch_codes)
    for epoch in range(p.max_epochs):
        module.train()
        order = rng.permutation(train_idx)
        for start in range(0, len(order), p.batch_size):
            batch = np.sort(order[start : start + p.batch_size])
            if len(batch) < 2 * WORLD:
                continue
            opt.zero_grad(set_to_none=True)
            for r in range(WORLD):
                torch.set_rng_state(torch_states[r])
                m._generator.set_state(gen_states[r])
                idx = shard(batch, r, WORLD)
                terms = module(m.data.rows(idx), codes[idx], p.kl_weight(epoch))
                loss = terms["loss"] + p.w_attribution * m._prior_loss(
                    terms["x_in"], codes[idx], idx, terms["h_first"]
                )
                loss.backward()
                torch_states[r] = torch.get_rng_state()
                gen_states[r] = m._generator.get_state()
            for q in module.parameters():
                q.grad /= WORLD
            opt.step()
    return module.state_dict()


def test_ddp_two_gloo_processes_equal_single_process(tmp_path):
    path = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(path,), nprocs=WORLD, join=True)
    ddp_state = torch.load(f"{path}.pt")
    ref = single_process_reference()
    for k, v in ref.items():
        assert torch.allclose(ddp_state[k], v, atol=1e-5, rtol=1e-4), k
    moved = [
        k
        for k in ref
        if k.endswith("weight") and not torch.equal(ref[k], make_model().module.state_dict()[k])
    ]
    assert moved  # training happened


def test_train_data_parallel_needs_a_process_group():
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        train_data_parallel(make_model(), plan())
