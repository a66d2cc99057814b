"""A prototype panel selector with stochastic gates on the encoder's input (issue 29).

PERSIST-style selection (Covert et al. 2023; the concrete autoencoder of Abid et al. 2019):
every gene's input to the encoder passes a gate, a relaxed Bernoulli variable with
learned open probability ``p_g``; the number of open gates ``sum_g p_g`` is held to a
budget by a Lagrange multiplier (dual ascent on ``log lambda``), and the budget steps
down through the panel sizes (largest first). The model that reads only the open genes
must still reconstruct every gene of the pool and tell the cell types apart (a linear
classifier on the latent mean). Panels are nested: the smallest size takes the genes
most open at its budget, each larger size adds the most open at its own.

Not part of attreg_sc: a benchmark prototype (a plain torch VAE, not scvi-tools), to find
out on the development set whether gates beat the attribution ranking before anything is
built into :mod:`attreg_sc.panel` (``benchmarks/bench_panels.py --methods gates_*``).

Settings (fixed when the prototype was written, not tuned): 1 hidden layer of 128 with
LayerNorm, 10 latent dimensions, batch 128, Adam (lr 1e-3 for the model, 1e-2 for the
gate logits, which start at 3, i.e. open), temperature 0.5, classification loss weight
100, ``log lambda`` from -4 in steps of 0.01, 1,500 steps per panel size.
``reconstruction``: ``"nb"`` (negative binomial of the counts, library size observed,
a VAE) or ``"log"`` (half the squared error of the log-normalized expression, divided by
a tenth of the genes' mean variance; the space spapros' kNN graph is built in; a plain
autoencoder). ``redundancy``: 0 (rank by openness) or 1
(:func:`attreg_sc.panel.greedy_panel` over the summed openness of all budgets with the
correlation discount, as attreg_sc's default ranking uses it).

The committed ``gates_*`` rows were run with a local copy of the negative-binomial
log-likelihood (the same formula, ``eps`` 1e-8), since replaced by attreg_sc's
:func:`attreg_sc.distributions.negative_binomial_log_prob`; the two agree within 1e-6 on
counts of this size, so a rerun reproduces the rows up to float rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from attreg_sc.distributions import negative_binomial_log_prob

HIDDEN, LATENT, BATCH, STEPS, TAU, W_CLASS = 128, 10, 128, 1500, 0.5, 100.0


def gate_openness(counts, labels: np.ndarray, sizes: Sequence[int], seed: int = 0,
                  reconstruction: str = "nb") -> dict[int, np.ndarray]:
    """``{budget: p}``: each gene's gate open probability at the end of its budget's stage.

    Parameters
    ----------
    counts
        ``(cells, genes)`` raw counts (dense or sparse).
    labels
        ``(cells,)`` cell types.
    sizes
        Panel sizes (budgets), in any order.
    seed
        Seeds torch and the minibatch draws.
    reconstruction
        ``"nb"`` or ``"log"`` (see the module docstring).
    """
    if reconstruction not in ("nb", "log"):
        raise ValueError(f"reconstruction must be 'nb' or 'log', got {reconstruction!r}.")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(np.asarray(counts.todense() if sp.issparse(counts) else counts,
                                    dtype=np.float32))
    n, g = x.shape
    y = torch.from_numpy(np.unique(labels, return_inverse=True)[1]).long()
    lib = x.sum(1, keepdim=True)
    x_in = torch.log1p(x)
    x_log = torch.log1p(x / lib * 1e4)
    scale = float(x_log.var(0).mean()) * 0.1
    enc = nn.Sequential(nn.Linear(g, HIDDEN), nn.LayerNorm(HIDDEN), nn.ReLU(),
                        nn.Linear(HIDDEN, 2 * LATENT))
    dec = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.LayerNorm(HIDDEN), nn.ReLU(),
                        nn.Linear(HIDDEN, g))
    classify = nn.Linear(LATENT, int(y.max()) + 1)
    log_theta = nn.Parameter(torch.zeros(g))
    logits = nn.Parameter(torch.full((g,), 3.0))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters(), *classify.parameters(),
                            log_theta], lr=1e-3)
    gate_opt = torch.optim.Adam([logits], lr=1e-2)
    log_lam = torch.tensor(-4.0)
    out = {}
    for budget in sorted(sizes, reverse=True):
        for _ in range(STEPS):
            idx = torch.from_numpy(rng.choice(n, BATCH, replace=False))
            p = torch.sigmoid(logits)
            u = torch.rand(g).clamp(1e-6, 1 - 1e-6)
            gate = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / TAU)
            mean, log_var = enc(x_in[idx] * gate).chunk(2, -1)
            if reconstruction == "nb":
                z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
                kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum(-1).mean()
                mu = lib[idx] * torch.softmax(dec(z), -1)
                rec = -negative_binomial_log_prob(x[idx], mu, log_theta.exp()).sum(-1).mean() + kl
            else:
                rec = 0.5 * ((dec(mean) - x_log[idx]) ** 2).sum(-1).mean() / scale
            n_open = p.sum()
            loss = (rec + W_CLASS * F.cross_entropy(classify(mean), y[idx])
                    + log_lam.exp() * n_open)
            opt.zero_grad()
            gate_opt.zero_grad()
            loss.backward()
            opt.step()
            gate_opt.step()
            with torch.no_grad():
                log_lam += 0.01 * torch.sign(n_open - budget)
        out[budget] = torch.sigmoid(logits).detach().numpy().copy()
    return out


def gate_panel(counts, labels: np.ndarray, sizes: Sequence[int], seed: int = 0,
               reconstruction: str = "nb", redundancy: float = 0.0) -> list[int]:
    """Nested gene ranking of length ``max(sizes)`` (gene indices, best first).

    Parameters
    ----------
    counts, labels, sizes, seed, reconstruction
        As in :func:`gate_openness`.
    redundancy
        0: the smallest size's most open genes, then each larger size's; otherwise the
        exponent of :func:`attreg_sc.panel.greedy_panel`'s correlation discount over the
        summed openness.
    """
    from attreg_sc._threads import torch_threads_unchanged
    from attreg_sc.panel import _log_normalized, greedy_panel

    with torch.random.fork_rng(), torch_threads_unchanged():
        torch.set_num_threads(1)
        open_at = gate_openness(counts, labels, sizes, seed, reconstruction)
    n_max = max(sizes)
    if redundancy > 0:
        ranked, _ = greedy_panel(sum(open_at.values())[:, None], [0], n_max,
                                 expression=_log_normalized(counts), redundancy=redundancy)
        return [int(i) for i in ranked]
    ranked: list[int] = []
    for budget in sorted(sizes):
        for gene in np.argsort(-open_at[budget], kind="stable"):
            if len(ranked) >= budget:
                break
            if int(gene) not in ranked:
                ranked.append(int(gene))
    return ranked
