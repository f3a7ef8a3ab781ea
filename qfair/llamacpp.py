"""llama.cpp interoperability: the ``.kld`` file of ``llama-perplexity
--kl-divergence-base`` and the summary ``llama-perplexity --kl-divergence``
prints.

The file (llama.cpp ``tools/perplexity/perplexity.cpp``, native byte order,
little-endian on every platform llama.cpp runs on)::

    char[8]  "_logits_"
    uint32   n_ctx          tokens per chunk
    int32    n_vocab
    int32    n_chunk
    int32    tokens[n_chunk * n_ctx]            the first n_chunk * n_ctx tokens of the text
    rows     n_chunk * (n_ctx - 1 - n_ctx // 2) rows, chunk by chunk, each
             nv = 2 * ((n_vocab + 1) // 2) + 4 uint16:
               float32 scale, float32 min_log_prob  (the first 4 uint16)
               uint16  code[n_vocab]                (then one zero pad word when n_vocab is odd)

Row ``j`` of chunk ``k`` is the model's distribution at position
``n_ctx // 2 + j`` of the chunk, i.e. the prediction of token
``tokens[k * n_ctx + n_ctx // 2 + j + 1]``. llama.cpp decodes entry ``v`` as
``scale * code[v] + min_log_prob`` in float32 (:func:`decode_rows` does
exactly that): a log-probability clamped at ``max - 16`` and quantised to
65535 steps.

The summary: :func:`token_stats` (the C++ core, operation for operation as
llama.cpp) gives each scored token's numbers; :class:`KlAccumulator` sums
them as llama.cpp does (double sums, float squares, per-chunk partial sums)
and :class:`KlSummary` holds the figures with llama.cpp's uncertainty
estimates and prints them in its layout (:meth:`KlSummary.lines`).
"""
from __future__ import annotations

import hashlib
import io
import lzma
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from qfair.errors import QfairError

__all__ = ["KldError", "KldHeader", "KldReader", "decode_rows", "encode_rows", "write_kld", "token_stats", "Q_ROWS",
           "KlAccumulator", "KlSummary", "PERCENTILES_KLD", "PERCENTILES_DP", "CHUNK_HEADER", "MIN_SUMMARY_TOKENS"]

