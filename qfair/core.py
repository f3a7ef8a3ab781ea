"""The distribution core: vocabulary-wide comparison of aligned distributions.

The heavy lifting is in the C++ core (``qfair._core``); this module turns
arrays (numpy, numpy memmaps, CPU torch tensors) into what the core reads
without copying them, and streams many row blocks through it with memory
bounded by one chunk.

Definitions are those of docs/metrics.md: natural logarithms, every row
re-normalised with a stable log-softmax, ``-inf`` entries are zero
probabilities, ties in argmax / top-k go to the lowest token id.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qfair._native import core
from qfair.directio import BufferPool, read_direct
from qfair.npyio import DirectRead, DirectRows, NpyRows, open_direct_rows, open_npy_rows

__all__ = [
    "DivergenceResult",
    "DistributionResult",
    "DivergenceChunk",
    "divergence",
    "distribution_stats",
    "stream_divergence",
    "stream_rows",
    "active_isa",
]

#: Columns always returned by :func:`divergence` (plus ``overlap_at_K`` per K).
BASE_METRICS = (
    "kl_pq", "kl_qp", "js", "tv",
    "entropy_p", "entropy_q", "maxprob_p", "maxprob_q", "margin_p", "margin_q",
    "argmax_p", "argmax_q", "top1_agree",
)
#: Columns added when targets are given.
TARGET_METRICS = ("logprob_p", "logprob_q", "delta_p", "rank_p", "rank_q")


def active_isa() -> str:
    """The vector instruction set the core runs with (avx512, avx2, baseline)."""
    return str(core.active_isa())


def _default_threads(threads: int | None) -> int:
    """``threads`` checked, or the CPUs this process may use (:mod:`qfair.threads`)."""
    from qfair.threads import resolve_threads

    return resolve_threads(threads if not isinstance(threads, np.integer) else int(threads))


MAX_TOPK = 1000  # the core's limit on K


def _topk(topk: Any) -> tuple[int, ...]:
    """``topk`` as a tuple of distinct integers in 1..MAX_TOPK (ValueError naming the bad value)."""
    if isinstance(topk, (str, bytes)) or not hasattr(topk, "__iter__"):
        raise ValueError(f"topk must be a sequence of integers in [1, {MAX_TOPK}], got {topk!r}")
    ks = []
    for k in topk:
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_TOPK:
            raise ValueError(f"topk values must be integers in [1, {MAX_TOPK}], got {k!r}")
        if int(k) in ks:
            raise ValueError(f"topk lists {int(k)} twice")
        ks.append(int(k))
    return tuple(ks)


def _as_rows(x: Any, name: str, dtype: str | None) -> tuple[np.ndarray, str]:
    """A zero-copy numpy view of x, and the dtype hint for the core."""
    if type(x).__module__.startswith("torch"):
        import torch

        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; move it to the CPU first (x.cpu())")
        if x.dtype == torch.bfloat16:
            return x.detach().view(torch.int16).numpy().view(np.uint16), "bf16"
        return x.detach().numpy(), dtype or ""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a 2-D numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype.name == "bfloat16":  # ml_dtypes' numpy bfloat16
        return x.view(np.uint16), "bf16"
    return x, dtype or ""


@dataclass
class DivergenceResult:
    """Per-row metrics of one :func:`divergence` call.

    ``metrics`` maps a column name to one value per row. Rows whose input was
    not a distribution (NaN, +inf, or no finite entry) hold NaN (-1 for the
    integer columns) and are counted in ``invalid_rows``; :meth:`summary`
    excludes them from means and reports how many there were.
    """

    metrics: dict[str, np.ndarray]
    n_rows: int
    invalid_p: int
    invalid_q: int
    invalid_rows: int
    topk: tuple[int, ...] = (1, 5, 10)

    @property
    def nonfinite_rows(self) -> int:
        return self.invalid_rows

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    def __contains__(self, name: str) -> bool:
        return name in self.metrics

    def keys(self) -> list[str]:
        return list(self.metrics)

    def valid(self) -> np.ndarray:
        """Boolean mask of rows whose joint metrics are defined."""
        # top1_agree is NaN exactly where kl_pq is, and is always computed
        return ~np.isnan(self.metrics["kl_pq"] if "kl_pq" in self.metrics else self.metrics["top1_agree"])

    def to_polars(self):
        import polars as pl

        return pl.DataFrame(self.metrics)

    def summary(self) -> dict[str, float]:
        """Mean of every floating metric over the valid rows, plus the counts."""
        ok = self.valid()
        out: dict[str, float] = {"rows": float(self.n_rows), "invalid_rows": float(self.invalid_rows)}
        for name, values in self.metrics.items():
            if values.dtype.kind == "f":
                out[name] = float(np.mean(values[ok], dtype=np.float64)) if ok.any() else float("nan")
        return out


@dataclass
class DistributionResult:
    """Per-row statistics of one matrix (:func:`distribution_stats`)."""

    metrics: dict[str, np.ndarray]
    n_rows: int
    invalid_rows: int

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    def to_polars(self):
        import polars as pl

        return pl.DataFrame(self.metrics)


def _targets_array(targets: Any, rows: int, vocab: int) -> np.ndarray | None:
    """One token id per row as int64 (negative: no target); ValueError for an id
    outside the vocabulary, whatever the integer type (a uint64 id >= 2^63 would
    otherwise wrap to a negative, i.e. silently become "no target")."""
    if targets is None:
        return None
    if type(targets).__module__.startswith("torch"):
        targets = targets.detach().cpu().numpy()
    t = np.asarray(targets)
    if t.ndim != 1 or t.shape[0] != rows:
        raise ValueError(f"targets must hold one token id per row ({rows}), got shape {t.shape}")
    if t.dtype.kind not in "iu" or t.dtype == np.bool_:
        raise ValueError(f"targets must be integers, got dtype {t.dtype}")
    if t.size:
        big = np.flatnonzero(t >= vocab)
        if big.size:
            i = int(big[0])
            raise ValueError(f"targets: row {i} has token id {t[i]}, outside the vocabulary of size {vocab}")
    return np.ascontiguousarray(t, dtype=np.int64)  # a strided view (a column) is copied: one id per row


def _empty_like_result(pa: np.ndarray, hint: str, run: Any) -> dict[str, Any]:
    """The core's answer for 0 rows: the same columns, dtypes and counts, empty
    (computed on one dummy row, so the columns always match the non-empty case)."""
    one = np.zeros((1, pa.shape[1]), dtype=pa.dtype)
    raw = run(one)
    raw = dict(raw)
    raw["metrics"] = {k: np.asarray(v)[:0] for k, v in dict(raw["metrics"]).items()}
    for k in ("invalid_p", "invalid_q", "invalid_rows"):
        if k in raw:
            raw[k] = 0
    return raw


#: The columns of :func:`divergence` a caller may leave out with ``metrics=``
#: (``overlap_at_K`` follow ``topk``, the target columns ``targets``).
SELECTABLE_METRICS = ("kl_pq", "kl_qp", "js", "tv", "entropy_p", "entropy_q", "maxprob_p", "maxprob_q",
                      "margin_p", "margin_q", "argmax_p", "argmax_q", "top1_agree")


def _metrics(metrics: Sequence[str] | None) -> list[str] | None:
    """The selectable columns wanted (None: all); top1_agree always (it marks the valid rows)."""
    if metrics is None:
        return None
    if isinstance(metrics, str):
        raise ValueError("metrics must be a sequence of names, not one string")
    wanted = [str(m) for m in metrics]
    unknown = [m for m in wanted if m not in SELECTABLE_METRICS]
    if unknown:
        raise ValueError(f"metrics: unknown name {unknown[0]!r}; expected some of {', '.join(SELECTABLE_METRICS)}")
    return sorted(set(wanted) | {"top1_agree"}, key=SELECTABLE_METRICS.index)


def divergence(
    p: Any,
    q: Any,
    *,
    targets: Any = None,
    topk: Sequence[int] = (1, 5, 10),
    threads: int | None = None,
    dtype: str | None = None,
    metrics: Sequence[str] | None = None,
) -> DivergenceResult:
    """Compare two aligned [rows, vocab] arrays of logits or log-probs row by row.

    ``p`` is the reference (base model), ``q`` the comparison (quantized).
    Both must be float32, float16, or bfloat16 (a uint16 array with
    ``dtype="bf16"``, a torch bfloat16 tensor, or an ml_dtypes array); rows
    must be contiguous, but the row stride may exceed the vocabulary (a column
    slice ``x[:, :V]`` works). Nothing is copied: an array the core cannot
    read in place is refused with a ValueError saying why.

    Returns KL both ways, JS, total variation, entropies, max prob, margin,
    argmax, top-1 agreement and ``overlap_at_K`` for each K in ``topk``; with
    ``targets`` (one token id per row; negative = none) also the target's
    log-prob under each model, ``delta_p`` = q[y] - p[y] and ranks.

    ``metrics``: the names from :data:`SELECTABLE_METRICS` wanted (None: all;
    ``top1_agree`` is always included). The core skips the work only the others
    need: without KL, JS and TV its joint pass over the row pair does not run,
    without JS that pass is about a third cheaper, without the entropies the
    normaliser pass one multiply-add an element.
    """
    wanted = _metrics(metrics)
    pa, hp = _as_rows(p, "p", dtype)
    qa, hq = _as_rows(q, "q", dtype)
    if hp != hq and "" not in (hp, hq):
        raise ValueError("p and q dtype hints differ")
    hint = hp or hq
    if hint == "bf16" and (pa.dtype.kind == "f" or qa.dtype.kind == "f"):
        raise ValueError("mixing bfloat16 with float arrays: pass both as bfloat16 or both as floats")
    if pa.ndim != 2 or qa.ndim != 2:
        raise ValueError(f"p and q must be 2-D [rows, vocab], got shapes {pa.shape} and {qa.shape}")
    if pa.shape != qa.shape:
        raise ValueError(f"p and q must have the same shape, got {list(pa.shape)} and {list(qa.shape)}")
    if pa.shape[1] < 1:
        raise ValueError("p has an empty vocabulary axis")
    t = _targets_array(targets, pa.shape[0], pa.shape[1])
    topk = _topk(topk)
    n_threads = _default_threads(threads)
    if pa.shape[0] == 0:  # nothing to compute (the core would only see zero strides)
        one_t = None if t is None else np.full(1, -1, dtype=np.int64)
        raw = _empty_like_result(pa, hint, lambda one: core.divergence(
            one, one.astype(qa.dtype), one_t, list(topk), 1, hint, wanted))
    else:
        raw = core.divergence(pa, qa, t, list(topk), n_threads, hint, wanted)
    return DivergenceResult(
        metrics=dict(raw["metrics"]),
        n_rows=int(pa.shape[0]),
        invalid_p=int(raw["invalid_p"]),
        invalid_q=int(raw["invalid_q"]),
        invalid_rows=int(raw["invalid_rows"]),
        topk=topk,
    )


def distribution_stats(
    p: Any, *, targets: Any = None, threads: int | None = None, dtype: str | None = None
) -> DistributionResult:
    """Entropy, max prob, margin, argmax (and target log-prob / rank) per row."""
    pa, hint = _as_rows(p, "p", dtype)
    if pa.ndim != 2:
        raise ValueError(f"p must be 2-D [rows, vocab], got shape {pa.shape}")
    if pa.shape[1] < 1:
        raise ValueError("p has an empty vocabulary axis")
    t = _targets_array(targets, pa.shape[0], pa.shape[1])
    n_threads = _default_threads(threads)
    if pa.shape[0] == 0:
        one_t = None if t is None else np.full(1, -1, dtype=np.int64)
        raw = _empty_like_result(pa, hint, lambda one: core.distribution_stats(one, one_t, 1, hint))
    else:
        raw = core.distribution_stats(pa, t, n_threads, hint)
    return DistributionResult(dict(raw["metrics"]), int(pa.shape[0]), int(raw["invalid_rows"]))


# ---- streaming --------------------------------------------------------------


@dataclass
class DivergenceChunk:
    """One chunk of a stream: rows [start, stop) of the concatenated blocks.

    ``p`` and ``q`` are views into the inputs, valid until the next chunk is
    requested (their pages may then be released).
    """

    start: int
    stop: int
    p: np.ndarray
    q: np.ndarray
    targets: np.ndarray | None
    result: DivergenceResult


@dataclass
class _Blocks:
    """Row blocks concatenated along rows, opened lazily, released as consumed.

    A path is memory-mapped (:class:`NpyRows`), or read with O_DIRECT
    (:class:`DirectRows`) when most of the file is not in the page cache
    (:func:`qfair.directio.read_direct`); a :class:`DirectRead` is always read so.
    """

    sources: list[Any]
    name: str
    opened: list[NpyRows | DirectRows | None] = field(default_factory=list)
    arrays: list[np.ndarray | None] = field(default_factory=list)

    buffers: BufferPool = field(default_factory=BufferPool)  # shared by this side's direct reads

    def __post_init__(self) -> None:
        self.opened = [None] * len(self.sources)
        self.arrays = [None] * len(self.sources)

    def _open(self, i: int) -> None:
        if self.opened[i] is not None or self.arrays[i] is not None:
            return
        src = self.sources[i]
        if isinstance(src, DirectRead):
            self.opened[i] = open_direct_rows(src.path, src.digest, self.buffers)
        elif isinstance(src, (str, os.PathLike)):
            self.opened[i] = open_direct_rows(src, None, self.buffers) if read_direct(src) else open_npy_rows(src)
        else:
            if not (isinstance(src, np.ndarray) or type(src).__module__.startswith("torch")):
                raise ValueError(f"{self.name} block {i}: expected a 2-D array, a torch tensor or a .npy path, "
                                 f"got {type(src).__name__}")
            if src.ndim != 2:
                raise ValueError(f"{self.name} block {i} must be 2-D [rows, vocab], got shape {tuple(src.shape)}")
            self.arrays[i] = src

    def shape(self, i: int) -> tuple[int, ...]:
        self._open(i)
        opened = self.opened[i]
        return opened.shape if opened is not None else tuple(self.arrays[i].shape)

    def rows(self, i: int, start: int, stop: int) -> Any:
        """Rows [start, stop) of block ``i``: a view, valid until the block's later rows are asked for."""
        self._open(i)
        opened = self.opened[i]
        return opened.take(start, stop) if opened is not None else self.arrays[i][start:stop]

    def prefetch(self, i: int, start: int, stop: int) -> None:
        """Start reading rows [start, stop) of block ``i`` now, so that on a cold
        disk the next chunk arrives while this one is computed (in-memory blocks need nothing)."""
        self._open(i)
        opened = self.opened[i]
        if opened is not None:
            opened.prefetch(start, stop)

    def release(self, i: int, until_row: int) -> None:
        if self.opened[i] is not None:
            self.opened[i].release_until(until_row)

    def close(self, i: int) -> None:
        if self.opened[i] is not None:
            self.opened[i].close()
            self.opened[i] = None
        self.arrays[i] = None


