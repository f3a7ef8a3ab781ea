"""lm-evaluation-harness's multiple-choice rules, written out in the tests as
oracles (independent of qfair's vectorised implementation in
qfair.metrics.example_metrics / task_kinds): per example, from its choices'
log-likelihoods."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def acc(logliks: Sequence[float], gold: int) -> float:
    """1.0 when the first maximal log-likelihood is the gold choice (np.argmax: first maximum)."""
    return 1.0 if int(np.argmax(np.asarray(logliks, dtype=np.float64))) == int(gold) else 0.0


def acc_norm(logliks: Sequence[float], choices: Sequence[str], gold: int) -> float:
    """acc on loglik / (choice length in unicode code points)."""
    lens = np.array([float(len(c)) for c in choices])
    with np.errstate(divide="ignore", invalid="ignore"):
        normed = np.asarray(logliks, dtype=np.float64) / lens
    return 1.0 if int(np.argmax(normed)) == int(gold) else 0.0


def mc2(logliks: Sequence[float], labels: Sequence[int]) -> float:
    """lm-eval's truthfulqa mc2: exp(ll) of the true choices over exp(ll) of all."""
    ll = np.asarray(logliks, dtype=np.float64)
    lab = np.asarray(labels, dtype=bool)
    p = np.exp(ll - ll.max())
    return float(p[lab].sum() / p.sum())
