"""What every benchmark command shares: a median timer and the ``--json`` output."""

from __future__ import annotations

import json
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


def write_json(rows: object, path: str | None) -> None:
    """Write the benchmark's figures to ``path`` (the ``--json`` option); nothing if None."""
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=2)
