"""The study's claim as a tested statistic: are the predictive distributions of
the base and the quantized model further apart where the base model was
uncertain?

For one task and one quantized model, every pair (uncertainty u, shift s) of
the lists below gives two summary rows (kind ``uncertainty``, or
``uncertainty_token`` at token level):

- ``spearman(u,s)``: Spearman's rank correlation of u and s over examples
  (positive: larger shifts where the base model was more uncertain), with a
  percentile bootstrap interval over examples on the summary's shared draw;
  ``p`` inverts that interval, ``p_perm`` is the permutation test of no
  association (pairings permuted);
- ``strata_diff(u,s)``: mean s in the most uncertain stratum minus mean s in
  the least uncertain one (``n_strata`` equal-count strata of u, as the strata
  table), with its bootstrap interval, ``p`` from it, and a two-sample
  permutation ``p_perm``.

Uncertainties: ``entropy`` (the base model's choice entropy) and ``1-conf``
(one minus its confidence). Shifts per example: ``abs_dconf`` = |Δconfidence|,
``abs_dp_gold`` = |Δp(gold)|, ``choice_js`` = the Jensen–Shannon distance
between the two choice distributions, ``kl_all_mean`` = mean token KL(P‖Q) of
the example, ``flip`` = its correctness changed (the gold-based shifts only
for task kinds with gold answers).

At token level (dump kinds that store rows): u = ``entropy_p`` or
``1-maxprob_p`` of a row, s = ``kl_pq`` (vocabulary-wide), ``abs_delta_p`` =
|q[y] − p[y]|, ``top1_change`` = the most likely token changed. Rows of one
example are not independent, so the bootstrap resamples examples (a row
carries its example's multiplicity) and there is no permutation p.

A correlation that is undefined (u or s constant) or a single stratum gives
no row, and a note says why.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from qfair.analyze.intervals import interval_p
from qfair.metrics.resampling import (
    mean_diff_permutation,
    spearman,
    spearman_bootstrap,
    spearman_permutations,
    weighted_sums,
)

__all__ = ["uncertainty_rows", "token_uncertainty_rows", "EXAMPLE_UNCERTAINTIES", "EXAMPLE_SHIFTS",
           "TOKEN_UNCERTAINTIES", "TOKEN_SHIFTS", "TOKEN_WORK"]

Getter = Callable[[pl.DataFrame], "np.ndarray | None"]


def _c(df: pl.DataFrame, name: str) -> np.ndarray | None:
    return df[name].cast(pl.Float64).to_numpy() if name in df.columns else None


def _absdiff(a: str, b: str) -> Getter:
    def f(df: pl.DataFrame) -> np.ndarray | None:
        x, y = _c(df, a), _c(df, b)
        return None if x is None or y is None else np.abs(y - x)
    return f


def _one_minus(a: str) -> Getter:
    def f(df: pl.DataFrame) -> np.ndarray | None:
        x = _c(df, a)
        return None if x is None else 1.0 - x
    return f


def _plain(a: str) -> Getter:
    return lambda df: _c(df, a)


# (name, getter, needs a gold answer)
EXAMPLE_UNCERTAINTIES: tuple[tuple[str, Getter], ...] = (
    ("entropy", _plain("base_entropy")), ("1-conf", _one_minus("base_conf")))
EXAMPLE_SHIFTS: tuple[tuple[str, Getter, bool], ...] = (
    ("abs_dconf", _absdiff("base_conf", "quant_conf"), False),
    ("abs_dp_gold", _absdiff("base_p_gold", "quant_p_gold"), True),
    ("choice_js", _plain("choice_js"), False),
    ("kl_all_mean", _plain("kl_all_mean"), False),
    ("flip", _plain("flip"), True))
TOKEN_UNCERTAINTIES: tuple[tuple[str, Getter], ...] = (
    ("entropy_p", _plain("entropy_p")), ("1-maxprob_p", _one_minus("maxprob_p")))
TOKEN_SHIFTS: tuple[tuple[str, Getter, bool], ...] = (
    ("kl_pq", _plain("kl_pq"), False),
    ("abs_delta_p", lambda df: None if "delta_p" not in df.columns else np.abs(_c(df, "delta_p")), False),
    ("top1_change", _one_minus("top1_agree"), False))

# token-level bootstrap work budget (resamples x rows): beyond it the resamples are reduced
TOKEN_WORK = 400_000_000


def _row(metric: str, kind: str, n: int) -> dict[str, Any]:
    from qfair.analyze.summary import SUMMARY_SCHEMA

    row = dict.fromkeys(SUMMARY_SCHEMA)
    row.update(metric=metric, kind=kind, n=n)
    return row


def _fill(row: dict[str, Any], dist: np.ndarray, cfg: Any, test: str) -> None:
    r = interval_p(dist, confidence=cfg.confidence, method="percentile")
    if r.resamples == 0:
        row["test"] = "none (no finite resample)"
        return
    fin = np.sort(dist[np.isfinite(dist)])
    a = (1 - cfg.confidence) / 2
    row["pct_low"], row["pct_high"] = float(np.quantile(fin, a)), float(np.quantile(fin, 1 - a))
    row["ci_low"], row["ci_high"], row["ci_method"] = r.low, r.high, "percentile"
    if row["n"] >= 2:
        row["p"], row["null"], row["test"] = r.p, 0.0, test


def _strata(u: np.ndarray, k: int) -> np.ndarray:
    from qfair.analyze.summary import assign_strata

    return assign_strata(u, k)


def _groups(u: np.ndarray, shifts: list[tuple[str, np.ndarray]]) -> list[tuple[np.ndarray, list[tuple[str, np.ndarray]]]]:
    """Shifts grouped by their finite mask (with u): one bootstrap pass per group."""
    out: dict[bytes, tuple[np.ndarray, list[tuple[str, np.ndarray]]]] = {}
    for name, v in shifts:
        ok = np.isfinite(u) & np.isfinite(v)
        if ok.any():
            out.setdefault(ok.tobytes(), (ok, []))[1].append((name, v))
    return list(out.values())


def uncertainty_rows(j: pl.DataFrame, cfg: Any, correctness: bool, where: str) -> tuple[list[dict[str, Any]],
                                                                                        list[str]]:
    """Example-level rows (and notes) for one task of one quantized model."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for uname, ug in EXAMPLE_UNCERTAINTIES:
        u = ug(j)
        if u is None:
            continue
        shifts = [(sname, v) for sname, sg, gold in EXAMPLE_SHIFTS
                  if (correctness or not gold) and (v := sg(j)) is not None]
        for ok, group in _groups(u, shifts):
            rows += _pair_rows(u[ok], [(n, v[ok]) for n, v in group], uname, "uncertainty", cfg, notes, where,
                               permutation=cfg.permutation)
    return rows, notes


