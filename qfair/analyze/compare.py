"""``qfair.compare(base, quant, ...)``: from a base dump and quantized dumps to
the tables a paper needs (see docs/analyze.md for every column).

Order of work, per quantized dump: alignment check (stops with the first
differing key), choice-level statistics of both models, the token table
(target-token statistics from tokens.parquet; vocabulary-wide divergences
streamed through the C++ core when both dumps store logits; custom metrics on
the same chunks), per-example token aggregates, then per task the summary
(differences with CIs and p-values), calibration bins, strata and groups.
Holm and Benjamini-Hochberg adjusted p-values are computed over all tests of a
table (columns ``p_holm`` and ``p_bh``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from qfair import stats
from qfair.analyze.examples import example_columns, example_stats, task_kinds
from qfair.analyze.summary import SUMMARY_SCHEMA, StatsConfig, calibration_rows, metric_rows, strata_rows
from qfair.analyze.tokens import PAIRED_TOKEN_METRICS, UNPAIRED_TOKEN_METRICS, example_token_aggregates, token_table
from qfair.dump.reader import check_same_keys

__all__ = ["compare", "Comparison"]

TABLES = ("summary", "examples", "tokens", "calibration", "strata", "groups")


@dataclass
class Comparison:
    """The result of :func:`compare`: six polars tables and the settings used."""

    summary: pl.DataFrame
    examples: pl.DataFrame
    tokens: pl.DataFrame
    calibration: pl.DataFrame
    strata: pl.DataFrame
    groups: pl.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def table(self, name: str) -> pl.DataFrame:
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        return getattr(self, name)

    def write(self, out_dir: str | os.PathLike, formats: Sequence[str] = ("parquet", "csv", "md")) -> list[Path]:
        """Write every table in each format (parquet, csv, md; latex for the summary)."""
        from qfair.analyze.tables import write_tables

        return write_tables(self, Path(out_dir), formats)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{t}={getattr(self, t).shape}" for t in TABLES)
        return f"Comparison({shapes})"


def _open(d: Any) -> Any:
    if isinstance(d, (str, os.PathLike)):
        from qfair.dump.reader import open_dump

        return open_dump(d)
    return d


def _label(d: Any) -> str:
    cfg = (d.manifest.get("run") or {}).get("config") or {}
    return str(Path(d.path).name or cfg.get("quant") or "quant")


def _check_examples(base: Any, quant: Any) -> None:
    check_same_keys(base.examples, quant.examples, ("example_id", "label", "n_choices"),
                    f"{base.path} vs {quant.path}", "examples.parquet")


def _pair_examples(base_ex: pl.DataFrame, quant_ex: pl.DataFrame, meta: pl.DataFrame) -> pl.DataFrame:
    cols = example_columns()
    b = base_ex.select("example_id", *[pl.col(m).alias(f"base_{m}") for m in cols])
    q = quant_ex.select("example_id", *[pl.col(m).alias(f"quant_{m}") for m in cols])
    j = meta.join(b, on="example_id", how="left").join(q, on="example_id", how="left")
    return j.with_columns(
        ((pl.col("base_correct") == 1) & (pl.col("quant_correct") == 0)).cast(pl.Float64).alias("flip_c2i"),
        ((pl.col("base_correct") == 0) & (pl.col("quant_correct") == 1)).cast(pl.Float64).alias("flip_i2c"),
        (pl.col("base_pred") != pl.col("quant_pred")).cast(pl.Float64).alias("changed_answer"),
        (pl.col("quant_conf") - pl.col("base_conf")).alias("delta_conf"),
    ).with_columns((pl.col("flip_c2i") + pl.col("flip_i2c")).alias("flip"))


def _adjust(df: pl.DataFrame) -> pl.DataFrame:
    if df.height == 0 or "p" not in df.columns:
        return df
    p = df["p"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    return df.with_columns(pl.Series("p_holm", stats.adjust_pvalues(p, "holm")),
                           pl.Series("p_bh", stats.adjust_pvalues(p, "bh")))


def compare(base: Any, quant: Any, *, bootstrap: int = 10_000, seed: int = 0, bins: int = 15,
            binning: str = "width", topk: Sequence[int] = (1, 5, 10), strata: str = "confidence",
            n_strata: int = 5, confidence: float = 0.95, threads: int | None = None,
            metrics: Mapping[str, Callable[..., Any]] | None = None, chunk_rows: int = 4096,
            tokens: bool = True, permutation: bool = True, progress: bool = False) -> Comparison:
    """Compare a base dump with one or more quantized dumps.

    ``base``/``quant``: dump paths or opened dumps (``quant`` may be a list).
    ``metrics``: custom token metrics ``{name: fn}``; ``fn`` receives a
    :class:`qfair.analyze.tokens.TokenChunk` and returns one value per row.
    """
    if binning not in ("width", "mass"):
        raise ValueError(f"binning: expected 'width' or 'mass', got {binning!r}")
    if strata not in ("confidence", "entropy"):
        raise ValueError(f"strata: expected 'confidence' or 'entropy', got {strata!r}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap: expected a positive number of resamples, got {bootstrap}")
    b = _open(base)
    quants = [_open(q) for q in (quant if isinstance(quant, (list, tuple)) else [quant])]
    if not quants:
        raise ValueError("compare: need at least one quantized dump")
    labels = [_label(q) for q in quants]
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):  # make model labels unique
        if lab in seen or lab == "base":
            labels[i] = f"{lab}_{i + 1}"
        seen[labels[i]] = i
    for q in quants:
        b.aligned_with(q)
        _check_examples(b, q)

    cfg = StatsConfig(resamples=int(bootstrap), seed=int(seed), confidence=float(confidence),
                      threads=threads, bins=int(bins), binning=binning, permutation=permutation)
    kinds = task_kinds(b.manifest)
    meta = b.examples.select("task", "example_id", "doc_index", "group", "label", "n_choices").with_columns(
        pl.Series("kind", [kinds.get(t, "multiple_choice") for t in b.examples["task"].to_list()], dtype=pl.Utf8))
    base_ex = example_stats(b.examples, b.choices, kinds, where=str(b.path))
    notes: list[str] = []
    custom = dict(metrics or {})

    ex_tables, tok_tables, summ, cal_parts, strata_parts, group_rows = [], [], [], [], [], []
    # base calibration bins once
    for task in meta["task"].unique(maintain_order=True).to_list():
        sub = base_ex.filter(pl.col("task") == task)
        c = calibration_rows(sub["conf"].to_numpy(), sub["correct"].to_numpy(), cfg.bins)
        if c.height:
            cal_parts.append(c.with_columns(pl.lit("base").alias("model"), pl.lit("base").alias("role"),
                                            pl.lit(task).alias("task")))

    for q, label in zip(quants, labels):
        q_ex = example_stats(q.examples, q.choices, task_kinds(q.manifest) or kinds, where=str(q.path))
        j = _pair_examples(base_ex, q_ex, meta)
        for who, ex_t in (("base", base_ex), (label, q_ex)):
            bad = int(ex_t["nonfinite"].sum())
            if bad:
                notes.append(f"{who}: {bad} example(s) with a non-finite choice log-likelihood; their "
                             "statistics are NaN and every test leaves them out (see the rows' n)")
        token_paired: list[tuple[str, str, str]] = []
        token_unpaired: list[str] = []
        if tokens:
            tt, info = token_table(b, q, topk=topk, chunk_rows=chunk_rows, threads=threads,
                                   metrics=custom, progress=progress)
            if info["nonfinite_rows"]:
                notes.append(f"{label}: {info['nonfinite_rows']} logits rows with non-finite values "
                             "(their metrics are NaN and the examples' token aggregates are NaN)")
            if not info["vocab_wide"]:
                notes.append(f"{label}: no logits in both dumps (--store none); token table has "
                             "target-token statistics only")
            names = [m for m in UNPAIRED_TOKEN_METRICS if m in tt.columns] + \
                    [c for c in tt.columns if c.startswith("overlap_at_")] + list(custom)
            pairs = [p for p in PAIRED_TOKEN_METRICS if p[1] in tt.columns and p[2] in tt.columns]
            agg_cols = names + [c for p in pairs for c in p[1:]]
            agg = example_token_aggregates(tt, meta.select("example_id", "label"), agg_cols)
            j = j.join(agg, on="example_id", how="left")
            token_paired = [(p[0], p[1], p[2]) for p in pairs]
            token_unpaired = names + (["kl_gold_mean"] if "kl_gold_mean" in agg.columns else [])
            tok_tables.append(tt.with_columns(pl.lit(label).alias("model")).select(
                "model", *[c for c in tt.columns]))
        ex_tables.append(j.with_columns(pl.lit(label).alias("model")).select("model", *j.columns))

        for task in meta["task"].unique(maintain_order=True).to_list():
            jt = j.filter(pl.col("task") == task)
            kind = jt["kind"][0]
            rows = metric_rows(jt, cfg, token_paired, token_unpaired)
            for r in rows:
                r.update(model=label, task=task, task_kind=kind)
            summ.extend(rows)
            c = calibration_rows(jt["quant_conf"].to_numpy(), jt["quant_correct"].to_numpy(), cfg.bins)
            if c.height:
                cal_parts.append(c.with_columns(pl.lit(label).alias("model"), pl.lit("quant").alias("role"),
                                                pl.lit(task).alias("task")))
            st = strata_rows(jt, cfg, strata, n_strata)
            if st.height:
                strata_parts.append(st.with_columns(pl.lit(label).alias("model"), pl.lit(task).alias("task")))
            groups = [g for g in jt["group"].unique(maintain_order=True).to_list() if g is not None]
            if len(groups) >= 1:
                whole = {r["metric"]: r for r in rows}
                for g in groups:
                    jg = jt.filter(pl.col("group") == g)
                    for r in metric_rows(jg, cfg, token_paired, token_unpaired):
                        w = whole.get(r["metric"])
                        r.update(model=label, task=task, task_kind=kind, group=g,
                                 gap=None if w is None or r["diff"] is None or w["diff"] is None
                                 else r["diff"] - w["diff"],
                                 quant_gap=None if w is None or r["quant"] is None or w["quant"] is None
                                 else r["quant"] - w["quant"],
                                 base_gap=None if w is None or r["base"] is None or w["base"] is None
                                 else r["base"] - w["base"])
                        group_rows.append(r)

    lead = ["model", "task", "task_kind"]
    schema = {"model": pl.Utf8, "task": pl.Utf8, "task_kind": pl.Utf8, **SUMMARY_SCHEMA}
    summary = _adjust(pl.DataFrame(summ, schema=schema, orient="row") if summ else pl.DataFrame(schema=schema))
    gschema = {**schema, "group": pl.Utf8, "gap": pl.Float64, "quant_gap": pl.Float64, "base_gap": pl.Float64}
    groups_df = _adjust(pl.DataFrame(group_rows, schema=gschema, orient="row") if group_rows
                        else pl.DataFrame(schema=gschema))
    if groups_df.height:
        groups_df = groups_df.select(*lead, "group", *[c for c in groups_df.columns if c not in (*lead, "group")])
    calib = pl.concat(cal_parts, how="vertical") if cal_parts else pl.DataFrame()
    if calib.height:
        calib = calib.select("model", "role", "task", "binning", *[c for c in calib.columns
                                                                   if c not in ("model", "role", "task", "binning")])
    strata_df = pl.concat(strata_parts, how="diagonal_relaxed") if strata_parts else pl.DataFrame()
    if strata_df.height:
        strata_df = strata_df.select("model", "task", *[c for c in strata_df.columns if c not in ("model", "task")])
    examples_df = pl.concat(ex_tables, how="diagonal_relaxed") if ex_tables else pl.DataFrame()
    tokens_df = pl.concat(tok_tables, how="diagonal_relaxed") if tok_tables else pl.DataFrame()
    settings = {"bootstrap": int(bootstrap), "seed": int(seed), "bins": int(bins), "binning": binning,
                "topk": list(topk), "strata": strata, "n_strata": int(n_strata), "confidence": confidence,
                "adjust": "holm and bh over all rows of the table", "base": str(b.path),
                "quant": [str(q.path) for q in quants], "models": labels,
                "custom_metrics": sorted(custom)}
    return Comparison(summary=summary, examples=examples_df, tokens=tokens_df, calibration=calib,
                      strata=strata_df, groups=groups_df, settings=settings, notes=notes)
