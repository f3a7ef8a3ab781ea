"""``qfair.compare(base, quant, ...)``: from a base dump and quantized dumps to
the tables a paper needs (see docs/analyze.md for every column).

What runs depends on what the dumps hold (their kind, :mod:`qfair.dump.kinds`):

1. alignment check (stops with the first differing key);
2. with a choices table: each model's example statistics, paired per example;
3. with a tokens table: the token table (target-token statistics, and the
   vocabulary-wide divergences streamed through the C++ core when both dumps
   store logits; custom metrics on the same chunks) and per-example aggregates;
4. per task: the summary (differences with CIs and p-values), calibration
   bins, strata and groups;
5. the dump kind's own tables (``DumpKind.analysis``), e.g. a text dump's
   perplexity summary;
6. the bias benchmarks' set-level scores (:mod:`qfair.metrics.bias`): the
   ``bias`` table, whose whole-task, disparity and per-group rows also join the
   summary and groups tables (kind ``bias``); and the spread of the change
   across the members of a task family (XStoryCloze languages, CrowS-Pairs
   en/fr; :mod:`qfair.analyze.families`), summary rows of kind ``family``.

Holm and Benjamini-Hochberg adjusted p-values are computed over all tests of a
table (columns ``p_holm`` and ``p_bh``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from qfair import stats
from qfair.analyze.families import family_rows
from qfair.analyze.multiple_testing import adjust_families, primary_metric, primary_resamples
from qfair.analyze.result import TABLES, AnalysisTables
from qfair.analyze.summary import (
    SUMMARY_SCHEMA,
    StatsConfig,
    calibration_rows,
    metric_rows,
    parse_bins,
    strata_rows,
)
from qfair.analyze.tokens import (
    DEFAULT_METRIC_MEMORY,
    PAIRED_TOKEN_METRICS,
    UNPAIRED_TOKEN_METRICS,
    example_token_aggregates,
    token_table,
)
from qfair.dump.reader import digests_in_background
from qfair.metrics import bias as bias_scores
from qfair.metrics.examples import example_columns, example_stats, task_kinds
from qfair.metrics.resampling import clear_draw_cache
from qfair.metrics.task_kinds import get_task_kind
from qfair.stages import beside, stage
from qfair.threads import single_threaded_blas

__all__ = ["compare", "Comparison", "TABLES"]

# the tables every comparison has (possibly empty), in writing order


def kind_analysis(kind: Any) -> Callable[..., dict[str, pl.DataFrame]] | None:
    """The function that adds a dump kind's own tables (``DumpKind.analysis``), or None."""
    if not kind.analysis:
        return None
    import importlib

    module, _, name = kind.analysis.partition(":")
    return getattr(importlib.import_module(module), name)


# the result of compare(): the one tables type that the report reads back too (qfair.analyze.result)
Comparison = AnalysisTables


# ---------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------

def _open(d: Any) -> Any:
    if isinstance(d, (str, os.PathLike)):
        from qfair.dump.reader import open_dump

        return open_dump(d)
    return d


def _label(d: Any) -> str:
    cfg = (d.manifest.get("run") or {}).get("config") or {}
    return str(Path(d.path).name or cfg.get("quant") or "quant")


def model_labels(quants: Sequence[Any]) -> list[str]:
    """One unique label per quantized dump (its directory name; never 'base')."""
    labels = [_label(q) for q in quants]
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        if lab in seen or lab == "base":
            labels[i] = f"{lab}_{i + 1}"
        seen[labels[i]] = i
    return labels


def example_meta(b: Any) -> pl.DataFrame:
    """task, example_id, doc_index, group, label, n_choices and the task kind of every example."""
    kinds = task_kinds(b.manifest)
    return b.examples.select("task", "example_id", "doc_index", "group", "label", "n_choices").with_columns(
        pl.Series("kind", [kinds.get(t, "multiple_choice") for t in b.examples["task"].to_list()], dtype=pl.Utf8))


