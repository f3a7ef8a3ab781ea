"""The token table: one row per aligned continuation token of a (base, quant) pair.

Target-token statistics come from the dumps' own ``tokens.parquet`` (float32 at
dump time, so they exist for ``--store none`` dumps too): logprob_p/q, delta_p
= q[y] - p[y], rank_p/q, entropy_p/q, maxprob_p/q, argmax_p/q, top1_agree.
When both dumps store logits, the vocabulary-wide columns (kl_pq, kl_qp, js,
tv, margin_p/q, overlap_at_K) are streamed through the C++ core chunk by chunk
(``qfair.stream_divergence``), so memory stays bounded by a chunk. Custom
metrics run on the same chunks.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.stages import stage

__all__ = ["TokenChunk", "token_table", "example_token_aggregates", "VOCAB_METRICS",
           "PAIRED_TOKEN_METRICS", "UNPAIRED_TOKEN_METRICS"]

KEY_COLUMNS = ("row", "task", "example_id", "choice", "pos", "target")
# columns taken from the vocabulary-wide divergence (the rest come from tokens.parquet)
VOCAB_METRICS = ("kl_pq", "kl_qp", "js", "tv", "margin_p", "margin_q")
# (summary name, base column, quant column)
PAIRED_TOKEN_METRICS = (("target_logprob", "logprob_p", "logprob_q"),
                        ("token_entropy", "entropy_p", "entropy_q"),
                        ("token_maxprob", "maxprob_p", "maxprob_q"),
                        ("token_margin", "margin_p", "margin_q"))
UNPAIRED_TOKEN_METRICS = ("kl_pq", "kl_qp", "js", "tv", "top1_agree", "delta_p")

CustomMetric = Callable[["TokenChunk"], Any]


@dataclass(frozen=True)
class TokenChunk:
    """What a custom metric receives: one aligned chunk of logits rows.

    ``p`` and ``q`` are float32 log-softmax rows ``[rows, vocab]`` of the base and
    the quantized model (re-normalised from the stored values); ``targets`` the
    scored token id of each row; ``keys`` a DataFrame with the rows' keys
    (row, task, example_id, choice, pos, target); ``start``/``stop`` the global
    row range. Return one number per row.
    """

    start: int
    stop: int
    p: np.ndarray
    q: np.ndarray
    targets: np.ndarray
    keys: pl.DataFrame


#: default memory budget of the rows handed to custom metrics (see :func:`custom_chunk_rows`)
DEFAULT_METRIC_MEMORY = 256 << 20


#: default memory budget of the stored rows streamed through the C++ core at once (both dumps)
DEFAULT_STREAM_MEMORY = 256 << 20


def stream_chunk_rows(vocab: int, itemsize: int, memory: int = DEFAULT_STREAM_MEMORY) -> int:
    """Rows per streamed chunk when none is given: the stored rows of both dumps
    for the chunk being computed and for the next one, being read meanwhile,
    fit ``memory`` bytes: 682 rows of a 49,152-token float16 vocabulary for 256 MiB."""
    return max(1, int(memory) // (4 * max(1, int(vocab)) * max(1, int(itemsize))))


def custom_chunk_rows(vocab: int, memory: int = DEFAULT_METRIC_MEMORY) -> int:
    """Rows per chunk handed to custom metrics under a memory budget (bytes).

    A chunk costs 4 bytes x vocab per row for each of ``p`` and ``q`` (float32,
    made once per chunk and shared by every custom metric), and as much again
    while they are re-normalised; a metric's own temporaries come on top (an
    ``argsort`` of ``p`` adds 8 bytes x vocab per row). So the budget is divided
    by 4 x 4 bytes x vocab: 256 MiB gives 341 rows of a 49,152-token vocabulary.
    """
    if memory < 1:
        raise ValueError(f"metric_memory: expected a positive number of bytes, got {memory}")
    return max(1, int(memory) // (16 * max(1, int(vocab))))


def _to_logprobs(block: np.ndarray, dtype: str) -> np.ndarray:
    """float32 log-softmax rows of stored rows (one copy; the exp pass reuses a
    second buffer of the same size)."""
    a = np.asarray(block)
    if dtype == "bf16" or a.dtype == np.uint16:
        a = (a.astype(np.uint32) << 16).view(np.float32)
    a = a.astype(np.float32, copy=True)
    m = np.max(a, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    a -= m
    e = np.exp(a)
    lse = np.log(np.sum(e, axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    del e
    a -= lse
    return a


def _scalar_columns(tb: pl.DataFrame, tq: pl.DataFrame) -> pl.DataFrame:
    lp = tb["logprob"].cast(pl.Float64).to_numpy()
    lq = tq["logprob"].cast(pl.Float64).to_numpy()
    out = tb.select(*KEY_COLUMNS).with_columns(
        pl.Series("logprob_p", lp),
        pl.Series("logprob_q", lq),
        pl.Series("delta_p", np.exp(lq) - np.exp(lp)),
        pl.Series("rank_p", tb["rank"].to_numpy()),
        pl.Series("rank_q", tq["rank"].to_numpy()),
        pl.Series("entropy_p", tb["entropy"].cast(pl.Float64).to_numpy()),
        pl.Series("entropy_q", tq["entropy"].cast(pl.Float64).to_numpy()),
        pl.Series("maxprob_p", np.exp(tb["max_logprob"].cast(pl.Float64).to_numpy())),
        pl.Series("maxprob_q", np.exp(tq["max_logprob"].cast(pl.Float64).to_numpy())),
        pl.Series("argmax_p", tb["argmax"].to_numpy()),
        pl.Series("argmax_q", tq["argmax"].to_numpy()),
        pl.Series("top1_agree", (tb["argmax"].to_numpy() == tq["argmax"].to_numpy()).astype(np.float64)),
    )
    return out


def _custom_metrics(chunk: Any, s: int, e: int, base: Any, quant: Any, metrics: Mapping[str, CustomMetric],
                    custom: dict[str, np.ndarray], targets: np.ndarray, key_by_row: Any, metric_memory: int) -> None:
    """Fill ``custom[name][s:e]`` from one streamed chunk, in sub-chunks of :func:`custom_chunk_rows` rows."""
    step = custom_chunk_rows(base.vocab_size, metric_memory)
    for a in range(s, e, step):
        b = min(e, a + step)
        lp = _to_logprobs(chunk.p[a - s:b - s], base.logits_dtype)
        lq = _to_logprobs(chunk.q[a - s:b - s], quant.logits_dtype)
        keys = key_by_row.filter((pl.col("row") >= a) & (pl.col("row") < b))
        tc = TokenChunk(start=a, stop=b, p=lp, q=lq, targets=targets[a:b], keys=keys)
        for name, fn in metrics.items():
            v = np.asarray(fn(tc), dtype=np.float64).reshape(-1)
            if v.shape[0] != b - a:
                raise ValueError(f"custom metric {name!r} returned {v.shape[0]} values for a chunk "
                                 f"of {b - a} rows (expected one per row)")
            custom[name][a:b] = v
        del lp, lq, tc


def token_table(base: Any, quant: Any, *, topk: Sequence[int] = (1, 5, 10), chunk_rows: int | None = None,
                threads: int | None = None, metrics: Mapping[str, CustomMetric] | None = None,
                progress: bool = False, metric_memory: int = DEFAULT_METRIC_MEMORY,
                ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Token table for an aligned pair and a small report (rows streamed, non-finite rows).

    ``chunk_rows``: rows per streamed chunk (default: :func:`stream_chunk_rows`,
    256 MiB of stored rows). Custom metrics receive sub-chunks of at most
    :func:`custom_chunk_rows` rows (``metric_memory`` bytes).
    """
    tb, tq = base.tokens, quant.tokens
    table = _scalar_columns(tb, tq)
    info: dict[str, Any] = {"vocab_wide": False, "rows_streamed": 0, "nonfinite_rows": 0,
                            "nonfinite_base_rows": 0, "nonfinite_quant_rows": 0,
                            "infinite_kl_pq_rows": 0, "infinite_kl_qp_rows": 0}
    metrics = dict(metrics or {})
    both = bool(base.has_logits and quant.has_logits)
    if metrics and not both:
        raise DumpError(f"custom metrics {sorted(metrics)} need vocabulary-wide rows in both dumps "
                        f"(qfair dump --store full); {base.path if not base.has_logits else quant.path} has "
                        f"{'top-K records only' if (base if not base.has_logits else quant).has_topk else 'none'}")
    if base.has_rows and quant.has_rows and not both:
        if chunk_rows is None:  # the full side's rows bound the chunk (a top-K record is small)
            full = base if base.has_logits else quant
            chunk_rows = stream_chunk_rows(full.vocab_size, np.dtype(mf.NPY_DTYPES[full.logits_dtype]).itemsize)
        return _topk_token_table(base, quant, table, info, topk=topk, chunk_rows=chunk_rows, threads=threads,
                                 progress=progress)
    if not both:
        return table, info

    n_rows, dtype = _check_logits_pair(base, quant)
    rows = table["row"].to_numpy()
    valid = rows >= 0
    if np.any(rows >= n_rows):
        raise DumpError(f"{base.path}: tokens.parquet field 'row' reaches {int(rows.max())}, "
                        f"but the logits hold {n_rows} rows")
    if chunk_rows is None:
        itemsize = max(np.dtype(mf.NPY_DTYPES[d.logits_dtype]).itemsize for d in (base, quant))
        chunk_rows = stream_chunk_rows(base.vocab_size, itemsize)
    ks = tuple(int(k) for k in topk)
    cols, custom = _stream_vocab_columns(base, quant, table, n_rows, dtype, info, topk=ks,
                                         chunk_rows=int(chunk_rows), threads=threads, metrics=metrics,
                                         progress=progress, metric_memory=metric_memory)
    info["vocab_wide"] = True
    info["rows_streamed"] = n_rows
    table = _attach_vocab_columns(table, rows, valid, cols, custom, info)
    info["custom_metrics"] = list(custom)
    return table, info


