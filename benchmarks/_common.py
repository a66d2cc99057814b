"""What every benchmark command shares: timers, the record layout and the ``--json`` output.

Every benchmark returns (and with ``--json PATH`` writes) a list of records, one per row
of its table, each with the keys of :data:`COMMON_KEYS` (``None`` where a figure does not
apply: ``ratio_to_plain`` only where the baseline is a plain training step,
``peak_rss_mb`` only where memory is measured) followed by the benchmark's own keys.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections.abc import Callable


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def interleaved_median_ms(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3, block: int = 1
) -> dict[str, float]:
    """Median wall time (ms) of each ``fns[name]()`` over ``repeats`` calls, the variants
    taking turns so that slow phases of a noisy machine hit them alike.

    ``block`` calls of one variant run back to back (after one untimed call) before the
    next variant's turn: for variants on different runtimes (TensorFlow and PyTorch keep
    separate thread pools, which go idle while the other runs), so that each is timed in
    its steady state rather than with the cost of waking its threads on every call.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(math.ceil(repeats / block)):
        for name, fn in fns.items():
            if block > 1:
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


COMMON_KEYS = ("benchmark", "variant", "batch_size", "median_ms", "ratio_to_plain", "peak_rss_mb")


def record(
    benchmark: str,
    variant: str,
    *,
    batch_size: int | None = None,
    median_ms: float | None = None,
    ratio_to_plain: float | None = None,
    peak_rss_mb: float | None = None,
    **extra: object,
) -> dict:
    """One row of a benchmark: the common keys first, then the benchmark's own."""
    return {
        "benchmark": benchmark,
        "variant": variant,
        "batch_size": batch_size,
        "median_ms": median_ms,
        "ratio_to_plain": ratio_to_plain,
        "peak_rss_mb": peak_rss_mb,
        **extra,
    }


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``title`` and one line per record; ``columns`` are ``(key, header, format
    spec)``, e.g. ``("median_ms", "median ms", ">10.2f")``; ``None`` or absent values print
    blank."""
    widths = [re.match(r"[<>^]?\d*", spec).group() for _, _, spec in columns]
    print(title)
    print(" ".join(f"{head:{w}}" for (_, head, _), w in zip(columns, widths, strict=True)))
    for r in rows:
        cells = [
            f"{'':{w}}" if r.get(key) is None else format(r[key], spec)
            for (key, _, spec), w in zip(columns, widths, strict=True)
        ]
        print(" ".join(cells).rstrip())


def write_json(rows: list[dict], path: str | None) -> None:
    """Write the benchmark's records to ``path`` (the ``--json`` option); nothing if None."""
    for r in rows:
        missing = [k for k in COMMON_KEYS if k not in r]
        if missing:
            raise ValueError(f"benchmark record {r} lacks {missing}; build it with record().")
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=2)
