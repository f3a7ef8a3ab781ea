"""How many compute threads qfair uses, in one place.

The default is the number of CPUs this process may run on
(``os.sched_getaffinity``: a container's or ``taskset``'s CPU set), not the
machine's core count, so that a process restricted to a few CPUs does not run
more busy threads than it has CPUs: torch's OpenMP pool spins at its barriers,
and an oversubscribed pool (more threads than CPUs, or CPUs shared with other
busy processes) slows down far more than its share of the CPU explains.
``bench/bench_load.py`` measures it.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["available_cpus", "resolve_threads", "torch_threads", "MAX_THREADS"]

MAX_THREADS = 4096


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None, what: str = "threads") -> int:
    """``threads`` checked (an integer in 1..MAX_THREADS), or the default: :func:`available_cpus`."""
    if threads is None:
        return available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"{what} must be an integer in 1..{MAX_THREADS}, got {threads!r}")
    return int(threads)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with torch's intra-op pool at ``threads`` (default: the
    CPUs available), restoring the previous setting afterwards; yields the count."""
    import torch

    n = resolve_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
