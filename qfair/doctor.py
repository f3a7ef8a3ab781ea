"""What the C++ core runs with on this machine, and how fast: the vector
instruction set the dispatcher chose (and the others this CPU runs), the
threads a call starts, and two quick measurements on synthetic data -- the
divergence suite on float16 rows and the paired bootstrap.

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
    divergence: Measurement | None  # row-element pairs per second
    bootstrap_examples: int
    bootstrap: Measurement | None   # paired resamples per second (accuracy + ECE difference)


def _measure(call: Callable[[], float], seconds: float) -> Measurement:
    """Repeats call() (which returns the units of work it did) for about
    `seconds`; the rate is the median over the calls."""
    rates: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        work = call()
        dt = time.perf_counter() - t0
        rates.append(work / dt if dt > 0 else float("inf"))
        if time.perf_counter() - start >= seconds and len(rates) >= 3:
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
           vocab: int = DEFAULT_VOCAB, bootstrap_examples: int = 10_000) -> DoctorReport:
    """The report `qfair doctor` prints. threads=None (or 0): :func:`qfair.threads.default_threads`."""
    t = 0 if threads is None else int(threads)
    if t < 0:
        raise ValueError(f"threads must be >= 0, got {t}")
    n = int(core.resolve_threads(t)) if t else resolve_threads(None)  # the user's count, else the default
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return DoctorReport(
        version=__version__,
        isa=str(core.active_isa()),
        isas=tuple(core.available_isas()),
        threads=n,
        cpus=cpus,
        vocab=vocab,
        rows=128,
        divergence=measure_divergence(seconds, n, vocab) if measure else None,
        bootstrap_examples=bootstrap_examples,
        bootstrap=measure_bootstrap(seconds, n, bootstrap_examples) if measure else None,
    )