def _check_logits_pair(base: Any, quant: Any) -> tuple[int, str | None]:
    """The two dumps' logits rows agree in number and in a comparable storage dtype:
    (rows, "bf16" when both store bf16, else None). Every shard is checked against its
    manifest on the way (``logit_blocks``)."""
    # logit_blocks() checks every shard against the manifest; the stream then
    # reads the files by path so that consumed pages go back to the OS.
    pb, pq = base.logit_blocks(), quant.logit_blocks()
    n_rows = sum(b.shape[0] for b in pb)
    if n_rows != sum(b.shape[0] for b in pq):
        raise DumpError(f"{base.path} vs {quant.path}: {n_rows} vs {sum(b.shape[0] for b in pq)} logits rows; not aligned")
    del pb, pq
    dtypes = {base.logits_dtype, quant.logits_dtype}
    if "bf16" in dtypes and len(dtypes) > 1:
        raise DumpError(f"{base.path} vs {quant.path}: logits stored as {base.logits_dtype} vs "
                        f"{quant.logits_dtype}; bf16 dumps can only be compared with bf16 dumps")
    return n_rows, ("bf16" if dtypes == {"bf16"} else None)


def _stream_vocab_columns(base: Any, quant: Any, table: pl.DataFrame, n_rows: int, dtype: str | None,
                          info: dict[str, Any], *, topk: tuple[int, ...], chunk_rows: int, threads: int | None,
                          metrics: Mapping[str, CustomMetric], progress: bool, metric_memory: int,
                          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One pass of both dumps' rows through the C++ core, chunk by chunk: the vocabulary-wide
    columns and the custom metrics by global row (NaN where no row was streamed), with the
    non-finite row counts added to ``info``."""
    import qfair

    rows = table["row"].to_numpy()
    valid = rows >= 0
    targets = np.full(n_rows, -1, dtype=np.int64)
    targets[rows[valid]] = table["target"].to_numpy()[valid]
    # keys by global row, for custom metrics
    key_by_row = table.select(*KEY_COLUMNS).filter(pl.col("row") >= 0).sort("row") if metrics else None
    names = list(VOCAB_METRICS) + [f"overlap_at_{k}" for k in topk]
    cols = {name: np.full(n_rows, np.nan) for name in names}
    custom = {name: np.full(n_rows, np.nan) for name in metrics}

    from tqdm import tqdm

    bar = tqdm(total=n_rows, unit="row", unit_scale=True, desc="divergence", disable=not progress,
               dynamic_ncols=True)
    # only the columns read below: the core then skips the rest (the entropies' sums)
    kwargs: dict[str, Any] = {"topk": topk, "chunk_rows": chunk_rows, "threads": threads,
                              "metrics": VOCAB_METRICS}
    if dtype is not None:
        kwargs["dtype"] = dtype
    stream = qfair.stream_divergence(base.logit_sources(), quant.logit_sources(), **kwargs)
    while True:
        with stage("read rows + divergence kernel"):
            chunk = next(stream, None)
        if chunk is None:
            break
        s, e = int(chunk.start), int(chunk.stop)
        res = chunk.result
        for name in names:
            if name in res.metrics:
                cols[name][s:e] = np.asarray(res.metrics[name], dtype=np.float64)
        info["nonfinite_rows"] += int(res.invalid_rows)
        info["nonfinite_base_rows"] += int(res.invalid_p)
        info["nonfinite_quant_rows"] += int(res.invalid_q)
        if metrics:
            with stage("custom metrics"):
                _custom_metrics(chunk, s, e, base, quant, metrics, custom, targets, key_by_row, metric_memory)
        bar.update(e - s)
    bar.close()
    return cols, custom


def _attach_vocab_columns(table: pl.DataFrame, rows: np.ndarray, valid: np.ndarray, cols: dict[str, np.ndarray],
                          custom: dict[str, np.ndarray], info: dict[str, Any]) -> pl.DataFrame:
    """The streamed columns joined to the token rows by row number; a token whose logits row
    is not a distribution on either side loses every statistic (NaN)."""
    safe = np.where(valid, rows, 0)
    # a row that is not a distribution on either side (NaN, +inf, no finite entry) is left out of
    # every token statistic: all its metrics are NaN, the dump's own scalars too
    invalid = valid & np.isnan(cols["kl_pq"][safe])
    info["infinite_kl_pq_rows"] = int(np.isinf(cols["kl_pq"]).sum())
    info["infinite_kl_qp_rows"] = int(np.isinf(cols["kl_qp"]).sum())
    add = [pl.Series(name, np.where(valid & ~invalid, arr[safe], np.nan))
           for name, arr in list(cols.items()) + list(custom.items())]
    table = table.with_columns(add)
    if invalid.any():
        mask = pl.Series(invalid)
        table = table.with_columns(
            pl.when(mask).then(None).otherwise(pl.col(c)).alias(c)
            for c in ("logprob_p", "logprob_q", "delta_p", "entropy_p", "entropy_q", "maxprob_p", "maxprob_q",
                      "top1_agree")
        ).with_columns(pl.col(c).fill_null(np.nan) for c in ("logprob_p", "logprob_q", "delta_p", "entropy_p",
                                                              "entropy_q", "maxprob_p", "maxprob_q", "top1_agree"))
    return table


def _topk_token_table(base: Any, quant: Any, table: pl.DataFrame, info: dict[str, Any], *, topk: Sequence[int],
                      chunk_rows: int, threads: int | None, progress: bool) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The vocabulary-wide columns when a side stores top-K records (:mod:`qfair.analyze.topk`):
    KL / JS / TV as lower bounds, overlaps exact up to K, margins exact."""
    from tqdm import tqdm

    from qfair.analyze.topk import BOUND_METRICS, stream_topk_divergence

    rows = table["row"].to_numpy()
    valid = rows >= 0
    n_rows = base.n_rows
    if np.any(rows >= n_rows):
        raise DumpError(f"{base.path}: tokens.parquet field 'row' reaches {int(rows.max())}, "
                        f"but the dump holds {n_rows} rows")
    ks = tuple(int(k) for k in topk)
    names = list(VOCAB_METRICS) + [f"overlap_at_{k}" for k in ks]
    cols = {name: np.full(n_rows, np.nan) for name in names}
    bad_p = np.zeros(n_rows, dtype=bool)
    bad_q = np.zeros(n_rows, dtype=bool)
    bar = tqdm(total=n_rows, unit="row", unit_scale=True, desc="divergence (top-K)", disable=not progress,
               dynamic_ncols=True)
    for s, e, res in stream_topk_divergence(base, quant, topk=ks, chunk_rows=chunk_rows, threads=threads):
        for name in names:
            cols[name][s:e] = res[name]
        bad_p[s:e], bad_q[s:e] = res["_invalid_p"], res["_invalid_q"]
        bar.update(e - s)
    bar.close()
    info.update(vocab_wide=True, rows_streamed=n_rows, nonfinite_rows=int((bad_p | bad_q).sum()),
                nonfinite_base_rows=int(bad_p.sum()), nonfinite_quant_rows=int(bad_q.sum()),
                infinite_kl_pq_rows=int(np.isinf(cols["kl_pq"]).sum()),
                infinite_kl_qp_rows=int(np.isinf(cols["kl_qp"]).sum()),
                topk={"base": base.topk, "quant": quant.topk, "lower_bounds": list(BOUND_METRICS),
                      "exact_overlap_up_to": min(k for k in (base.topk, quant.topk) if k is not None)})
    safe = np.where(valid, rows, 0)
    invalid = valid & (bad_p | bad_q)[safe]
    table = table.with_columns([pl.Series(name, np.where(valid & ~invalid, arr[safe], np.nan))
                                for name, arr in cols.items()])
    if invalid.any():
        mask = pl.Series(invalid)
        cs = ("logprob_p", "logprob_q", "delta_p", "entropy_p", "entropy_q", "maxprob_p", "maxprob_q", "top1_agree")
        table = table.with_columns(pl.when(mask).then(np.nan).otherwise(pl.col(c)).alias(c) for c in cs)
    info["custom_metrics"] = []
    return table, info


def example_token_aggregates(tokens: pl.DataFrame, labels: pl.DataFrame,
                             metrics: Sequence[str]) -> pl.DataFrame:
    """Per example: mean of each token metric over the tokens of all choices
    (``tok_<m>``), and mean / max KL(P||Q) over the gold choice's tokens and over
    all choices' tokens (when KL is available).

    ``labels``: example_id, label.
    """
    t = tokens.join(labels.select("example_id", "label"), on="example_id", how="left")
    # NaN marks a token left out (a non-finite logits row): every mean skips it; an example with no
    # valid token gets NaN. Infinite values (KL where Q gives zero probability) are kept.
    def col(m: str) -> pl.Expr:
        return pl.col(m).cast(pl.Float64).fill_nan(None)

    aggs = [col(m).mean().alias(f"tok_{m}") for m in metrics if m in t.columns]
    if "kl_pq" in t.columns:
        gold = pl.col("choice") == pl.col("label")
        aggs += [
            col("kl_pq").filter(gold).mean().alias("kl_gold_mean"),
            col("kl_pq").filter(gold).max().alias("kl_gold_max"),
            col("kl_pq").mean().alias("kl_all_mean"),
            col("kl_pq").max().alias("kl_all_max"),
        ]
    aggs.append(pl.len().alias("n_tokens"))
    out = t.group_by("example_id", maintain_order=True).agg(aggs)
    return out.with_columns(pl.col(c).fill_null(np.nan) for c in out.columns
                            if c not in ("example_id", "n_tokens"))
