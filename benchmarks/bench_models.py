"""Cost of an attribution prior on models other than MLPs: MLP, CNN, GRU, LSTM, transformer.

For each model, a plain training step (task loss, backward, Adam) and the same step with
an Expected Gradients prior (k = 1, references from the minibatch, share +
outside_share), taking turns in blocks so that both are timed in their steady state;
the ratio is prior / plain of the same run. The recurrent rows also time a step whose
prior takes its attributions at the recurrent layer's input with ``torch.backends``'
defaults, and the LSTM is profiled (``--profile``) to show where its time goes.

Run::

    python benchmarks/bench_models.py [--steps 20] [--threads 2] [--profile] [--json out.json]
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved_median_ms, print_table, record, write_json
from torch import nn

import attreg


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module], n_in: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.rnn = cell(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class Transformer(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True)
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(1))


def models(batch: int) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {
        "MLP (1000-128-2)": (
            nn.Sequential(nn.Linear(1000, 128), nn.ELU(), nn.Linear(128, 2)),
            torch.randn(batch, 1000, generator=g),
        ),
        "CNN (1x28x28)": (
            nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1),
                nn.ELU(),
                nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1),
                nn.ELU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(32 * 7 * 7, 2),
            ),
            torch.randn(batch, 1, 28, 28, generator=g),
        ),
        "GRU (30 steps x 8)": (Recurrent(nn.GRU), torch.randn(batch, 30, 8, generator=g)),
        "LSTM (30 steps x 8)": (Recurrent(nn.LSTM), torch.randn(batch, 30, 8, generator=g)),
        "Transformer (10 x 32)": (Transformer(), torch.randn(batch, 10, 32, generator=g)),
    }


def steps(model: nn.Module, x: torch.Tensor):
    y = torch.randint(0, 2, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    gt = torch.zeros(x[0].numel())
    gt[: gt.numel() // 4] = 1
    prior = attreg.AttributionPrior(
        model,
        gt,
        reparameterizer="share",
        loss="outside_share",
        generator=torch.Generator().manual_seed(0),
        check_inputs=False,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def with_prior() -> None:
        opt.zero_grad(set_to_none=True)
        (nn.functional.cross_entropy(model(x), y) + prior(x, target=y)).backward()
        opt.step()

    return plain, with_prior


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="profile the LSTM prior step")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    attreg.retain_freed_cpu_memory()
    rows = []
    for name, (model, x) in models(args.batch).items():
        plain, with_prior = steps(model.train(), x)
        ms = interleaved_median_ms({"plain": plain, "prior": with_prior}, args.steps, block=3)
        rows.append(
            record(
                "models",
                name,
                batch_size=args.batch,
                median_ms=ms["prior"],
                ratio_to_plain=ms["prior"] / ms["plain"],
                plain_ms=ms["plain"],
            )
        )
    print_table(
        f"training step with an EG prior (k=1, share) vs plain, batch {args.batch}, "
        f"threads={args.threads}, torch {torch.__version__}; median of {args.steps} steps",
        rows,
        [
            ("variant", "model", "<24"),
            ("plain_ms", "plain ms", ">9.2f"),
            ("median_ms", "prior ms", ">9.2f"),
            ("ratio_to_plain", "x plain", ">8.2f"),
        ],
    )
    if args.profile:
        model, x = models(args.batch)["LSTM (30 steps x 8)"]
        _, with_prior = steps(model.train(), x)
        for _ in range(3):
            with_prior()
        with torch.profiler.profile() as prof:
            for _ in range(5):
                with_prior()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
