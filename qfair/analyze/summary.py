"""Differences with confidence intervals and p-values, per task (and per group),
calibration bins and uncertainty strata. The numbers come from the C++ core via
:mod:`qfair.stats` and :mod:`qfair.calibration`; this module only chooses which
columns are compared and lays out the rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from qfair import stats
from qfair.calibration import calibration

__all__ = ["StatsConfig", "metric_rows", "strata_rows", "calibration_rows", "mean_metrics",
           "CALIBRATION_METRICS", "SUMMARY_SCHEMA"]


def mean_metrics() -> list[tuple[str, str]]:
    """(summary metric, example column without the base_/quant_ prefix) of every
    registered example metric compared in the summary."""
    from qfair.analyze.task_kinds import example_metrics

    return [(m.name, m.column) for m in example_metrics() if m.summary]

# (summary metric, measure, binning or None for the configured one)
CALIBRATION_METRICS = (
    ("ece", "ece", "width"), ("ece_mass", "ece", "mass"), ("mce", "mce", None),
    ("rms_ce", "rms", None), ("l2_ce_debiased", "l2_debiased", None),
)

SUMMARY_SCHEMA: dict[str, Any] = {
    "metric": pl.Utf8, "kind": pl.Utf8, "n": pl.Int64, "base": pl.Float64, "quant": pl.Float64,
    "diff": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "ci_method": pl.Utf8,
    "pct_low": pl.Float64, "pct_high": pl.Float64, "p": pl.Float64, "test": pl.Utf8,
    "p_mid": pl.Float64, "p_perm": pl.Float64,
}


@dataclass(frozen=True)
class StatsConfig:
    resamples: int = 10_000
    seed: int = 0
    confidence: float = 0.95
    threads: int | None = None
    bins: int = 15
    binning: str = "width"
    permutation: bool = True


def _nan_row(metric: str, kind: str, n: int) -> dict[str, Any]:
    row = {k: None for k in SUMMARY_SCHEMA}
    row.update(metric=metric, kind=kind, n=n)
    return row


def _col(df: pl.DataFrame, name: str) -> np.ndarray | None:
    if name not in df.columns:
        return None
    return df[name].cast(pl.Float64).to_numpy()


def metric_rows(j: pl.DataFrame, cfg: StatsConfig, token_paired: Sequence[tuple[str, str, str]] = (),
                token_unpaired: Sequence[str] = ()) -> list[dict[str, Any]]:
    """All summary rows for one set of paired examples (a task, or a group of it).

    ``j`` holds base_<m> / quant_<m> example columns, flip indicators and tok_<m>
    token aggregates. Rows whose inputs are missing or all NaN are left out.
    """
    rows: list[dict[str, Any]] = []
    # (row, bootstrap spec or None, d for the permutation test or None), in row order
    pending: list[tuple[dict[str, Any], Any, np.ndarray | None]] = []

    def add_mean(metric: str, kind: str, x: np.ndarray | None, y: np.ndarray) -> None:
        # NaN marks an invalid value (a non-finite logits row, a NaN log-likelihood): left out and
        # counted by n. +-inf is a legitimate value (a zero probability: KL = inf, log-prob = -inf).
        ok = ~np.isnan(y) if x is None else (~np.isnan(x) & ~np.isnan(y))
        n = int(ok.sum())
        if n == 0:
            return
        row = _nan_row(metric, kind, n)
        yv = y[ok]
        xv = None if x is None else x[ok]
        with np.errstate(invalid="ignore"):
            row["quant"] = float(yv.mean()) if xv is not None else None
            row["base"] = float(xv.mean()) if xv is not None else None
            if not np.isfinite(yv).all() or (xv is not None and not np.isfinite(xv).all()):
                # the mean is infinite: reported as such, with no interval and no test
                row["diff"] = float(yv.mean() - (xv.mean() if xv is not None else 0.0))
                row["test"] = "none (infinite values)"
                pending.append((row, None, None))
                return
        row["test"] = "paired bootstrap"
        pending.append((row, stats.MeanDiff(yv, xv), yv - (xv if xv is not None else 0.0)))

    for metric, col in mean_metrics():
        x, y = _col(j, f"base_{col}"), _col(j, f"quant_{col}")
        if x is not None and y is not None:
            add_mean(metric, "example", x, y)
    for metric, bcol, qcol in token_paired:
        x, y = _col(j, f"tok_{bcol}"), _col(j, f"tok_{qcol}")
        if x is not None and y is not None:
            add_mean(metric, "token", x, y)
    for metric in token_unpaired:
        y = _col(j, f"tok_{metric}") if f"tok_{metric}" in j.columns else _col(j, metric)
        if y is not None:
            add_mean(metric, "token", None, y)

    # calibration (top-label, over the choice distribution)
    cx, ax = _col(j, "base_conf"), _col(j, "base_correct")
    cy, ay = _col(j, "quant_conf"), _col(j, "quant_correct")
    if cx is not None and cy is not None:
        ok = np.isfinite(cx) & np.isfinite(cy) & np.isfinite(ax) & np.isfinite(ay)
        n = int(ok.sum())
        if n > 0:
            cxo, axo, cyo, ayo = (np.clip(cx[ok], 0, 1), ax[ok], np.clip(cy[ok], 0, 1), ay[ok])
            for metric, measure, binning in CALIBRATION_METRICS:
                bn = binning or cfg.binning
                row = _nan_row(metric, "calibration", n)
                row["test"] = "paired bootstrap"
                pending.append((row, stats.CalibrationDiff(cyo, ayo, cxo, axo, bins=cfg.bins, binning=bn,
                                                           measure=measure), None))

    if pending:
        # one shared draw per sample size: statistics over different examples (a metric with
        # invalid values leaves some out) cannot share one index draw
        by_n: dict[int, list[int]] = {}
        for i, (row, spec, _) in enumerate(pending):
            if spec is not None:
                by_n.setdefault(row["n"], []).append(i)
        results: dict[int, Any] = {}
        for idx in by_n.values():
            res = stats.paired_bootstrap([pending[i][1] for i in idx], resamples=cfg.resamples, seed=cfg.seed,
                                         confidence=cfg.confidence, threads=cfg.threads)
            results.update(zip(idx, res))
        for i, (row, spec, d) in enumerate(pending):
            if spec is None:
                rows.append(row)
                continue
            r = results[i]
            row["diff"] = r.estimate
            row["pct_low"], row["pct_high"] = r.pct_lo, r.pct_hi
            if np.isfinite(r.bca_lo) and np.isfinite(r.bca_hi):
                row["ci_low"], row["ci_high"], row["ci_method"] = r.bca_lo, r.bca_hi, "bca"
            else:
                row["ci_low"], row["ci_high"], row["ci_method"] = r.pct_lo, r.pct_hi, "percentile"
            row["p"] = r.p
            if cfg.permutation and d is not None:
                row["p_perm"] = stats.sign_flip_test(d, resamples=cfg.resamples, seed=cfg.seed,
                                                     threads=cfg.threads).p
            rows.append(row)
        # calibration rows: base and quant values of the measure on the full sample
        if cx is not None and cy is not None:
            ok = np.isfinite(cx) & np.isfinite(cy) & np.isfinite(ax) & np.isfinite(ay)
            for row in rows:
                if row["kind"] != "calibration":
                    continue
                metric = row["metric"]
                _, measure, binning = next(m for m in CALIBRATION_METRICS if m[0] == metric)
                bn = binning or cfg.binning
                cb = calibration(np.clip(cx[ok], 0, 1), ax[ok], bins=cfg.bins, binning=bn)
                cq = calibration(np.clip(cy[ok], 0, 1), ay[ok], bins=cfg.bins, binning=bn)
                key = {"ece": "ece", "mce": "mce", "rms": "rms", "l2_debiased": "l2_debiased"}[measure]
                row["base"], row["quant"] = getattr(cb, key), getattr(cq, key)

    # flips: proportions with Wilson intervals; McNemar on the discordant pairs
    bc, qc = _col(j, "base_correct"), _col(j, "quant_correct")
    if bc is not None and qc is not None:
        ok = np.isfinite(bc) & np.isfinite(qc)
        n = int(ok.sum())
        if n > 0:
            b = int(((bc == 1) & (qc == 0) & ok).sum())
            c = int(((bc == 0) & (qc == 1) & ok).sum())
            bp, qp = _col(j, "base_pred"), _col(j, "quant_pred")
            changed = int(((bp != qp) & ok).sum()) if bp is not None else 0
            mc = stats.mcnemar(b, c)
            counts = {"flips": b + c, "flips_c2i": b, "flips_i2c": c, "changed_answer": changed}
            lo, hi = stats.wilson(list(counts.values()), [n] * 4, cfg.confidence)
            for i, (metric, k) in enumerate(counts.items()):
                row = _nan_row(metric, "flip", n)
                row["diff"] = k / n
                row["ci_low"], row["ci_high"], row["ci_method"] = float(lo[i]), float(hi[i]), "wilson"
                if metric == "flips":
                    row["p"], row["p_mid"], row["test"] = mc.p_exact, mc.p_mid, "mcnemar exact"
                rows.append(row)
    return rows


def strata_rows(j: pl.DataFrame, cfg: StatsConfig, by: str = "confidence", n_strata: int = 5) -> pl.DataFrame:
    """Examples binned by the base model's confidence (or choice entropy) into
    ``n_strata`` equal-count strata (quantile edges; equal values share a stratum)."""
    col = {"confidence": "base_conf", "entropy": "base_entropy"}.get(by)
    if col is None:
        raise ValueError(f"strata: expected 'confidence' or 'entropy', got {by!r}")
    v = j[col].cast(pl.Float64).to_numpy()
    ok = np.isfinite(v) & np.isfinite(j["quant_conf"].cast(pl.Float64).to_numpy())
    out: list[dict[str, Any]] = []
    if not ok.any():
        return pl.DataFrame()
    jj = j.filter(pl.Series(ok))
    v = v[ok]
    k = max(1, min(int(n_strata), v.size))
    edges = np.quantile(v, np.linspace(0, 1, k + 1)[1:-1]) if k > 1 else np.array([])
    s = np.searchsorted(edges, v, side="left")
    has_kl = "kl_all_mean" in jj.columns
    for b in range(k):
        m = s == b
        n = int(m.sum())
        if n == 0:
            continue
        sub = jj.filter(pl.Series(m))
        bc, qc = sub["base_correct"].to_numpy(), sub["quant_correct"].to_numpy()
        c2i = int(((bc == 1) & (qc == 0)).sum())
        i2c = int(((bc == 0) & (qc == 1)).sum())
        changed = int((sub["base_pred"].to_numpy() != sub["quant_pred"].to_numpy()).sum())
        lo, hi = stats.wilson([c2i + i2c], [n], cfg.confidence)
        bconf = np.clip(sub["base_conf"].to_numpy(), 0, 1)
        qconf = np.clip(sub["quant_conf"].to_numpy(), 0, 1)
        eb = calibration(bconf, bc, bins=cfg.bins, binning=cfg.binning).ece
        eq = calibration(qconf, qc, bins=cfg.bins, binning=cfg.binning).ece
        out.append({
            "stratum": b, "by": by, "lo": float(v[m].min()), "hi": float(v[m].max()), "n": n,
            "flip_rate": (c2i + i2c) / n, "flip_ci_low": float(lo[0]), "flip_ci_high": float(hi[0]),
            "c2i_rate": c2i / n, "i2c_rate": i2c / n, "changed_rate": changed / n,
            "base_acc": float(bc.mean()), "quant_acc": float(qc.mean()),
            "delta_conf": float((qconf - bconf).mean()),
            "mean_kl": _nanmean(sub["kl_all_mean"]) if has_kl else None,
            "base_ece": eb, "quant_ece": eq, "delta_ece": eq - eb,
        })
    return pl.DataFrame(out, schema_overrides={"mean_kl": pl.Float64})


def _nanmean(col: pl.Series) -> float | None:
    """Mean over the non-NaN values (None when there are none); +-inf is kept."""
    v = col.cast(pl.Float64).to_numpy()
    v = v[~np.isnan(v)]
    if not v.size:
        return None
    with np.errstate(invalid="ignore"):
        return float(v.mean())


def calibration_rows(conf: np.ndarray, correct: np.ndarray, bins: int) -> pl.DataFrame:
    """Reliability-diagram bins under both binnings."""
    ok = np.isfinite(conf) & np.isfinite(correct)
    parts = []
    for bn in ("width", "mass"):
        if not ok.any():
            continue
        r = calibration(np.clip(conf[ok], 0, 1), correct[ok], bins=bins, binning=bn)
        parts.append(r.bins.with_columns(pl.lit(bn).alias("binning")))
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts, how="vertical")
