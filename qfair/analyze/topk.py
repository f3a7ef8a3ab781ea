"""Token divergences when one or both dumps store top-K records (``--store topk:K``).

A top-K row keeps the K largest log-probs, their token ids and the log of the
mass outside them (:func:`qfair.dump.writer.to_topk`). Compared with a full
row or another top-K row, per aligned row:

- ``kl_pq``, ``kl_qp``, ``js``, ``tv`` are computed on a coarser partition of
  the vocabulary: one cell per token id whose probability is known on both
  sides (the ids both rows store; every stored id when the other row is full)
  and one *tail* cell holding everything else, whose mass is known on both
  sides (1 minus the known cells). Merging outcomes never increases an
  f-divergence (data-processing inequality), so each value is a **lower
  bound** of the divergence between the full distributions; it is exact
  when the cells separate the support of both rows.
- ``overlap_at_k`` is exact for every k up to the smaller K (the records hold
  the top-K in the core's order: value descending, then token id), NaN beyond.
- ``margin_p`` / ``margin_q`` (top-1 minus top-2 probability) are exact when K
  >= 2; target-token statistics and entropies come from ``tokens.parquet`` as
  for any dump (computed on the full rows at dump time).

Everything is vectorised in numpy over a chunk of rows; a full side's
normaliser, margin and top-k are computed by the C++ core on that side's rows
(the same kernels as for two full dumps). Pair of two full dumps never come
here: they go through :func:`qfair.stream_divergence` unchanged.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qfair.dump import DumpError

__all__ = ["stream_topk_divergence", "topk_metrics", "TopkSide", "BOUND_METRICS"]

#: the metrics that are lower bounds when a side holds top-K records
BOUND_METRICS = ("kl_pq", "kl_qp", "js", "tv")
# float32 bytes of pseudo rows built at once for the core (full side vs top-K side)
_PSEUDO_BYTES = 64 << 20


@dataclass
class TopkSide:
    """One side of a chunk: ``rec`` (top-K records: logprob [n, K], id [n, K], tail [n])
    or ``rows`` (full stored rows [n, V] in ``dtype``)."""

    rec: np.ndarray | None = None
    rows: np.ndarray | None = None
    dtype: str = "f16"

    @property
    def is_topk(self) -> bool:
        return self.rec is not None


def _f32_rows(rows: np.ndarray, dtype: str) -> np.ndarray:
    a = np.asarray(rows)
    if dtype == "bf16" or a.dtype == np.uint16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a


def _record_values(rec: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities of the K entries [n, K] f64, tail mass [n] f64, ids [n, K], valid [n]),
    re-normalised over the K entries and the tail (so that rounding never makes them sum to
    anything but one)."""
    v = rec["logprob"]
    v = _f32_rows(v.reshape(v.shape[0], -1), dtype).astype(np.float64)
    tail = rec["tail"].astype(np.float64)
    ids = rec["id"].reshape(rec.shape[0], -1).astype(np.int64)
    valid = ~(np.isnan(v).any(axis=1) | np.isnan(tail) | np.isposinf(v).any(axis=1) | np.isposinf(tail))
    allv = np.concatenate([v, tail[:, None]], axis=1)
    m = np.max(allv, axis=1, keepdims=True)
    valid &= np.isfinite(m[:, 0])
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(allv - m)
        lse = np.log(e.sum(axis=1, keepdims=True)) + m
        p = np.exp(v - lse)
        pt = np.exp(tail - lse[:, 0])
    return p, pt, ids, valid


def _f_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Terms p log(p/q) - p + q (>= 0; they sum to KL when both sides sum to one):
    0 where p = 0, +inf where q = 0 < p."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * (np.log(p) - np.log(q)) - p + q, q)
    return np.where((q <= 0) & (p > 0), np.inf, np.maximum(t, 0.0))