def _pair_rows(u: np.ndarray, shifts: list[tuple[str, np.ndarray]], uname: str, kind: str, cfg: Any,
               notes: list[str], where: str, *, permutation: bool, clusters: np.ndarray | None = None,
               n_clusters: int | None = None, resamples: int | None = None) -> list[dict[str, Any]]:
    """The spearman and strata_diff rows of one uncertainty against shifts over the same units."""
    n = int(u.size if clusters is None else n_clusters)
    B = int(resamples or cfg.resamples)
    unit = "rows" if clusters is not None else "examples"
    rhos = [spearman(u, v) for _, v in shifts]
    defined = [i for i, r in enumerate(rhos) if math.isfinite(r)]
    dists = {}
    if defined:
        ys = np.stack([shifts[i][1] for i in defined])
        boot = spearman_bootstrap(u, ys, seed=cfg.seed, resamples=B, clusters=clusters, n_clusters=n_clusters,
                                  threads=cfg.threads)
        dists = {i: boot[k] for k, i in enumerate(defined)}
    st = _strata(u, cfg.n_strata)
    top = int(st.max())
    mt, mb = st == top, st == 0
    if top == 0:
        notes.append(f"{where}: strata_diff({uname},·) undefined (one stratum of {uname} over {u.size} {unit}); "
                     "no row")
    sums_all = None
    if top > 0:
        # the four stratum sums of every shift in one pass over the shared draw (the core's
        # weighted sums: the same bits at any thread count and on every instruction set)
        cols = np.concatenate([np.column_stack([mt, s * mt, mb, s * mb]) for _, s in shifts],
                              axis=1).astype(np.float64)
        if clusters is not None:
            agg = np.zeros((n, cols.shape[1]))
            np.add.at(agg, clusters, cols)
            cols = agg
        sums_all = weighted_sums(cols, seed=cfg.seed, resamples=B, threads=cfg.threads)
    pending: list[tuple[dict[str, Any], np.ndarray]] = []   # spearman rows awaiting their permutation p
    out = []
    for i, (sname, s) in enumerate(shifts):
        label = f"{uname},{sname}"
        if i not in dists:
            what = "the uncertainty" if np.all(u == u[0]) else "the shift"
            notes.append(f"{where}: spearman({label}) undefined ({what} is constant over {u.size} {unit}); no row")
        else:
            row = _row(f"spearman({label})", kind, n)
            row["diff"] = rhos[i]
            _fill(row, dists[i], cfg, "bootstrap (percentile), Spearman")
            if permutation and clusters is None and row["p"] is not None:
                pending.append((row, s))
            out.append(row)
        if top == 0:
            continue
        row = _row(f"strata_diff({label})", kind, n)
        row["diff"] = float(s[mt].mean() - s[mb].mean())
        sums = sums_all[:, 4 * i:4 * i + 4]
        with np.errstate(invalid="ignore", divide="ignore"):
            dist = sums[:, 1] / sums[:, 0] - sums[:, 3] / sums[:, 2]
        _fill(row, dist, cfg, "bootstrap (percentile), top minus bottom stratum")
        if permutation and clusters is None and row["p"] is not None:
            row["p_perm"] = mean_diff_permutation(s[mt], s[mb], seed=cfg.seed, resamples=B,
                                                  threads=cfg.threads)
        out.append(row)
    if pending:
        # one set of random pairings for every shift (each p as it is alone)
        ps = spearman_permutations(u, [s for _, s in pending], seed=cfg.seed, resamples=B, threads=cfg.threads)
        for (row, _), p in zip(pending, ps):
            row["p_perm"] = p
    return out


