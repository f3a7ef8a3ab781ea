"""The study's claim as a test (qfair.analyze.uncertainty): the rank correlation
of the base model's uncertainty with each per-example shift, and the
most-minus-least uncertain stratum difference, against scipy (spearmanr,
bootstrap, permutation_test) and hand computations; synthetic dumps where the
shift is built to grow with the base entropy (detected, p < 0.01) or to be
unrelated to it (not detected at that level, over several seeds); undefined
cases (constant uncertainty, one stratum) give no row and a note."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from qfair import stats
from qfair.analyze.summary import StatsConfig
from qfair.analyze.uncertainty import token_uncertainty_rows, uncertainty_rows

K = 4


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _js(p, q):
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / b), 0.0)))  # noqa: E731
    return math.sqrt(max(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0))


def _shifted(base_ll, direction, target):
    """Quantized log-likelihoods base + t * direction with JS distance `target` from the base."""
    p = _softmax(base_ll)
    lo, hi = 0.0, 50.0
    for _ in range(80):
        t = (lo + hi) / 2
        if _js(p, _softmax(base_ll + t * direction)) < target:
            lo = t
        else:
            hi = t
    return base_ll + lo * direction


def _corpus(seed, n, related):
    """Base log-likelihoods with varied sharpness (so varied entropy), and quantized ones
    whose JS distance from the base either grows with the base entropy or is drawn
    independently of it."""
    rng = np.random.default_rng(seed)
    base, quant = [], []
    for _ in range(n):
        ll = rng.normal(0, 1, K) * rng.uniform(0.05, 4.0) - 5.0
        h = float(-(_softmax(ll) * np.log(_softmax(ll))).sum()) / math.log(K)   # 0..1
        target = 0.02 + 0.25 * h + rng.normal(0, 0.02) if related else rng.uniform(0.02, 0.27)
        quant.append(_shifted(ll, rng.normal(0, 1, K), max(target, 0.005)))
        base.append(ll)
    return np.array(base), np.array(quant), rng.integers(0, K, n).tolist()


def _dumps(root, base, quant, labels):
    from qfair.dump import DumpWriter

    out = []
    for name, lls in (("base", base), ("quant", quant)):
        n = len(labels)
        examples = {"example_id": [f"ex{i}" for i in range(n)], "task": ["toy"] * n, "doc_index": list(range(n)),
                    "group": [None] * n, "label": labels, "n_choices": [K] * n, "context": ["q"] * n,
                    "choices": [[f"c{k}" for k in range(K)]] * n, "labels": [None] * n, "extras": [None] * n}
        w = DumpWriter(root / name, kind="choices_only", examples=examples, vocab_size=1, tokenizer=None,
                       tasks=[{"name": "toy", "kind": "multiple_choice"}], model={"id": name}, store="none")
        for i in range(w.start, w.n_examples):
            w.add({"choices": {"task": ["toy"] * K, "example_id": [f"ex{i}"] * K, "doc_index": [i] * K,
                               "choice": list(range(K)), "loglik": [float(x) for x in lls[i]], "n_tokens": [1] * K,
                               "n_chars": [2] * K, "n_bytes": [2] * K, "is_greedy": [False] * K,
                               "first_row": [-1] * K, "n_rows": [0] * K}})
        w.close()
        out.append(root / name)
    return out


def _row(cmp, metric):
    r = cmp.summary.filter(pl.col("metric") == metric)
    return r.row(0, named=True) if r.height else None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_growing_with_base_entropy_is_detected(tmp_path, seed):
    from qfair.analyze import compare

    base, quant, labels = _corpus(seed, 150, related=True)
    b, q = _dumps(tmp_path, base, quant, labels)
    cmp = compare(b, q, bootstrap=2000, seed=seed)
    r = _row(cmp, "spearman(entropy,choice_js)")
    assert r["kind"] == "uncertainty" and r["diff"] > 0.5
    assert r["p"] < 0.01 and r["p_perm"] < 0.01 and r["ci_low"] > 0
    s = _row(cmp, "strata_diff(entropy,choice_js)")
    assert s["diff"] > 0 and s["p"] < 0.01 and s["p_perm"] < 0.01


def test_unrelated_shift_is_not_detected_over_seeds(tmp_path):
    from qfair.analyze import compare

    ps = []
    for seed in range(8):
        base, quant, labels = _corpus(100 + seed, 150, related=False)
        b, q = _dumps(tmp_path / str(seed), base, quant, labels)
        cmp = compare(b, q, bootstrap=2000, seed=seed, tokens=False)
        r = _row(cmp, "spearman(entropy,choice_js)")
        ps.append((r["p"], r["p_perm"], _row(cmp, "strata_diff(entropy,choice_js)")["p"]))
    assert all(min(p) >= 0.01 for p in ps), ps


@pytest.fixture(scope="module")
def examples():
    """An examples table like compare()'s, with ties (a binary flip) and a continuous shift."""
    rng = np.random.default_rng(5)
    n = 90
    ent = rng.uniform(0, 1.3, n)
    ent[:10] = ent[0]  # ties in the uncertainty
    conf = np.clip(1 - ent / 1.5 + rng.normal(0, 0.05, n), 0.26, 1)
    js = 0.1 * ent + rng.normal(0, 0.05, n)
    flip = (rng.uniform(size=n) < 0.1 + 0.3 * ent).astype(float)
    return pl.DataFrame({"base_entropy": ent, "base_conf": conf, "quant_conf": conf - 0.1 * js,
                         "base_p_gold": conf * 0.9, "quant_p_gold": conf * 0.9 - js * 0.2, "choice_js": np.abs(js),
                         "flip": flip})


