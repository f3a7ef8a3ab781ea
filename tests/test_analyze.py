"""qfair.compare on synthetic dumps written here (the dump format of docs/format.md)
with known answers: every number is re-derived independently in the test."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.special import entr, log_softmax, rel_entr, softmax
from statsmodels.stats.multitest import multipletests
from test_dump_support import resign

import qfair
from qfair import stats
from qfair.analyze import compare
from qfair.calibration import calibration
from qfair.dump import DumpError

V = 48  # vocabulary of the synthetic model

TASKS = [
    {"name": "toy_mc", "kind": "multiple_choice"},
    {"name": "toy_mc2", "kind": "mc2"},
    {"name": "toy_crows", "kind": "crows_pairs"},
]


def make_corpus(seed: int = 0, n_per_task: int = 24):
    """Examples with choices and continuation targets (shared by all models)."""
    rng = np.random.default_rng(seed)
    ex = []
    for t in TASKS:
        for i in range(n_per_task):
            if t["kind"] == "crows_pairs":
                n_choices, label = 2, 0
                group = ["gender", "age", "religion"][i % 3]
                labels = None
            else:
                n_choices = int(rng.integers(2, 5))
                label = int(rng.integers(0, n_choices))
                group = ["north", "south"][i % 2] if t["kind"] == "multiple_choice" else None
                labels = [int(k == label or (k + 1) % n_choices == label) for k in range(n_choices)] \
                    if t["kind"] == "mc2" else None
            choices = ["".join(rng.choice(list("abcdefgh xyz"), size=int(rng.integers(1, 12))))
                       for _ in range(n_choices)]
            targets = [rng.integers(0, V, size=int(rng.integers(1, 5))).tolist() for _ in range(n_choices)]
            ex.append(dict(task=t["name"], doc_index=i, example_id=f"{t['name']}-{i:03d}", label=label,
                           group=group, n_choices=n_choices, choices=choices, labels=labels,
                           targets=targets))
    return ex


def make_rows(corpus, seed: int, base_rows=None, noise: float = 0.0):
    """One log-softmax row per continuation token; quantized = base + noise."""
    n = sum(len(t) for e in corpus for t in e["targets"])
    if base_rows is None:
        rng = np.random.default_rng(seed)
        logits = rng.normal(0, 2.0, size=(n, V))
    else:
        rng = np.random.default_rng(seed)
        logits = base_rows.astype(np.float64) + rng.normal(0, noise, size=(n, V))
    return log_softmax(logits, axis=1).astype(np.float32)


def write_dump(path: Path, corpus, rows: np.ndarray, *, store: str = "full", dtype: str = "f16",
               shard_rows: int = 50, vocab_hash: str = "abc"):
    """A dump directory written through the public DumpWriter; every table
    value is derived here from the rows (float64), independently of qfair."""
    from qfair.dump import DumpWriter

    examples = {k: [e[k] for e in corpus] for k in ("example_id", "task", "doc_index", "group", "label",
                                                     "n_choices", "choices", "labels")}
    examples["context"] = ["ctx"] * len(corpus)
    examples["extras"] = [None] * len(corpus)
    w = DumpWriter(path, kind="multiple_choice", examples=examples, vocab_size=V,
                   tokenizer={"vocab_size": V, "vocab_sha256": vocab_hash}, tasks=TASKS, model={"id": path.name},
                   rows_per_example=[sum(len(t) for t in e["targets"]) for e in corpus], store=store,
                   store_dtype=dtype, shard_rows=shard_rows, config={"quant": path.name})
    full = store == "full"
    r = 0
    rows64 = rows.astype(np.float64)
    for e in corpus:
        ch = {k: [] for k in ("task", "example_id", "doc_index", "choice", "loglik", "n_tokens", "n_chars",
                              "n_bytes", "is_greedy", "first_row", "n_rows")}
        tk = {k: [] for k in ("row", "task", "example_id", "choice", "pos", "target", "logprob", "entropy",
                              "max_logprob", "argmax", "rank")}
        r0 = r
        for c, tg in enumerate(e["targets"]):
            ll = 0.0
            greedy = True
            for pos, y in enumerate(tg):
                row = rows64[r]
                lp = float(row[y])
                ll += lp
                am = int(np.argmax(row))
                greedy &= am == y
                for k, v in (("row", r if full else -1), ("task", e["task"]), ("example_id", e["example_id"]),
                             ("choice", c), ("pos", pos), ("target", y), ("logprob", lp),
                             ("entropy", float(entr(np.exp(row)).sum())), ("max_logprob", float(row.max())),
                             ("argmax", am), ("rank", int(1 + (row > row[y]).sum()))):
                    tk[k].append(v)
                r += 1
            for k, v in (("task", e["task"]), ("example_id", e["example_id"]), ("doc_index", e["doc_index"]),
                         ("choice", c), ("loglik", ll), ("n_tokens", len(tg)), ("n_chars", len(e["choices"][c])),
                         ("n_bytes", len(e["choices"][c].encode())), ("is_greedy", bool(greedy)),
                         ("first_row", r - len(tg) if full else -1), ("n_rows", len(tg) if full else 0)):
                ch[k].append(v)
        w.add({"choices": ch, "tokens": tk}, rows[r0:r] if full else None)
    w.close()
    return path


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("dumps")
    corpus = make_corpus(0)
    base_rows = make_rows(corpus, 1)
    q_rows = make_rows(corpus, 2, base_rows=base_rows, noise=0.8)
    q2_rows = make_rows(corpus, 3, base_rows=base_rows, noise=0.2)
    return {
        "corpus": corpus,
        "base_rows": base_rows, "q_rows": q_rows,
        "base": write_dump(root / "base", corpus, base_rows),
        "nf4": write_dump(root / "nf4", corpus, q_rows, dtype="f32", shard_rows=37),
        "int8": write_dump(root / "int8", corpus, q2_rows),
        "base_none": write_dump(root / "base_none", corpus, base_rows, store="none"),
        "nf4_none": write_dump(root / "nf4_none", corpus, q_rows, store="none"),
        "root": root,
    }


@pytest.fixture(scope="module")
def result(dumps):
    return compare(dumps["base"], [dumps["nf4"], dumps["int8"]], bootstrap=400, seed=3, bins=5,
                   threads=2)


# ------------------------------------------------------------------ oracles
def example_oracle(dump_path: Path, kinds: dict[str, str]):
    """Per-example statistics with plain loops over the dump's own tables."""
    from lm_eval_rules import acc, acc_norm, mc2

    d = qfair.open_dump(dump_path)
    ch = d.choices.sort(["example_id", "choice"])
    lls = {}
    for eid, ll in zip(ch["example_id"], ch["loglik"]):
        lls.setdefault(eid, []).append(ll)
    out = {}
    for e in d.examples.iter_rows(named=True):
        ll = np.array(lls[e["example_id"]])
        p = softmax(ll)
        y = e["label"]
        o = dict(probs=list(p), correct=acc(ll, y), correct_norm=acc_norm(ll, e["choices"], y), conf=p.max(),
                 pred=int(np.argmax(ll)), nll=-math.log(p[y]), brier=float(((p - np.eye(len(p))[y]) ** 2).sum()),
                 p_gold=p[y], entropy=float(-(p * np.log(p)).sum()))
        if kinds[e["task"]] == "mc2":
            o["mc2"] = mc2(ll, e["labels"])
        if kinds[e["task"]] == "crows_pairs":
            o["stereotype"] = float(ll[0] > ll[1])
            o["likelihood_diff"] = abs(ll[0] - ll[1])
        out[e["example_id"]] = o
    return out