def pair_examples(base_ex: pl.DataFrame, quant_ex: pl.DataFrame, meta: pl.DataFrame) -> pl.DataFrame:
    """One row per example: base_<m> and quant_<m> of every example metric, flips and Δconfidence."""
    cols = example_columns()
    b = base_ex.select("example_id", *[pl.col(m).alias(f"base_{m}") for m in cols])
    q = quant_ex.select("example_id", *[pl.col(m).alias(f"quant_{m}") for m in cols])
    j = meta.join(b, on="example_id", how="left").join(q, on="example_id", how="left")
    return j.with_columns(
        ((pl.col("base_correct") == 1) & (pl.col("quant_correct") == 0)).cast(pl.Float64).alias("flip_c2i"),
        ((pl.col("base_correct") == 0) & (pl.col("quant_correct") == 1)).cast(pl.Float64).alias("flip_i2c"),
        (pl.col("base_pred") != pl.col("quant_pred")).cast(pl.Float64).alias("changed_answer"),
        (pl.col("quant_conf") - pl.col("base_conf")).alias("delta_conf"),
    ).with_columns((pl.col("flip_c2i") + pl.col("flip_i2c")).alias("flip"),
                   pl.Series("choice_js", choice_js(j["base_probs"], j["quant_probs"]), dtype=pl.Float64))


def choice_js(base_probs: pl.Series, quant_probs: pl.Series) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) between each example's base and quantized
    choice distributions: sqrt(JS divergence in bits), as scipy.spatial.distance.jensenshannon(p, q, base=2)."""
    n = base_probs.len()
    out = np.full(n, np.nan)
    lens = base_probs.list.len().fill_null(0).to_numpy()
    if n == 0 or not np.array_equal(lens, quant_probs.list.len().fill_null(0).to_numpy()) or lens.sum() == 0:
        return out
    p = base_probs.explode().cast(pl.Float64).to_numpy()
    q = quant_probs.explode().cast(pl.Float64).to_numpy()
    keep = lens > 0
    starts = np.concatenate([[0], np.cumsum(lens[keep])[:-1]]).astype(np.int64)
    # explode() leaves one null for an empty list: drop those positions
    if p.size != lens.sum():
        flat_ok = np.repeat(keep, np.where(keep, lens, 1))
        p, q = p[flat_ok], q[flat_ok]
    # with m = (p + q)/2 and d = (p - q)/(p + q): p log(p/m) + q log(q/m) = m h(d),
    # h(d) = (1 + d) log1p(d) + (1 - d) log1p(-d) >= 0, which has no cancellation when p ~ q
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(m > 0, (p - q) / (p + q), 0.0)
        h = np.where(np.abs(d) < 1, (1 + d) * np.log1p(d) + (1 - d) * np.log1p(-d), 2 * np.log(2.0))
    js = 0.5 * np.add.reduceat(m * h, starts) / np.log(2.0)
    out[np.flatnonzero(keep)] = np.sqrt(np.clip(js, 0.0, None))
    return out


def adjust(df: pl.DataFrame) -> pl.DataFrame:
    """Holm and Benjamini-Hochberg adjusted p-values over all rows of a table."""
    if df.height == 0 or "p" not in df.columns:
        return df
    p = df["p"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    # rows without a p (descriptive rows) are outside the family and stay empty
    return df.with_columns(pl.Series("p_holm", stats.adjust_pvalues(p, "holm")).fill_nan(None),
                           pl.Series("p_bh", stats.adjust_pvalues(p, "bh")).fill_nan(None))


@dataclass
class _TokenSide:
    """What the token step adds to a pair: the table and the metrics the summary compares."""

    table: pl.DataFrame | None = None
    paired: list[tuple[str, str, str]] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)
    aggregates: pl.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)


def token_side(b: Any, q: Any, label: str, meta: pl.DataFrame, *, topk: Sequence[int], chunk_rows: int | None,
               threads: int | None, custom: Mapping[str, Callable[..., Any]], progress: bool,
               notes: list[str], metric_memory: int = DEFAULT_METRIC_MEMORY) -> _TokenSide:
    with stage("token table"):
        tt, info = token_table(b, q, topk=topk, chunk_rows=chunk_rows, threads=threads, metrics=custom,
                               progress=progress, metric_memory=metric_memory)
    if info["nonfinite_rows"]:
        notes.append(f"{label}: {info['nonfinite_rows']} token(s) whose logits row is not a distribution "
                     f"(NaN, +inf or no finite entry: {info['nonfinite_base_rows']} in base, "
                     f"{info['nonfinite_quant_rows']} in {label}); every token statistic leaves them out")
    for kl, who in (("kl_pq", f"{label} gives zero probability where base gives mass"),
                    ("kl_qp", f"base gives zero probability where {label} gives mass")):
        if info.get(f"infinite_{kl}_rows"):
            notes.append(f"{label}: {kl} is infinite for {info[f'infinite_{kl}_rows']} token(s) ({who}); "
                         f"its mean is infinite and is not tested")
    if info.get("topk"):
        tk = info["topk"]
        notes.append(f"{label}: top-K storage (base {'K=' + str(tk['base']) if tk['base'] else 'full'}, "
                     f"{label} {'K=' + str(tk['quant']) if tk['quant'] else 'full'}): kl_pq, kl_qp, js and tv are "
                     "lower bounds (the ids stored on both sides plus one tail bucket); overlap_at_k is exact "
                     f"for k <= {tk['exact_overlap_up_to']} and NaN beyond")
    if not info["vocab_wide"]:
        notes.append(f"{label}: no logits in both dumps (--store none); token table has "
                     "target-token statistics only")
    names = [m for m in UNPAIRED_TOKEN_METRICS if m in tt.columns] + \
            [c for c in tt.columns if c.startswith("overlap_at_")] + list(custom)
    pairs = [p for p in PAIRED_TOKEN_METRICS if p[1] in tt.columns and p[2] in tt.columns]
    with stage("token aggregates"):
        agg = example_token_aggregates(tt, meta.select("example_id", "label"),
                                       names + [c for p in pairs for c in p[1:]])
    unpaired = names + (["kl_gold_mean"] if "kl_gold_mean" in agg.columns else [])
    return _TokenSide(tt.with_columns(pl.lit(label).alias("model")).select("model", *tt.columns),
                      [(p[0], p[1], p[2]) for p in pairs], unpaired, agg, info)


def _group_rows(jt: pl.DataFrame, rows: list[dict[str, Any]], cfg: StatsConfig, side: _TokenSide,
                where: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary rows again within each group of a task, with the gap to the whole task."""
    out = []
    whole = {r["metric"]: r for r in rows}
    for g in [g for g in jt["group"].unique(maintain_order=True).to_list() if g is not None]:
        for r in metric_rows(jt.filter(pl.col("group") == g), cfg, side.paired, side.unpaired):
            w = whole.get(r["metric"])
            r.update(where, group=g)
            for col, gap in (("diff", "gap"), ("quant", "quant_gap"), ("base", "base_gap")):
                r[gap] = None if w is None or r[col] is None or w[col] is None else r[col] - w[col]
            out.append(r)
    return out