CFG = StatsConfig(resamples=3000, seed=7, n_strata=4)


def test_rows_against_scipy(examples):
    rows, notes = uncertainty_rows(examples, CFG, True, "m/t")
    by = {r["metric"]: r for r in rows}
    u = examples["base_entropy"].to_numpy()
    for shift in ("choice_js", "flip", "abs_dconf"):
        s = (examples["choice_js"].to_numpy() if shift == "choice_js" else examples["flip"].to_numpy()
             if shift == "flip" else np.abs(examples["quant_conf"].to_numpy() - examples["base_conf"].to_numpy()))
        r = by[f"spearman(entropy,{shift})"]
        assert r["diff"] == pytest.approx(sps.spearmanr(u, s).statistic, abs=1e-12)
        ref = sps.bootstrap((u, s), lambda a, b: sps.spearmanr(a, b).statistic, paired=True, vectorized=False,
                            n_resamples=3000, method="percentile", random_state=1).confidence_interval
        se = (r["ci_high"] - r["ci_low"]) / 3.92
        assert r["ci_low"] == pytest.approx(ref.low, abs=0.2 * se) and r["ci_high"] == pytest.approx(ref.high,
                                                                                                     abs=0.2 * se)
        # scipy's p with 100,000 pairings (Spearman = Pearson of the mid-ranks, vectorised) is
        # close to the exact p, so only the analysis's own Monte Carlo error (B = 3000) counts
        ru, rs = sps.rankdata(u), sps.rankdata(s)

        def rho(a, axis=-1, rs=rs):
            a = a - a.mean(axis=axis, keepdims=True)
            b = rs - rs.mean()
            return (a * b).sum(axis=axis) / np.sqrt((a * a).sum(axis=axis) * (b * b).sum())

        pp = sps.permutation_test((ru,), rho, permutation_type="pairings", n_resamples=100_000, vectorized=True,
                                  random_state=0).pvalue
        assert r["p_perm"] == pytest.approx(pp, abs=4 * math.sqrt(max(pp * (1 - pp), 1e-4) / 3000) + 2e-3)
        # the strata difference: quartiles of u (value == edge goes down), top minus bottom
        d = by[f"strata_diff(entropy,{shift})"]
        edges = np.quantile(u, [0.25, 0.5, 0.75])
        st = np.searchsorted(edges, u, side="left")
        assert d["diff"] == pytest.approx(s[st == 3].mean() - s[st == 0].mean())
        dist = []
        for b in range(3000):
            c = stats.bootstrap_counts(u.size, 7, b)
            top, bot = c * (st == 3), c * (st == 0)
            dist.append((top * s).sum() / top.sum() - (bot * s).sum() / bot.sum())
        assert (d["ci_low"], d["ci_high"]) == pytest.approx(tuple(np.quantile(dist, [0.025, 0.975])), abs=1e-12)
    # 1 - confidence is an uncertainty too
    assert "spearman(1-conf,choice_js)" in by and not notes