def _as_sources(blocks: Any, name: str) -> list[Any]:
    if isinstance(blocks, (str, os.PathLike, np.ndarray, DirectRead)) or type(blocks).__module__.startswith("torch"):
        return [blocks]
    sources = list(blocks)
    if not sources:
        raise ValueError(f"{name}: no row blocks given")
    return sources


def stream_rows(p_blocks: Any, q_blocks: Any, *, chunk_rows: int = 4096,
                on_empty_block: Callable[[np.ndarray, np.ndarray], Any] | None = None,
                ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Aligned row ranges of two sequences of row blocks: ``(start, stop, p, q)``.

    ``p_blocks`` / ``q_blocks``: an array, a path to a .npy file, a
    :class:`~qfair.npyio.DirectRead`, or a sequence of them, concatenated along
    rows (shard boundaries may differ between the two sides). Paths are
    memory-mapped and the pages of consumed rows are handed back to the OS
    after each chunk, so resident memory stays bounded by a chunk whatever the
    total size; a file mostly absent from the page cache (and a DirectRead) is
    read with O_DIRECT instead, into two buffers of a chunk each, by a thread
    that reads the next chunk while this one is used
    (:mod:`qfair.directio`; ``QFAIR_DIRECT_READ=auto|always|never``).
    ``p`` and ``q`` are views, valid until the next chunk is requested; chunks
    never span a block boundary, so rows are copied only by such reads. Both sides must hold the same number
    of rows (ValueError otherwise). ``on_empty_block(p, q)`` is called for a
    pair of empty blocks (to check them like any other).
    """
    if isinstance(chunk_rows, (bool, np.bool_)) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
    chunk_rows = int(chunk_rows)
    ps = _Blocks(_as_sources(p_blocks, "p"), "p")
    qs = _Blocks(_as_sources(q_blocks, "q"), "q")

    def chunk_after(ip: int, op: int, iq: int, oq: int) -> tuple[int, int, int, int, int] | None:
        """The chunk the loop below takes once it stands at (ip, op) / (iq, oq)
        (past the ends of blocks): (ip, op, iq, oq, rows), or None at the end."""
        while ip < len(ps.sources) and op >= ps.shape(ip)[0]:
            ip, op = ip + 1, 0
        while iq < len(qs.sources) and oq >= qs.shape(iq)[0]:
            iq, oq = iq + 1, 0
        if ip >= len(ps.sources) or iq >= len(qs.sources):
            return None
        return ip, op, iq, oq, min(chunk_rows, ps.shape(ip)[0] - op, qs.shape(iq)[0] - oq)

    ip = iq = 0  # current block on each side
    op = oq = 0  # row offset inside the current block
    start = 0
    asked = None  # the chunk whose rows were last asked for ahead of time
    try:
        while ip < len(ps.sources) and iq < len(qs.sources):
            sp, sq = ps.shape(ip), qs.shape(iq)
            if sp[1:] != sq[1:]:
                raise ValueError(
                    f"vocabulary mismatch: p block {ip} has {sp[1]} columns, q block {iq} has {sq[1]}"
                )
            n = min(chunk_rows, sp[0] - op, sq[0] - oq)
            if n == 0 and op == 0 and oq == 0 and on_empty_block is not None:
                on_empty_block(ps.rows(ip, 0, 0), qs.rows(iq, 0, 0))
            if n > 0:
                if asked != (ip, op, iq, oq, n):  # the first chunk: both sides' reads in flight at once
                    ps.prefetch(ip, op, op + n)
                    qs.prefetch(iq, oq, oq + n)
                pv, qv = ps.rows(ip, op, op + n), qs.rows(iq, oq, oq + n)
                asked = chunk_after(ip, op + n, iq, oq + n)
                if asked is not None:  # the next chunk's rows load while this one is computed
                    jp, kp, jq, kq, m = asked
                    ps.prefetch(jp, kp, kp + m)
                    qs.prefetch(jq, kq, kq + m)
                yield start, start + n, pv, qv
                start += n
                op += n
                oq += n
                ps.release(ip, op)
                qs.release(iq, oq)
            if op >= sp[0]:
                ps.close(ip)
                ip, op = ip + 1, 0
            if oq >= sq[0]:
                qs.close(iq)
                iq, oq = iq + 1, 0
        # Both sides must end together.
        rest_p = sum(ps.shape(i)[0] for i in range(ip, len(ps.sources))) - op if ip < len(ps.sources) else 0
        rest_q = sum(qs.shape(i)[0] for i in range(iq, len(qs.sources))) - oq if iq < len(qs.sources) else 0
        if rest_p or rest_q:
            raise ValueError(
                f"p and q hold different numbers of rows: {start + rest_p} and {start + rest_q}"
            )
    finally:
        for i in range(len(ps.sources)):
            ps.close(i)
        for i in range(len(qs.sources)):
            qs.close(i)


def stream_divergence(
    p_blocks: Any,
    q_blocks: Any,
    *,
    targets: Any = None,
    topk: Sequence[int] = (1, 5, 10),
    chunk_rows: int = 4096,
    threads: int | None = None,
    dtype: str | None = None,
    metrics: Sequence[str] | None = None,
) -> Iterator[DivergenceChunk]:
    """Stream aligned row blocks of P and Q through :func:`divergence`.

    ``p_blocks`` / ``q_blocks``: an array, a path to a .npy file, or a
    sequence of them, concatenated along rows (shard boundaries may differ
    between the two sides). Paths are memory-mapped and the pages of consumed
    rows are handed back to the OS after each chunk, so resident memory stays
    bounded by a chunk whatever the total size (:func:`stream_rows`).
    ``targets``: one id per row of the concatenation, or None.

    Yields :class:`DivergenceChunk` objects in row order; chunks never span
    a block boundary, so no rows are ever copied. ``metrics``: as for
    :func:`divergence`.
    """
    topk = _topk(topk)
    _metrics(metrics)  # a bad name is refused before any row is read
    t_all = None
    if targets is not None:
        if type(targets).__module__.startswith("torch"):
            targets = targets.detach().cpu().numpy()
        t_all = np.asarray(targets)
        if t_all.ndim != 1 or t_all.dtype.kind not in "iu" or t_all.dtype == np.bool_:
            raise ValueError(f"targets must be a 1-D integer array (one token id per row), got dtype {t_all.dtype} "
                             f"shape {t_all.shape}")
    n_threads = _default_threads(threads)

    def check_empty(bp: np.ndarray, bq: np.ndarray) -> None:  # an empty block: still refused if not readable
        divergence(bp, bq, topk=topk, threads=n_threads, dtype=dtype, metrics=metrics)

    stop = 0
    for start, stop, pv, qv in stream_rows(p_blocks, q_blocks, chunk_rows=chunk_rows, on_empty_block=check_empty):
        tv = None
        if t_all is not None:
            if stop > t_all.shape[0]:
                raise ValueError(f"targets hold {t_all.shape[0]} ids, fewer than the rows streamed")
            tv = t_all[start:stop]
        res = divergence(pv, qv, targets=tv, topk=topk, threads=n_threads, dtype=dtype, metrics=metrics)
        yield DivergenceChunk(start, stop, pv, qv, tv, res)
    if t_all is not None and t_all.shape[0] != stop:
        raise ValueError(f"targets hold {t_all.shape[0]} ids for {stop} rows")