def _js_terms(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Terms of the Jensen-Shannon divergence (nats) without cancellation when p ~ q."""
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(m > 0, (p - q) / (p + q), 0.0)
        h = np.where(np.abs(d) < 1, (1 + d) * np.log1p(d) + (1 - d) * np.log1p(-np.minimum(d, 1.0)),
                     2 * np.log(2.0))
    return 0.5 * m * h


def _cell_metrics(pc: np.ndarray, qc: np.ndarray, pr: np.ndarray, qr: np.ndarray) -> dict[str, np.ndarray]:
    """KL both ways, JS and TV over the known cells [n, C] plus the rest cell [n]."""
    pr = np.clip(pr, 0.0, 1.0)
    qr = np.clip(qr, 0.0, 1.0)
    return {
        "kl_pq": _f_kl(pc, qc).sum(axis=1) + _f_kl(pr, qr),
        "kl_qp": _f_kl(qc, pc).sum(axis=1) + _f_kl(qr, pr),
        "js": _js_terms(pc, qc).sum(axis=1) + _js_terms(pr, qr),
        "tv": 0.5 * (np.abs(pc - qc).sum(axis=1) + np.abs(pr - qr)),
    }


def _overlaps_records(ids_p: np.ndarray, ids_q: np.ndarray, ks: Sequence[int], vocab: int) -> dict[str, np.ndarray]:
    n = ids_p.shape[0]
    kmax = min(ids_p.shape[1], ids_q.shape[1])
    out = {}
    for k in ks:
        name = f"overlap_at_{k}"
        if min(k, vocab) > kmax:
            out[name] = np.full(n, np.nan)
            continue
        kk = min(k, vocab)
        a, b = ids_p[:, :kk], ids_q[:, :kk]
        out[name] = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1) / kk
    return out


def _margin(p: np.ndarray) -> np.ndarray:
    if p.shape[1] < 2:
        return np.full(p.shape[0], np.nan)
    return p[:, 0] - p[:, 1]


def _both_topk(a: TopkSide, b: TopkSide, ks: Sequence[int], vocab: int) -> dict[str, np.ndarray]:
    pp, pt, ip, vp = _record_values(a.rec, a.dtype)
    qq, qt, iq, vq = _record_values(b.rec, b.dtype)
    n, kp = ip.shape
    kq = iq.shape[1]
    # for each of P's ids, its position in Q's row (if stored there): search the row-offset keys
    order = np.argsort(iq, axis=1, kind="stable")
    iq_sorted = np.take_along_axis(iq, order, axis=1)
    rows = np.arange(n, dtype=np.int64)[:, None]
    keys_q = (rows * vocab + iq_sorted).ravel()
    keys_p = (rows * vocab + ip).ravel()
    pos = np.searchsorted(keys_q, keys_p)
    pos_c = np.minimum(pos, keys_q.size - 1) if keys_q.size else pos
    matched = (keys_q[pos_c] == keys_p).reshape(n, kp) if keys_q.size else np.zeros((n, kp), dtype=bool)
    col = (pos_c - (rows * kq).repeat(kp, axis=1).ravel()).reshape(n, kp) if keys_q.size else np.zeros((n, kp),
                                                                                                          dtype=np.int64)
    qcol = np.take_along_axis(order, np.clip(col, 0, max(kq - 1, 0)), axis=1)
    qc = np.where(matched, np.take_along_axis(qq, qcol, axis=1), 0.0)
    pc = np.where(matched, pp, 0.0)
    # the rest cell summed from its own entries (no 1 - sum cancellation): a rounding
    # residual against an exact zero would read as an infinite KL
    q_matched = np.zeros((n, kq), dtype=bool)
    r, c = np.nonzero(matched)
    q_matched[r, qcol[r, c]] = True
    pr = pt + np.where(matched, 0.0, pp).sum(axis=1)
    qr = qt + np.where(q_matched, 0.0, qq).sum(axis=1)
    out = _cell_metrics(pc, qc, pr, qr)
    out.update(_overlaps_records(ip, iq, ks, vocab))
    out["margin_p"], out["margin_q"] = _margin(pp), _margin(qq)
    return _mask(out, vp, vq)


def _mask(out: dict[str, np.ndarray], vp: np.ndarray, vq: np.ndarray) -> dict[str, np.ndarray]:
    bad = ~(vp & vq)
    if bad.any():
        for k in out:
            out[k] = np.where(bad, np.nan, out[k])
    out["_invalid_p"], out["_invalid_q"] = ~vp, ~vq
    return out


def _topk_full(a: TopkSide, b: TopkSide, ks: Sequence[int], vocab: int, threads: int | None) -> dict[str, np.ndarray]:
    """P top-K records, Q full rows."""
    import qfair

    pp, pt, ip, vp = _record_values(a.rec, a.dtype)
    n, kp = ip.shape
    q_rows = _f32_rows(b.rows, b.dtype)
    ks_ok = tuple(k for k in ks if min(k, vocab) <= kp)
    lse = np.full(n, np.nan)
    margin_q = np.full(n, np.nan)
    over = {f"overlap_at_{k}": np.full(n, np.nan) for k in ks}
    vq = np.ones(n, dtype=bool)
    step = max(1, _PSEUDO_BYTES // (4 * vocab))
    targets = ip[:, 0]
    for s in range(0, n, step):
        e = min(n, s + step)
        pseudo = np.full((e - s, vocab), -np.inf, dtype=np.float32)
        # the stored top-K values in place, -inf elsewhere: its top-k equals P's for every k <= K
        vals = np.where(np.isfinite(pp[s:e]) & (pp[s:e] > 0), np.log(np.maximum(pp[s:e], 1e-300)), -np.inf)
        np.put_along_axis(pseudo, ip[s:e], vals.astype(np.float32), axis=1)
        pseudo[~vp[s:e]] = 0.0  # an invalid P row: any readable row (its metrics are masked)
        qv = q_rows[s:e]
        if qv.dtype not in (np.float16, np.float32):
            qv = np.ascontiguousarray(qv, dtype=np.float32)
        res = qfair.divergence(pseudo, qv, targets=targets[s:e], topk=ks_ok or (1,), threads=threads)
        m = res.metrics
        margin_q[s:e] = m["margin_q"]
        for k in ks_ok:
            over[f"overlap_at_{k}"][s:e] = m[f"overlap_at_{k}"]
        bad_q = np.isnan(m["entropy_q"]) if "entropy_q" in m else np.zeros(e - s, dtype=bool)
        vq[s:e] = ~bad_q
        raw_t = np.take_along_axis(qv, targets[s:e, None], axis=1)[:, 0].astype(np.float64)
        with np.errstate(invalid="ignore"):  # -inf - -inf: P's top-1 outside Q's support, redone below
            lse[s:e] = raw_t - np.asarray(m["logprob_q"], dtype=np.float64)
    # rows whose P top-1 has zero probability under Q: the normaliser from the whole row
    redo = np.flatnonzero(~np.isfinite(lse) & vq)
    for i in redo:
        r = q_rows[i].astype(np.float64)
        mx = np.max(r)
        lse[i] = mx + np.log(np.sum(np.exp(r - mx))) if np.isfinite(mx) else np.nan
    raw = np.take_along_axis(q_rows, ip, axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        qc = np.exp(raw - lse[:, None])
    # K = the whole vocabulary: no rest cell, on either side (1 - sum would leave a
    # rounding residual against P's exact zero, an infinite KL(Q||P))
    qr = np.zeros(n) if kp >= vocab else 1.0 - qc.sum(axis=1)
    out = _cell_metrics(pp, qc, pt, qr)
    out.update(over)
    out["margin_p"], out["margin_q"] = _margin(pp), margin_q
    return _mask(out, vp, vq)


def topk_metrics(p: TopkSide, q: TopkSide, ks: Sequence[int], vocab: int,
                 threads: int | None = None) -> dict[str, np.ndarray]:
    """The divergence columns of one chunk (module doc); keys ``_invalid_p`` /
    ``_invalid_q`` flag rows that are not distributions on either side."""
    n = (p.rec if p.is_topk else p.rows).shape[0]
    if n == 0:
        names = [*BOUND_METRICS, "margin_p", "margin_q", *(f"overlap_at_{k}" for k in ks)]
        return {**{k: np.zeros(0) for k in names}, "_invalid_p": np.zeros(0, bool), "_invalid_q": np.zeros(0, bool)}
    if p.is_topk and q.is_topk:
        return _both_topk(p, q, ks, vocab)
    if p.is_topk:
        return _topk_full(p, q, ks, vocab, threads)
    if q.is_topk:
        out = _topk_full(q, p, ks, vocab, threads)
        swap = {"kl_pq": "kl_qp", "kl_qp": "kl_pq", "margin_p": "margin_q", "margin_q": "margin_p",
                "_invalid_p": "_invalid_q", "_invalid_q": "_invalid_p"}
        return {swap.get(k, k): v for k, v in out.items()}
    raise ValueError("topk_metrics: neither side holds top-K records (full pairs go through the C++ core)")


def _row_blocks(d: Any) -> list[tuple[int, Any]]:
    """(rows, block opener) per shard: top-K records as small memory maps, full rows
    through qfair.npyio (pages handed back once consumed)."""
    out = []
    blocks = d.logit_blocks()
    paths = d.row_paths
    for blk, path in zip(blocks, paths):
        out.append((int(blk.shape[0]), path))
    return out


def stream_topk_divergence(base: Any, quant: Any, *, topk: Sequence[int] = (1, 5, 10), chunk_rows: int = 4096,
                           threads: int | None = None) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """``(start, stop, metrics)`` over the aligned rows of two dumps of which at least
    one stores top-K records (module doc). Memory stays bounded by a chunk: full
    rows are memory-mapped and their pages handed back as they are consumed."""
    from qfair.npyio import open_npy_rows

    if not (base.has_rows and quant.has_rows):
        raise DumpError(f"{base.path} vs {quant.path}: both dumps need stored rows (full or topk)")
    vocab = int(base.vocab_size)
    sides = []
    for d in (base, quant):
        blocks = _row_blocks(d)
        bounds = np.cumsum([0] + [r for r, _ in blocks])
        sides.append((d, blocks, bounds))
    n_rows = int(sides[0][2][-1])
    if n_rows != int(sides[1][2][-1]):
        raise DumpError(f"{base.path} vs {quant.path}: {n_rows} vs {int(sides[1][2][-1])} stored rows; not aligned")
    cuts = sorted(set(sides[0][2].tolist()) | set(sides[1][2].tolist()))
    opened: list[dict[int, Any]] = [{}, {}]

    def view(side: int, s: int, e: int) -> TopkSide:
        d, blocks, bounds = sides[side]
        i = int(np.searchsorted(bounds, s, side="right") - 1)
        off = s - int(bounds[i])
        if i not in opened[side]:
            for j in list(opened[side]):  # one open shard per side
                h = opened[side].pop(j)
                if hasattr(h, "close"):
                    h.close()
            if d.has_topk:
                opened[side][i] = np.load(blocks[i][1], mmap_mode="r", allow_pickle=False)
            else:
                opened[side][i] = open_npy_rows(blocks[i][1])
        h = opened[side][i]
        if d.has_topk:
            return TopkSide(rec=np.asarray(h[off:off + (e - s)]), dtype=d.logits_dtype)
        return TopkSide(rows=h.array[off:off + (e - s)], dtype=d.logits_dtype)

    def release(side: int, s: int, e: int) -> None:
        d, _, bounds = sides[side]
        if d.has_topk:
            return
        i = int(np.searchsorted(bounds, s, side="right") - 1)
        h = opened[side].get(i)
        if h is not None:
            h.release_until(e - int(bounds[i]))

    try:
        for a, b in zip(cuts[:-1], cuts[1:]):
            for s in range(a, b, max(1, int(chunk_rows))):
                e = min(b, s + int(chunk_rows))
                pv, qv = view(0, s, e), view(1, s, e)
                yield s, e, topk_metrics(pv, qv, topk, vocab, threads)
                release(0, s, e)
                release(1, s, e)
    finally:
        for side in opened:
            for h in side.values():
                if hasattr(h, "close"):
                    h.close()
