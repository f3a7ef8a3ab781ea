"""Where an analysis spends its time: a per-stage wall-clock timer.

``with profiling() as timer:`` makes ``timer`` the active timer of this
thread's context; code anywhere below marks its work with ``with
stage("name"):``, which costs nothing when no timer is active. A stage's time
is *exclusive*: a stage opened inside another is subtracted from the outer
one, so the stages add up to the wall time they cover and a regression shows
where it is. ``qfair analyze --profile`` prints the breakdown.
"""
from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["StageTimer", "profiling", "stage", "active_timer", "beside"]


class StageTimer:
    """Exclusive wall seconds and entry counts per stage, in first-entered order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []   # per open stage: [start, seconds spent in inner stages]
        self._t0 = time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        """Record ``seconds`` for ``name`` measured elsewhere (e.g. on another thread)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        frame = [time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = time.perf_counter() - frame[0]
            self.add(name, total - frame[1])
            if self._stack:
                self._stack[-1][1] += total

    def wall(self) -> float:
        return time.perf_counter() - self._t0

    def rows(self) -> list[tuple[str, float, int]]:
        return [(k, v, self.calls[k]) for k, v in self.seconds.items()]

    def format(self) -> str:
        """The breakdown as aligned lines: stage, seconds, share of the wall time, entries."""
        wall = max(self.wall(), 1e-12)
        width = max([len(k) for k in self.seconds] + [5])
        lines = [f"{'stage':<{width}}  {'seconds':>9}  {'share':>6}  entries"]
        for name, sec, n in self.rows():
            lines.append(f"{name:<{width}}  {sec:9.3f}  {100 * sec / wall:5.1f}%  {n}")
        covered = sum(self.seconds.values())
        lines.append(f"{'(other)':<{width}}  {max(wall - covered, 0.0):9.3f}  "
                     f"{100 * max(wall - covered, 0.0) / wall:5.1f}%")
        lines.append(f"{'wall':<{width}}  {wall:9.3f}")
        return "\n".join(lines)


_ACTIVE: contextvars.ContextVar[StageTimer | None] = contextvars.ContextVar("qfair_stage_timer", default=None)


def active_timer() -> StageTimer | None:
    return _ACTIVE.get()


@contextmanager
def profiling(timer: StageTimer | None = None) -> Iterator[StageTimer]:
    """Make ``timer`` (a new one by default) the active timer for the block."""
    t = timer if timer is not None else StageTimer()
    token = _ACTIVE.set(t)
    try:
        yield t
    finally:
        _ACTIVE.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as ``name`` on the active timer (a no-op without one)."""
    t = _ACTIVE.get()
    if t is None:
        yield
        return
    with t.stage(name):
        yield


class _Beside:
    """The outcome of :func:`beside`'s function: :meth:`result` returns it or raises its error."""

    def __init__(self) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@contextmanager
def beside(fn: Callable[[], Any], name: str, *, concurrent: bool = True) -> Iterator[_Beside]:
    """Run ``fn`` on a second thread while the block runs; the block ends only once ``fn``
    has. Its wall seconds go to the active timer as "<name> (second thread)", the wait for
    it at the end as "<name> wait" (its own inner stages are not itemised). A failing block
    still waits for ``fn`` before its error propagates. ``concurrent=False`` runs ``fn``
    first, on this thread, where its own stages are timed as usual (one thread asked for)."""
    out = _Beside()
    timer = _ACTIVE.get()
    if not concurrent:
        try:
            out.value = fn()
        except BaseException as e:  # noqa: BLE001 - raised by result(), where the caller asks
            out.error = e
        yield out
        return

    def run() -> None:
        t0 = time.perf_counter()
        try:
            out.value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            out.error = e
        finally:
            if timer is not None:
                timer.add(f"{name} (second thread)", time.perf_counter() - t0)

    worker = threading.Thread(target=run, name=f"qfair-{name}", daemon=True)
    worker.start()
    try:
        yield out
    finally:
        with stage(f"{name} wait"):
            worker.join()
