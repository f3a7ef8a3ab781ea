"""What the C++ core runs with on this machine, and how fast: the vector
instruction set the dispatcher chose (and the others this CPU runs), the
threads a call starts, and quick measurements on synthetic data -- the
divergence suite on float16 rows that stay in the cache, the same suite on
rows streamed from memory (several times the last-level cache: what a large
dump sees) with the pure-read ceiling of those rows, and the paired bootstrap.

The measurements are short (``seconds`` each, 0.3 by default) and meant as a
sanity check ("is this machine getting the AVX-512 kernels, and roughly what
throughput?"), not as a benchmark: see ``bench/`` for those.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qfair import __version__
from qfair._native import core
from qfair.threads import resolve_threads

#: SmolLM2's vocabulary size: the default row width of the divergence check.
DEFAULT_VOCAB = 49_152
#: Rows of the cached measurement (2 x 128 x 49,152 float16: 24 MiB).
CACHED_ROWS = 128
#: Least size of the streamed measurement's rows (both arrays together); at
#: least 4x the last-level cache too (:func:`streamed_bytes`).
MIN_STREAM_BYTES = 1 << 30


@dataclass(frozen=True)
class Measurement:
    """``rate`` units of work per second, the median over ``runs`` timed calls."""

    rate: float
    runs: int
    seconds: float


@dataclass(frozen=True)
class DoctorReport:
    version: str
    isa: str
    isas: tuple[str, ...]
    threads: int
    cpus: int
    vocab: int
    rows: int
    divergence: Measurement | None  # row-element pairs per second, rows in cache
    bootstrap_examples: int
    bootstrap: Measurement | None   # paired resamples per second (accuracy + ECE difference)
    cache_bytes: int = 0            # the last-level cache (0: unknown)
    stream_bytes: int = 0           # both arrays of the streamed measurement
    streamed: Measurement | None = None       # row-element pairs per second, rows streamed from memory
    read_ceiling: Measurement | None = None   # pairs per second of a pure read of the same rows

    @property
    def cached_bytes(self) -> int:
        """Both float16 arrays of the cached measurement."""
        return 2 * self.rows * self.vocab * 2

    @property
    def large_dump_sees(self) -> str:
        """Which measurement a dump larger than the cache runs at: 'streamed'
        when it was measured, else 'cached' (the only figure there is)."""
        return "streamed" if self.streamed is not None else "cached"


def _measure(call: Callable[[], float], seconds: float, min_runs: int = 3) -> Measurement:
    """Repeats call() (which returns the units of work it did) for about
    `seconds`, at least `min_runs` times; the rate is the median over the calls."""
    rates: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        work = call()
        dt = time.perf_counter() - t0
        rates.append(work / dt if dt > 0 else float("inf"))
        if time.perf_counter() - start >= seconds and len(rates) >= min_runs:
            break
    return Measurement(rate=float(np.median(rates)), runs=len(rates), seconds=time.perf_counter() - start)


def synthetic_rows(rows: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float16 log-probability-like rows with an LLM-like spread, and a
    perturbed ("quantized") copy (the rows bench/bench_divergence.py uses)."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((rows, vocab), dtype=np.float32) * 2.5
    logits[:, :50] += 6.0
    q = logits + rng.standard_normal((rows, vocab), dtype=np.float32) * 0.15
    return logits.astype(np.float16), q.astype(np.float16)


def measure_divergence(seconds: float = 0.3, threads: int = 0, vocab: int = DEFAULT_VOCAB,
                       rows: int = 128) -> Measurement:
    """Row-element pairs per second of the full divergence suite (targets and
    top-k 1, 5, 10 included) on float16 rows."""
    p, q = synthetic_rows(rows, vocab)
    targets = np.random.default_rng(1).integers(0, vocab, rows)
    core.divergence(p[:8], q[:8], targets[:8], threads=threads)  # warm up

    def call() -> float:
        core.divergence(p, q, targets, topk=[1, 5, 10], threads=threads)
        return float(rows * vocab)

    return _measure(call, seconds)


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache Linux reports (0 when it cannot be read)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return 0
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if unit != 1 else text
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best


def streamed_bytes(cache_bytes: int) -> int:
    """Size of the streamed measurement's rows: 1 GiB, or 4x the cache if larger."""
    return max(MIN_STREAM_BYTES, 4 * cache_bytes)


