"""How many compute threads qfair uses, in one place.

The default is the number of CPUs this process may run on
(``os.sched_getaffinity``: a container's or ``taskset``'s CPU set), not the
machine's core count, so that a process restricted to a few CPUs does not run
more busy threads than it has CPUs: torch's OpenMP pool spins at its barriers,
and an oversubscribed pool (more threads than CPUs, or CPUs shared with other
busy processes) slows down far more than its share of the CPU explains.
``bench/bench_load.py`` measures it.

A thread count the user set wins over that default: ``QFAIR_THREADS`` (qfair's
own), else ``OMP_NUM_THREADS`` (the variable torch and OpenMP respect, so that
``OMP_NUM_THREADS=1 qfair dump`` runs one thread). An explicit ``--threads``
(the ``threads`` argument) wins over both.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["available_cpus", "env_threads", "default_threads", "resolve_threads", "torch_threads",
           "single_threaded_blas", "MAX_THREADS", "THREAD_VARIABLES"]

MAX_THREADS = 4096
#: The environment variables read for the default, the first one set wins.
THREAD_VARIABLES = ("QFAIR_THREADS", "OMP_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def env_threads(variables: tuple[str, ...] = THREAD_VARIABLES) -> int | None:
    """The thread count the first set (non-empty) variable of ``variables`` asks
    for, or None when none is set. ``OMP_NUM_THREADS`` may list nested levels
    ("4,2"): the first is the outer pool's. A value that is not an integer in
    1..MAX_THREADS is a ValueError naming the variable."""
    for name in variables:
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        first = raw.split(",")[0].strip()
        try:
            n = int(first)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(f"{name} must be an integer in 1..{MAX_THREADS}, got {raw!r}")
        return n
    return None


def default_threads() -> int:
    """The thread count when none is given: ``QFAIR_THREADS``, else
    ``OMP_NUM_THREADS``, else :func:`available_cpus`."""
    n = env_threads()
    return available_cpus() if n is None else n


def resolve_threads(threads: int | None, what: str = "threads") -> int:
    """``threads`` checked (an integer in 1..MAX_THREADS), or the default: :func:`default_threads`."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"{what} must be an integer in 1..{MAX_THREADS}, got {threads!r}")
    return int(threads)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with torch's intra-op pool at ``threads`` (default:
    :func:`default_threads`), restoring the previous setting afterwards; yields the count."""
    import torch

    n = resolve_threads(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS on one thread, restoring it afterwards.

    The products numpy still makes in an analysis are small (the bias scores'
    batched products, exact permutation nulls) and run beside qfair's own
    threads: a multi-threaded BLAS pool there only spins on the cores those
    threads need, and its split of a product depends on the machine's core
    count, which can change a sum's last bit. On one thread every machine rounds
    alike. Without threadpoolctl the block runs unchanged.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
