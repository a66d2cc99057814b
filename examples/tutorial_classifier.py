"""Tutorial 1: steer an ordinary PyTorch classifier with an attribution prior.

Real data shipped with scikit-learn: the 8 x 8 handwritten digits (1,797 images). The
prior asks the classifier to rely on the *left half* of each image (GT = the 32 left
pixels) and not on the right half. We compare attribution maps before/after and the
accuracy when the right half is blanked out at test time.

Run::

    python examples/tutorial_classifier.py --out docs/figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

import attreg

GT = torch.zeros(8, 8)
GT[:, :4] = 1  # left half
GT = GT.reshape(64)


def load_digits_tensors(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return (
        torch.from_numpy(xtr),
        torch.from_numpy(ytr),
        torch.from_numpy(xte),
        torch.from_numpy(yte),
    )


def train(weight: float, epochs: int, seed: int = 0):
    xtr, ytr, xte, yte = load_digits_tensors(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ELU(), nn.Linear(64, 10))
    # F = the logit of the true class: a per-sample target, like captum's target=
    prior = attreg.AttributionPrior(
        model,
        GT,
        method="eg",
        reparameterizer="share",  # |a| / sum |a|
        loss="outside_share",  # the share of attribution on the right half
        weight=weight,
        generator=torch.Generator().manual_seed(seed),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
            if weight > 0 and epoch >= 2:  # short warm-up without the prior
                loss = loss + prior(xtr[idx], target=ytr[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
        blank = xte.clone().reshape(-1, 8, 8)
        blank[:, :, 4:] = 0
        acc_left = float((model(blank.reshape(-1, 64)).argmax(1) == yte).float().mean())
    attr = attreg.ExpectedGradients(model).attribute(
        xte, target=yte, n_samples=8, generator=torch.Generator().manual_seed(1)
    )
    mass = attr.abs().mean(0)
    share = float(mass[GT.bool()].sum() / mass.sum())
    return {
        "accuracy": acc,
        "accuracy_right_half_blank": acc_left,
        "gt_share": share,
        "mean_abs_attribution": mass.reshape(8, 8).numpy(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--out", default=None, help="folder for the figure")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    res = {"baseline": train(0.0, args.epochs), "prior": train(args.weight, args.epochs)}
    print(f"{'model':<9} {'acc':>6} {'acc (right half blank)':>23} {'share left half':>16}")
    for name, r in res.items():
        print(
            f"{name:<9} {r['accuracy']:>6.3f} {r['accuracy_right_half_blank']:>23.3f} "
            f"{r['gt_share']:>16.3f}"
        )
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        for ax, (name, r) in zip(axes, res.items(), strict=True):
            ax.imshow(r["mean_abs_attribution"], cmap="magma")
            ax.axvline(3.5, color="white", ls="--")
            ax.set_title(f"{name}: share left {r['gt_share']:.2f}")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("mean |EG attribution| per pixel (digits test set)")
        fig.tight_layout()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(args.out) / "tutorial_classifier.png", dpi=110)
    return res


if __name__ == "__main__":
    main()