@dataclass
class _Parts:
    """Rows and frames collected over the quantized dumps, assembled at the end."""

    examples: list[pl.DataFrame] = field(default_factory=list)
    tokens: list[pl.DataFrame] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    calibration: list[pl.DataFrame] = field(default_factory=list)
    strata: list[pl.DataFrame] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, list[pl.DataFrame]] = field(default_factory=dict)

    def add_calibration(self, conf: np.ndarray, correct: np.ndarray, cfg: StatsConfig, model: str, role: str,
                        task: str) -> None:
        c = calibration_rows(conf, correct, cfg.bins_for("ece"), cfg.confidence, cfg.bins_for("reliability"))
        if c.height:
            self.calibration.append(c.with_columns(pl.lit(model).alias("model"), pl.lit(role).alias("role"),
                                                   pl.lit(task).alias("task")))


def task_tables(parts: _Parts, j: pl.DataFrame, label: str, cfg: StatsConfig, side: _TokenSide,
                strata: str, n_strata: int, notes: list[str]) -> None:
    """Summary, calibration, strata and group rows of one quantized model, task by task.

    A task's uncertainty tests and strata depend on nothing the summary and group rows
    compute, so they run on a second thread beside them (the core's statistics release the
    GIL; the serial stretches of one fill the other's idle CPU). Every number is the same as
    run one after the other, and the rows keep their order: summary rows, then uncertainty
    rows."""
    for task in j["task"].unique(maintain_order=True).to_list():
        jt = j.filter(pl.col("task") == task)
        tk = get_task_kind(jt["kind"][0])
        where = {"model": label, "task": task, "task_kind": jt["kind"][0]}
        with beside(partial(_second_thread_part, jt, tk, cfg, side, task, f"{label}/{task}", strata, n_strata),
                    "uncertainty tests + strata", concurrent=cfg.threads > 1) as second:
            with stage("summary rows (bootstrap)"):
                rows = metric_rows(jt, cfg, side.paired, side.unpaired, primary=primary_metric(tk))
            for r in rows:
                r.update(where)
            if "quant_conf" in jt.columns and tk.correctness:
                with stage("calibration cells"):
                    parts.add_calibration(jt["quant_conf"].to_numpy(), jt["quant_correct"].to_numpy(), cfg,
                                          label, "quant", task)
            with stage("groups"):
                parts.groups.extend(_group_rows(jt, rows, cfg, side, where))
        urows, unotes, st = second.result()
        for r in urows:
            r.update(where)
        parts.summary.extend(rows + urows)
        notes += unotes
        if st is not None and st.height:
            parts.strata.append(st.with_columns(pl.lit(label).alias("model"), pl.lit(task).alias("task")))


