"""Data-parallel scARE training with Lightning's DDP, as scvi-tools runs it.

One process per device (GPUs: ``--accelerator gpu --devices 4``; CPU processes for a test:
``--accelerator cpu --devices 2``). Lightning starts the other processes itself by running
this script again, so run it as a script (not from a notebook)::

    python examples/train_ddp.py cells.h5ad --batch-key batch --genes gt.txt \\
        --accelerator gpu --devices 4 --out run_ddp

Several nodes: start the script on every node with ``torchrun`` (or SLURM's ``srun``), and
Lightning picks up the cluster environment (docs/scaling.md)::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 examples/train_ddp.py cells.h5ad --devices 4 --num-nodes 2

Each process reads the AnnData (``--backed`` streams rows from disk) and trains on its
share of every epoch's cells (scvi-tools' distributed sampler); DDP averages the
gradients. Rank 0 writes the model folder.
"""

from __future__ import annotations

import argparse
import json
import logging

import anndata as ad
import scvi

import attreg_sc as asc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="AnnData .h5ad with raw counts")
    p.add_argument("--batch-key", default=None)
    p.add_argument("--genes", default=None, help="file with GT genes, one per line")
    p.add_argument("--w-attr", type=float, default=30.0)
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128, help="cells per process and step")
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backed", action="store_true", help="stream rows from disk")
    p.add_argument("--out", default="run_ddp")
    args = p.parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    adata = ad.read_h5ad(args.data, backed="r" if args.backed else None)
    asc.SCARE.setup_anndata(adata, batch_key=args.batch_key)
    gt = open(args.genes).read().split() if args.genes else None
    scvi.settings.seed = args.seed
    model = asc.SCARE(adata, gt=gt, w_attr=args.w_attr, n_latent=args.n_latent, seed=args.seed)
    distributed = args.devices * args.num_nodes > 1
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy="ddp" if distributed else "auto",
        threads=args.threads,
        enable_progress_bar=False,
    )
    trainer = model.trainer
    if trainer.is_global_zero:
        model.save(args.out, overwrite=True)
        summary = {
            "world_size": trainer.world_size,
            "epochs": int(trainer.current_epoch),
            "train_loss": float(trainer.callback_metrics["train_loss"]),
            "reconstruction_loss_train": float(
                trainer.callback_metrics["reconstruction_loss_train"]
            ),
        }
        with open(f"{args.out}/summary.json", "w") as fh:
            json.dump(summary, fh)


if __name__ == "__main__":
    main()