KINDS = {t["name"]: t["kind"] for t in TASKS}


def test_example_table_matches_loop_oracle(dumps, result):
    ob = example_oracle(dumps["base"], KINDS)
    oq = example_oracle(dumps["nf4"], KINDS)
    ex = result.examples.filter(pl.col("model") == "nf4")
    assert ex.height == len(dumps["corpus"])
    for r in ex.iter_rows(named=True):
        b, q = ob[r["example_id"]], oq[r["example_id"]]
        for k, v in b.items():
            assert r[f"base_{k}"] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        assert len(r["quant_probs"]) == r["n_choices"]
        for k, v in q.items():
            assert r[f"quant_{k}"] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        assert r["flip_c2i"] == float(b["correct"] == 1 and q["correct"] == 0)
        assert r["flip_i2c"] == float(b["correct"] == 0 and q["correct"] == 1)
        assert r["changed_answer"] == float(b["pred"] != q["pred"])
        assert r["delta_conf"] == pytest.approx(q["conf"] - b["conf"])


def test_summary_acc_flips_and_calibration(dumps, result):
    ob = example_oracle(dumps["base"], KINDS)
    oq = example_oracle(dumps["nf4"], KINDS)
    s = result.summary.filter(pl.col("model") == "nf4")
    for task in ("toy_mc", "toy_mc2"):
        ids = [e["example_id"] for e in dumps["corpus"] if e["task"] == task]
        bc = np.array([ob[i]["correct"] for i in ids])
        qc = np.array([oq[i]["correct"] for i in ids])
        st = s.filter(pl.col("task") == task)
        acc = st.filter(pl.col("metric") == "acc").row(0, named=True)
        assert acc["base"] == pytest.approx(bc.mean()) and acc["quant"] == pytest.approx(qc.mean())
        assert acc["diff"] == pytest.approx(qc.mean() - bc.mean())
        assert acc["ci_low"] <= acc["diff"] <= acc["ci_high"] or acc["ci_method"] == "bca"
        b, c = int(((bc == 1) & (qc == 0)).sum()), int(((bc == 0) & (qc == 1)).sum())
        fl = st.filter(pl.col("metric") == "flips").row(0, named=True)
        assert fl["diff"] == pytest.approx((b + c) / len(ids))
        # a flip rate is described (Wilson), not tested against 0; McNemar tests "accuracy unchanged"
        assert fl["p"] is None and fl["ci_method"] == "wilson"
        assert fl["p_mcnemar"] == pytest.approx(stats.mcnemar(b, c).p_exact)
        assert acc["p_mcnemar"] == pytest.approx(stats.mcnemar(b, c).p_exact)
        c2i = st.filter(pl.col("metric") == "flips_c2i").row(0, named=True)
        assert c2i["diff"] == pytest.approx(b / len(ids))
        ece = st.filter(pl.col("metric") == "ece").row(0, named=True)
        bconf = np.array([ob[i]["conf"] for i in ids])
        qconf = np.array([oq[i]["conf"] for i in ids])
        assert ece["base"] == pytest.approx(calibration(bconf, bc, bins=5).ece)
        assert ece["quant"] == pytest.approx(calibration(qconf, qc, bins=5).ece)
        assert ece["diff"] == pytest.approx(ece["quant"] - ece["base"])
        assert ece["base_low"] <= ece["base"] <= ece["base_high"] or ece["base"] == 0
    # mc2 only on the mc2 task, CrowS-Pairs metrics only on crows
    assert set(s.filter(pl.col("metric") == "mc2")["task"]) == {"toy_mc2"}
    assert set(s.filter(pl.col("metric") == "pct_stereotype")["task"]) == {"toy_crows"}
    # CrowS-Pairs has no gold answer: no accuracy, flips, calibration or the study's correctness measures
    crows = set(s.filter(pl.col("task") == "toy_crows")["metric"])
    assert not crows & {"acc", "acc_norm", "p_gold", "nll", "brier", "ece", "flips", "conf_pos", "ace_study"}
    assert {"pct_stereotype", "likelihood_diff", "pct_stereotype_from_neutral", "confidence"} <= crows
    assert set(result.calibration["task"]) == {"toy_mc", "toy_mc2"}