def token_uncertainty_rows(tokens: pl.DataFrame, cfg: Any, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Token-level rows (and notes) for one task of one quantized model: rows of the token
    table, bootstrap over examples."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if tokens.height == 0 or "example_id" not in tokens.columns:
        return rows, notes
    _, clusters = np.unique(tokens["example_id"].to_numpy().astype(str), return_inverse=True)
    for uname, ug in TOKEN_UNCERTAINTIES:
        u = ug(tokens)
        if u is None:
            continue
        shifts = [(sname, v) for sname, sg, _ in TOKEN_SHIFTS if (v := sg(tokens)) is not None]
        for ok, group in _groups(u, shifts):
            _, cl = np.unique(clusters[ok], return_inverse=True)
            nc = int(cl.max()) + 1
            n_rows = int(ok.sum())
            B = int(min(cfg.resamples, max(1000, TOKEN_WORK // max(1, n_rows * (1 + len(group))))))
            if B < cfg.resamples:
                notes.append(f"{where}: token-level {uname} bootstrap over {B} resamples (not {cfg.resamples}): "
                             f"{n_rows:,} token rows")
            rows += _pair_rows(u[ok], [(n, v[ok]) for n, v in group], uname, "uncertainty_token", cfg, notes, where,
                               permutation=False, clusters=cl, n_clusters=nc, resamples=B)
    return rows, notes
