"""The report's section for text dumps (``qfair dump --text``): llama.cpp's
``--kl-divergence`` summary per quantized model, with qfair's intervals, and
the per-chunk KL divergence of each model.

Empty when the analysis holds no ``text_summary`` table (every other kind).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from qfair.report.common import Section, table_html
from qfair.report.data import read_table

__all__ = ["corpus_section", "CORPUS_ROWS", "SECTIONS"]

# (statistic, label): the rows a reader looks at first, in llama.cpp's order
CORPUS_ROWS = (
    ("ppl_base", "PPL(base)"),
    ("ppl_q", "PPL(quantized)"),
    ("ppl_ratio", "PPL(Q) / PPL(base)"),
    ("ppl_diff", "PPL(Q) − PPL(base)"),
    ("cor_ln_ppl", "Cor(ln PPL(Q), ln PPL(base))"),
    ("kld_mean", "Mean KLD(base ‖ Q)"),
    ("kld_p99.0", "KLD 99th percentile"),
    ("kld_max", "Maximum KLD"),
    ("kld_median", "Median KLD"),
    ("dp_mean", "Mean Δp (Q − base, target token)"),
    ("rms_dp", "RMS Δp"),
    ("same_top_p", "Same top token"),
)


def _read(data: Any, name: str) -> pl.DataFrame:
    df = read_table(data.path, name)
    return pl.DataFrame() if df is None else df


def corpus_section(data: Any, table_html: Callable[..., str]) -> str:
    """The section's HTML ('' when the analysis has no text tables)."""
    summary = _read(data, "text_summary")
    if not summary.height:
        return ""
    labels = dict(CORPUS_ROWS)
    order = {s: i for i, (s, _) in enumerate(CORPUS_ROWS)}
    view = (summary.filter(pl.col("statistic").is_in(list(labels)))
            .with_columns(pl.col("statistic").replace_strict(order, default=len(order)).alias("_o"),
                          pl.col("statistic").replace_strict(labels, default=None).alias("figure"))
            .sort("model", "_o")
            .select("model", "figure", "value", pl.col("llama_unc").alias("± (llama.cpp)"), "ci_low", "ci_high",
                    "n_chunks", "n_tokens"))
    chunks = _read(data, "text_chunks")
    per_chunk = ""
    if chunks.height and "kld_mean" in chunks.columns:
        agg = (chunks.group_by("model", maintain_order=True)
               .agg(pl.len().alias("chunks"), pl.col("kld_mean").median().alias("median chunk KLD"),
                    pl.col("kld_mean").max().alias("worst chunk KLD"),
                    pl.col("chunk").sort_by("kld_mean").last().alias("worst chunk")))
        per_chunk = ("<h3>Per chunk</h3>" + table_html(agg) +
                     "<p class='meta'>The full per-chunk table (KLD, ln PPL ratio, RMS Δp, same top, each with "
                     "llama.cpp's ±) is text_chunks in the analysis directory.</p>")
    return ("<p class='meta'>A plain text scored the way llama-perplexity does (second half of each chunk). "
            "value: the figure llama.cpp prints; ±: llama.cpp's own uncertainty; ci_low / ci_high: qfair's "
            "percentile bootstrap over chunks. Same top token is a fraction (llama.cpp prints it in %).</p>" +
            table_html(view) + per_chunk)


def _present(data: Any) -> bool:
    return _read(data, "text_summary").height > 0


# the text dump kind's own section (qfair.dump.text.TEXT names it), right after the headline
SECTIONS = (Section("corpus", "Free text: llama.cpp's KL-divergence summary", "the text dump kind",
                    ("text_summary", "text_chunks"), lambda data, figs: corpus_section(data, table_html),
                    present=_present),)