def test_pct_stereotype_distance_from_neutral(dumps, result):
    oq, ob = example_oracle(dumps["nf4"], KINDS), example_oracle(dumps["base"], KINDS)
    ids = [e["example_id"] for e in dumps["corpus"] if e["task"] == "toy_crows"]
    xb = np.array([ob[i]["stereotype"] for i in ids])
    xq = np.array([oq[i]["stereotype"] for i in ids])
    r = result.summary.filter((pl.col("model") == "nf4") & (pl.col("task") == "toy_crows") &
                              (pl.col("metric") == "pct_stereotype_from_neutral")).row(0, named=True)
    assert r["base"] == pytest.approx(abs(xb.mean() - 0.5)) and r["quant"] == pytest.approx(abs(xq.mean() - 0.5))
    assert r["diff"] == pytest.approx(abs(xq.mean() - 0.5) - abs(xb.mean() - 0.5))
    # the bootstrap distribution on the shared draw, recomputed from the exposed counts
    dist = []
    for b in range(400):
        c = stats.bootstrap_counts(len(ids), 3, b)
        dist.append(abs((c * xq).sum() / c.sum() - 0.5) - abs((c * xb).sum() / c.sum() - 0.5))
    lo, hi = np.quantile(dist, [0.025, 0.975])
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)


def test_adjusted_pvalues_within_the_families(result):
    """The summary's multiple testing: a primary family (each task's first headline metric per
    model; CrowS-Pairs: the distance of pct_stereotype from 50 %) with Holm over it, and the
    secondary rows adjusted within their metric class (the kind column); oracle: statsmodels'
    multipletests over each family, the families written here from the task kinds' headlines."""
    s = result.summary
    primary = {"toy_mc": "acc", "toy_mc2": "mc2", "toy_crows": "pct_stereotype_from_neutral"}
    tested = s["p"].is_not_null().to_numpy()
    assert tested.sum() > 20 and s.filter(~pl.Series(tested))["family"].is_null().all()
    want = ["primary" if m == primary[t] else "secondary" for t, m in zip(s["task"], s["metric"])]
    assert [f for f, ok in zip(s["family"], tested) if ok] == [f for f, ok in zip(want, tested) if ok]
    assert (s["family"] == "primary").sum() == 2 * 3  # two models x three tasks
    fams = {("primary", None)} | {("secondary", k) for k in s.filter(pl.col("family") == "secondary")["kind"]}
    assert len(fams) > 3
    for fam, kind in fams:
        sub = s.filter(pl.col("family") == fam)
        if kind is not None:
            sub = sub.filter(pl.col("kind") == kind)
        p = sub["p"].to_numpy()
        np.testing.assert_allclose(sub["p_holm"].to_numpy(), multipletests(p, method="holm")[1], err_msg=fam)
        np.testing.assert_allclose(sub["p_bh"].to_numpy(), multipletests(p, method="fdr_bh")[1], err_msg=fam)
    # enough resamples for the primary rows near the threshold: 100 beyond alpha / m = 0.05 / 6
    assert result.settings["primary_resamples"] == 12_000
    assert not any("no primary row can pass Holm" in n for n in result.notes)