MAGIC = b"_logits_"
HEADER_BYTES = 20
F32 = np.float32
#: llama.cpp prints the summary only from this many scored tokens on.
MIN_SUMMARY_TOKENS = 100
#: (label, fraction) of the percentile lines, in printing order (Maximum / Median / Minimum apart).
PERCENTILES_KLD = (("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900), ("median", None),
                   ("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001))
PERCENTILES_DP = (("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900), ("75.0%", 0.750),
                  ("median", None), ("25.0%", 0.250), ("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010),
                  (" 0.1%", 0.001))
CHUNK_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
                "              Δp RMS            Same top p")


class KldError(QfairError):
    """A .kld file that cannot be read; the message names the file and the problem."""


# ---------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class KldHeader:
    n_ctx: int
    n_vocab: int
    n_chunk: int

    @property
    def first(self) -> int:
        """Position of the first scored row in a chunk (n_ctx // 2)."""
        return self.n_ctx // 2

    @property
    def rows_per_chunk(self) -> int:
        return self.n_ctx - 1 - self.first

    @property
    def n_rows(self) -> int:
        return self.rows_per_chunk * self.n_chunk

    @property
    def row_words(self) -> int:
        """uint16 words per stored row (8-byte header, codes, pad to even)."""
        return 2 * ((self.n_vocab + 1) // 2) + 4

    @property
    def rows_offset(self) -> int:
        return HEADER_BYTES + 4 * self.n_ctx * self.n_chunk

    @property
    def file_bytes(self) -> int:
        return self.rows_offset + 2 * self.row_words * self.n_rows


def _open_stream(path: Path) -> BinaryIO:
    if path.suffix == ".xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb", buffering=0)


def _read_exact(fh: BinaryIO, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = fh.readinto(view[got:])
        if not k:
            break
        got += k
    return buf[:got] if got < n else buf


class KldReader:
    """Sequential reader of a .kld file (also ``.kld.xz``), chunk by chunk:
    memory stays bounded by one chunk's rows whatever the file size.

    Opening checks the magic, the header and, for an uncompressed file, the
    size; :meth:`chunks` reports truncation or trailing bytes of a compressed
    file when it meets them. Every problem is a :class:`KldError` naming the
    file.
    """

    def __init__(self, path: str | os.PathLike, *, n_vocab: int | None = None):
        self.path = Path(path)
        self._hash = hashlib.sha256()
        try:
            self._fh = _open_stream(self.path)
            head = self._read(HEADER_BYTES)
        except (OSError, lzma.LZMAError, EOFError) as e:
            raise KldError(f"{self.path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        if len(head) < 8 or bytes(head[:8]) != MAGIC:
            self.close()
            raise KldError(f"{self.path}: not a llama.cpp --kl-divergence-base file (magic {bytes(head[:8])!r}, "
                           f"expected {MAGIC!r})")
        if len(head) < HEADER_BYTES:
            self.close()
            raise KldError(f"{self.path}: truncated: {len(head)} bytes, the header alone needs {HEADER_BYTES}")
        n_ctx = int(np.frombuffer(head, "<u4", 1, 8)[0])
        n_vocab_f, n_chunk = (int(x) for x in np.frombuffer(head, "<i4", 2, 12))
        if n_ctx < 4 or n_vocab_f < 1 or n_chunk < 1 or n_ctx > 1 << 24 or n_vocab_f > 1 << 24:
            self.close()
            raise KldError(f"{self.path}: implausible header (n_ctx={n_ctx}, n_vocab={n_vocab_f}, "
                           f"n_chunk={n_chunk}); not a .kld file llama-perplexity wrote")
        self.header = KldHeader(n_ctx, n_vocab_f, n_chunk)
        if n_vocab is not None and n_vocab != n_vocab_f:
            self.close()
            raise KldError(f"{self.path}: vocabulary of {n_vocab_f} tokens, expected {n_vocab} "
                           "(the .kld was written with another model's vocabulary)")
        h = self.header
        if self.path.suffix != ".xz":
            size = self.path.stat().st_size
            if size < h.file_bytes:
                self.close()
                raise KldError(f"{self.path}: truncated: {size} bytes, the header (n_ctx={h.n_ctx}, "
                               f"n_vocab={h.n_vocab}, n_chunk={h.n_chunk}) needs {h.file_bytes}")
            if size > h.file_bytes:
                self.close()
                raise KldError(f"{self.path}: {size - h.file_bytes} bytes after the last row (header: n_ctx="
                               f"{h.n_ctx}, n_vocab={h.n_vocab}, n_chunk={h.n_chunk}); not a complete .kld file")
        raw = self._read(4 * h.n_ctx * h.n_chunk)
        if len(raw) < 4 * h.n_ctx * h.n_chunk:
            self.close()
            raise KldError(f"{self.path}: truncated inside the token list")
        self.tokens = np.frombuffer(raw, "<i4").astype(np.int64)
        bad = np.flatnonzero((self.tokens < 0) | (self.tokens >= h.n_vocab))
        if bad.size:
            i = int(bad[0])
            self.close()
            raise KldError(f"{self.path}: token {i} has id {int(self.tokens[i])}, outside the vocabulary "
                           f"of {h.n_vocab}")
        self._next_chunk = 0

    def _read(self, n: int) -> bytearray:
        data = _read_exact(self._fh, n)
        self._hash.update(data)
        return data

    @property
    def sha256(self) -> str:
        """sha256 of the .kld content read so far (of the whole file once :meth:`chunks` is exhausted;
        for a .kld.xz, of the decompressed content)."""
        return self._hash.hexdigest()

    def chunk_tokens(self, k: int) -> np.ndarray:
        h = self.header
        return self.tokens[k * h.n_ctx:(k + 1) * h.n_ctx]

    def chunk_targets(self, k: int) -> np.ndarray:
        """The token each row of chunk k predicts."""
        h = self.header
        return self.tokens[k * h.n_ctx + h.first + 1:(k + 1) * h.n_ctx]

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(chunk index, raw rows ``uint16 [rows_per_chunk, row_words]``), in file order."""
        h = self.header
        nbytes = 2 * h.row_words * h.rows_per_chunk
        for k in range(self._next_chunk, h.n_chunk):
            try:
                raw = self._read(nbytes)
            except (OSError, lzma.LZMAError, EOFError) as e:
                raise KldError(f"{self.path}: cannot read chunk {k} ({e})") from None
            if len(raw) < nbytes:
                raise KldError(f"{self.path}: truncated: chunk {k} of {h.n_chunk} holds {len(raw)} of "
                               f"{nbytes} bytes")
            rows = np.frombuffer(raw, "<u2").reshape(h.rows_per_chunk, h.row_words)
            check_rows(rows, self.path, k * h.rows_per_chunk, chunk=k, n_vocab=h.n_vocab)
            self._next_chunk = k + 1
            yield k, rows
        if self.path.suffix == ".xz" and _read_exact(self._fh, 1):
            raise KldError(f"{self.path}: bytes after the last row (header: n_ctx={h.n_ctx}, n_vocab={h.n_vocab}, "
                           f"n_chunk={h.n_chunk}); not a complete .kld file")

    def close(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()
            self._fh = None

    def __enter__(self) -> KldReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _row_header(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hdr = np.ascontiguousarray(rows[:, :4]).view("<f4")
    return hdr[:, 0].astype(F32), hdr[:, 1].astype(F32)


#: how far a decoded row may sit above log-probability 0 (float32 rounding of scale * 65535 + min)
MAX_LOGPROB_SLACK = 1e-3
#: how far a decoded row's log of its total probability may be from 0, beyond what the clamp at
#: max - 16 adds (at most n_vocab * e^-16): the quantisation moves each entry by half a step (< 1.3e-4)
LOG_MASS_SLACK = 0.05


def check_rows(rows: np.ndarray, path: Path, first_row: int, chunk: int | None = None,
               n_vocab: int | None = None) -> None:
    """Refuse raw rows that are not log-probabilities as llama-perplexity writes
    them: a non-finite or negative scale, a non-finite min_log_prob, and (with
    ``n_vocab``) a decoded row whose maximum is above 0 beyond rounding or whose
    probabilities do not sum to about 1. KldError names the chunk and the row."""
    scale, lo = _row_header(rows)
    where = (lambda i: f"chunk {chunk}, row {first_row + i}") if chunk is not None else \
        (lambda i: f"row {first_row + i}")
    bad = np.flatnonzero(~np.isfinite(scale) | (scale < 0) | ~np.isfinite(lo))
    if bad.size:
        i = int(bad[0])
        raise KldError(f"{path}: {where(i)} has scale {scale[i]!r} and min_log_prob {lo[i]!r}; "
                       "not a row llama-perplexity writes")
    if n_vocab is None or not rows.shape[0]:
        return
    with np.errstate(over="ignore", invalid="ignore"):  # a blown-up scale overflows: refused just below
        dec = decode_rows(rows, n_vocab).astype(np.float64)
    top = dec.max(axis=1)
    bad = np.flatnonzero(~np.isfinite(top) | (top > MAX_LOGPROB_SLACK))
    if bad.size:
        i = int(bad[0])
        raise KldError(f"{path}: {where(i)} decodes to a largest log-probability of {top[i]:.6g} (> 0; scale "
                       f"{float(scale[i]):.6g}, min_log_prob {float(lo[i]):.6g}); not log-probabilities")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        log_mass = top + np.log(np.exp(dec - top[:, None]).sum(axis=1))
    hi = math.log1p(n_vocab * math.exp(-16.0)) + LOG_MASS_SLACK
    bad = np.flatnonzero(~np.isfinite(log_mass) | (log_mass < -LOG_MASS_SLACK) | (log_mass > hi))
    if bad.size:
        i = int(bad[0])
        raise KldError(f"{path}: {where(i)}: its probabilities sum to {math.exp(min(log_mass[i], 700.0)):.6g}, "
                       f"not about 1 (scale {float(scale[i]):.6g}, min_log_prob {float(lo[i]):.6g}); not log-probabilities")


def decode_rows(rows: np.ndarray, n_vocab: int, out: np.ndarray | None = None) -> np.ndarray:
    """float32 log-probabilities ``[n, n_vocab]`` of raw rows, each entry
    ``scale * code + min_log_prob`` rounded to float32 after the product and
    after the sum, exactly as llama.cpp computes it."""
    scale, lo = _row_header(rows)
    codes = rows[:, 4:4 + n_vocab]
    if out is None:
        out = np.empty(codes.shape, dtype=F32)
    np.multiply(codes, scale[:, None], out=out, dtype=F32, casting="unsafe")
    np.add(out, lo[:, None], out=out)
    return out


def encode_rows(logits: np.ndarray) -> np.ndarray:
    """The rows llama-perplexity --kl-divergence-base would write for these
    float32 logits ``[n, n_vocab]`` (``uint16 [n, row_words]``). Used to write
    synthetic .kld files (tests, benchmarks)."""
    lg = np.asarray(logits, dtype=F32)
    n, v = lg.shape
    words = 2 * ((v + 1) // 2) + 4
    out = np.zeros((n, words), dtype="<u2")
    mx = lg.max(axis=1)
    mn = np.maximum(lg.min(axis=1), (mx - F32(16)).astype(F32))
    for r in range(n):
        row = lg[r]
        e = np.exp((row - mx[r]).astype(F32).astype(np.float64)).astype(F32)
        lse = F32(math.log(float(np.cumsum(e.astype(np.float64))[-1])))
        min_lp = F32(F32(mn[r] - mx[r]) - lse)
        scale = F32(F32(mx[r] - mn[r]) / F32(65535))
        out[r, :4] = np.array([scale, min_lp], dtype="<f4").view("<u2")
        if scale:
            inv = F32(F32(1) / scale)
            x = (inv * (row - mn[r]).astype(F32)).astype(F32)
            out[r, 4:4 + v] = np.where(row > mn[r], np.rint(x), 0).astype("<u2")
    return out


def write_kld(path: str | os.PathLike, header: KldHeader, tokens: np.ndarray,
              chunks: Iterator[np.ndarray]) -> None:
    """Write a .kld file: header, tokens, then each chunk's raw rows (``encode_rows`` output)."""
    with open(path, "wb") as fh:
        fh.write(MAGIC)
        fh.write(np.array([header.n_ctx], "<u4").tobytes())
        fh.write(np.array([header.n_vocab, header.n_chunk], "<i4").tobytes())
        fh.write(np.asarray(tokens, "<i4").tobytes())
        for rows in chunks:
            fh.write(np.ascontiguousarray(rows, "<u2").tobytes())


# ---------------------------------------------------------------------------
# per-token statistics and llama.cpp's accumulation
# ---------------------------------------------------------------------------

#: How the quantized side's rows are read by :func:`token_stats`.
Q_ROWS = ("stored", "logits")


def token_stats(q: np.ndarray, base: np.ndarray, targets: np.ndarray, threads: int | None = None,
                q_rows: str = "stored") -> dict[str, Any]:
    """llama.cpp's per-token numbers for aligned rows. ``base`` is used as
    log-probabilities as stored (float32, float16, or bfloat16-as-uint16 with
    matching dtype). ``q``, with ``q_rows="stored"`` (the default), too: a
    ``.kld`` file's rows (and a qfair dump's) already are log-probabilities,
    and re-normalising the 16-bit rows of a file would add their clamped tail
    (every entry below max - 16 is stored as max - 16) to each row's
    normaliser; so two imported files give what llama.cpp reports for the live
    quantized model, within what 16-bit storage loses. ``q_rows="logits"``
    normalises ``q`` by its own log-sum-exp, as llama.cpp does with live
    logits (the C++ core, operation for operation as llama.cpp): what a
    llama-perplexity that reads its quantized side from a second file prints.
    Returns float32 ``nll``, ``nll_base``, ``p_diff``, float64 ``kld`` and
    int64 ``argmax_q`` / ``argmax_base`` (first maxima)."""
    t = np.ascontiguousarray(targets, dtype=np.int64)
    if q_rows == "stored":
        return _stored_token_stats(q, base, t)
    if q_rows != "logits":
        raise ValueError(f"q_rows must be one of {', '.join(Q_ROWS)}, got {q_rows!r}")
    from qfair._native import core
    from qfair.core import _default_threads

    return dict(core.llamacpp_token_stats(q, base, t, _default_threads(threads), ""))


def _as_f32(rows: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(rows)
    if a.dtype == np.uint16:  # bfloat16 bits
        return (a.astype(np.uint32) << 16).view(np.float32)
    if a.dtype not in (np.float32, np.float16):
        raise ValueError(f"{what}: rows must be float32, float16 or bfloat16 (as uint16), got {a.dtype}")
    return a.astype(F32, copy=False)


def _stored_token_stats(q: np.ndarray, base: np.ndarray, t: np.ndarray) -> dict[str, Any]:
    """llama.cpp's per-token arithmetic with log q read from the stored row
    instead of ``logit - max - log-sum-exp``: nll = -q[y]; KLD = the double sum
    over entries with log p > -16 of float32 ``p * (log p - log q)``; Δp =
    expf(-nll) - expf(-nll_base) in float32."""
    if q.ndim != 2 or q.shape != base.shape:
        raise ValueError(f"q and base must be 2-d rows of the same shape, got {q.shape} and {base.shape}")
    n, v = q.shape
    if t.shape != (n,):
        raise ValueError(f"targets must hold one id per row ({n}), got shape {t.shape}")
    if n and (t.min() < 0 or t.max() >= v):
        i = int(np.flatnonzero((t < 0) | (t >= v))[0])
        raise ValueError(f"target {int(t[i])} of row {i} is outside the vocabulary of {v}")
    lq, lp = _as_f32(q, "q"), _as_f32(base, "base")
    r = np.arange(n)
    nll = (-lq[r, t]).astype(F32)
    nll_base = (-lp[r, t]).astype(F32)
    kld = np.empty(n, np.float64)
    step = max(1, (1 << 22) // max(v, 1))  # bounded float32 temporaries
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(0, n, step):
            p_log = lp[s:s + step]
            term = np.exp(p_log) * (p_log - lq[s:s + step])
            term[~(p_log > F32(-16))] = 0  # llama.cpp's `if (p_log_base > -16.f)`; keeps a NaN row NaN below
            kld[s:s + step] = term.sum(axis=1, dtype=np.float64)
        p_diff = (np.exp(-nll) - np.exp(-nll_base)).astype(F32)
    return {"nll": nll, "nll_base": nll_base, "kld": kld, "p_diff": p_diff,
            "argmax_q": np.argmax(lq, axis=1).astype(np.int64) if v else np.zeros(n, np.int64),
            "argmax_base": np.argmax(lp, axis=1).astype(np.int64) if v else np.zeros(n, np.int64)}


def _seq_sum(x: np.ndarray) -> float:
    """``double s = 0; for (...) s += x[i];`` (np.add.accumulate is sequential)."""
    return float(np.add.accumulate(np.asarray(x, dtype=np.float64))[-1]) if len(x) else 0.0


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else (math.nan if not math.isnan(x) else x)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _div(a: float, b: float) -> float:
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))


def mean_and_uncertainty(s: float, s2: float, n: int) -> tuple[float, float]:
    """llama.cpp: mean, and the standard error of the mean (0 when n <= 10 or the variance is not positive)."""
    if n < 1:
        return 0.0, 0.0
    f = s / n
    v = s2 / n - f * f
    return f, (math.sqrt(v / (n - 1)) if v > 0 and n > 10 else 0.0)


def covariance(sa: float, sb: float, sab: float, n: int) -> float:
    """llama.cpp: the covariance of the two means (0 when n < 10)."""
    if n < 10:
        return 0.0
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


def percentile(sorted_values: np.ndarray, fraction: float) -> np.float32:
    """llama.cpp's percentile of sorted float32 values, in float32 arithmetic."""
    v = sorted_values
    f = F32(fraction)
    if f <= 0:
        return v[0]
    if f >= 1:
        return v[-1]
    p = F32(f * F32(len(v) - 1))
    ip = int(p)
    p = F32(p - F32(ip))
    return F32(F32(F32(1) - p) * v[ip] + F32(p * v[min(ip + 1, len(v) - 1)]))


def median(sorted_values: np.ndarray) -> np.float32:
    v = sorted_values
    n = len(v)
    return F32(F32(0.5) * F32(v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else v[n // 2]


@dataclass
class KlAccumulator:
    """llama.cpp's ``kl_divergence_result``: double sums of the per-token
    values (squares and products taken in float32 first), one partial sum
    per chunk added to the totals at the chunk's end."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list, repr=False)
    p_diff_values: list[np.ndarray] = field(default_factory=list, repr=False)

    def add_chunk(self, s: dict[str, np.ndarray]) -> None:
        """Add one chunk's tokens (a slice of :func:`token_stats` output, in row order)."""
        nll = np.asarray(s["nll"], F32)
        nb = np.asarray(s["nll_base"], F32)
        kld = np.asarray(s["kld"], np.float64)
        pd = np.asarray(s["p_diff"], F32)
        pd2 = (pd * pd).astype(np.float64)
        self.sum_nll += _seq_sum(nll)
        self.sum_nll2 += _seq_sum(nll * nll)
        self.sum_nll_base += _seq_sum(nb)
        self.sum_nll_base2 += _seq_sum(nb * nb)
        self.sum_nll_nll_base += _seq_sum(nll * nb)
        self.sum_kld += _seq_sum(kld)
        self.sum_kld2 += _seq_sum(kld * kld)
        self.sum_p_diff += _seq_sum(pd)
        self.sum_p_diff2 += _seq_sum(pd2)
        self.sum_p_diff4 += _seq_sum(pd2 * pd2)
        self.n_same_top += int(np.count_nonzero(np.asarray(s["argmax_q"]) == np.asarray(s["argmax_base"])))
        self.count += int(nll.size)
        self.kld_values.append(kld.astype(F32))
        self.p_diff_values.append(pd)

    def summary(self, order_stats: bool = True) -> KlSummary:
        return KlSummary.from_accumulator(self, order_stats)


@dataclass
class KlSummary:
    """Every figure of llama.cpp's summary (and of its running per-chunk line),
    as the doubles llama.cpp prints. ``*_unc`` are its ± values."""

    count: int
    ppl_q: float
    ppl_q_unc: float
    ppl_base: float
    ppl_base_unc: float
    cor: float
    ln_ratio: float
    ln_ratio_unc: float
    ratio: float
    ratio_unc: float
    diff: float
    diff_unc: float
    kld_mean: float
    kld_unc: float
    kld_pct: dict[str, float]       # "max", "99.9%", ..., "median", ..., "min"
    dp_mean: float
    dp_unc: float
    dp_pct: dict[str, float]
    rms_dp: float
    rms_dp_unc: float
    same_top: float
    same_top_unc: float

    @classmethod
    def from_accumulator(cls, a: KlAccumulator, order_stats: bool = True) -> KlSummary:
        """The figures of the tokens added so far (``order_stats=False``: without
        the percentiles, which the per-chunk line does not need)."""
        n = a.count
        lq = mean_and_uncertainty(a.sum_nll, a.sum_nll2, n)
        lb = mean_and_uncertainty(a.sum_nll_base, a.sum_nll_base2, n)
        ppl, pplb = _exp(lq[0]), _exp(lb[0])
        ppl_unc, pplb_unc = ppl * lq[1], pplb * lb[1]
        cov = covariance(a.sum_nll, a.sum_nll_base, a.sum_nll_nll_base, n)
        ln_ratio = lq[0] - lb[0]
        ln_unc = _sqrt(lq[1] * lq[1] + lb[1] * lb[1] - 2.0 * cov)
        ratio = _exp(ln_ratio)
        pcov = ppl * pplb * cov
        kl = mean_and_uncertainty(a.sum_kld, a.sum_kld2, n)
        dp = mean_and_uncertainty(a.sum_p_diff, a.sum_p_diff2, n)
        mse = mean_and_uncertainty(a.sum_p_diff2, a.sum_p_diff4, n)
        rms = _sqrt(mse[0])
        top = _div(1.0 * a.n_same_top, n)
        kv = np.sort(np.concatenate(a.kld_values)) if a.kld_values and order_stats else np.zeros(0, F32)
        pv = np.sort(np.concatenate(a.p_diff_values)) if a.p_diff_values and order_stats else np.zeros(0, F32)
        return cls(
            count=n, ppl_q=ppl, ppl_q_unc=ppl_unc, ppl_base=pplb, ppl_base_unc=pplb_unc,
            cor=_div(cov, lq[1] * lb[1]), ln_ratio=ln_ratio, ln_ratio_unc=ln_unc, ratio=ratio,
            ratio_unc=ratio * ln_unc, diff=ppl - pplb,
            diff_unc=_sqrt(ppl_unc * ppl_unc + pplb_unc * pplb_unc - 2.0 * pcov),
            kld_mean=kl[0], kld_unc=kl[1], kld_pct=_order_stats(kv, PERCENTILES_KLD),
            dp_mean=dp[0], dp_unc=dp[1], dp_pct=_order_stats(pv, PERCENTILES_DP),
            rms_dp=rms, rms_dp_unc=_div(0.5, rms) * mse[1], same_top=top,
            same_top_unc=_sqrt(_div(top * (1.0 - top), n - 1)))

    # -- llama.cpp's layout ------------------------------------------------------
    def chunk_line(self, chunk_no: int) -> str:
        """The per-chunk line (running figures over all chunks so far)."""
        return (f"{chunk_no:4d}"
                + "    " + _c("%9.4f", self.ppl_q) + " ± " + _c("%9.4f", self.ppl_q_unc)
                + "    " + _c("%10.5f", self.ln_ratio) + " ± " + _c("%10.5f", self.ln_ratio_unc)
                + "    " + _c("%10.5f", self.kld_mean) + " ± " + _c("%10.5f", self.kld_unc)
                + "    " + _c("%6.3f", 100.0 * self.rms_dp) + " ± " + _c("%6.3f", 100.0 * self.rms_dp_unc) + " %"
                + "    " + _c("%6.3f", 100.0 * self.same_top) + " ± " + _c("%6.3f", 100.0 * self.same_top_unc)
                + " %")

    def lines(self) -> list[str]:
        """The summary block, from "====== Perplexity statistics ======" to "Same top p"."""
        if self.count < MIN_SUMMARY_TOKENS:
            return []
        pm = "±"
        L = ["====== Perplexity statistics ======",
             f"Mean PPL(Q)                   : {_c('%10.6f', self.ppl_q)} {pm} {_c('%10.6f', self.ppl_q_unc)}",
             f"Mean PPL(base)                : {_c('%10.6f', self.ppl_base)} {pm} {_c('%10.6f', self.ppl_base_unc)}",
             f"Cor(ln(PPL(Q)), ln(PPL(base))): {_c('%6.2f', 100.0 * self.cor)}%",
             f"Mean ln(PPL(Q)/PPL(base))     : {_c('%10.6f', self.ln_ratio)} {pm} {_c('%10.6f', self.ln_ratio_unc)}",
             f"Mean PPL(Q)/PPL(base)         : {_c('%10.6f', self.ratio)} {pm} {_c('%10.6f', self.ratio_unc)}",
             f"Mean PPL(Q)-PPL(base)         : {_c('%10.6f', self.diff)} {pm} {_c('%10.6f', self.diff_unc)}",
             "",
             "====== KL divergence statistics ======",
             f"Mean    KLD: {_c('%10.6f', self.kld_mean)} {pm} {_c('%10.6f', self.kld_unc)}",
             f"Maximum KLD: {_c('%10.6f', self.kld_pct['max'])}"]
        for label, _ in PERCENTILES_KLD:
            name = "Median " if label == "median" else label + "  "
            L.append(f"{name} KLD: {_c('%10.6f', self.kld_pct[label])}")
        L += [f"Minimum KLD: {_c('%10.6f', self.kld_pct['min'])}",
              "",
              "====== Token probability statistics ======",
              f"Mean    Δp: {_c('%6.3f', 100.0 * self.dp_mean)} {pm} {_c('%5.3f', 100.0 * self.dp_unc)} %",
              f"Maximum Δp: {_c('%6.3f', 100.0 * self.dp_pct['max'])}%"]
        for label, _ in PERCENTILES_DP:
            name = "Median " if label == "median" else label + "  "
            L.append(f"{name} Δp: {_c('%6.3f', 100.0 * self.dp_pct[label])}%")
        L += [f"Minimum Δp: {_c('%6.3f', 100.0 * self.dp_pct['min'])}%",
              f"RMS Δp    : {_c('%6.3f', 100.0 * self.rms_dp)} {pm} {_c('%5.3f', 100.0 * self.rms_dp_unc)} %",
              f"Same top p: {_c('%6.3f', 100.0 * self.same_top)} {pm} {_c('%5.3f', 100.0 * self.same_top_unc)} %"]
        return L


def _order_stats(v: np.ndarray, spec: tuple[tuple[str, float | None], ...]) -> dict[str, float]:
    if v.size == 0:
        return {k: math.nan for k in ("max", "min", *(s for s, _ in spec))}
    out = {"max": float(v[-1])}
    for label, frac in spec:
        out[label] = float(median(v) if frac is None else percentile(v, frac))
    out["min"] = float(v[0])
    return out


def _c(fmt: str, x: float) -> str:
    """C printf of one double (glibc): NaN prints as '-nan' (the x86 default NaN
    every invalid operation in llama.cpp's summary produces), right-aligned."""
    x = float(x)
    if math.isnan(x):
        width = fmt[1:].split(".")[0]
        return "-nan".rjust(int(width)) if width else "-nan"
    return fmt % x


def read_layout(text: str) -> list[str]:
    """The lines of a llama-perplexity --kl-divergence log from the chunk header
    to "Same top p" (for comparing with :meth:`KlSummary.lines`)."""
    lines = io.StringIO(text).read().splitlines()
    start = next((i for i, s in enumerate(lines) if s.startswith("chunk ")), None)
    if start is None:
        return []
    end = next((i for i, s in enumerate(lines) if s.startswith("Same top p:")), len(lines) - 1)
    return lines[start:end + 1]
