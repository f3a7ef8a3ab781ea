"""Identity-group AUCs of a hateful/toxic-text classifier (Borkan et al. 2019,
"Nuanced Metrics for Measuring Unintended Bias with Real Data for Text
Classification", the metrics of Jigsaw's "Unintended Bias in Toxicity
Classification" competition).

Each example has a score s (qfair: P(hateful), the two label words' probability
normalised over the pair), a label y (1 = hateful) and the identity groups it
mentions. For an identity group g, with D the whole set and D_g the examples
mentioning g ("background": the examples that do not):

- overall AUC: the AUC over D;
- subgroup AUC: over D_g (hateful vs non-hateful texts about g);
- BPSN AUC (background positive, subgroup negative): over the hateful texts not
  mentioning g and the non-hateful texts mentioning g; low when the model
  scores innocuous mentions of g as hateful;
- BNSP AUC (background negative, subgroup positive): over the non-hateful texts
  not mentioning g and the hateful texts mentioning g; low when hateful texts
  about g score lower than innocuous background texts;
- final metric: 0.25 overall + 0.25 M_p(subgroup) + 0.25 M_p(BPSN) + 0.25 M_p(BNSP),
  M_p(a) = (mean_g a_g^p)^(1/p) with p = -5 (the generalized power mean, which
  weighs the worst groups most).

The AUC is the Mann-Whitney statistic with ties counted 1/2, which equals the
area under the ROC curve with average ranks for ties (sklearn.metrics.roc_auc_score).
An AUC whose slice lacks a class is undefined: NaN here, never 0.5.

Every function takes example weights ``w`` [m, n] (bootstrap multiplicities, or
ones for the data as it is): the AUC of a resample equals the weighted AUC,
sum over positive i and negative j of w_i w_j (1[s_i > s_j] + 1/2 1[s_i = s_j])
over (sum of positive weights)(sum of negative weights), so the scores are
sorted once and every resample is a few matrix sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["POWER", "WEIGHTS", "weighted_auc", "auc", "power_mean", "final_metric", "IdentityAucs",
           "identity_aucs"]

POWER = -5.0                             # Jigsaw's p of the generalized mean
WEIGHTS = (0.25, 0.25, 0.25, 0.25)       # overall, subgroup, BPSN, BNSP
BIAS_AUCS = ("subgroup_auc", "bpsn_auc", "bnsp_auc")


@dataclass
class _Sorted:
    """Scores sorted once: the order and the start of each run of equal scores."""

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def build(cls, scores: np.ndarray) -> _Sorted:
        order = np.argsort(scores, kind="stable")
        s = scores[order]
        starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]])) if s.size else np.zeros(0, np.int64)
        return cls(order, starts)


def _auc_sorted(srt: _Sorted, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """[m]: weighted AUC from positive and negative weights [m, n] already in score order."""
    if pos.shape[1] == 0:
        return np.full(pos.shape[0], np.nan)
    hp = np.add.reduceat(pos, srt.starts, axis=1)     # positive weight per run of tied scores
    hn = np.add.reduceat(neg, srt.starts, axis=1)
    below = np.cumsum(hn, axis=1) - hn                # negative weight strictly below each run
    num = (hp * (below + 0.5 * hn)).sum(axis=1)
    den = hp.sum(axis=1) * hn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_auc(scores: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """[m]: the AUC of ``scores`` for ``labels`` (1 positive, 0 negative) under each row of
    weights ``w`` [m, n] (default: one row of ones); NaN where a class has no weight."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    w = np.ones((1, s.size)) if w is None else np.atleast_2d(np.asarray(w, dtype=np.float64))
    srt = _Sorted.build(s)
    ws, ys = w[:, srt.order], y[srt.order]
    return _auc_sorted(srt, ws * ys, ws * ~ys)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The AUC of one set of examples (NaN when a class is absent)."""
    return float(weighted_auc(scores, labels)[0])


def power_mean(values: np.ndarray, p: float = POWER, axis: int = -1) -> np.ndarray:
    """(mean v^p)^(1/p) along ``axis``; NaN when a value is NaN; 0 when a value is 0 (p < 0)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        m = np.mean(np.power(v, p), axis=axis)
        return np.power(m, 1.0 / p)


def final_metric(overall: np.ndarray, subgroup: np.ndarray, bpsn: np.ndarray, bnsp: np.ndarray,
                 p: float = POWER, weights: tuple[float, float, float, float] = WEIGHTS) -> np.ndarray:
    """Jigsaw's final metric: w0 overall + sum_a w_a M_p(bias AUC a over groups); the
    bias AUCs are [..., groups], ``overall`` [...]."""
    w0, ws, wp, wn = weights
    return (w0 * np.asarray(overall) + ws * power_mean(subgroup, p) + wp * power_mean(bpsn, p)
            + wn * power_mean(bnsp, p))


@dataclass
class IdentityAucs:
    """One model's AUCs under each row of weights: overall [m], the rest [m, groups]."""

    overall: np.ndarray
    subgroup_auc: np.ndarray
    bpsn_auc: np.ndarray
    bnsp_auc: np.ndarray

    def final(self, groups: np.ndarray | None = None) -> np.ndarray:
        """The final metric over ``groups`` (a column index; default all)."""
        pick = (lambda a: a) if groups is None else (lambda a: a[:, groups])
        return final_metric(self.overall, pick(self.subgroup_auc), pick(self.bpsn_auc), pick(self.bnsp_auc))


def identity_aucs(scores: np.ndarray, labels: np.ndarray, members: np.ndarray,
                  w: np.ndarray | None = None) -> IdentityAucs:
    """Overall, subgroup, BPSN and BNSP AUCs of every group (``members`` [n, groups], True
    where an example mentions the group) under each row of weights ``w`` [m, n]."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    mem = np.asarray(members, dtype=bool).reshape(s.size, -1)
    w = np.ones((1, s.size)) if w is None else np.atleast_2d(np.asarray(w, dtype=np.float64))
    srt = _Sorted.build(s)
    ws, ys, ms = w[:, srt.order], y[srt.order], mem[srt.order]
    pos, neg = ws * ys, ws * ~ys
    out = {k: np.empty((w.shape[0], mem.shape[1])) for k in BIAS_AUCS}
    for g in range(mem.shape[1]):
        inside = ms[:, g]
        out["subgroup_auc"][:, g] = _auc_sorted(srt, pos * inside, neg * inside)
        out["bpsn_auc"][:, g] = _auc_sorted(srt, pos * ~inside, neg * inside)
        out["bnsp_auc"][:, g] = _auc_sorted(srt, pos * inside, neg * ~inside)
    return IdentityAucs(_auc_sorted(srt, pos, neg), **out)
