"""Text-level comparisons of two continuations of one prompt (definitions in
docs/metrics.md, "Generation").

Token-level measures work on the model's token ids (language-agnostic, also
for Chinese); chrF works on the decoded text. Edit distance is rapidfuzz's
Levenshtein, chrF is sacrebleu's (character 6-grams, beta 2, 0-100).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["first_divergence", "identical_prefix", "survival", "edit_distance_norm", "chrf", "distinct_n",
           "repetition_rate"]


def identical_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens the two sequences share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where the sequences differ (a position
    present in one sequence only counts as different); None when identical."""
    k = identical_prefix(a, b)
    if k == len(a) == len(b):
        return None
    return k


def survival(first_div: Sequence[int | None], t_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Share curve of pairs still identical after t tokens, t = 0..t_max:
    ``S(t) = #{first divergence >= t or identical} / n``. Returns (k, n) counts
    per t, so that each point can carry a Wilson interval."""
    fd = np.array([np.inf if f is None else float(f) for f in first_div], dtype=np.float64)
    t = np.arange(t_max + 1, dtype=np.float64)
    k = (fd[None, :] >= t[:, None]).sum(axis=1).astype(np.int64)
    return k, np.full(t.size, fd.size, dtype=np.int64)


def edit_distance_norm(a: Sequence[int], b: Sequence[int]) -> float:
    """Token Levenshtein distance divided by the longer length (0: identical,
    1: nothing in common); 0 for two empty sequences."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(list(a), list(b)))


_CHRF = None


def chrf(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence-level chrF (0-100) of ``hypothesis`` against ``reference``."""
    global _CHRF
    if _CHRF is None:
        from sacrebleu.metrics import CHRF

        _CHRF = CHRF()
    return float(_CHRF.sentence_score(hypothesis, [reference]).score)


def distinct_n(ids: Sequence[int], n: int) -> float:
    """Distinct n-grams / n-grams of one sequence (NaN when it has no n-gram)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return float("nan")
    return len(set(grams)) / len(grams)


def repetition_rate(ids: Sequence[int], n: int = 4) -> float:
    """Share of the sequence's n-grams that repeat an earlier n-gram of it
    (seq-rep-n of Welleck et al. 2019; = 1 - distinct-n). NaN without n-grams."""
    d = distinct_n(ids, n)
    return d if np.isnan(d) else 1.0 - d
