"""The ``text`` kind's own analysis: llama.cpp's ``--kl-divergence`` summary,
with qfair's bootstrap over chunks.

For an aligned pair of text dumps (``qfair dump --text`` or ``qfair import
llamacpp``), every scored token goes through llama.cpp's per-token arithmetic
(:func:`qfair.llamacpp.token_stats`): both dumps' rows are used as
log-probabilities *as stored* (for an import: llama.cpp's decoded values, not
re-normalised), so that two imports of ``.kld`` files reproduce what llama.cpp
reports for the live quantized model against the base file, within what the
16-bit rows lose (docs/llamacpp.md). The per-token numbers are summed exactly
as llama.cpp sums them (:class:`qfair.llamacpp.KlAccumulator`).
``compare(..., kind_options={"q_rows": "logits"})`` re-normalises the quantized side's
rows instead (llama.cpp's live-logits arithmetic in the C++ core): then two
imports give, to every printed digit, what a llama-perplexity that reads its
quantized side from a second file prints.

Tables (see docs/analyze.md):

- ``text_summary``: one row per figure of llama.cpp's summary (value, llama.cpp's
  own ± where it prints one) plus ``ci_low`` / ``ci_high``, qfair's percentile
  bootstrap interval over chunks (whole chunks are resampled, the figure is
  recomputed in float64 on each resample);
- ``text_chunks``: llama.cpp's per-chunk line (running figures over the chunks
  so far).

Rows are streamed from the dumps' shards a block at a time, so memory stays
bounded by one block whatever the size of the dumps.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from qfair import stats
from qfair.dump import DumpError
from qfair.llamacpp import (
    CHUNK_HEADER,
    PERCENTILES_DP,
    PERCENTILES_KLD,
    Q_ROWS,
    KlAccumulator,
    KlSummary,
    token_stats,
)

__all__ = ["text_tables", "llamacpp_pair", "format_llamacpp", "STATISTICS", "TEXT_SUMMARY_SCHEMA"]


def _pct_name(prefix: str, label: str) -> str:
    label = label.strip()
    return f"{prefix}_median" if label == "median" else f"{prefix}_p{label.rstrip('%')}"


#: (statistic, KlSummary attribute or (dict attribute, key), llama.cpp's ± attribute or None)
STATISTICS: tuple[tuple[str, Any, str | None], ...] = (
    ("ppl_q", "ppl_q", "ppl_q_unc"),
    ("ppl_base", "ppl_base", "ppl_base_unc"),
    ("cor_ln_ppl", "cor", None),
    ("ln_ppl_ratio", "ln_ratio", "ln_ratio_unc"),
    ("ppl_ratio", "ratio", "ratio_unc"),
    ("ppl_diff", "diff", "diff_unc"),
    ("kld_mean", "kld_mean", "kld_unc"),
    ("kld_max", ("kld_pct", "max"), None),
    *((_pct_name("kld", lab), ("kld_pct", lab), None) for lab, _ in PERCENTILES_KLD),
    ("kld_min", ("kld_pct", "min"), None),
    ("dp_mean", "dp_mean", "dp_unc"),
    ("dp_max", ("dp_pct", "max"), None),
    *((_pct_name("dp", lab), ("dp_pct", lab), None) for lab, _ in PERCENTILES_DP),
    ("dp_min", ("dp_pct", "min"), None),
    ("rms_dp", "rms_dp", "rms_dp_unc"),
    ("same_top_p", "same_top", "same_top_unc"),
)

TEXT_SUMMARY_SCHEMA = {
    "model": pl.Utf8, "statistic": pl.Utf8, "value": pl.Float64, "llama_unc": pl.Float64,
    "ci_low": pl.Float64, "ci_high": pl.Float64, "ci_method": pl.Utf8, "n_tokens": pl.Int64, "n_chunks": pl.Int64,
}
CHUNK_COLUMNS = ("ppl_q", "ppl_q_unc", "ln_ratio", "ln_ratio_unc", "kld_mean", "kld_unc", "rms_dp", "rms_dp_unc",
                 "same_top", "same_top_unc")


def _get(s: KlSummary, attr: Any) -> float:
    if isinstance(attr, tuple):
        return float(getattr(s, attr[0])[attr[1]])
    return float(getattr(s, attr))


# ---------------------------------------------------------------------------
# streaming the rows
# ---------------------------------------------------------------------------

def _row_blocks(base: Any, quant: Any, chunk_rows: int):
    """(start, stop, base rows, quant rows) over the two dumps' shards, aligned;
    the pages of consumed rows are handed back to the OS."""
    from qfair.core import stream_rows

    yield from stream_rows([str(p) for p in base.logit_paths], [str(p) for p in quant.logit_paths],
                           chunk_rows=chunk_rows)


def token_values(base: Any, quant: Any, *, chunk_rows: int = 256, threads: int | None = None,
                 q_rows: str = "stored") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """llama.cpp's per-token numbers of every scored token (in row order) and
    the chunk index of each (``q_rows``: see :func:`qfair.llamacpp.token_stats`)."""
    tt = base.tokens
    rows = tt["row"].to_numpy()
    n = int(rows.size)
    if n == 0 or rows[0] != 0 or np.any(np.diff(rows) != 1):
        raise DumpError(f"{base.path}: tokens.parquet rows are not 0..n-1 in order; not a text dump with stored rows")
    targets = tt["target"].to_numpy().astype(np.int64)
    ids = tt["example_id"].to_numpy()
    chunk = np.concatenate([[0], np.cumsum(ids[1:] != ids[:-1])]).astype(np.int64)
    if base.logits_dtype == "bf16" or quant.logits_dtype == "bf16":
        raise DumpError(f"{base.path} vs {quant.path}: the llama.cpp summary reads float32 or float16 rows, "
                        "not bf16")
    out: dict[str, list[np.ndarray]] = {}
    seen = 0
    for s, e, pb, pq in _row_blocks(base, quant, chunk_rows):
        vals = token_stats(pq, pb, targets[s:e], threads=threads, q_rows=q_rows)
        for k, v in vals.items():
            out.setdefault(k, []).append(np.asarray(v))
        seen = e
    if seen != n:
        raise DumpError(f"{base.path}: {seen} logits rows for {n} scored tokens")
    return {k: np.concatenate(v) for k, v in out.items()}, chunk


# ---------------------------------------------------------------------------
# llama.cpp's figures, and the bootstrap over chunks
# ---------------------------------------------------------------------------

def llamacpp_pair(vals: dict[str, np.ndarray], chunk: np.ndarray) -> tuple[KlSummary, list[KlSummary]]:
    """The summary and the running per-chunk figures, accumulated as llama.cpp does."""
    acc = KlAccumulator()
    running = []
    bounds = np.flatnonzero(np.diff(chunk)) + 1
    for idx in np.split(np.arange(chunk.size), bounds):
        if idx.size == 0:
            continue
        acc.add_chunk({k: v[idx[0]:idx[-1] + 1] for k, v in vals.items()})
        running.append(acc.summary(order_stats=False))
    return acc.summary(), running


def _boot_figures(S: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    """The mean-type figures from resampled sums ``S`` [B, 11] (float64, no float32 emulation)."""
    with np.errstate(all="ignore"):
        s_nll, s_nll2, s_b, s_b2, s_nb, s_kld, s_kld2, s_pd, s_pd2, s_pd4, same = S.T

        def mu(s, s2):
            f = s / n
            v = s2 / n - f * f
            return f, np.where((v > 0) & (n > 10), np.sqrt(np.maximum(v, 0) / (n - 1)), 0.0)

        a, ea = mu(s_nll, s_nll2)
        b, eb = mu(s_b, s_b2)
        cov = np.where(n >= 10, (s_nb / n - (s_nll / n) * (s_b / n)) / (n - 1), 0.0)
        pq, pb = np.exp(a), np.exp(b)
        ln_ratio = a - b
        mse = s_pd2 / n
        return {"ppl_q": pq, "ppl_base": pb, "cor_ln_ppl": cov / (ea * eb), "ln_ppl_ratio": ln_ratio,
                "ppl_ratio": np.exp(ln_ratio), "ppl_diff": pq - pb, "kld_mean": s_kld / n, "dp_mean": s_pd / n,
                "rms_dp": np.sqrt(mse), "same_top_p": same / n}


def _weighted_order_stats(values: np.ndarray, chunk: np.ndarray, counts: np.ndarray,
                          spec: tuple[tuple[str, float | None], ...], prefix: str) -> dict[str, np.ndarray]:
    """llama.cpp's order statistics of the resampled tokens (each token repeated
    as often as its chunk was drawn), for a batch of resamples ``counts`` [B, K]."""
    order = np.argsort(values, kind="stable")
    v = values[order].astype(np.float64)
    w = counts[:, chunk[order]].astype(np.int64)          # [B, N] multiplicity of each sorted token
    cum = np.cumsum(w, axis=1)                            # expanded index where each token ends
    total = cum[:, -1]
    B, N = w.shape
    big = int(total.max()) + 1
    flat = (cum + (np.arange(B, dtype=np.int64) * big)[:, None]).ravel()

    def at(pos: np.ndarray) -> np.ndarray:  # value at expanded position pos (one per resample)
        i = np.searchsorted(flat, pos + np.arange(B, dtype=np.int64) * big, side="right") - np.arange(B) * N
        return v[np.clip(i, 0, N - 1)]

    out: dict[str, np.ndarray] = {f"{prefix}_max": at(total - 1), f"{prefix}_min": at(np.zeros(B, np.int64))}
    for label, frac in spec:
        name = _pct_name(prefix, label)
        if frac is None:
            odd = total % 2 == 1
            hi = at(total // 2)
            lo = at(np.maximum(total // 2 - 1, 0))
            out[name] = np.where(odd, hi, 0.5 * (hi + lo))
            continue
        p = frac * (total - 1)
        ip = np.floor(p).astype(np.int64)
        t = p - ip
        out[name] = (1 - t) * at(ip) + t * at(np.minimum(ip + 1, total - 1))
    return out


def bootstrap_chunks(vals: dict[str, np.ndarray], chunk: np.ndarray, *, resamples: int, seed: int,
                     confidence: float) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every figure, resampling whole chunks (the
    draws of :func:`qfair.stats.bootstrap_counts`)."""
    K = int(chunk.max()) + 1
    nll = vals["nll"].astype(np.float64)
    nb = vals["nll_base"].astype(np.float64)
    kld = vals["kld"].astype(np.float64)
    pd = vals["p_diff"].astype(np.float64)
    same = (vals["argmax_q"] == vals["argmax_base"]).astype(np.float64)
    per_token = np.stack([nll, nll * nll, nb, nb * nb, nll * nb, kld, kld * kld, pd, pd * pd, pd ** 4, same,
                          np.ones_like(nll)], axis=1)
    sums = np.zeros((K, per_token.shape[1]))
    np.add.at(sums, chunk, per_token)
    counts = np.stack([stats.bootstrap_counts(K, seed, b) for b in range(resamples)]).astype(np.float64)
    figures: dict[str, list[np.ndarray]] = {}
    N = chunk.size
    step = max(1, 4_000_000 // max(N, 1))
    kv, pv = vals["kld"].astype(np.float32), vals["p_diff"].astype(np.float32)
    for s in range(0, resamples, step):
        c = counts[s:s + step]
        S = c @ sums
        part = _boot_figures(S[:, :11], S[:, 11])
        part.update(_weighted_order_stats(kv, chunk, c, PERCENTILES_KLD, "kld"))
        part.update(_weighted_order_stats(pv, chunk, c, PERCENTILES_DP, "dp"))
        for k, v in part.items():
            figures.setdefault(k, []).append(v)
    alpha = (1 - confidence) / 2
    out = {}
    for k, v in figures.items():
        x = np.concatenate(v)
        x = x[np.isfinite(x)]
        out[k] = ((float(np.quantile(x, alpha)), float(np.quantile(x, 1 - alpha))) if x.size
                  else (math.nan, math.nan))
    return out


# ---------------------------------------------------------------------------
# the kind's analysis function
# ---------------------------------------------------------------------------

def text_tables(base: Any, quant: Any, label: str, cfg: Any, token_table: Any = None,
                q_rows: str = "stored") -> dict[str, pl.DataFrame]:
    """``text_summary`` and ``text_chunks`` of one (base, quantized) pair (empty
    when either dump stores no rows). ``q_rows``: how the quantized rows are
    read (:func:`qfair.llamacpp.token_stats`; ``compare(...,
    kind_options={"q_rows": "logits"})``)."""
    if q_rows not in Q_ROWS:
        raise ValueError(f"q_rows must be one of {', '.join(Q_ROWS)}, got {q_rows!r}")
    if not (base.has_logits and quant.has_logits):
        return {}
    vals, chunk = token_values(base, quant, threads=getattr(cfg, "threads", None), q_rows=q_rows)
    summ, running = llamacpp_pair(vals, chunk)
    K = len(running)
    ci = bootstrap_chunks(vals, chunk, resamples=cfg.resamples, seed=cfg.seed, confidence=cfg.confidence)
    rows = []
    for name, attr, unc in STATISTICS:
        lo, hi = ci.get(name, (None, None))
        rows.append({"model": label, "statistic": name, "value": _get(summ, attr),
                     "llama_unc": None if unc is None else float(getattr(summ, unc)),
                     "ci_low": lo, "ci_high": hi, "ci_method": "percentile bootstrap over chunks" if K > 1 else
                     "percentile bootstrap over chunks (one chunk: degenerate)",
                     "n_tokens": summ.count, "n_chunks": K})
    summary = pl.DataFrame(rows, schema=TEXT_SUMMARY_SCHEMA, orient="row")
    crow = [{"model": label, "chunk": i + 1, "n_tokens": r.count, **{c: float(getattr(r, c)) for c in CHUNK_COLUMNS}}
            for i, r in enumerate(running)]
    chunks = pl.DataFrame(crow, schema={"model": pl.Utf8, "chunk": pl.Int64, "n_tokens": pl.Int64,
                                        **{c: pl.Float64 for c in CHUNK_COLUMNS}}, orient="row")
    return {"text_summary": summary, "text_chunks": chunks}


def format_llamacpp(text_summary: pl.DataFrame, text_chunks: pl.DataFrame, model: str) -> list[str]:
    """llama.cpp's printed layout (per-chunk table, then the summary when it has
    at least 100 tokens) for one model of the two tables."""
    srows = {r["statistic"]: r for r in text_summary.filter(pl.col("model") == model).iter_rows(named=True)}
    if not srows:
        return []
    fields: dict[str, Any] = {"kld_pct": {}, "dp_pct": {}}
    for name, attr, unc in STATISTICS:
        r = srows[name]
        if isinstance(attr, tuple):
            fields[attr[0]][attr[1]] = r["value"]
        else:
            fields[attr] = r["value"]
        if unc is not None:
            fields[unc] = r["llama_unc"]
    n = int(next(iter(srows.values()))["n_tokens"])
    summ = KlSummary(count=n, **{k: (math.nan if v is None else v) if not isinstance(v, dict) else v
                                 for k, v in fields.items()})
    lines = [CHUNK_HEADER]
    for r in text_chunks.filter(pl.col("model") == model).sort("chunk").iter_rows(named=True):
        run = KlSummary(count=int(r["n_tokens"]), **{k: (math.nan if r.get(k) is None else r[k])
                                                     for k in CHUNK_COLUMNS},
                        **{k: (math.nan if fields.get(k) is None else fields[k])
                           for k in ("ppl_base", "ppl_base_unc", "cor", "ratio", "ratio_unc", "diff", "diff_unc",
                                     "dp_mean", "dp_unc")},
                        kld_pct={}, dp_pct={})
        lines.append(run.chunk_line(int(r["chunk"])))
    lines.append("")
    return lines + summ.lines()
