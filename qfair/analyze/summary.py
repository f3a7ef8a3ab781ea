"""Differences with confidence intervals and p-values, per task (and per group),
calibration bins and uncertainty strata.

The bootstrap replicates come from the C++ core (:mod:`qfair.stats`) or, for
statistics it does not hold (ratios, distances from a neutral value, the
study's estimators), from numpy on the same resample draw
(:mod:`qfair.metrics.resampling`). Every row's interval and p-value come from
one construction (:mod:`qfair.analyze.intervals`): ``p`` is the smallest
level at which the reported interval excludes ``null``. Rows that describe a
quantity without a meaningful null (divergences, agreement rates, flip
rates) carry an interval and no ``p``.

What a task reports follows its task kind (:mod:`qfair.metrics.task_kinds`):
metrics that need a gold answer, calibration, flips and the study's
correctness measures only where ``TaskKind.correctness`` holds; a metric with
a neutral value (CrowS-Pairs' 50 %) also gets its distance from it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from qfair import stats
from qfair.analyze.intervals import choose_method, interval_p, quantile_sorted
from qfair.calibration import calibration
from qfair.metrics.resampling import count_blocks, ttest_rel, weighted_sums

__all__ = ["StatsConfig", "metric_rows", "strata_rows", "calibration_rows", "mean_metrics",
           "CALIBRATION_METRICS", "SUMMARY_SCHEMA", "DESCRIPTIVE_METRICS", "STRATA_SHIFTS", "auto_bins",
           "parse_bins"]


def mean_metrics() -> list[tuple[str, str]]:
    """(summary metric, example column without the base_/quant_ prefix) of every
    registered example metric compared in the summary."""
    from qfair.metrics.task_kinds import example_metrics

    return [(m.name, m.column) for m in example_metrics() if m.summary]


# (summary metric, measure, binning or None for the configured one)
CALIBRATION_METRICS = (
    ("ece", "ece", "width"), ("ece_mass", "ece", "mass"), ("mce", "mce", None),
    ("rms_ce", "rms", None), ("l2_ce_debiased", "l2_debiased", None),
)
# metrics whose --bins can be set one by one (name=K); the study's keep their own defaults
BIN_METRICS = ("ece", "ece_mass", "mce", "rms_ce", "l2_ce_debiased", "ace_study", "ace_study_binary",
               "mce_study", "reliability")
_STUDY_BIN_DEFAULTS = {"ace_study": 15, "ace_study_binary": 100, "mce_study": 100}

# comparison metrics that describe how far two models are apart: an interval, no test
# (a divergence is >= 0 and 0 only for identical models; an agreement rate is 1 for them)
DESCRIPTIVE_METRICS = frozenset({"kl_pq", "kl_qp", "js", "tv", "top1_agree", "kl_gold_mean", "choice_js"})

SUMMARY_SCHEMA: dict[str, Any] = {
    "metric": pl.Utf8, "kind": pl.Utf8, "n": pl.Int64, "base": pl.Float64, "quant": pl.Float64,
    "diff": pl.Float64, "null": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "ci_method": pl.Utf8,
    "pct_low": pl.Float64, "pct_high": pl.Float64, "p": pl.Float64, "test": pl.Utf8,
    "p_perm": pl.Float64, "p_ttest": pl.Float64, "p_mcnemar": pl.Float64, "p_mid": pl.Float64,
    "base_low": pl.Float64, "base_high": pl.Float64, "quant_low": pl.Float64, "quant_high": pl.Float64,
}

BOOT_TEST = "paired bootstrap"
NO_TEST = "none (descriptive)"


def parse_bins(value: int | str | Mapping[str, int] | None) -> tuple[int, tuple[tuple[str, int], ...]]:
    """``15`` or ``"15,mce_study=100"`` or ``{"ece": 10}`` -> (default, per-metric overrides)."""
    if value is None:
        return 15, ()
    if isinstance(value, int):
        default, items = int(value), {}
    elif isinstance(value, Mapping):
        items = {str(k): int(v) for k, v in value.items()}
        default = int(items.pop("default", 15))
    else:
        default, items = 15, {}
        for part in (x.strip() for x in str(value).split(",") if x.strip()):
            if "=" in part:
                k, _, v = part.partition("=")
                try:
                    items[k.strip()] = int(v)
                except ValueError:
                    raise ValueError(f"bins: {part!r}: expected NAME=INTEGER") from None
            else:
                try:
                    default = int(part)
                except ValueError:
                    raise ValueError(f"bins: {part!r}: expected an integer or NAME=INTEGER") from None
    bad = [k for k in items if k not in BIN_METRICS]
    if bad:
        raise ValueError(f"bins: unknown metric(s) {bad}; per-metric bins exist for {', '.join(BIN_METRICS)}")
    if default < 1 or any(v < 1 for v in items.values()):
        raise ValueError("bins: every number of bins must be >= 1")
    return default, tuple(sorted(items.items()))


@dataclass(frozen=True)
class StatsConfig:
    resamples: int = 10_000
    seed: int = 0
    confidence: float = 0.95
    threads: int | None = None
    bins: int = 15
    binning: str = "width"
    permutation: bool = True
    ttest: bool = False
    entropy_unit: str = "nats"          # choice entropy in the summary: "nats" or "bits"
    n_strata: int = 5
    uncertainty: bool = True            # the uncertainty tests (qfair.analyze.uncertainty)
    metric_bins: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    primary_resamples: int = 0          # resamples of a primary row whose p < 2 alpha (qfair.analyze.multiple_testing)

    def bins_for(self, metric: str) -> int:
        d = dict(self.metric_bins)
        if metric in d:
            return d[metric]
        return _STUDY_BIN_DEFAULTS.get(metric, self.bins)


def auto_bins(n: int, most: int) -> int:
    """Bins for a reliability diagram of n examples: about ten examples per bin, at most ``most``."""
    return max(1, min(int(most), int(n) // 10))


def _nan_row(metric: str, kind: str, n: int) -> dict[str, Any]:
    row = {k: None for k in SUMMARY_SCHEMA}
    row.update(metric=metric, kind=kind, n=n)
    return row


def _col(df: pl.DataFrame, name: str) -> np.ndarray | None:
    if name not in df.columns:
        return None
    return df[name].cast(pl.Float64).to_numpy()


def _fin(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _set_interval(row: dict[str, Any], dist: np.ndarray, cfg: StatsConfig, *, method: str = "percentile",
                  z0: float = 0.0, accel: float = 0.0, tested: bool = True) -> None:
    """ci_low/ci_high/ci_method and (tested) p and null, from one construction."""
    r = interval_p(dist, confidence=cfg.confidence, method=method, z0=z0, accel=accel, tested=tested)
    if r.resamples == 0:
        return
    row["ci_low"], row["ci_high"], row["ci_method"] = _fin(r.low), _fin(r.high), method
    if tested and row["n"] >= 2:
        row["p"], row["null"], row["test"] = r.p, 0.0, BOOT_TEST
    else:
        row["test"] = NO_TEST if not tested else "none (fewer than 2 examples)"


def _task_kind(j: pl.DataFrame):
    from qfair.metrics.task_kinds import get_task_kind

    k = j["kind"][0] if "kind" in j.columns and j.height else None
    return get_task_kind(k)


def _spec_n(spec: Any) -> int:
    return int(np.size(spec.y if isinstance(spec, stats.MeanDiff) else spec.conf_y))


def _binary(v: np.ndarray) -> bool:
    return bool(np.all((v == 0) | (v == 1)))


# ---------------------------------------------------------------------------
# summary rows


@dataclass
class _Pending:
    row: dict[str, Any]
    kind: str                       # "mean" | "calibration" | "model_ce"
    d: np.ndarray | None = None     # per-example difference (permutation / t-test), tested mean rows
    tested: bool = True
    binary: bool = False
    pair: tuple[np.ndarray, np.ndarray] | None = None  # (x, y) of a tested paired mean row (t-test)
    sides: tuple[int, int] | None = None  # a calibration difference taken from its two model_ce specs


def _refine(row: dict[str, Any], primary: str | None, cfg: StatsConfig) -> int:
    """Resamples to recompute ``row`` with: its p is the primary family's and near the
    threshold (below 2 alpha at ``cfg.resamples``); 0 otherwise."""
    B2 = int(cfg.primary_resamples)
    if primary is None or row["metric"] != primary or B2 <= cfg.resamples:
        return 0
    p = row.get("p")
    return B2 if p is not None and p < 2 * (1 - cfg.confidence) else 0


def metric_rows(j: pl.DataFrame, cfg: StatsConfig, token_paired: Sequence[tuple[str, str, str]] = (),
                token_unpaired: Sequence[str] = (), primary: str | None = None) -> list[dict[str, Any]]:
    """All summary rows for one set of paired examples (a task, or a group of it).

    ``j`` holds base_<m> / quant_<m> example columns, flip indicators and tok_<m>
    token aggregates. Rows whose inputs are missing or all NaN are left out.
    ``primary``: the metric of the task's primary row
    (:func:`qfair.analyze.multiple_testing.primary_metric`); its p is recomputed with
    ``cfg.primary_resamples`` when it is near the threshold.
    """
    tk = _task_kind(j)
    rows: list[dict[str, Any]] = []
    specs: list[Any] = []
    pending: list[_Pending] = []
    direct: list[dict[str, Any]] = []  # rows with no bootstrap (infinite means)

    def add_mean(metric: str, kind: str, x: np.ndarray | None, y: np.ndarray, *, tested: bool = True,
                 scale: float = 1.0) -> None:
        # NaN marks an invalid value (a non-finite logits row, a NaN log-likelihood): left out and
        # counted by n. +-inf is a legitimate value (a zero probability: KL = inf, log-prob = -inf).
        ok = ~np.isnan(y) if x is None else (~np.isnan(x) & ~np.isnan(y))
        n = int(ok.sum())
        if n == 0:
            return
        row = _nan_row(metric, kind, n)
        yv = y[ok] * scale
        xv = None if x is None else x[ok] * scale
        with np.errstate(invalid="ignore"):
            row["quant"] = float(yv.mean()) if xv is not None else None
            row["base"] = float(xv.mean()) if xv is not None else None
            if not np.isfinite(yv).all() or (xv is not None and not np.isfinite(xv).all()):
                # the mean is infinite: reported as such, with no interval and no test
                row["diff"] = float(yv.mean() - (xv.mean() if xv is not None else 0.0))
                row["test"] = "none (infinite values)"
                direct.append(row)
                return
        specs.append(stats.MeanDiff(yv, xv))
        d = yv - (xv if xv is not None else 0.0)
        pending.append(_Pending(row, "mean", d, tested,
                                binary=xv is not None and _binary(xv) and _binary(yv),
                                pair=None if xv is None else (xv, yv)))

    for metric, col in mean_metrics():
        m = tk.metric(metric)
        if m is not None and m.gold and not tk.correctness:
            continue
        x, y = _col(j, f"base_{col}"), _col(j, f"quant_{col}")
        if x is not None and y is not None:
            if metric == "choice_entropy" and cfg.entropy_unit == "bits":
                add_mean("choice_entropy_bits", "example", x, y, scale=1.0 / math.log(2.0))
            else:
                add_mean(metric, "example", x, y)
    js = _col(j, "choice_js")
    if js is not None:
        add_mean("choice_js", "example", None, js, tested=False)
    for metric, bcol, qcol in token_paired:
        x, y = _col(j, f"tok_{bcol}"), _col(j, f"tok_{qcol}")
        if x is not None and y is not None:
            add_mean(metric, "token", x, y)
    for metric in token_unpaired:
        y = _col(j, f"tok_{metric}") if f"tok_{metric}" in j.columns else _col(j, metric)
        if y is not None:
            descriptive = metric in DESCRIPTIVE_METRICS or metric.startswith("overlap_at_")
            add_mean(metric, "token", None, y, tested=not descriptive)

    # calibration (top-label, over the choice distribution): the difference and each model's value
    cx, ax = _col(j, "base_conf"), _col(j, "base_correct")
    cy, ay = _col(j, "quant_conf"), _col(j, "quant_correct")
    cal_ok = None
    if tk.correctness and cx is not None and cy is not None:
        cal_ok = np.isfinite(cx) & np.isfinite(cy) & np.isfinite(ax) & np.isfinite(ay)
        n = int(cal_ok.sum())
        if n > 0:
            cxo, axo, cyo, ayo = (np.clip(cx[cal_ok], 0, 1), ax[cal_ok], np.clip(cy[cal_ok], 0, 1), ay[cal_ok])
            for metric, measure, binning in CALIBRATION_METRICS:
                bn = binning or cfg.binning
                k = cfg.bins_for(metric)
                row = _nan_row(metric, "calibration", n)
                specs.append(stats.CalibrationDiff(cyo, ayo, cxo, axo, bins=k, binning=bn, measure=measure))
                # equal-mass bins: the core evaluates a difference as CE(quant) - CE(base) of the same
                # draw, so it is the difference of the two model specs below (not bootstrapped twice)
                at = len(specs)
                pending.append(_Pending(row, "calibration", sides=(at, at + 1) if bn == "mass" else None))
                for side, (c_, a_) in (("base", (cxo, axo)), ("quant", (cyo, ayo))):
                    specs.append(stats.CalibrationDiff(c_, a_, bins=k, binning=bn, measure=measure))
                    pending.append(_Pending(row, f"model_ce:{side}"))

    if specs:
        # one call per sample size: statistics over the same examples share each resample's draw
        res: list[Any] = [None] * len(specs)
        by_n: dict[int, list[int]] = {}
        for i, sp in enumerate(specs):
            if pending[i].sides is None:
                by_n.setdefault(_spec_n(sp), []).append(i)
        for idx in by_n.values():
            out = stats.paired_bootstrap([specs[i] for i in idx], resamples=cfg.resamples, seed=cfg.seed,
                                         confidence=cfg.confidence, threads=cfg.threads, keep_distribution=True)
            for i, r in zip(idx, out):
                res[i] = r
        for i, pe in enumerate(pending):
            if pe.sides is not None:
                res[i] = _difference(res[pe.sides[1]], res[pe.sides[0]], specs[i], cfg)
        for pe, r, spec in zip(pending, res, specs):
            row = pe.row
            if pe.kind.startswith("model_ce:"):
                side = pe.kind.split(":")[1]
                row[side] = r.estimate
                iv = interval_p(r.distribution, confidence=cfg.confidence, tested=False)
                row[f"{side}_low"], row[f"{side}_high"] = _fin(iv.low), _fin(iv.high)
                continue
            row["diff"] = r.estimate
            row["pct_low"], row["pct_high"] = _fin(r.pct_lo), _fin(r.pct_hi)
            if pe.kind == "mean":
                method = choose_method("mean", row["n"], r.z0, r.accel)
                _set_interval(row, r.distribution, cfg, method=method, z0=r.z0, accel=r.accel, tested=pe.tested)
                if pe.tested and pe.binary and pe.d is not None and not np.any(pe.d):
                    # no example changed: the bootstrap interval is the point 0; the change of a 0/1
                    # metric is bounded by the rate of discordant examples, whose Wilson bound is honest
                    _, hi = stats.wilson([0], [row["n"]], cfg.confidence)
                    row["ci_low"], row["ci_high"], row["ci_method"] = -float(hi[0]), float(hi[0]), "wilson (no change)"
                B2 = _refine(row, primary, cfg) if pe.tested else 0
                if B2:  # a primary row near the threshold: its interval and p from B2 resamples
                    r = stats.paired_bootstrap([spec], resamples=B2, seed=cfg.seed, confidence=cfg.confidence,
                                               threads=cfg.threads, keep_distribution=True)[0]
                    row["pct_low"], row["pct_high"] = _fin(r.pct_lo), _fin(r.pct_hi)
                    method = choose_method("mean", row["n"], r.z0, r.accel)
                    _set_interval(row, r.distribution, cfg, method=method, z0=r.z0, accel=r.accel)
                    row["test"] = f"{BOOT_TEST} (primary: {B2} resamples)"
                if pe.tested and row["n"] >= 2 and pe.d is not None:
                    if cfg.permutation:
                        row["p_perm"] = stats.sign_flip_test(pe.d, resamples=cfg.resamples, seed=cfg.seed,
                                                             threads=cfg.threads).p
                    if cfg.ttest and pe.pair is not None:
                        row["p_ttest"] = _fin(ttest_rel(pe.pair[0], pe.pair[1])[1])
            else:
                _set_interval(row, r.distribution, cfg, method="percentile")
            rows.append(row)

    rows.extend(direct)
    rows.extend(_neutral_rows(j, tk, cfg, primary))
    if tk.correctness:
        rows.extend(_study_rows(j, cfg))
        rows.extend(_flip_rows(j, cfg, rows))
    return rows


def _difference(quant: stats.BootstrapResult, base: stats.BootstrapResult, spec: Any,
                cfg: StatsConfig) -> stats.BootstrapResult:
    """The bootstrap of quant - base from the two models' own bootstraps on the same draw: per
    resample the core's difference statistic is the same subtraction, and its percentiles the
    same interpolation (:func:`qfair.analyze.intervals.quantile_sorted`). A NaN replicate (whose
    place in the core's sort is not numpy's) sends the difference to the core itself."""
    d = quant.distribution - base.distribution
    if np.isnan(d).any():
        return stats.paired_bootstrap([spec], resamples=cfg.resamples, seed=cfg.seed, confidence=cfg.confidence,
                                      threads=cfg.threads, keep_distribution=True)[0]
    s = np.sort(d)
    alpha = 1.0 - cfg.confidence
    return stats.BootstrapResult(estimate=quant.estimate - base.estimate, se=math.nan, bias=math.nan,
                                 pct_lo=quantile_sorted(s, alpha / 2.0), pct_hi=quantile_sorted(s, 1.0 - alpha / 2.0),
                                 bca_lo=math.nan, bca_hi=math.nan, z0=math.nan, accel=math.nan, p=math.nan,
                                 distribution=d)


def _neutral_rows(j: pl.DataFrame, tk: Any, cfg: StatsConfig, primary: str | None = None) -> list[dict[str, Any]]:
    """For a metric with a neutral value v (CrowS-Pairs' pct_stereotype: 0.5): |mean - v| of
    each model and its change (positive = further from neutral), on the shared draw."""
    out = []
    for m in (*tk.metrics,):
        if m.neutral is None or not m.summary:
            continue
        x, y = _col(j, f"base_{m.column}"), _col(j, f"quant_{m.column}")
        if x is None or y is None:
            continue
        ok = np.isfinite(x) & np.isfinite(y)
        n = int(ok.sum())
        if n == 0:
            continue
        xv, yv = x[ok], y[ok]
        row = _nan_row(f"{m.name}_from_neutral", "example", n)
        row["base"], row["quant"] = abs(xv.mean() - m.neutral), abs(yv.mean() - m.neutral)
        row["diff"] = row["quant"] - row["base"]
        B = cfg.resamples
        while True:
            sums = weighted_sums(np.column_stack([xv, yv]), seed=cfg.seed, resamples=B, threads=cfg.threads) / n
            dist = np.abs(sums[:, 1] - m.neutral) - np.abs(sums[:, 0] - m.neutral)
            row["pct_low"] = _fin(float(np.quantile(dist, (1 - cfg.confidence) / 2)))
            row["pct_high"] = _fin(float(np.quantile(dist, 1 - (1 - cfg.confidence) / 2)))
            _set_interval(row, dist, cfg)
            B2 = _refine(row, primary, cfg) if B == cfg.resamples else 0
            if not B2:
                break
            B = B2  # a primary row near the threshold: again with B2 resamples
            row["test"] = f"{BOOT_TEST} (primary: {B2} resamples)"
        if B != cfg.resamples:
            row["test"] = f"{BOOT_TEST} (primary: {B} resamples)"
        out.append(row)
    return out


def _ratio_rows(j: pl.DataFrame, cfg: StatsConfig) -> list[dict[str, Any]]:
    """conf_pos / conf_neg: mean confidence on correct / incorrect answers, each model on its own answers."""
    cx, ax = _col(j, "base_conf"), _col(j, "base_correct")
    cy, ay = _col(j, "quant_conf"), _col(j, "quant_correct")
    if cx is None or cy is None or ax is None or ay is None:
        return []
    ok = np.isfinite(cx) & np.isfinite(cy) & np.isfinite(ax) & np.isfinite(ay)
    n = int(ok.sum())
    if n == 0:
        return []
    cx, ax, cy, ay = cx[ok], ax[ok], cy[ok], ay[ok]
    cols = np.column_stack([cx * ax, ax, cy * ay, ay, cx * (1 - ax), 1 - ax, cy * (1 - ay), 1 - ay])
    full = cols.sum(axis=0)
    sums = weighted_sums(cols, seed=cfg.seed, resamples=cfg.resamples, threads=cfg.threads)
    out = []
    for metric, o in (("conf_pos", 0), ("conf_neg", 4)):
        with np.errstate(invalid="ignore", divide="ignore"):
            b = full[o] / full[o + 1] if full[o + 1] > 0 else math.nan
            q = full[o + 2] / full[o + 3] if full[o + 3] > 0 else math.nan
            dist = sums[:, o + 2] / sums[:, o + 3] - sums[:, o] / sums[:, o + 1]
        row = _nan_row(metric, "study", n)
        row["base"], row["quant"] = _fin(b), _fin(q)
        if row["base"] is None or row["quant"] is None:
            row["test"] = "none (a model has no such answer)"
            out.append(row)
            continue
        row["diff"] = q - b
        fin = dist[np.isfinite(dist)]
        if fin.size:
            row["pct_low"] = float(np.quantile(fin, (1 - cfg.confidence) / 2))
            row["pct_high"] = float(np.quantile(fin, 1 - (1 - cfg.confidence) / 2))
        _set_interval(row, dist, cfg)
        out.append(row)
    return out


def _probs_matrix(j: pl.DataFrame, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(N x K choice distributions, gold labels, kept mask) of the examples whose number of
    choices equals the first example's (the study drops the others)."""
    col = f"{prefix}_probs"
    if col not in j.columns or "n_choices" not in j.columns or j.height == 0:
        return None
    k = j["n_choices"].to_numpy()
    keep = k == k[0]
    probs = j[col].to_list()
    mat = np.array([probs[i] for i in np.flatnonzero(keep)], dtype=np.float64)
    if mat.ndim != 2 or mat.shape[0] == 0:
        return None
    return mat, j["label"].to_numpy()[keep], keep


def _study_rows(j: pl.DataFrame, cfg: StatsConfig) -> list[dict[str, Any]]:
    """The study's measures: conf_pos, conf_neg and its ACE / MCE estimators (qfair.analyze.study)."""
    from qfair.analyze.study import study_calibration

    out = _ratio_rows(j, cfg)
    pb, pq = _probs_matrix(j, "base"), _probs_matrix(j, "quant")
    if pb is None or pq is None:
        return out
    (mb, lab, keep), (mq, _, _) = pb, pq
    ok = np.isfinite(mb).all(axis=1) & np.isfinite(mq).all(axis=1)
    mb, mq, lab = mb[ok], mq[ok], lab[ok]
    n = int(ok.sum())
    if n == 0:
        return out
    kw = {"ranges": cfg.bins_for("ace_study"), "binary_bins": cfg.bins_for("ace_study_binary"),
          "bins": cfg.bins_for("mce_study")}
    est_b, est_q = study_calibration(mb, lab, **kw), study_calibration(mq, lab, **kw)
    dists: dict[str, list[np.ndarray]] = {"b_ace_study": [], "q_ace_study": [], "b_mce_study": [],
                                           "q_mce_study": []}
    # K > 2 estimators hold a few [block, n] arrays (and [block, n, ranges] comparisons where a NaN
    # confidence rules out their binary search); binary ones read the kept counts as they are (no
    # [block, n] array beyond the draw's own rows when it is not kept)
    for c in count_blocks(n, cfg.seed, cfg.resamples, width=n * (24 if mb.shape[1] > 2 else 1), raw=True):
        for pfx, m in (("b", mb), ("q", mq)):
            for name, v in study_calibration(m, lab, c, threads=cfg.threads, **kw).items():
                dists[f"{pfx}_{name}"].append(v)
    note = (f"; {int((~keep).sum())} example(s) with another number of choices left out, as the study does"
            if not keep.all() else "")
    for name in ("ace_study", "mce_study"):
        b, q = float(est_b[name][0]), float(est_q[name][0])
        row = _nan_row(name, "study", n)
        row["base"], row["quant"] = _fin(b), _fin(q)
        if row["base"] is None or row["quant"] is None:
            row["test"] = f"none (needs at least {kw['ranges']} examples){note}"
            out.append(row)
            continue
        row["diff"] = q - b
        db, dq = np.concatenate(dists[f"b_{name}"]), np.concatenate(dists[f"q_{name}"])
        dist = dq - db
        fin = dist[np.isfinite(dist)]
        if fin.size:
            row["pct_low"] = float(np.quantile(fin, (1 - cfg.confidence) / 2))
            row["pct_high"] = float(np.quantile(fin, 1 - (1 - cfg.confidence) / 2))
        _set_interval(row, dist, cfg)
        for side, dd in (("base", db), ("quant", dq)):
            iv = interval_p(dd, confidence=cfg.confidence, tested=False)
            row[f"{side}_low"], row[f"{side}_high"] = _fin(iv.low), _fin(iv.high)
        if note:
            row["test"] = (row["test"] or BOOT_TEST) + note
        out.append(row)
    return out


def _flip_rows(j: pl.DataFrame, cfg: StatsConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flip rates with Wilson intervals (descriptive: 0 for identical models); McNemar's exact
    test of "accuracy unchanged" on the discordant pairs goes to ``p_mcnemar`` of the flips and
    acc rows (the acc row's own p is its bootstrap p)."""
    bc, qc = _col(j, "base_correct"), _col(j, "quant_correct")
    if bc is None or qc is None:
        return []
    ok = np.isfinite(bc) & np.isfinite(qc)
    n = int(ok.sum())
    if n == 0:
        return []
    b = int(((bc == 1) & (qc == 0) & ok).sum())
    c = int(((bc == 0) & (qc == 1) & ok).sum())
    bp, qp = _col(j, "base_pred"), _col(j, "quant_pred")
    changed = int(((bp != qp) & ok).sum()) if bp is not None else 0
    mc = stats.mcnemar(b, c)
    for r in rows:
        if r["metric"] == "acc":
            r["p_mcnemar"], r["p_mid"] = mc.p_exact, mc.p_mid
    counts = {"flips": b + c, "flips_c2i": b, "flips_i2c": c, "changed_answer": changed}
    lo, hi = stats.wilson(list(counts.values()), [n] * 4, cfg.confidence)
    out = []
    for i, (metric, k) in enumerate(counts.items()):
        row = _nan_row(metric, "flip", n)
        row["diff"] = k / n
        row["ci_low"], row["ci_high"], row["ci_method"] = float(lo[i]), float(hi[i]), "wilson"
        row["test"] = NO_TEST
        if metric == "flips":
            row["p_mcnemar"], row["p_mid"] = mc.p_exact, mc.p_mid
        out.append(row)
    return out


# ---------------------------------------------------------------------------
# strata

# per-example shifts averaged per stratum (column, examples-table source)
STRATA_SHIFTS = ("delta_acc", "delta_conf", "abs_delta_conf", "delta_p_gold", "choice_js", "mean_kl")


_STRATA_FLOATS = (*(f"{n}{s}" for n in STRATA_SHIFTS for s in ("", "_low", "_high")), "flip_rate",
                  "flip_ci_low", "flip_ci_high", "c2i_rate", "i2c_rate", "changed_rate", "base_acc", "quant_acc",
                  "base_ece", "quant_ece", "delta_ece")


def strata_edges(v: np.ndarray, n_strata: int) -> np.ndarray:
    """Quantile edges of ``n_strata`` equal-count strata (equal values share a stratum)."""
    k = max(1, min(int(n_strata), v.size))
    return np.quantile(v, np.linspace(0, 1, k + 1)[1:-1]) if k > 1 else np.array([])


def assign_strata(v: np.ndarray, n_strata: int) -> np.ndarray:
    """Stratum index of each value: value == edge goes to the lower stratum."""
    return np.searchsorted(strata_edges(v, n_strata), v, side="left")


def _stratum_values(sub: pl.DataFrame) -> dict[str, np.ndarray | None]:
    def g(c: str) -> np.ndarray | None:
        return _col(sub, c)

    bconf, qconf = g("base_conf"), g("quant_conf")
    bc, qc = g("base_correct"), g("quant_correct")
    bp, qp = g("base_p_gold"), g("quant_p_gold")
    dconf = None if bconf is None or qconf is None else qconf - bconf
    return {"delta_acc": None if bc is None or qc is None else qc - bc,
            "delta_conf": dconf, "abs_delta_conf": None if dconf is None else np.abs(dconf),
            "delta_p_gold": None if bp is None or qp is None else qp - bp,
            "choice_js": g("choice_js"), "mean_kl": g("kl_all_mean")}


def strata_rows(j: pl.DataFrame, cfg: StatsConfig, by: str = "confidence", n_strata: int = 5) -> pl.DataFrame:
    """Examples binned by the base model's confidence (or choice entropy) into
    ``n_strata`` equal-count strata; per stratum the mean of each shift with a
    bootstrap interval (the shared draw within the stratum), flip rates with
    Wilson intervals and the ECE of each model."""
    col = {"confidence": "base_conf", "entropy": "base_entropy"}.get(by)
    if col is None:
        raise ValueError(f"strata: expected 'confidence' or 'entropy', got {by!r}")
    tk = _task_kind(j)
    v = j[col].cast(pl.Float64).to_numpy()
    ok = np.isfinite(v) & np.isfinite(j["quant_conf"].cast(pl.Float64).to_numpy())
    out: list[dict[str, Any]] = []
    if not ok.any():
        return pl.DataFrame()
    jj = j.filter(pl.Series(ok))
    v = v[ok]
    if by == "entropy" and cfg.entropy_unit == "bits":
        v = v / math.log(2.0)
    s = assign_strata(v, n_strata)
    for b in range(int(s.max()) + 1):
        m = s == b
        n = int(m.sum())
        if n == 0:
            continue
        sub = jj.filter(pl.Series(m))
        r: dict[str, Any] = {"stratum": b, "by": by, "lo": float(v[m].min()), "hi": float(v[m].max()), "n": n}
        r.update(dict.fromkeys(_STRATA_FLOATS))
        vals = _stratum_values(sub)
        if not tk.correctness:
            for k in ("delta_acc", "delta_p_gold"):
                vals[k] = None
        specs, names = [], []
        for name in STRATA_SHIFTS:
            x = vals.get(name)
            if x is not None and np.isfinite(x).all():
                specs.append(stats.MeanDiff(x))
                names.append(name)
        if specs:
            res = stats.paired_bootstrap(specs, resamples=cfg.resamples, seed=cfg.seed, confidence=cfg.confidence,
                                         threads=cfg.threads, keep_distribution=True)
            for name, rr in zip(names, res):
                method = choose_method("mean", n, rr.z0, rr.accel)
                iv = interval_p(rr.distribution, confidence=cfg.confidence, method=method, z0=rr.z0,
                                accel=rr.accel, tested=False)
                r[name], r[f"{name}_low"], r[f"{name}_high"] = rr.estimate, _fin(iv.low), _fin(iv.high)
        if tk.correctness:
            bc, qc = sub["base_correct"].to_numpy(), sub["quant_correct"].to_numpy()
            c2i = int(((bc == 1) & (qc == 0)).sum())
            i2c = int(((bc == 0) & (qc == 1)).sum())
            changed = int((sub["base_pred"].to_numpy() != sub["quant_pred"].to_numpy()).sum())
            lo, hi = stats.wilson([c2i + i2c], [n], cfg.confidence)
            bconf = np.clip(sub["base_conf"].to_numpy(), 0, 1)
            qconf = np.clip(sub["quant_conf"].to_numpy(), 0, 1)
            eb = calibration(bconf, bc, bins=cfg.bins_for("ece"), binning=cfg.binning).ece
            eq = calibration(qconf, qc, bins=cfg.bins_for("ece"), binning=cfg.binning).ece
            r.update({"flip_rate": (c2i + i2c) / n, "flip_ci_low": float(lo[0]), "flip_ci_high": float(hi[0]),
                      "c2i_rate": c2i / n, "i2c_rate": i2c / n, "changed_rate": changed / n,
                      "base_acc": float(bc.mean()), "quant_acc": float(qc.mean()),
                      "base_ece": eb, "quant_ece": eq, "delta_ece": eq - eb})
        out.append(r)
    return pl.DataFrame(out, schema_overrides=dict.fromkeys(_STRATA_FLOATS, pl.Float64))


def calibration_rows(conf: np.ndarray, correct: np.ndarray, bins: int, confidence: float = 0.95,
                     reliability_bins: int | None = None) -> pl.DataFrame:
    """Reliability-diagram bins under three binnings: ``width`` and ``mass`` with ``bins``
    bins, and ``auto`` (equal-mass, about ten examples per bin: what the report draws).
    Each bin has a Wilson interval of its accuracy (``acc_low``, ``acc_high``)."""
    ok = np.isfinite(conf) & np.isfinite(correct)
    parts = []
    n = int(ok.sum())
    for bn, k, binning in (("width", bins, "width"), ("mass", bins, "mass"),
                           ("auto", auto_bins(n, reliability_bins or bins), "mass")):
        if not ok.any():
            continue
        r = calibration(np.clip(conf[ok], 0, 1), correct[ok], bins=k, binning=binning)
        t = r.bins
        hits = np.rint(np.nan_to_num(t["acc_mean"].to_numpy()) * t["n"].to_numpy()).astype(np.int64)
        lo, hi = stats.wilson(hits, t["n"].to_numpy(), confidence)
        nn = t["n"].to_numpy()
        parts.append(t.with_columns(pl.lit(bn).alias("binning"),
                                    pl.Series("acc_low", np.where(nn > 0, lo, np.nan)),
                                    pl.Series("acc_high", np.where(nn > 0, hi, np.nan))))
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts, how="vertical")