def _second_thread_part(jt: pl.DataFrame, tk: Any, cfg: StatsConfig, side: _TokenSide, task: str, where: str,
                        strata: str, n_strata: int) -> tuple[list[dict[str, Any]], list[str], pl.DataFrame | None]:
    """The uncertainty test rows of one task (examples, then tokens), their notes, and the
    task's strata table (None without the quantized model's confidences)."""
    from qfair.analyze.uncertainty import token_uncertainty_rows, uncertainty_rows

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with stage("uncertainty tests"):
        if cfg.uncertainty and "base_conf" in jt.columns:
            urows, unotes = uncertainty_rows(jt, cfg, tk.correctness, where)
            rows += urows
            notes += unotes
        if cfg.uncertainty and side.table is not None and side.table.height:
            urows, unotes = token_uncertainty_rows(side.table.filter(pl.col("task") == task), cfg, where)
            rows += urows
            notes += unotes
    st = None
    if "quant_conf" in jt.columns:
        with stage("strata"):
            st = strata_rows(jt, cfg, strata, n_strata)
    return rows, notes, st


def bias_step(parts: _Parts, j: pl.DataFrame, attributes: pl.DataFrame, label: str, cfg: StatsConfig) -> None:
    """The bias table of one quantized model; its rows also join the summary and groups."""
    bt = bias_scores.bias_table(j, attributes, label, cfg)
    if bt.height:
        schema = {"model": pl.Utf8, "task": pl.Utf8, "task_kind": pl.Utf8, **SUMMARY_SCHEMA}
        parts.extra.setdefault("bias", []).append(bt)
        parts.summary.extend(bias_scores.summary_rows(bt, schema))
        parts.groups.extend(bias_scores.group_rows(bt, {**schema, "group": None, "gap": None, "quant_gap": None,
                                                        "base_gap": None}))


def _front(df: pl.DataFrame, lead: Sequence[str]) -> pl.DataFrame:
    if df.height == 0:
        return df
    return df.select(*lead, *[c for c in df.columns if c not in lead])


def assemble(parts: _Parts, settings: dict[str, Any], notes: list[str]) -> Comparison:
    lead = ["model", "task", "task_kind"]
    schema = {"model": pl.Utf8, "task": pl.Utf8, "task_kind": pl.Utf8, **SUMMARY_SCHEMA}
    summary = adjust_families(pl.DataFrame(parts.summary, schema=schema, orient="row") if parts.summary
                              else pl.DataFrame(schema=schema))
    gschema = {**schema, "group": pl.Utf8, "gap": pl.Float64, "quant_gap": pl.Float64, "base_gap": pl.Float64}
    groups = adjust(pl.DataFrame(parts.groups, schema=gschema, orient="row") if parts.groups
                    else pl.DataFrame(schema=gschema))
    calib = pl.concat(parts.calibration, how="vertical") if parts.calibration else pl.DataFrame()
    strata_df = pl.concat(parts.strata, how="diagonal_relaxed") if parts.strata else pl.DataFrame()
    return Comparison(
        summary=summary,
        examples=pl.concat(parts.examples, how="diagonal_relaxed") if parts.examples else pl.DataFrame(),
        tokens=pl.concat(parts.tokens, how="diagonal_relaxed") if parts.tokens else pl.DataFrame(),
        calibration=_front(calib, ["model", "role", "task", "binning"]),
        strata=_front(strata_df, ["model", "task"]),
        groups=_front(groups, [*lead, "group"]),
        settings=settings, notes=notes,
        extra={k: pl.concat(v, how="diagonal_relaxed") for k, v in parts.extra.items() if v})


