"""Example-level metrics: one registry entry per metric.

An :class:`ExampleMetric` says how a per-example value is computed from one
model's choice log-likelihoods (vectorised over all examples, from a
:class:`ChoiceArrays`), which column holds it in the examples table
(``base_<column>`` / ``quant_<column>``), how it is named in the summary and
how base and quantized values are compared there (the paired bootstrap of the
mean difference). Task kinds (:mod:`qfair.metrics.task_kinds`) list which
metrics they report; metrics every multiple-choice task has are in
:data:`GENERIC`.

Definitions (natural logs):

- choice distribution: softmax over the choices' summed log-likelihoods (no
  length normalisation); prediction = its first argmax; confidence = its max;
- acc = 1[pred = gold]; acc_norm: the argmax of loglik / length in characters;
- p_gold = p(gold); nll = -log p(gold); brier = sum_k (p_k - 1[k = gold])^2;
  choice_entropy = -sum_k p_k log p_k.

Some tasks accept several choices as correct (lm-evaluation-harness's BBQ
counts each of its ten "unknown" strings as right when the answer is unknown).
Their task kind names a bit of the per-choice label codes (:data:`ACCEPT_BITS`);
then "gold" is that set A: acc = 1[pred in A], p_gold = sum_{k in A} p_k,
nll = -log p_gold, brier = (p_gold - 1)^2 + sum_{k not in A} p_k^2 (the Brier
score of the distribution with A merged into one outcome). With one accepted
choice these are the definitions above.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["ChoiceArrays", "ExampleMetric", "GENERIC", "segment_first_argmax", "ACCEPT_BITS"]

# task kind -> the bit of an example's per-choice label codes that marks a choice
# counted as correct (filled in by qfair.metrics.task_kinds.register_task_kind)
ACCEPT_BITS: dict[str, int] = {}


@dataclass
class ChoiceArrays:
    """One model's choices, flattened in example order (choices of an example
    contiguous, in choice order), with the choice distribution computed once."""

    ll: np.ndarray          # float64 [n_choices_total] summed log-likelihoods as stored
    nchars: np.ndarray      # float64 length of each choice in characters
    starts: np.ndarray      # int64 [n_examples] first choice of each example
    counts: np.ndarray      # int64 [n_examples] number of choices
    seg: np.ndarray         # int64 [n_choices_total] example of each choice
    local: np.ndarray       # int64 [n_choices_total] choice index within its example
    label: np.ndarray       # int64 [n_examples] gold choice
    labels: list            # per example: list of 0/1 (truthfulqa_mc2) or None
    kind: np.ndarray        # object [n_examples] task kind name
    p: np.ndarray           # float64 choice distribution
    logp: np.ndarray        # float64 log of it
    bad: np.ndarray         # bool [n_examples] some log-likelihood is not finite
    ntok: np.ndarray | None = None     # float64 [n_choices_total] continuation tokens per choice, if known
    accept: np.ndarray | None = None   # bool [n_choices_total] choices counted as correct (None: the gold one)
    multi: np.ndarray | None = None    # bool [n_examples] more than one choice is accepted

    @classmethod
    def build(cls, ll: np.ndarray, nchars: np.ndarray, counts: np.ndarray, label: np.ndarray,
              labels: list, kind: np.ndarray, ntok: np.ndarray | None = None) -> ChoiceArrays:
        counts = counts.astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        seg = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
        local = np.arange(ll.size, dtype=np.int64) - starts[seg]
        nonfinite = ~np.isfinite(ll)
        ll_safe = np.where(nonfinite, -np.inf, ll)
        mx = np.maximum.reduceat(ll_safe, starts) if ll.size else np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):  # an all -inf example: NaN, flagged bad
            sh = ll_safe - mx[seg]
            e = np.exp(sh)
            z = np.add.reduceat(e, starts) if ll.size else np.zeros(0)
            p, logp = e / z[seg], sh - np.log(z)[seg]
        bad = (np.add.reduceat(nonfinite.astype(np.int64), starts) > 0) if ll.size else np.zeros(0, bool)
        accept = multi = None
        coded = [i for i, k in enumerate(kind) if ACCEPT_BITS.get(k) and labels[i] is not None]
        if coded:
            accept = local == label.astype(np.int64)[seg]
            for i in coded:
                codes = np.asarray(labels[i], dtype=np.int64)
                if codes.size == counts[i]:
                    accept[starts[i]:starts[i] + counts[i]] = (codes & ACCEPT_BITS[kind[i]]) != 0
            multi = np.add.reduceat(accept.astype(np.int64), starts) > 1
            if not multi.any():
                accept = multi = None
        return cls(ll=ll, nchars=nchars, starts=starts, counts=counts, seg=seg, local=local,
                   label=label.astype(np.int64), labels=labels, kind=kind, p=p, logp=logp, bad=bad,
                   ntok=None if ntok is None else np.asarray(ntok, dtype=np.float64), accept=accept, multi=multi)

    @property
    def ll_safe(self) -> np.ndarray:
        return np.where(np.isfinite(self.ll), self.ll, -np.inf)

    @property
    def gold_index(self) -> np.ndarray:
        return self.starts + self.label

    def reduce_sum(self, values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, self.starts)

    def reduce_max(self, values: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(values, self.starts)


def segment_first_argmax(a: ChoiceArrays, values: np.ndarray) -> np.ndarray:
    """Per example, the first choice index holding the maximum of ``values``."""
    is_max = values == a.reduce_max(values)[a.seg]
    big = np.iinfo(np.int64).max
    return np.minimum.reduceat(np.where(is_max, a.local, big), a.starts)


@dataclass(frozen=True)
class ExampleMetric:
    """One per-example metric (see the module doc)."""

    name: str                                   # in the summary, e.g. "acc"
    column: str                                 # in the examples table, e.g. "correct"
    compute: Callable[[ChoiceArrays], np.ndarray]
    summary: bool = True                        # compared base vs quantized in the summary
    nan_when_bad: bool = True                   # NaN for examples with a non-finite log-likelihood
    direction: int = 0                          # +1 higher is better, -1 lower is better, 0 neither
    neutral: float | None = None                # the value of an unbiased model, where one exists
    gold: bool = False                          # needs a gold answer (left out for kinds without one)
    doc: str = ""


def _pred(a: ChoiceArrays) -> np.ndarray:
    return segment_first_argmax(a, a.ll_safe)


def _pred_norm(a: ChoiceArrays) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        normed = a.ll_safe / a.nchars
    return segment_first_argmax(a, np.where(np.isnan(normed), -np.inf, normed))


def _correct(a: ChoiceArrays, pred: np.ndarray) -> np.ndarray:
    out = (pred == a.label).astype(np.float64)
    if a.accept is not None:
        i = np.flatnonzero(a.multi)
        out[i] = a.accept[a.starts[i] + pred[i]].astype(np.float64)
    return out


def _p_gold(a: ChoiceArrays) -> np.ndarray:
    out = a.p[a.gold_index]
    if a.accept is not None:
        out = np.where(a.multi, a.reduce_sum(np.where(a.accept, a.p, 0.0)), out)
    return out


def _nll(a: ChoiceArrays) -> np.ndarray:
    out = -a.logp[a.gold_index]
    if a.accept is not None:
        with np.errstate(divide="ignore"):
            out = np.where(a.multi, -np.log(_p_gold(a)), out)
    return out


def _brier(a: ChoiceArrays) -> np.ndarray:
    onehot = (a.local == a.label[a.seg]).astype(np.float64)
    out = a.reduce_sum((a.p - onehot) ** 2)
    if a.accept is not None:
        merged = (_p_gold(a) - 1.0) ** 2 + a.reduce_sum(np.where(a.accept, 0.0, a.p ** 2))
        out = np.where(a.multi, merged, out)
    return out


def _entropy(a: ChoiceArrays) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a.p > 0, -a.p * a.logp, 0.0)
    return a.reduce_sum(terms)


GENERIC: tuple[ExampleMetric, ...] = (
    ExampleMetric("pred", "pred", lambda a: _pred(a).astype(np.float64), summary=False, nan_when_bad=False,
                  doc="predicted choice: the first argmax of the log-likelihoods"),
    ExampleMetric("pred_norm", "pred_norm", lambda a: _pred_norm(a).astype(np.float64), summary=False,
                  nan_when_bad=False, doc="prediction under acc_norm (log-likelihood per character)"),
    ExampleMetric("acc", "correct", lambda a: _correct(a, _pred(a)), gold=True, direction=+1,
                  doc="1 when the predicted choice is the gold one (or one of the accepted ones)"),
    ExampleMetric("acc_norm", "correct_norm", lambda a: _correct(a, _pred_norm(a)), gold=True,
                  direction=+1, doc="acc with log-likelihoods divided by the choice's length in characters"),
    ExampleMetric("confidence", "conf", lambda a: a.reduce_max(a.p),
                  doc="the largest probability of the choice distribution"),
    ExampleMetric("p_gold", "p_gold", _p_gold, gold=True, direction=+1,
                  doc="probability of the gold choice (of the accepted choices together)"),
    ExampleMetric("nll", "nll", _nll, gold=True, direction=-1,
                  doc="negative log probability of the gold choice (of the accepted choices together)"),
    ExampleMetric("brier", "brier", _brier, gold=True, direction=-1,
                  doc="squared distance of the choice distribution to the one-hot gold (range [0, 2])"),
    ExampleMetric("choice_entropy", "entropy", _entropy,
                  doc="entropy of the choice distribution (nats)"),
)
