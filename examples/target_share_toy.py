"""Target shares on a small MLP: the dual-ascent multiplier with the constraint's exact
penalty (attreg's ``target_share``) against GECO's linear form, and a fixed weight, for
ground truths of 3 and 15 of 30 features.

The task uses every feature alike (y = sum_j x_j), so the share of attribution on a GT of
k features is about k / 30 without a prior. Prints, every 100 steps, the multiplier and
the moving average of the GT share, then the final share of the prior's own attributions
(one EG draw per row, what the target constrains) and of a post-hoc EG with 8 draws.

Run::

    python examples/target_share_toy.py [--steps 1500]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import attreg
from attreg.constraint import ShareConstraint, ShareTarget

D = 30


def share_of(a: torch.Tensor, gt: torch.Tensor) -> float:
    a = a.detach().abs()
    return float(((a * gt).sum(1) / a.sum(1).clamp_min(1e-12)).mean())


def run(n_gt: int, target: float, form: str, steps: int) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 32), nn.Tanh(), nn.Linear(32, 1))
    gt = torch.zeros(D)
    gt[:n_gt] = 1.0
    common = dict(reparameterizer="share", loss="outside_share",
                  generator=torch.Generator().manual_seed(0))
    if form == "target_share":  # attreg: lambda * max(0, target - share)
        prior = attreg.AttributionPrior(model, gt, target_share=target, **common)
        constraint = prior.constraint
    else:  # GECO's form, lambda * (1 - share); or a fixed weight of 30
        prior = attreg.AttributionPrior(model, gt, weight=1.0, **common)
        constraint = ShareConstraint(ShareTarget(target)) if form == "geco" else None
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    trace = []
    for step in range(steps):
        x = torch.randn(128, D, generator=g)
        l_a = prior(x)
        if form == "geco":
            weighted = constraint.weight(l_a) * l_a
            constraint.update(1.0 - l_a.detach())
        elif form == "fixed":
            weighted = 30.0 * l_a
        else:
            weighted = l_a
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)) + weighted
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 and constraint is not None:
            trace.append(f"{constraint.multiplier:.3g}/{float(constraint.share_average):.2f}")
    x = torch.randn(2048, D, generator=torch.Generator().manual_seed(7))
    prior.eval()
    own = share_of(prior.attributions(x), gt)
    eg = attreg.ExpectedGradients(model).attribute(
        x, references=x, n_samples=8, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)))
    return dict(own=own, posthoc=share_of(eg, gt), mse=mse, trace=" ".join(trace))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    args = p.parse_args(argv)
    results = {}
    print("| GT features | target | form | share (prior's EG) | share (EG, 8 draws) | "
          "task MSE | weight/share every 100 steps |")
    print("|---|---|---|---|---|---|---|")
    for n_gt in (3, 15):
        for form in ("fixed", "geco", "target_share"):
            r = results[(n_gt, form)] = run(n_gt, 0.8, form, args.steps)
            target = "-" if form == "fixed" else "0.8"
            print(f"| {n_gt} of {D} | {target} | {form} | {r['own']:.3f} | {r['posthoc']:.3f} | "
                  f"{r['mse']:.2f} | {r['trace'] or '(weight 30)'} |")
    return results


if __name__ == "__main__":
    main()