@contextmanager
def _draws_released() -> Iterator[None]:
    try:
        yield
    finally:
        clear_draw_cache()


def _check_options(binning: str, strata: str, bootstrap: int, entropy_unit: str = "nats") -> None:
    if entropy_unit not in ("nats", "bits"):
        raise ValueError(f"entropy_unit: expected 'nats' or 'bits', got {entropy_unit!r}")
    if binning not in ("width", "mass"):
        raise ValueError(f"binning: expected 'width' or 'mass', got {binning!r}")
    if strata not in ("confidence", "entropy"):
        raise ValueError(f"strata: expected 'confidence' or 'entropy', got {strata!r}")
    if bootstrap < 1:
        raise ValueError(f"bootstrap: expected a positive number of resamples, got {bootstrap}")


# ---------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------

def compare(base: Any, quant: Any, *, bootstrap: int = 10_000, seed: int = 0,
            bins: int | str | Mapping[str, int] = 15, binning: str = "width", topk: Sequence[int] = (1, 5, 10),
            strata: str = "confidence", n_strata: int = 5, confidence: float = 0.95, threads: int | None = None,
            metrics: Mapping[str, Callable[..., Any]] | None = None, chunk_rows: int | None = None,
            tokens: bool = True, permutation: bool = True, ttest: bool = False, entropy_unit: str = "nats",
            uncertainty: bool = True, progress: bool = False,
            metric_memory: int = DEFAULT_METRIC_MEMORY, verify_hash: bool = True,
            kind_options: Mapping[str, Any] | None = None) -> Comparison:
    """Compare a base dump with one or more quantized dumps.

    ``base``/``quant``: dump paths or opened dumps (``quant`` may be a list).
    ``bins``: calibration bins, one number or per metric (``"15,mce_study=100"``
    or ``{"default": 15, "ace_study": 10}``; see docs/analyze.md).
    ``metrics``: custom token metrics ``{name: fn}``; ``fn`` receives a
    :class:`qfair.analyze.tokens.TokenChunk` and returns one value per row.
    ``metric_memory``: bytes of float32 rows handed to custom metrics at once
    (default 256 MiB; see :func:`qfair.analyze.tokens.custom_chunk_rows`).
    ``ttest``: add the paired t-test (``p_ttest``) to the mean-difference rows.
    ``entropy_unit``: ``"bits"`` reports the choice entropy in bits.
    ``uncertainty=False`` leaves out the uncertainty tests (summary kinds
    ``uncertainty`` and ``uncertainty_token``).
    ``verify_hash``: check every listed file's sha256 (sizes and shard headers
    are always checked first); the hashing runs on a second thread during the
    analysis and a mismatch raises before anything is returned. False skips
    it for very large dumps (recorded in the settings).
    ``kind_options``: keyword arguments of the dump kind's own analysis (e.g.
    a generation dump's ``lexicons`` and ``scorer``).
    """
    _check_options(binning, strata, bootstrap, entropy_unit)
    parse_bins(bins)
    b = _open(base)
    quants = [_open(q) for q in (quant if isinstance(quant, (list, tuple)) else [quant])]
    if not quants:
        raise ValueError("compare: need at least one quantized dump")
    with stage("check sizes and headers"):
        for d in (b, *quants):
            d.verify(hash=False)
    # every file's digest is computed on a second thread while the analysis reads the rows (one
    # pass over the disk, not two); a mismatch fails the comparison before anything is returned
    # the resample draws kept for the statistics of this comparison go back at its end
    with digests_in_background([b, *quants] if verify_hash else []), _draws_released(), single_threaded_blas():
        return _compare_checked(b, quants, bootstrap=bootstrap, seed=seed, bins=bins, binning=binning, topk=topk,
                                strata=strata, n_strata=n_strata, confidence=confidence, threads=threads,
                                metrics=metrics, chunk_rows=chunk_rows, tokens=tokens, permutation=permutation,
                                ttest=ttest, entropy_unit=entropy_unit, uncertainty=uncertainty, progress=progress,
                                metric_memory=metric_memory, verify_hash=verify_hash, kind_options=kind_options)


