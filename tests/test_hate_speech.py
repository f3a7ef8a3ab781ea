"""Hate-speech fairness: the identity-group AUCs (Borkan et al. 2019) against
sklearn.metrics.roc_auc_score on the same scores, Jigsaw's final metric against
scipy.stats.pmean and the formula written out here, the bootstrap against a
numpy re-implementation on the same resample draw, undefined cases, the four
data schemas, and a dump -> analyze run of the ``hate_speech`` task."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qfair.analyze.bias import bias_table
from scipy.stats import pmean
from sklearn.metrics import roc_auc_score

import qfair.tasks as T
from qfair import stats
from qfair.analyze.summary import StatsConfig
from qfair.metrics import hate


def sk_auc(y, s):
    y = np.asarray(y)
    return roc_auc_score(y, s) if 0 < y.sum() < y.size else np.nan


def slices(y, inside):
    """The three slices of Borkan et al., selected here from their definitions."""
    y, inside = np.asarray(y, bool), np.asarray(inside, bool)
    return {"subgroup_auc": inside, "bpsn_auc": (y & ~inside) | (~y & inside),
            "bnsp_auc": (~y & ~inside) | (y & inside)}


def same(a, b):
    return (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-12)


# --- the AUC


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1)), min_size=1, max_size=40))
def test_auc_equals_sklearn_with_ties(pairs):
    s = np.array([p[0] for p in pairs], dtype=float) / 4.0     # few distinct values: many ties
    y = np.array([p[1] for p in pairs])
    assert same(hate.auc(s, y), sk_auc(y, s))


@pytest.mark.parametrize("seed", range(5))
def test_auc_random_and_adversarial(seed):
    r = np.random.default_rng(seed)
    n = 300
    y = r.integers(0, 2, n)
    for s in (r.random(n), np.round(r.random(n), 1), np.zeros(n), y.astype(float), 1.0 - y,
              np.where(y == 1, 1e-300, 0.0), r.normal(size=n) * 1e12):
        assert same(hate.auc(s, y), sk_auc(y, s))
    assert hate.auc(np.zeros(n), y) == 0.5           # all tied: 0.5 by the rank rule, as sklearn
    assert hate.auc(y.astype(float), y) == 1.0 and hate.auc(1.0 - y, y) == 0.0


def test_auc_undefined_is_nan_not_half():
    assert np.isnan(hate.auc(np.array([0.3, 0.9]), np.array([1, 1])))
    assert np.isnan(hate.auc(np.array([0.3]), np.array([0])))
    assert np.isnan(hate.auc(np.zeros(0), np.zeros(0)))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 30))
def test_weighted_auc_is_the_auc_of_the_resample(seed, n):
    r = np.random.default_rng(seed)
    s, y = r.integers(0, 6, n) / 5.0, r.integers(0, 2, n)
    w = np.stack([stats.bootstrap_counts(n, seed, b) for b in range(5)]).astype(float)
    got = hate.weighted_auc(s, y, w)
    for b in range(5):
        idx = np.repeat(np.arange(n), w[b].astype(int))
        assert same(got[b], sk_auc(y[idx], s[idx]))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_identity_aucs_equal_sklearn_on_each_slice(seed):
    r = np.random.default_rng(seed)
    n, g = int(r.integers(1, 60)), int(r.integers(1, 4))
    s, y = r.integers(0, 8, n) / 7.0, r.integers(0, 2, n)
    members = r.random((n, g)) < r.random(g)
    a = hate.identity_aucs(s, y, members)
    assert same(a.overall[0], sk_auc(y, s))
    for k in range(g):
        for metric, keep in slices(y, members[:, k]).items():
            assert same(getattr(a, metric)[0, k], sk_auc(y[keep], s[keep]))


# --- the final metric


def jigsaw(overall, sub, bpsn, bnsp, p=-5.0, w=0.25):
    """Jigsaw's final metric, written from the competition's definition."""
    def m(x):
        return (sum(v ** p for v in x) / len(x)) ** (1.0 / p)
    return w * overall + w * m(sub) + w * m(bpsn) + w * m(bnsp)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(*[st.floats(0.01, 1.0)] * 3), min_size=1, max_size=8), st.floats(0.0, 1.0))
def test_final_metric_is_jigsaws_formula(aucs, overall):
    sub, bpsn, bnsp = (np.array(x) for x in zip(*aucs))
    got = float(hate.final_metric(overall, sub, bpsn, bnsp))
    assert got == pytest.approx(jigsaw(overall, sub, bpsn, bnsp), rel=1e-12)
    assert got == pytest.approx(0.25 * (overall + pmean(sub, -5) + pmean(bpsn, -5) + pmean(bnsp, -5)), rel=1e-12)


def test_power_mean_edge_cases():
    assert hate.power_mean(np.array([0.0, 0.9])) == 0.0          # the limit: a zero AUC dominates
    assert np.isnan(hate.power_mean(np.array([np.nan, 0.9])))
    assert hate.power_mean(np.array([0.7, 0.7, 0.7])) == pytest.approx(0.7)


# --- the bias rows and their bootstrap


def table(s_base, s_quant, y, ids, resamples=400, seed=3):
    n = len(y)
    j = pl.DataFrame({"task": ["hate_speech"] * n, "kind": ["hate_speech"] * n,
                      "example_id": [f"e{i}" for i in range(n)], "label": np.asarray(y, dtype=np.int64),
                      "group": [None] * n, "base_p_hateful": np.asarray(s_base, float),
                      "quant_p_hateful": np.asarray(s_quant, float)})
    attrs = pl.DataFrame({"example_id": j["example_id"], "identities": pl.Series(ids, dtype=pl.List(pl.Utf8))})
    return bias_table(j, attrs, "q", StatsConfig(resamples=resamples, seed=seed, confidence=0.9))


def data(seed, n=80):
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    sb = np.clip(0.3 * y + r.random(n) * 0.7, 0, 1).round(2)
    sq = np.clip(sb + r.normal(0, 0.15, n), 0, 1).round(2)
    names = ["a", "b", "c"]
    ids = [[g for g in names if r.random() < 0.35] for _ in range(n)]
    return sb, sq, y, ids


def get(bt, metric, group=None):
    sel = bt.filter((pl.col("metric") == metric) & (pl.col("group").is_null() if group is None
                                                     else pl.col("group") == group))
    assert sel.height == 1, (metric, group)
    return sel.row(0, named=True)


def _pct(t, q):
    return float(np.percentile(t, 100 * q))     # linear interpolation, as the table's percentile rule


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_equal_a_numpy_reimplementation_on_the_same_draw(seed):
    sb, sq, y, ids = data(seed)
    n, B = len(y), 400
    bt = table(sb, sq, y, ids, resamples=B, seed=seed)
    groups = ["a", "b", "c"]
    mem = np.array([[g in v for g in groups] for v in ids])

    def everything(idx):
        out = {}
        for who, s in (("base", sb), ("quant", sq)):
            yy, ss, mm = y[idx], s[idx], mem[idx]
            out[(who, "overall_auc", None)] = sk_auc(yy, ss)
            per = {}
            for k, g in enumerate(groups):
                for metric, keep in slices(yy, mm[:, k]).items():
                    out[(who, metric, g)] = per.setdefault(metric, {})[g] = sk_auc(yy[keep], ss[keep])
            means = {m: pmean(list(per[m].values()), -5) if np.isfinite(list(per[m].values())).all() else np.nan
                     for m in per}
            for m, v in means.items():
                out[(who, f"{m}_mean", None)] = v
            out[(who, "final_metric", None)] = 0.25 * (out[(who, "overall_auc", None)] + sum(means.values()))
        return out

    point = everything(np.arange(n))
    reps = [everything(np.repeat(np.arange(n), stats.bootstrap_counts(n, seed, b))) for b in range(B)]
    for (who, metric, g), value in point.items():
        if who != "base":
            continue
        r = get(bt, metric, g)
        assert same(r["base"], value) and same(r["quant"], point[("quant", metric, g)])
        d = np.array([x[("quant", metric, g)] - x[("base", metric, g)] for x in reps])
        fin = d[np.isfinite(d)]
        assert r["undefined"] == pytest.approx(1 - fin.size / B)
        assert r["ci_low"] == pytest.approx(_pct(fin, 0.05), abs=1e-12)
        assert r["ci_high"] == pytest.approx(_pct(fin, 0.95), abs=1e-12)
        assert r["ci_low"] <= r["diff"] <= r["ci_high"]          # covers the point estimate on these data
        bq = np.array([x[("quant", metric, g)] for x in reps])
        assert r["quant_low"] == pytest.approx(_pct(bq[np.isfinite(bq)], 0.05), abs=1e-12)
    # the test of equal change across groups, from the same replicates
    r = get(bt, "subgroup_auc_change_disparity")
    d = np.array([point[("quant", "subgroup_auc", g)] - point[("base", "subgroup_auc", g)] for g in groups])
    t = np.array([[x[("quant", "subgroup_auc", g)] - x[("base", "subgroup_auc", g)] for g in groups] for x in reps])
    t = t[np.isfinite(t).all(axis=1)]
    null = (t - d).max(axis=1) - (t - d).min(axis=1)
    assert r["diff"] == pytest.approx(d.max() - d.min())
    assert r["p"] == pytest.approx((1 + (null >= d.max() - d.min() - 1e-12).sum()) / (1 + null.size))
    assert r["ci_low"] == pytest.approx(_pct(t.max(axis=1) - t.min(axis=1), 0.05))


def test_undefined_group_is_null_with_a_note():
    sb, sq, y, ids = data(4, n=60)
    y = y.copy()
    ids = [list(v) for v in ids]
    ids[0] = ids[0] + ["single"]                              # a group with a single example
    for i, v in enumerate(ids):                               # group "c": no hateful example
        if "c" in v and y[i] == 1:
            ids[i] = [g for g in v if g != "c"]
    bt = table(sb, sq, y, ids, resamples=50)
    for g in ("single", "c"):
        r = get(bt, "subgroup_auc", g)
        assert r["base"] is None and r["quant"] is None and r["diff"] is None and r["p"] is None
        assert r["detail"].startswith("undefined: no")
    assert "no hateful example mentioning c" in get(bt, "subgroup_auc", "c")["detail"]
    assert get(bt, "bnsp_auc", "c")["base"] is None                 # no hateful text about c
    assert get(bt, "bpsn_auc", "c")["base"] is not None              # hateful background vs innocuous c
    fm = get(bt, "final_metric")
    assert fm["base"] is not None and "left out" in fm["detail"] and "c" in fm["detail"]
    # only one class in the whole task: every AUC null, nothing raised
    bt = table(sb, sq, np.zeros_like(y), ids, resamples=20)
    assert get(bt, "overall_auc")["base"] is None and get(bt, "final_metric")["base"] is None
    assert get(bt, "overall_auc")["detail"].startswith("undefined")
    assert get(bt, "final_metric")["detail"].startswith("undefined: no identity group")


# --- data files in their own schemas


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_builtin_sample_has_both_classes_in_every_group():
    docs = list(T.get("hate_speech").docs())
    assert 40 <= len(docs) <= 60
    groups = {g for d in docs for g in d.extras["identities"]}
    assert len(groups) >= 6
    for g in groups:
        assert {d.gold for d in docs if g in d.extras["identities"]} == {0, 1}
    assert docs[0].choices == ["no", "yes"] and "hateful" in docs[0].context


def test_jigsaw_schema(tmp_path):
    p = tmp_path / "jigsaw.csv"
    p.write_text("id,comment_text,target,male,female,muslim,black\n"
                 "1,you are awful,0.8,0.0,0.6,,0.1\n"
                 "2,nice day,0.2,0.5,0.0,0.7,\n")
    docs = list(T.get("hate_speech", data_file=p).docs())
    assert [d.gold for d in docs] == [1, 0]
    assert [d.extras["identities"] for d in docs] == [["female"], ["male", "muslim"]]
    assert docs[0].extras["schema"] == "jigsaw"
    p2 = write_jsonl(tmp_path / "cc.jsonl", [{"text": "x", "toxicity": 0.5, "black": 1.0, "white": 0.0}])
    assert list(T.get("hate_speech", data_file=p2).docs())[0].extras["identities"] == ["black"]
    bad = write_jsonl(tmp_path / "noid.jsonl", [{"text": "x", "toxicity": 0.9}])
    with pytest.raises(T.TaskDataError, match="field 'male' is missing: no identity column"):
        T.get("hate_speech", data_file=bad)


def test_hatecheck_schema(tmp_path):
    p = tmp_path / "hatecheck.csv"
    p.write_text("functionality,test_case,label_gold,target_ident\n"
                 "derog_neg_emote_h,I hate women.,hateful,women\n"
                 "ident_neutral_nh,We are a group of trans people.,non-hateful,trans people\n"
                 "spell_char_swap_h,Some text,hateful,\n")
    docs = list(T.get("hate_speech", data_file=p).docs())
    assert [d.gold for d in docs] == [1, 0, 1]
    assert [d.extras["identities"] for d in docs] == [["women"], ["trans people"], []]
    assert docs[0].extras["functionality"] == "derog_neg_emote_h"
    bad = tmp_path / "hc.csv"
    bad.write_text("functionality,test_case,label_gold\nf,t,hateful\n")
    with pytest.raises(T.TaskDataError, match="field 'target_ident' is missing"):
        T.get("hate_speech", data_file=bad)


def test_measuring_hate_speech_schema(tmp_path):
    rows = [{"comment_id": 1, "text": "a", "hate_speech_score": 1.2, "target_race_black": True,
             "target_gender_women": False, "target_race": True},
            {"comment_id": 2, "text": "b", "hate_speech_score": -0.4, "target_race_black": False,
             "target_gender_women": True, "target_race": False}]
    docs = list(T.get("hate_speech", data_file=write_jsonl(tmp_path / "mhs.jsonl", rows)).docs())
    assert [d.gold for d in docs] == [1, 0]
    assert [d.extras["identities"] for d in docs] == [["race_black"], ["gender_women"]]
    raw = [{"text": "a", "hatespeech": 2, "target_religion_muslim": 1},
           {"text": "b", "hatespeech": 1, "target_religion_muslim": 0}]
    docs = list(T.get("hate_speech", data_file=write_jsonl(tmp_path / "raw.jsonl", raw)).docs())
    assert [d.gold for d in docs] == [1, 0]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"text": "a", "hate_speech_score": 0.1}])
    with pytest.raises(T.TaskDataError, match="field 'target_\\*' is missing"):
        T.get("hate_speech", data_file=bad)


def test_missing_label_or_identities(tmp_path):
    with pytest.raises(T.TaskDataError, match="field 'label' is missing"):
        T.get("hate_speech", data_file=write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "identities": []}]))
    with pytest.raises(T.TaskDataError, match="field 'identities' is missing"):
        T.get("hate_speech", data_file=write_jsonl(tmp_path / "b.jsonl", [{"text": "x", "label": 1}]))
    with pytest.raises(T.TaskDataError, match="field 'label' must be 0 \\(not hateful\\) or 1"):
        T.get("hate_speech", data_file=write_jsonl(tmp_path / "c.jsonl",
                                                    [{"text": "x", "label": 3, "identities": []}]))


# --- end to end


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_model, one_torch_thread):
    import qfair
    from qfair.dump.run import dump

    root = tmp_path_factory.mktemp("hate-e2e")
    paths = [dump(root / f"m{seed}", model=str(tiny_model(seed=seed)), tasks="hate_speech", store="none",
                  progress=False, threads=1).path for seed in (0, 1)]
    return paths, qfair.compare(paths[0], paths[1], bootstrap=100, seed=0, tokens=False)


def test_end_to_end_rows_equal_sklearn_on_the_dumps(analysed):
    import qfair

    paths, cmp = analysed
    bt = cmp.extra["bias"].filter(pl.col("task") == "hate_speech")
    for who, path in zip(("base", "quant"), paths):
        d = qfair.open_dump(path)
        ch = d.choices.sort(["example_id", "choice"])
        ll = {}
        for eid, v in zip(*ch.select("example_id", "loglik")):
            ll.setdefault(eid, []).append(v)
        ex = d.examples
        score = np.array([np.exp(ll[e][1]) / (np.exp(ll[e][0]) + np.exp(ll[e][1])) for e in ex["example_id"]])
        y = ex["label"].to_numpy()
        ids = [json.loads(x)["identities"] for x in ex["extras"]]
        assert get(bt, "overall_auc")[who] == pytest.approx(sk_auc(y, score))
        for g in ("women", "muslim", "disability"):
            inside = np.array([g in v for v in ids])
            for metric, keep in slices(y, inside).items():
                assert get(bt, metric, g)[who] == pytest.approx(sk_auc(y[keep], score[keep]))
    s = cmp.summary.filter((pl.col("kind") == "bias") & (pl.col("task") == "hate_speech"))
    assert {"overall_auc", "final_metric", "subgroup_auc_disparity", "subgroup_auc_change_disparity"} <= set(s["metric"])
    g = cmp.groups.filter((pl.col("kind") == "bias") & (pl.col("task") == "hate_speech"))
    assert {"subgroup_auc", "bpsn_auc", "bnsp_auc"} == set(g["metric"])
    assert {"women", "muslim", "black", "gay", "jewish", "disability"} <= set(g["group"])


def test_report_draws_the_identity_aucs(tmp_path):
    pytest.importorskip("matplotlib")
    from test_bias_scores import report_section

    docs = list(T.get("hate_speech").docs())
    r, section = report_section(tmp_path, docs, "bias")
    assert "id='fig-bias_hate_speech'" in section and (r.out / "bias_hate_speech.png").is_file()
    assert "final_metric" in section and "subgroup_auc_change_disparity" in section


def test_dump_account_reports_the_final_metric(analysed):
    from qfair.analyze.examples import task_kinds

    import qfair
    from qfair.dump.summary import task_metrics

    paths, cmp = analysed
    d = qfair.open_dump(paths[0])
    m = task_metrics(d.examples, d.choices, task_kinds(d.manifest))["hate_speech"]
    bt = cmp.extra["bias"]
    assert m["final_metric"] == pytest.approx(get(bt, "final_metric")["base"])
    assert m["overall_auc"] == pytest.approx(get(bt, "overall_auc")["base"])
