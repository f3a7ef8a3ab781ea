"""The example-metric registry (qfair.metrics.example_metrics, qfair.metrics.task_kinds)
on hand-computed cases: lm-evaluation-harness's rules for acc, acc_norm and
mc2, CrowS-Pairs' pct_stereotype and likelihood_diff, and the registry's rules."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qfair.metrics.example_metrics import GENERIC, ChoiceArrays
from qfair.metrics.task_kinds import (
    TASK_KINDS,
    TaskKind,
    example_metrics,
    get_task_kind,
    register_task_kind,
)


def _metric(name: str, lls, gold: int = 0, choices=None, labels=None, kind: str = "multiple_choice") -> float:
    """One example through the registry's vectorised implementation."""
    n = len(lls)
    nchars = np.array([float(len(c)) for c in choices]) if choices is not None else np.ones(n)
    a = ChoiceArrays.build(np.asarray(lls, dtype=np.float64), nchars, np.array([n]), np.array([gold]),
                           [labels], np.array([kind], dtype=object))
    return float(get_task_kind(kind).metric(name).compute(a)[0])


def acc(lls, gold):
    return _metric("acc", lls, gold)


def acc_norm(lls, choices, gold):
    return _metric("acc_norm", lls, gold, choices=choices)


def mc2(lls, labels):
    return _metric("mc2", list(lls), 0, labels=list(labels), kind="mc2")


def test_acc_ties_go_to_first_index():
    assert acc([-1.0, -1.0, -3.0], 0) == 1.0
    assert acc([-1.0, -1.0, -3.0], 1) == 0.0
    assert acc([-5.0, -2.0, -2.0], 2) == 0.0


def test_acc_norm_divides_by_code_points_not_bytes_or_tokens():
    # "é" is 1 code point but 2 UTF-8 bytes; "東京" 2 code points, 6 bytes.
    # by code points: -2/1 = -2 vs -5/2 = -2.5 -> choice 0 wins
    # by bytes:       -2/2 = -1 vs -5/6 = -0.83 -> choice 1 would win
    lls, choices = [-2.0, -5.0], ["é", "東京"]
    assert acc_norm(lls, choices, 0) == 1.0
    assert acc_norm(lls, choices, 1) == 0.0
    # raw acc on the same example
    assert acc(lls, 0) == 1.0
    # length normalisation flips the answer: -6/3 = -2 beats -4/1 = -4
    assert acc([-6.0, -4.0], 1) == 1.0
    assert acc_norm([-6.0, -4.0], ["abc", "d"], 0) == 1.0
    # ties after normalisation -> first index
    assert acc_norm([-2.0, -4.0], ["a", "bc"], 0) == 1.0


def test_mc2_matches_direct_formula():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = rng.integers(2, 10)
        ll = rng.normal(-20, 8, n)
        labels = (rng.random(n) < 0.4).astype(int)
        labels[0] = 1
        p = np.exp(ll.astype(np.longdouble))
        want = float(p[labels == 1].sum() / p.sum())
        assert abs(mc2(ll, labels) - want) < 1e-12
    # extreme values do not underflow to 0/0
    assert abs(mc2([-2000.0, -2001.0], [1, 0]) - 1 / (1 + math.exp(-1))) < 1e-12


def test_crows_pairs_metrics():
    assert _metric("pct_stereotype", [-3.0, -4.0], kind="crows_pairs") == 1.0
    assert _metric("pct_stereotype", [-4.0, -3.0], kind="crows_pairs") == 0.0
    assert _metric("pct_stereotype", [-4.0, -4.0], kind="crows_pairs") == 0.0  # ties count 0
    assert _metric("likelihood_diff", [-4.0, -1.5], kind="crows_pairs") == 2.5
    # the metric is undefined (NaN) on an example of another kind
    a = ChoiceArrays.build(np.array([-3.0, -4.0]), np.ones(2), np.array([2]), np.array([0]), [None],
                           np.array(["multiple_choice"], dtype=object))
    assert math.isnan(get_task_kind("crows_pairs").metric("pct_stereotype").compute(a)[0])
    assert get_task_kind("multiple_choice").metric("pct_stereotype") is None


def test_generic_metrics_on_a_hand_computed_example():
    lls = [math.log(0.2), math.log(0.5), math.log(0.3)]
    assert _metric("confidence", lls, 2) == pytest.approx(0.5)
    assert _metric("p_gold", lls, 2) == pytest.approx(0.3)
    assert _metric("nll", lls, 2) == pytest.approx(-math.log(0.3))
    assert _metric("brier", lls, 2) == pytest.approx(0.2**2 + 0.5**2 + 0.7**2)
    assert _metric("choice_entropy", lls, 2) == pytest.approx(-sum(p * math.log(p) for p in (0.2, 0.5, 0.3)))


def test_registry_rules():
    names = [m.name for m in example_metrics()]
    assert len(names) == len(set(names))
    assert {"acc", "acc_norm", "mc2", "pct_stereotype", "likelihood_diff"} <= set(names)
    assert [m.name for m in GENERIC][:2] == ["pred", "pred_norm"]
    # an unknown kind falls back to plain multiple choice
    assert get_task_kind("no-such-kind").name == "multiple_choice"
    with pytest.raises(ValueError, match="registered twice"):
        register_task_kind(TaskKind("mc2"))
    with pytest.raises(ValueError, match="already defined"):
        register_task_kind(TaskKind("dupe", metrics=(GENERIC[2],)))
    assert "dupe" not in TASK_KINDS
    # every built-in task names a registered kind
    import qfair.tasks as T

    assert {T.spec(n).kind for n in T.names()} <= set(TASK_KINDS)
