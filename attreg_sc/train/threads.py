"""How many CPU threads a training run uses: fixed, or fitted to what the machine has free.

torch's CPU build runs its intra-op threads on GNU OpenMP, whose idle threads spin
before they sleep. On an idle machine that makes each of a training step's many short
parallel regions start at once (2 threads: 1.47x faster than 1 on the project's 2-core
machine). When other processes want the same cores, the spinning threads take the cores
from the thread doing the work: next to another PyTorch job, the demo's step went from
15 ms to 177 ms with torch's defaults and to 58 ms with one thread
(``benchmarks/bench_contention.py``). ``OMP_WAIT_POLICY=PASSIVE`` avoids the spinning,
but costs the idle machine as much as one thread does (1.49x), so it is not a default.

``threads="auto"`` measures the CPU time other processes use (``/proc/stat`` minus this
process's own CPU time; the load average where ``/proc`` is absent) and uses the cores
they leave free, at least one; it measures again after every epoch and follows the
machine. The thread count is restored when training ends.

Examples
--------
>>> recommended_threads(busy_elsewhere=0.2, n_cores=8)
8
>>> recommended_threads(busy_elsewhere=3.0, n_cores=4)
1
"""

from __future__ import annotations

import logging
import os
import time

import torch

__all__ = ["ThreadPolicy", "available_cores", "busy_cores_elsewhere", "recommended_threads"]

logger = logging.getLogger(__name__)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def recommended_threads(busy_elsewhere: float, n_cores: int | None = None) -> int:
    """Threads for the cores other processes leave free: ``n_cores - busy``, at least 1.

    A core counts as taken once other processes use more than half of it.
    """
    n_cores = available_cores() if n_cores is None else n_cores
    taken = int(max(0.0, busy_elsewhere) + 0.5)
    return max(1, min(n_cores, n_cores - taken))


def _proc_stat() -> tuple[float, float] | None:
    """``(busy, total)`` CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class _Sample:
    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.own = time.process_time()
        self.machine = _proc_stat()


def busy_cores_elsewhere(
    since: _Sample | None = None, interval: float = 0.2, now: _Sample | None = None
) -> float:
    """Cores' worth of CPU time other processes used since ``since`` (or over the next
    ``interval`` seconds) until ``now`` (default: now): machine-wide busy time minus this
    process's own CPU time (its spinning OpenMP threads included) per wall second.
    Without ``/proc/stat``: the 1-minute load average minus this process's threads.

    Parameters
    ----------
    since
        The earlier reading (``None``: take one, then wait ``interval``).
    interval
        Seconds to measure over when ``since`` is ``None``.
    now
        The later reading (``None``: take it now).
    """
    if since is None:
        since = _Sample()
        time.sleep(interval)
    now = _Sample() if now is None else now
    if since.machine is None or now.machine is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover
            return 0.0
        return max(0.0, load - torch.get_num_threads())
    wall = max(now.wall - since.wall, 1e-3)
    busy = now.machine[0] - since.machine[0]
    own = now.own - since.own
    return max(0.0, (busy - own) / wall)


class ThreadPolicy:
    """Set torch's thread count for a training run and restore it at the end.

    Parameters
    ----------
    threads
        ``None``: leave the process's setting alone. An int: that many threads.
        ``"auto"``: the cores other processes leave free, measured at the start and after
        every epoch (:func:`recommended_threads`).
    """

    def __init__(self, threads: int | str | None) -> None:
        if threads is not None and threads != "auto":
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(
                    f"threads must be None (leave torch's setting), 'auto' or an integer "
                    f">= 1, got {threads!r}."
                )
        self.threads = threads
        self._before: int | None = None
        self._last: _Sample | None = None

    def __enter__(self) -> ThreadPolicy:
        if self.threads is None:
            return self
        self._before = torch.get_num_threads()
        if self.threads == "auto":
            self._apply(recommended_threads(busy_cores_elsewhere()))
            self._last = _Sample()
        else:
            self._apply(self.threads)
        return self

    def after_epoch(self) -> None:
        """With ``"auto"``: measure what other processes used during the epoch and adapt."""
        if self.threads != "auto":
            return
        busy = busy_cores_elsewhere(self._last)
        self._last = _Sample()
        self._apply(recommended_threads(busy))

    def _apply(self, n: int) -> None:
        if n != torch.get_num_threads():
            logger.info("training with %d CPU thread(s)", n)
            torch.set_num_threads(n)

    def __exit__(self, *exc: object) -> None:
        if self._before is not None and torch.get_num_threads() != self._before:
            torch.set_num_threads(self._before)