def test_kind_without_gold_answers_skips_gold_shifts(examples):
    rows, _ = uncertainty_rows(examples, CFG, False, "m/t")
    shifts = {r["metric"].split(",")[1].rstrip(")") for r in rows}
    assert shifts == {"abs_dconf", "choice_js"}


def test_constant_uncertainty_and_one_stratum_give_notes(examples):
    const = examples.with_columns(pl.lit(0.7).alias("base_entropy"))
    rows, notes = uncertainty_rows(const, CFG, True, "m/t")
    assert not [r for r in rows if r["metric"].startswith(("spearman(entropy", "strata_diff(entropy"))]
    assert any("spearman(entropy,choice_js) undefined (the uncertainty is constant" in n for n in notes)
    assert any("strata_diff(entropy,·) undefined (one stratum" in n for n in notes)
    rows, notes = uncertainty_rows(examples, StatsConfig(resamples=200, n_strata=1), True, "m/t")
    assert not [r for r in rows if r["metric"].startswith("strata_diff")]
    assert [r for r in rows if r["metric"].startswith("spearman")]
    const_shift = examples.with_columns(pl.lit(0.0).alias("flip"))
    rows, notes = uncertainty_rows(const_shift, CFG, True, "m/t")
    assert any("spearman(entropy,flip) undefined (the shift is constant" in n for n in notes)


def test_token_level_rows_resample_examples():
    rng = np.random.default_rng(3)
    ex = np.repeat(np.arange(40), rng.integers(2, 9, 40))
    ent = rng.uniform(0, 5, ex.size)
    kl = 0.02 * ent * rng.lognormal(0, 0.3, ex.size)
    tok = pl.DataFrame({"example_id": [f"e{i:02d}" for i in ex], "entropy_p": ent, "maxprob_p": np.exp(-ent / 3),
                        "kl_pq": kl, "delta_p": rng.normal(0, 0.01, ex.size),
                        "top1_agree": (rng.uniform(size=ex.size) > 0.1 * ent / 5).astype(float)})
    rows, notes = token_uncertainty_rows(tok, StatsConfig(resamples=500, seed=4, n_strata=5), "m/t")
    by = {r["metric"]: r for r in rows}
    r = by["spearman(entropy_p,kl_pq)"]
    assert r["kind"] == "uncertainty_token" and r["n"] == 40          # n counts the resampled examples
    assert r["diff"] == pytest.approx(sps.spearmanr(ent, kl).statistic) and r["p"] < 0.01
    assert r["p_perm"] is None                                          # rows are not exchangeable
    # resample b repeats whole examples
    from qfair.metrics.resampling import spearman_bootstrap

    _, cl = np.unique(tok["example_id"].to_numpy(), return_inverse=True)
    d = spearman_bootstrap(ent, kl, seed=4, resamples=5, clusters=cl, n_clusters=40)
    c = stats.bootstrap_counts(40, 4, 3)[cl]
    assert d[3] == pytest.approx(sps.spearmanr(np.repeat(ent, c), np.repeat(kl, c)).statistic, abs=1e-12)
    assert {"spearman(1-maxprob_p,top1_change)", "strata_diff(entropy_p,abs_delta_p)"} <= set(by)
