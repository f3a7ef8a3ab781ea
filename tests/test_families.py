"""Disparity across the members of a task family (XStoryCloze languages,
CrowS-Pairs en/fr): the spread against the summary's own per-task changes, the
bootstrap interval against numpy on the same draw, the permutation p against
scipy.stats.permutation_test's exact enumeration."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import permutation_test
from test_bias_scores import random_lls, write_dump

import qfair
import qfair.tasks as T
from qfair import stats
from qfair.analyze.families import family_members, spread_test


def spread(*samples):
    means = [np.mean(s) for s in samples]
    return max(means) - min(means)


def test_interval_equals_numpy_on_the_same_draw():
    r = np.random.default_rng(0)
    values = [r.integers(-1, 2, n).astype(float) for n in (22, 30, 17)]
    B = 300
    res = spread_test(values, resamples=B, seed=5, confidence=0.9)
    t = []
    for b in range(B):
        means = [v[np.repeat(np.arange(v.size), stats.bootstrap_counts(v.size, 5, b))].mean() for v in values]
        t.append(max(means) - min(means))
    assert res["spread"] == pytest.approx(spread(*values))
    assert res["ci_low"] == pytest.approx(np.percentile(t, 5)) and res["ci_high"] == pytest.approx(np.percentile(t, 95))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permutation_p_matches_scipy_exact(seed):
    r = np.random.default_rng(seed)
    values = [r.normal(d, 1, n) for d, n in ((0.0, 4), (0.8 * seed, 4), (0.0, 3))]
    exact = permutation_test(values, spread, permutation_type="independent", alternative="greater",
                             n_resamples=np.inf).pvalue
    B = 20000
    got = spread_test(values, resamples=B, seed=seed, confidence=0.95)["p"]
    assert abs(got - exact) <= 4 * np.sqrt(exact * (1 - exact) / B) + 2 / B


def test_equal_members_and_ties():
    same = [np.zeros(5), np.zeros(7)]                       # every change 0: spread 0, p = 1
    res = spread_test(same, resamples=200, seed=0, confidence=0.95)
    assert res["spread"] == 0 and res["p"] == 1 and res["ci_low"] == res["ci_high"] == 0


def test_families_need_two_members():
    assert family_members(["xstorycloze_en", "piqa"]) == {}
    assert family_members(["xstorycloze_en", "xstorycloze_sw", "crows_pairs_french"]) == {
        "xstorycloze": ["xstorycloze_en", "xstorycloze_sw"]}


def test_summary_rows_equal_the_members_own_changes(tmp_path: Path):
    names = ["xstorycloze_en", "xstorycloze_sw", "xstorycloze_my", "crows_pairs_english", "crows_pairs_french",
             "piqa"]
    docs = [d for n in names for d in T.get(n, limit=12).docs()]
    base = write_dump(tmp_path / "base", docs, random_lls(docs, 1))
    quant = write_dump(tmp_path / "q", docs, random_lls(docs, 2))
    cmp = qfair.compare(base, quant, bootstrap=200, seed=0, tokens=False)
    s = cmp.summary
    fam = s.filter(pl.col("kind") == "family")
    assert set(zip(fam["task"], fam["metric"])) == {("xstorycloze", "acc_change_spread"),
                                                    ("crows_pairs", "pct_stereotype_change_spread")}
    for family, metric, members in (("xstorycloze", "acc", names[:3]), ("crows_pairs", "pct_stereotype", names[3:5])):
        own = s.filter((pl.col("metric") == metric) & pl.col("task").is_in(members) & (pl.col("kind") == "example"))
        assert own.height == len(members)
        row = fam.filter(pl.col("task") == family).row(0, named=True)
        assert row["diff"] == pytest.approx(own["diff"].max() - own["diff"].min())
        assert row["ci_low"] <= row["ci_high"] and 0 < row["p"] <= 1 and row["n"] == own["n"].sum()
        assert row["p_holm"] is not None


def test_mean_kl_spread_from_a_tiny_model(tmp_path, tiny_model, one_torch_thread):
    from qfair.dump.run import dump

    tasks = "xstorycloze_en,xstorycloze_sw,xstorycloze_te"
    paths = [dump(tmp_path / f"m{seed}", model=str(tiny_model(seed=seed)), tasks=tasks, limit=4, progress=False,
                  threads=1).path for seed in (0, 1)]
    cmp = qfair.compare(paths[0], paths[1], bootstrap=100, seed=0)
    row = cmp.summary.filter((pl.col("kind") == "family") & (pl.col("metric") == "mean_kl_spread")).row(0, named=True)
    ex = cmp.examples
    means = [ex.filter(pl.col("task") == t)["kl_all_mean"].mean() for t in tasks.split(",")]
    assert row["task"] == "xstorycloze" and row["diff"] == pytest.approx(max(means) - min(means))
    assert row["n"] == 12 and row["ci_low"] <= row["ci_high"] and 0 < row["p"] <= 1


def test_report_draws_a_per_language_figure(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from test_bias_scores import report_section

    names = ["xstorycloze_en", "xstorycloze_ar", "xstorycloze_hi", "xstorycloze_eu"]
    docs = [d for n in names for d in T.get(n, limit=10).docs()]
    r, section = report_section(tmp_path, docs, "families")
    assert "id='fig-family_xstorycloze'" in section and (r.out / "family_xstorycloze.png").is_file()
    assert "acc_change_spread" in section