def measure_streamed(stream_bytes: int, seconds: float = 0.3, threads: int = 0,
                     vocab: int = DEFAULT_VOCAB) -> tuple[Measurement, Measurement]:
    """The divergence suite of :func:`measure_divergence` on float16 row pairs
    filling `stream_bytes` (both arrays), far more than the cache holds, so
    every call streams them from memory; and a pure read of the same bytes
    (core.read_rows), the ceiling no one-pass kernel passes. Both in row-element
    pairs per second, at least one timed call each."""
    block = 64
    rows = max(block, stream_bytes // (2 * 2 * vocab) // block * block)
    p_small, q_small = synthetic_rows(block, vocab)
    t_small = np.random.default_rng(1).integers(0, vocab, block)
    # distinct addresses, repeated contents: building it costs a copy, not a random draw
    p = np.empty((rows // block, block, vocab), np.float16)
    q = np.empty_like(p)
    p[:] = p_small
    q[:] = q_small
    p, q = p.reshape(rows, vocab), q.reshape(rows, vocab)
    targets = np.tile(t_small, rows // block)

    def call() -> float:
        core.divergence(p, q, targets, topk=[1, 5, 10], threads=threads)
        return float(rows * vocab)

    def read() -> float:
        core.read_rows(p, threads)
        core.read_rows(q, threads)
        return float(rows * vocab)

    return _measure(call, seconds, min_runs=1), _measure(read, seconds, min_runs=1)


def measure_bootstrap(seconds: float = 0.3, threads: int = 0, n: int = 10_000,
                      resamples: int = 1_000) -> Measurement:
    """Paired resamples per second of the bootstrap of an accuracy difference
    and an ECE difference (15 equal-width bins, re-binned every resample;
    BCa included) over n examples."""
    rng = np.random.default_rng(0)
    cx = rng.beta(5, 2, n)
    x = (rng.uniform(size=n) < cx * 0.9).astype(float)
    cy = np.clip(cx + rng.normal(0.02, 0.08, n), 0, 1)
    y = np.where(rng.uniform(size=n) < 0.08, 1 - x, x)
    specs = [{"kind": "mean", "x": x, "y": y},
             {"kind": "calibration", "conf_x": cx, "correct_x": x, "conf_y": cy, "correct_y": y,
              "bins": 15, "binning": "width", "measure": "ece"}]

    def call() -> float:
        core.paired_bootstrap(specs, resamples=resamples, seed=1, threads=threads)
        return float(resamples)

    return _measure(call, seconds)


def doctor(seconds: float = 0.3, threads: int | None = None, measure: bool = True,
           vocab: int = DEFAULT_VOCAB, bootstrap_examples: int = 10_000,
           stream_bytes: int | None = None) -> DoctorReport:
    """The report `qfair doctor` prints. threads=None (or 0): :func:`qfair.threads.default_threads`.
    stream_bytes: size of the streamed measurement's rows (None: :func:`streamed_bytes`; 0: skip it)."""
    t = 0 if threads is None else int(threads)
    if t < 0:
        raise ValueError(f"threads must be >= 0, got {t}")
    cache = last_level_cache_bytes()
    sb = streamed_bytes(cache) if stream_bytes is None else int(stream_bytes)
    if sb < 0:
        raise ValueError(f"stream_bytes must be >= 0, got {sb}")
    n = int(core.resolve_threads(t)) if t else resolve_threads(None)  # the user's count, else the default
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    streamed = measure_streamed(sb, seconds, n, vocab) if measure and sb else None
    return DoctorReport(
        version=__version__,
        isa=str(core.active_isa()),
        isas=tuple(core.available_isas()),
        threads=n,
        cpus=cpus,
        vocab=vocab,
        rows=CACHED_ROWS,
        divergence=measure_divergence(seconds, n, vocab, rows=CACHED_ROWS) if measure else None,
        bootstrap_examples=bootstrap_examples,
        bootstrap=measure_bootstrap(seconds, n, bootstrap_examples) if measure else None,
        cache_bytes=cache,
        stream_bytes=sb if measure and sb else 0,
        streamed=streamed[0] if streamed else None,
        read_ceiling=streamed[1] if streamed else None,
    )