def _compare_checked(b: Any, quants: list[Any], *, bootstrap: int, seed: int, bins: int | str | Mapping[str, int],
                     binning: str, topk: Sequence[int], strata: str, n_strata: int, confidence: float,
                     threads: int | None, metrics: Mapping[str, Callable[..., Any]] | None, chunk_rows: int | None,
                     tokens: bool, permutation: bool, ttest: bool, entropy_unit: str, uncertainty: bool,
                     progress: bool, metric_memory: int, verify_hash: bool,
                     kind_options: Mapping[str, Any] | None) -> Comparison:
    """:func:`compare` on opened dumps whose sizes and headers were checked."""
    n_bins, metric_bins = parse_bins(bins)
    labels = model_labels(quants)
    rows_aligned = [b.aligned_with(q) for q in quants]  # False: same examples, rows not meant to align

    from qfair.threads import resolve_threads

    threads = resolve_threads(threads)  # default: the CPUs this process may use
    # the primary family's size: at most one primary row per task and quantized model
    m_primary = len(quants) * sum(1 for k in task_kinds(b.manifest).values()
                                  if primary_metric(get_task_kind(k)) is not None) if b.kind.has_choices else 0
    cfg = StatsConfig(resamples=int(bootstrap), seed=int(seed), confidence=float(confidence),
                      threads=threads, bins=n_bins, binning=binning, permutation=permutation, ttest=bool(ttest),
                      entropy_unit=entropy_unit, n_strata=int(n_strata), metric_bins=metric_bins,
                      uncertainty=bool(uncertainty),
                      primary_resamples=primary_resamples(int(bootstrap), m_primary, 1.0 - float(confidence)))
    kind = b.kind
    if kind_options and not kind.analysis:
        raise ValueError(f"options {sorted(kind_options)} apply to a dump kind's own analysis; a {kind.name!r} "
                         "dump has none")
    custom = dict(metrics or {})
    if custom and not kind.has_tokens:
        raise ValueError(f"custom token metrics need a tokens table; a {kind.name!r} dump has none")
    notes: list[str] = []
    parts = _Parts()
    meta = example_meta(b)
    with stage("example statistics"):
        base_ex = example_stats(b.examples, b.choices, task_kinds(b.manifest), where=str(b.path)) \
            if kind.has_choices else None
        attributes = bias_scores.example_attributes(b.examples, task_kinds(b.manifest)) if kind.has_choices else None
    if base_ex is not None:
        _base_calibration(parts, base_ex, meta, cfg)

    nonfinite: dict[str, dict[str, int]] = {}
    for q, label, aligned in zip(quants, labels, rows_aligned):
        nonfinite[label] = _compare_one(
            parts, b, q, label, aligned, meta, base_ex, attributes, cfg, notes, tokens=tokens, topk=topk,
            chunk_rows=chunk_rows, threads=threads, custom=custom, progress=progress, metric_memory=metric_memory,
            strata=strata, n_strata=n_strata, kind_options=kind_options)

    settings = {"bootstrap": int(bootstrap), "seed": int(seed), "bins": n_bins, "metric_bins": dict(metric_bins),
                "binning": binning, "topk": list(topk), "strata": strata, "n_strata": int(n_strata),
                "confidence": confidence, "ttest": bool(ttest), "entropy_unit": entropy_unit,
                "uncertainty": bool(uncertainty),
                "interval_p": "p inverts the row's interval (percentile, or BCa where stable)",
                "adjust": "summary: holm (and bh) over the primary family, bh (and holm) within each metric class "
                          "(kind) of the secondary rows; other tables: over all their rows that have a p",
                "primary_resamples": cfg.primary_resamples, "base": str(b.path),
                "quant": [str(q.path) for q in quants], "models": labels, "kind": kind.name,
                "custom_metrics": sorted(custom),
                "nonfinite": nonfinite,
                "integrity": "size, header and recorded digest of every file (xxh3_128 of the logits shards "
                             "that record one, sha256 otherwise)" if verify_hash
                else "size and header of every file (digests skipped)"}
    with stage("assemble tables (polars)"):
        out = assemble(parts, settings, notes)
    _finish(out, cfg, notes)
    return out


