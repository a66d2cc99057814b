"""Data-parallel scARE training with torchrun (CPU: gloo; GPUs: nccl, one per process).

Run::

    torchrun --nproc-per-node 2 examples/train_ddp.py cells.h5ad --batch-key batch \\
        --genes gt.txt --batch-size 256 --max-epochs 50 --out run_ddp

Every process reads the AnnData (pass a backed-friendly CSR .h5ad for large data: rows
are streamed), takes its shard of each global minibatch, and DDP averages the gradients;
rank 0 saves the model.
"""

from __future__ import annotations

import argparse
import os

import anndata as ad
import torch
import torch.distributed as dist

import attreg_sc as asc
from attreg_sc.train.distributed import train_data_parallel
from attreg_sc.train.trainer import TrainingPlan


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--batch-key", default=None)
    p.add_argument("--genes", default=None, help="file with GT genes, one per line")
    p.add_argument("--w-attr", type=float, default=100.0)
    p.add_argument("--batch-size", type=int, default=256, help="global minibatch size")
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--backed", action="store_true", help="stream rows from disk")
    p.add_argument("--out", default="run_ddp")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    adata = ad.read_h5ad(args.data, backed="r" if args.backed else None)
    gt = open(args.genes).read().split() if args.genes else None
    model = asc.SCARE(
        adata,
        batch_key=args.batch_key,
        gt=gt,
        w_attr=args.w_attr,
        accelerator=f"cuda:{local}" if cuda else "cpu",
    )
    history = train_data_parallel(
        model,
        TrainingPlan(
            max_epochs=args.max_epochs, batch_size=args.batch_size, w_attribution=args.w_attr
        ),
    )
    if dist.get_rank() == 0:
        model.history = history
        model.is_trained = True
        model.save(args.out, overwrite=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