def _paired_binary(n: int, base_rate: float, c2i: int, i2c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.zeros(n)
    base[rng.choice(n, int(base_rate * n), replace=False)] = 1
    quant = base.copy()
    quant[rng.choice(np.flatnonzero(base == 1), c2i, replace=False)] = 0
    quant[rng.choice(np.flatnonzero(base == 0), i2c, replace=False)] = 1
    return base, quant


@pytest.mark.parametrize("kind, column, metric", [("multiple_choice", "correct", "acc"),
                                                  ("crows_pairs", "stereotype", "pct_stereotype_from_neutral")])
def test_a_primary_row_near_the_threshold_gets_a_finer_p(kind, column, metric):
    """At B = 200 the smallest p is 1/201 = 0.005, coarser than Holm's alpha / m for m = 6
    (0.0083 and below); the primary row is recomputed with primary_resamples and its p
    resolved. Oracle for the refined p: the normal approximation of the paired mean
    difference's (or, from neutral, of the distance's) two-sided p, within a factor 3."""
    from scipy.stats import norm

    from qfair.analyze.summary import StatsConfig, metric_rows

    n = 400
    base, quant = _paired_binary(n, 0.7, 30, 10, seed=1)  # change -0.05, z about 3.2
    conf = np.random.default_rng(2).uniform(0.3, 1.0, size=(2, n))
    j = pl.DataFrame({"task": ["t"] * n, "kind": [kind] * n, f"base_{column}": base, f"quant_{column}": quant,
                      "base_conf": conf[0], "quant_conf": conf[1]})
    coarse = {r["metric"]: r for r in metric_rows(j, StatsConfig(resamples=200, seed=1, permutation=False),
                                                  primary=metric)}
    fine = {r["metric"]: r for r in metric_rows(j, StatsConfig(resamples=200, seed=1, permutation=False,
                                                               primary_resamples=20_000), primary=metric)}
    assert coarse[metric]["p"] == pytest.approx(1 / 201)  # pinned at the resolution of 200 resamples
    d = quant - base
    # acc: the mean change; from neutral: |mean - 0.5| goes from 0.2 to 0.15, the same change
    # (both means stay above 0.5 in practically every resample)
    z = d.mean() / (d.std(ddof=0) / math.sqrt(n))
    want = 2 * norm.sf(abs(z))
    assert want < 0.005
    # (the bootstrap inverts a BCa or percentile interval: it follows the skew the normal approximation ignores)
    assert want / 3 < fine[metric]["p"] < want * 3 and fine[metric]["p"] < 0.05 / 6
    assert fine[metric]["test"] == "paired bootstrap (primary: 20000 resamples)"
    assert fine[metric]["ci_high"] < 0 and fine[metric]["ci_low"] < fine[metric]["diff"] < fine[metric]["ci_high"]
    # secondary rows keep the configured resamples
    other = next(m for m in fine if m != metric and fine[m]["p"] is not None)
    assert fine[other]["p"] == coarse[other]["p"] and "primary" not in (fine[other]["test"] or "")
    # a primary row far from the threshold is left alone
    far = pl.DataFrame({"task": ["t"] * n, "kind": [kind] * n, f"base_{column}": base, f"quant_{column}": base})
    r = {x["metric"]: x for x in metric_rows(far, StatsConfig(resamples=200, seed=1, permutation=False,
                                                             primary_resamples=20_000), primary=metric)}
    assert "primary" not in (r[metric]["test"] or "")


@pytest.mark.parametrize("n, binning", [(300, "mass"), (40, "mass"), (300, "width")])
def test_calibration_rows_equal_the_core_bootstrap_of_each_difference(n, binning):
    """Equal-mass differences are taken from the two models' bootstraps on the same draw: every
    calibration row (difference, interval, percentiles, each model's value and interval) is
    exactly what the core gives for the difference statistic itself."""
    from qfair.analyze.intervals import interval_p
    from qfair.analyze.summary import CALIBRATION_METRICS, StatsConfig, metric_rows

    rng = np.random.default_rng(n)
    conf = rng.uniform(0.2, 1.0, size=(2, n))
    conf[1] = np.clip(conf[0] + rng.normal(0, 0.08, n), 0, 1)
    correct = (rng.uniform(size=(2, n)) < conf).astype(float)
    j = pl.DataFrame({"task": ["t"] * n, "kind": ["multiple_choice"] * n, "base_correct": correct[0],
                      "quant_correct": correct[1], "base_conf": conf[0], "quant_conf": conf[1]})
    cfg = StatsConfig(resamples=500, seed=3, permutation=False, binning=binning, confidence=0.9)
    rows = {r["metric"]: r for r in metric_rows(j, cfg)}
    for metric, measure, fixed in CALIBRATION_METRICS:
        kw = {"bins": 15, "binning": fixed or binning, "measure": measure}
        d, b, q = stats.paired_bootstrap([stats.CalibrationDiff(conf[1], correct[1], conf[0], correct[0], **kw),
                                          stats.CalibrationDiff(conf[0], correct[0], **kw),
                                          stats.CalibrationDiff(conf[1], correct[1], **kw)],
                                         resamples=500, seed=3, confidence=0.9, keep_distribution=True)
        iv = interval_p(d.distribution, confidence=0.9)
        r = rows[metric]
        assert (r["diff"], r["pct_low"], r["pct_high"], r["ci_low"], r["ci_high"], r["p"]) == \
            (d.estimate, d.pct_lo, d.pct_hi, iv.low, iv.high, iv.p), metric
        assert (r["base"], r["quant"]) == (b.estimate, q.estimate)
        assert r["base_low"] == interval_p(b.distribution, confidence=0.9, tested=False).low


def test_token_table_vocab_wide_against_scipy(dumps, result):
    t = result.tokens.filter(pl.col("model") == "nf4").sort("row")
    # the stored rows (f16 base, f32 quant), re-normalised, are what the core compares
    base = qfair.open_dump(dumps["base"])
    quant = qfair.open_dump(dumps["nf4"])
    pb = np.concatenate([np.asarray(b, dtype=np.float64) for b in base.logit_blocks()])
    pq = np.concatenate([np.asarray(b, dtype=np.float64) for b in quant.logit_blocks()])
    p, q = softmax(pb, axis=1), softmax(pq, axis=1)
    np.testing.assert_allclose(t["kl_pq"].to_numpy(), rel_entr(p, q).sum(1), rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(t["kl_qp"].to_numpy(), rel_entr(q, p).sum(1), rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(t["tv"].to_numpy(), 0.5 * np.abs(p - q).sum(1), rtol=2e-3, atol=1e-5)
    # target-token statistics come from tokens.parquet (float32 at dump time)
    rows64 = dumps["base_rows"].astype(np.float64)
    y = t["target"].to_numpy()
    np.testing.assert_allclose(t["logprob_p"].to_numpy(), rows64[np.arange(len(y)), y], rtol=1e-6)
    qr = dumps["q_rows"].astype(np.float64)
    np.testing.assert_allclose(t["delta_p"].to_numpy(),
                               np.exp(qr[np.arange(len(y)), y]) - np.exp(rows64[np.arange(len(y)), y]),
                               rtol=1e-5, atol=1e-7)
    assert (t["top1_agree"].to_numpy() == (rows64.argmax(1) == qr.argmax(1))).all()


def test_example_kl_aggregates(result):
    t = result.tokens.filter(pl.col("model") == "nf4")
    ex = result.examples.filter(pl.col("model") == "nf4")
    for r in ex.head(10).iter_rows(named=True):
        tk = t.filter(pl.col("example_id") == r["example_id"])
        gold = tk.filter(pl.col("choice") == r["label"])["kl_pq"].to_numpy()
        assert r["kl_gold_mean"] == pytest.approx(gold.mean())
        assert r["kl_gold_max"] == pytest.approx(gold.max())
        assert r["kl_all_mean"] == pytest.approx(tk["kl_pq"].to_numpy().mean())
        assert r["tok_js"] == pytest.approx(tk["js"].to_numpy().mean())


def test_self_comparison_is_zero(dumps):
    c = compare(dumps["base"], dumps["base"], bootstrap=200, bins=5)
    s = c.summary
    for m, n_tasks in (("flips", 2), ("flips_c2i", 2), ("flips_i2c", 2), ("changed_answer", 2), ("acc", 2),
                       ("ece", 2), ("kl_pq", 3), ("js", 3), ("tv", 3), ("choice_js", 3)):
        rows = s.filter(pl.col("metric") == m)
        assert rows.height == n_tasks, m
        np.testing.assert_allclose(rows["diff"].to_numpy(), 0.0, atol=1e-12)
    # agreement rates: 1 with an interval at 1 and no test (item: not 1.0 "significant" against 0)
    for m in ("top1_agree", "overlap_at_1", "overlap_at_5", "overlap_at_10"):
        rows = s.filter(pl.col("metric") == m)
        assert rows.height == 3 and (rows["diff"] == 1.0).all() and (rows["ci_low"] == 1.0).all()
        assert rows["p"].is_null().all() and rows["p_holm"].is_null().all()
    # nothing an identical pair reports is significant; no accuracy change has a degenerate interval
    tested = s.filter(pl.col("p").is_not_null())
    assert tested.height > 20 and (tested["p"] >= 0.05).all()
    acc = s.filter(pl.col("metric") == "acc")
    assert (acc["ci_method"] == "wilson (no change)").all() and (acc["ci_low"] < 0).all()
    np.testing.assert_allclose(acc["ci_high"].to_numpy(), stats.wilson([0], [24])[1][0])


def test_store_none_gives_example_and_target_token_stats(dumps):
    c = compare(dumps["base_none"], dumps["nf4_none"], bootstrap=200, bins=5)
    assert "kl_pq" not in c.tokens.columns
    assert {"logprob_p", "logprob_q", "delta_p", "rank_q", "top1_agree"} <= set(c.tokens.columns)
    metrics = set(c.summary["metric"])
    assert {"acc", "ece", "flips", "target_logprob", "delta_p", "top1_agree"} <= metrics
    assert "kl_pq" not in metrics
    assert any("--store none" in n for n in c.notes)
    with pytest.raises(DumpError, match="need vocabulary-wide rows in both dumps"):
        compare(dumps["base_none"], dumps["nf4_none"], bootstrap=50, metrics={"x": lambda ch: ch.p[:, 0]})


def test_misaligned_dumps_name_the_first_differing_key(dumps, tmp_path):
    corpus = [dict(e) for e in dumps["corpus"]]
    corpus[5] = dict(corpus[5], targets=[list(t) for t in corpus[5]["targets"]])
    corpus[5]["targets"][0][0] = (corpus[5]["targets"][0][0] + 1) % V
    other = write_dump(tmp_path / "bad", corpus, dumps["q_rows"])
    with pytest.raises(DumpError, match="target"):
        compare(dumps["base"], other, bootstrap=50)
    other2 = write_dump(tmp_path / "bad2", dumps["corpus"], dumps["q_rows"], vocab_hash="zzz")
    with pytest.raises(DumpError, match="vocab_sha256"):
        compare(dumps["base"], other2, bootstrap=50)


def test_custom_metric_joins_tokens_and_aggregations(dumps):
    def numpy_kl(chunk):
        return (np.exp(chunk.p) * (chunk.p - chunk.q)).sum(axis=1)

    seen = []

    def target_gap(chunk):
        seen.append((chunk.start, chunk.stop, chunk.keys.height))
        i = np.arange(chunk.stop - chunk.start)
        return chunk.q[i, chunk.targets] - chunk.p[i, chunk.targets]

    c = compare(dumps["base"], dumps["nf4"], bootstrap=100, bins=5, chunk_rows=29,
                metrics={"my_kl": numpy_kl, "target_gap": target_gap})
    t = c.tokens
    np.testing.assert_allclose(t["my_kl"].to_numpy(), t["kl_pq"].to_numpy(), rtol=1e-3, atol=1e-5)
    # custom metrics see the stored rows (f16 base, f32 quant) re-normalised
    stored = [np.concatenate([np.asarray(b, dtype=np.float64) for b in qfair.open_dump(d).logit_blocks()])
              for d in (dumps["base"], dumps["nf4"])]
    lp, lq = (log_softmax(a, axis=1) for a in stored)
    t = t.sort("row")
    i, y = t["row"].to_numpy(), t["target"].to_numpy()
    np.testing.assert_allclose(t["target_gap"].to_numpy(), lq[i, y] - lp[i, y], rtol=1e-5, atol=1e-5)
    # and the stored-row gap is within f16 rounding of the float32 target log-probs
    np.testing.assert_allclose(t["target_gap"].to_numpy(),
                               t["logprob_q"].to_numpy() - t["logprob_p"].to_numpy(), atol=1e-2)
    assert all(stop - start == n for start, stop, n in seen) and max(s - a for a, s, _ in seen) <= 29
    assert "tok_my_kl" in c.examples.columns
    s = c.summary.filter(pl.col("metric") == "my_kl")
    assert s.height == 3
    k = c.summary.filter(pl.col("metric") == "kl_pq")
    np.testing.assert_allclose(s["diff"].to_numpy(), k["diff"].to_numpy(), rtol=1e-3)
    assert set(c.groups["metric"]) >= {"my_kl"}


def test_custom_metrics_get_chunks_within_the_memory_budget(dumps):
    from qfair.analyze.tokens import custom_chunk_rows

    assert custom_chunk_rows(49152, 256 << 20) == 341
    seen = []

    def record(chunk):
        seen.append(chunk.p.shape[0])
        return (np.exp(chunk.p) * (chunk.p - chunk.q)).sum(axis=1)

    budget = 16 * V * 7  # 7 rows of p and q (and their re-normalisation) per chunk
    small = compare(dumps["base"], dumps["nf4"], bootstrap=50, bins=5, metrics={"k": record},
                    metric_memory=budget)
    assert seen and max(seen) == 7 and sum(seen) == small.tokens.height
    whole = compare(dumps["base"], dumps["nf4"], bootstrap=50, bins=5, metrics={"k": record})
    np.testing.assert_array_equal(small.tokens["k"].to_numpy(), whole.tokens["k"].to_numpy())
    with pytest.raises(ValueError, match="metric_memory"):
        custom_chunk_rows(V, 0)


def test_groups_and_gap(result):
    ex = result.examples.filter((pl.col("model") == "nf4") & (pl.col("task") == "toy_crows"))
    g = result.groups.filter((pl.col("model") == "nf4") & (pl.col("task") == "toy_crows"))
    whole = result.summary.filter((pl.col("model") == "nf4") & (pl.col("task") == "toy_crows"))
    assert set(g["group"]) == {"gender", "age", "religion"}
    for grp in ("gender", "age", "religion"):
        sub = ex.filter(pl.col("group") == grp)
        row = g.filter((pl.col("group") == grp) & (pl.col("metric") == "pct_stereotype")).row(0, named=True)
        assert row["base"] == pytest.approx(sub["base_stereotype"].mean())
        assert row["quant"] == pytest.approx(sub["quant_stereotype"].mean())
        w = whole.filter(pl.col("metric") == "pct_stereotype").row(0, named=True)
        assert row["gap"] == pytest.approx(row["diff"] - w["diff"])
        assert row["n"] == sub.height
    p = result.groups["p"].to_numpy().astype(float)
    ok = ~np.isnan(p)
    np.testing.assert_allclose(result.groups["p_holm"].to_numpy()[ok], multipletests(p[ok], method="holm")[1])


def test_strata_partition_the_examples(result):
    st = result.strata.filter((pl.col("model") == "nf4") & (pl.col("task") == "toy_mc"))
    ex = result.examples.filter((pl.col("model") == "nf4") & (pl.col("task") == "toy_mc"))
    assert st["n"].sum() == ex.height
    assert (st["flip_rate"] * st["n"]).sum() == pytest.approx(ex["flip"].sum())
    assert (st["lo"].to_numpy()[1:] >= st["hi"].to_numpy()[:-1]).all()
    # delta ECE per stratum from the examples in it
    conf = ex["base_conf"].to_numpy()
    for r in st.iter_rows(named=True):
        m = (conf >= r["lo"]) & (conf <= r["hi"])
        sub = ex.filter(pl.Series(m))
        assert sub.height == r["n"]
        eq = calibration(sub["quant_conf"].to_numpy(), sub["quant_correct"].to_numpy(), bins=5).ece
        eb = calibration(sub["base_conf"].to_numpy(), sub["base_correct"].to_numpy(), bins=5).ece
        assert r["delta_ece"] == pytest.approx(eq - eb)


def test_calibration_table(result):
    cal = result.calibration
    assert set(cal["role"]) == {"base", "quant"}
    one = cal.filter((pl.col("model") == "base") & (pl.col("task") == "toy_mc") & (pl.col("binning") == "width"))
    assert one.height == 5 and one["n"].sum() == 24


def test_same_seed_same_tables_any_threads(dumps):
    a = compare(dumps["base"], dumps["nf4"], bootstrap=300, seed=9, bins=5, threads=1, tokens=False)
    b = compare(dumps["base"], dumps["nf4"], bootstrap=300, seed=9, bins=5, threads=3, tokens=False)
    assert a.summary.equals(b.summary)
    assert a.groups.equals(b.groups)


def test_kept_draws_go_back_and_do_not_change_a_second_comparison(dumps):
    """The resample draws and remembered statistics live for one comparison: none is left
    afterwards, and a comparison that starts with them kept gives the same tables."""
    from qfair.metrics import resampling

    a = compare(dumps["base"], dumps["nf4"], bootstrap=300, seed=9, bins=5, threads=2)
    assert not resampling._cache and not resampling._memo
    resampling.weighted_sums(np.ones((7, 1)), seed=9, resamples=300)      # a draw kept from elsewhere
    b = compare(dumps["base"], dumps["nf4"], bootstrap=300, seed=9, bins=5, threads=2)
    for t in ("summary", "groups", "strata"):
        assert a.table(t).equals(b.table(t)), t


def test_write_all_formats(result, tmp_path):
    files = result.write(tmp_path / "out", formats=("parquet", "csv", "md", "latex"))
    names = {f.name for f in files}
    for t in ("summary", "examples", "tokens", "calibration", "strata", "groups"):
        assert {f"{t}.parquet", f"{t}.csv", f"{t}.md"} <= names
        back = pl.read_parquet(tmp_path / "out" / f"{t}.parquet")
        assert back.shape == getattr(result, t).shape
    assert "summary.tex" in names
    tex = (tmp_path / "out" / "summary.tex").read_text()
    assert tex.startswith("\\begin{tabular}") and "toy\\_mc" in tex
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| model | task | metric |" in md
    csv = pl.read_csv(tmp_path / "out" / "examples.csv")
    first = [float(x) for x in csv["base_probs"][0].split()]
    np.testing.assert_allclose(first, result.examples["base_probs"][0].to_list(), rtol=1e-12)
    with pytest.raises(ValueError):
        result.write(tmp_path / "x", formats=("xlsx",))


def test_docs_custom_metric_example(dumps):
    # the worked example of docs/analyze.md, against a plain numpy computation
    def mass_off_top10(chunk):
        top = np.argsort(-chunk.p, axis=1, kind="stable")[:, :10]
        rows = np.arange(chunk.p.shape[0])[:, None]
        return np.exp(chunk.p[rows, top]).sum(axis=1) - np.exp(chunk.q[rows, top]).sum(axis=1)

    c = compare(dumps["base"], dumps["nf4"], bootstrap=100, bins=5, metrics={"mass_off_top10": mass_off_top10})
    stored = [np.concatenate([np.asarray(b, dtype=np.float64) for b in qfair.open_dump(d).logit_blocks()])
              for d in (dumps["base"], dumps["nf4"])]
    p, q = (softmax(a, axis=1) for a in stored)
    ref = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        top = sorted(range(V), key=lambda v: (-p[i, v], v))[:10]
        ref[i] = p[i, top].sum() - q[i, top].sum()
    t = c.tokens.sort("row")
    np.testing.assert_allclose(t["mass_off_top10"].to_numpy(), ref, atol=1e-5)
    s = c.summary.filter(pl.col("metric") == "mass_off_top10")
    ex = c.examples
    for row in s.iter_rows(named=True):
        assert row["diff"] == pytest.approx(ex.filter(pl.col("task") == row["task"])["tok_mass_off_top10"].mean())


def test_bf16_dumps(dumps, tmp_path):
    b = write_dump(tmp_path / "b16", dumps["corpus"], dumps["base_rows"], dtype="bf16")
    q = write_dump(tmp_path / "q16", dumps["corpus"], dumps["q_rows"], dtype="bf16")

    def lp_q_target(chunk):
        return chunk.q[np.arange(chunk.stop - chunk.start), chunk.targets]

    c = compare(b, q, bootstrap=100, bins=5, metrics={"lq": lp_q_target})
    dec = [np.concatenate([(np.asarray(x).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
                           for x in qfair.open_dump(d).logit_blocks()]) for d in (b, q)]
    p, qq = (softmax(a, axis=1) for a in dec)
    t = c.tokens.sort("row")
    np.testing.assert_allclose(t["kl_pq"].to_numpy(), rel_entr(p, qq).sum(1), rtol=2e-3, atol=1e-5)
    y = t["target"].to_numpy()
    np.testing.assert_allclose(t["lq"].to_numpy(), log_softmax(dec[1], axis=1)[np.arange(len(y)), y], atol=1e-5)
    with pytest.raises(DumpError, match="bf16"):
        compare(b, dumps["nf4"], bootstrap=50)


def test_nonfinite_logliks_are_counted_not_averaged(dumps, tmp_path):
    import shutil

    q = tmp_path / "q_nan"
    shutil.copytree(dumps["nf4"], q)
    ch = pl.read_parquet(q / "choices.parquet")
    victim = "toy_mc-003"
    ch = ch.with_columns(pl.when((pl.col("example_id") == victim) & (pl.col("choice") == 1))
                         .then(float("nan")).otherwise(pl.col("loglik")).alias("loglik"))
    ch.write_parquet(q / "choices.parquet")
    resign(q)
    c = compare(dumps["base"], q, bootstrap=100, bins=5, tokens=False)
    ex = c.examples.filter(pl.col("example_id") == victim).row(0, named=True)
    assert ex["quant_nonfinite"] == 1.0 and math.isnan(ex["quant_conf"]) and math.isnan(ex["quant_correct"])
    s = c.summary.filter(pl.col("task") == "toy_mc")
    for m in ("acc", "ece", "flips", "confidence"):
        assert s.filter(pl.col("metric") == m)["n"][0] == 23, m
    acc = s.filter(pl.col("metric") == "acc").row(0, named=True)
    ok = c.examples.filter((pl.col("task") == "toy_mc") & (pl.col("example_id") != victim))
    assert acc["quant"] == pytest.approx(ok["quant_correct"].mean())
    assert any("non-finite" in n for n in c.notes)


def test_mixed_full_and_none_quant_dumps(dumps):
    c = compare(dumps["base"], [dumps["nf4"], dumps["nf4_none"]], bootstrap=100, bins=5)
    assert set(c.strata["model"]) == {"nf4", "nf4_none"}
    assert c.strata.filter(pl.col("model") == "nf4_none")["mean_kl"].is_null().all()
    assert c.strata.filter(pl.col("model") == "nf4")["mean_kl"].is_not_null().all()
    t = c.tokens.group_by("model").agg(pl.col("kl_pq").is_null().all().alias("none"))
    assert dict(t.iter_rows()) == {"nf4": False, "nf4_none": True}
    # the example-level numbers do not depend on how the logits were stored
    a = c.summary.filter(pl.col("metric").is_in(["acc", "ece", "flips"]))
    x = a.filter(pl.col("model") == "nf4").select("task", "metric", "diff", "p")
    y = a.filter(pl.col("model") == "nf4_none").select("task", "metric", "diff", "p")
    assert x.equals(y)


def test_equal_choice_counts_write_csv(tmp_path):
    # every example with two choices: the probs columns must stay lists, and CSV works
    corpus = [e for e in make_corpus(4, n_per_task=6) if e["task"] == "toy_crows"]
    b = make_rows(corpus, 1)
    q = make_rows(corpus, 2, base_rows=b, noise=0.5)
    c = compare(write_dump(tmp_path / "b", corpus, b), write_dump(tmp_path / "q", corpus, q), bootstrap=50, bins=5)
    assert isinstance(c.examples.schema["base_probs"], pl.List)
    c.write(tmp_path / "out", formats=("csv",))
    back = pl.read_csv(tmp_path / "out" / "examples.csv")
    assert [len(x.split()) for x in back["quant_probs"]] == [2] * 6