def _base_calibration(parts: _Parts, base_ex: pl.DataFrame, meta: pl.DataFrame, cfg: StatsConfig) -> None:
    """The base model's calibration cells, task by task (tasks with gold answers)."""
    for task in meta["task"].unique(maintain_order=True).to_list():
        sub = base_ex.filter(pl.col("task") == task)
        if get_task_kind(sub["kind"][0] if sub.height else None).correctness:
            with stage("calibration cells"):
                parts.add_calibration(sub["conf"].to_numpy(), sub["correct"].to_numpy(), cfg, "base", "base", task)


def _compare_one(parts: _Parts, b: Any, q: Any, label: str, aligned: bool, meta: pl.DataFrame,
                 base_ex: pl.DataFrame | None, attributes: pl.DataFrame | None, cfg: StatsConfig, notes: list[str],
                 *, tokens: bool, topk: Sequence[int], chunk_rows: int | None, threads: int,
                 custom: Mapping[str, Callable[..., Any]], progress: bool, metric_memory: int, strata: str,
                 n_strata: int, kind_options: Mapping[str, Any] | None) -> dict[str, int]:
    """Every table's rows of one quantized model against the base; returns its counts of
    non-finite examples and rows (the settings' ``nonfinite``)."""
    kind = b.kind
    j = meta
    counts: dict[str, int] = {}
    if base_ex is not None:
        with stage("example statistics"):
            q_ex = example_stats(q.examples, q.choices, task_kinds(q.manifest) or task_kinds(b.manifest),
                                 where=str(q.path))
            j = pair_examples(base_ex, q_ex, meta)
        for who, ex_t in (("base", base_ex), (label, q_ex)):
            bad = int(ex_t["nonfinite"].sum())
            counts["nonfinite_examples_" + ("base" if who == "base" else "quant")] = bad
            if bad:
                notes.append(f"{who}: {bad} example(s) with a non-finite choice log-likelihood; their "
                             "statistics are NaN and every test leaves them out (see the rows' n)")
    side = _TokenSide()
    if kind.has_tokens and not aligned:
        notes.append(f"{label}: its rows do not follow the base dump's text (a generation dump made without "
                     "--reference, or with another reference); only text-level comparisons are possible")
    if tokens and kind.has_tokens and aligned:
        side = token_side(b, q, label, meta, topk=topk, chunk_rows=chunk_rows, threads=threads,
                          custom=custom, progress=progress, notes=notes, metric_memory=metric_memory)
        j = j.join(side.aggregates, on="example_id", how="left")
        counts.update({k: int(v) for k, v in side.info.items()
                       if k.startswith(("nonfinite_", "infinite_"))})
        parts.tokens.append(side.table)
    parts.examples.append(j.with_columns(pl.lit(label).alias("model")).select("model", *j.columns))
    task_tables(parts, j, label, cfg, side, strata, n_strata, notes)
    if attributes is not None:
        with stage("bias"):
            bias_step(parts, j, attributes, label, cfg)
        with stage("task families"):
            parts.summary.extend(family_rows(j, label, cfg, {"model": None, "task": None, "task_kind": None,
                                                            **SUMMARY_SCHEMA}))
    extra = kind_analysis(kind)
    if extra is not None:
        with stage(f"{kind.name} analysis"):
            for name, df in extra(b, q, label, cfg, side.table, **dict(kind_options or {})).items():
                parts.extra.setdefault(name, []).append(df)
    return counts


def _finish(out: Comparison, cfg: StatsConfig, notes: list[str]) -> None:
    """The bias table's own adjustment, and a note when Holm over the primary rows cannot pass
    at the resamples used."""
    if "bias" in out.extra:
        out.extra["bias"] = bias_scores.adjust_permutation(adjust(out.extra["bias"]))   # over the bias rows
    m = int((out.summary["family"] == "primary").sum()) if out.summary.height else 0
    alpha = 1.0 - float(cfg.confidence)
    if m and 1.0 / (cfg.primary_resamples + 1) > alpha / m:
        notes.append(f"Holm over the {m} primary rows of the summary needs p < {alpha:g}/{m} = {alpha / m:.2g}, "
                     f"finer than {cfg.primary_resamples} resamples resolve (smallest p 1/(B+1) = "
                     f"{1 / (cfg.primary_resamples + 1):.2g}): no primary row can pass Holm")
