"""`qfair report`: the views behind the figures against independent oracles
(numpy/scipy/statsmodels), reading Parquet or CSV analysis directories,
provenance with and without provenance.json, and one-line errors."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from qfair.report import ReportError, build_report, load_analysis
from qfair.report.data import AnalysisData
from qfair.report.figures import (
    KL_PERCENTILES,
    accuracy_view,
    flip_table,
    gold_tasks,
    group_view,
    kl_percentiles,
    range_label,
    strata_view,
)
from qfair.report.text import compact_rows, compact_summary, headline_rows, reading

TASKS = ["piqa", "arc_easy", "crows_pairs_english"]
GOLD = ["piqa", "arc_easy"]  # the tasks whose kind has gold answers


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """A real analysis directory: a tiny Llama, full precision vs bnb-nf4, 6 examples per task."""
    from qfair.analyze import compare
    from qfair.dump.run import dump
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("report")
    model = make_tiny_model("llama", root / "tiny", seed=5)
    for q in ("none", "bnb-nf4"):
        dump(root / ("base" if q == "none" else q), model=str(model), quant=q, tasks=TASKS, limit=6,
             progress=False)
    cmp = compare(root / "base", [root / "bnb-nf4"], bootstrap=300, seed=1)
    cmp.write(root / "analysis", formats=("parquet", "csv", "md"))
    return root


# ---------------------------------------------------------------------------
# oracles for the views


def _llamacpp_percentile(x: np.ndarray, p: float) -> float:
    """Linear interpolation between order statistics at rank p/100 * (n - 1), written out."""
    xs = np.sort(x)
    r = p / 100 * (xs.size - 1)
    lo = int(math.floor(r))
    hi = min(lo + 1, xs.size - 1)
    return float(xs[lo] + (r - lo) * (xs[hi] - xs[lo]))


@pytest.mark.parametrize("case", ["lognormal", "zeros_and_spikes", "single", "two", "with_nan"])
def test_kl_percentiles_against_order_statistics_and_scipy(case):
    rng = np.random.default_rng(7)
    x = {"lognormal": rng.lognormal(-4, 2, 5001),
         "zeros_and_spikes": np.r_[np.zeros(50), rng.exponential(1e-3, 40), [30.0, 12.0]],
         "single": np.array([0.25]),
         "two": np.array([0.0, 1.0]),
         "with_nan": np.r_[rng.exponential(0.1, 100), [np.nan, np.inf]]}[case]
    st = kl_percentiles(x)
    fin = x[np.isfinite(x)]
    assert st["n"] == fin.size
    assert st["mean"] == pytest.approx(fin.mean(), rel=1e-12)
    assert st["max"] == fin.max() and st["min"] == fin.min()
    if fin.size > 1:
        assert st["stderr"] == pytest.approx(sps.sem(fin), rel=1e-12)
    for p in KL_PERCENTILES:
        assert st[f"p{p:g}"] == pytest.approx(_llamacpp_percentile(fin, p), rel=1e-12, abs=1e-15)
        assert st[f"p{p:g}"] == pytest.approx(sps.scoreatpercentile(fin, p), rel=1e-12, abs=1e-15)


def _synthetic(n_per_task=300, seed=0) -> AnalysisData:
    """Analysis tables with a known structure: two quantized models, two tasks."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, shift in (("q8", 0.02), ("q4", 0.1)):
        for t in ("a", "b"):
            bconf = rng.uniform(0.25, 1.0, n_per_task)
            dconf = rng.normal(-shift * bconf, 0.05)
            bc = (rng.uniform(size=n_per_task) < bconf).astype(float)
            flip = rng.uniform(size=n_per_task) < shift * 2
            qc = np.where(flip, 1 - bc, bc)
            rows.append(pl.DataFrame({"model": m, "task": t, "example_id": [f"{t}/{i}" for i in range(n_per_task)],
                                      "base_conf": bconf, "quant_conf": np.clip(bconf + dconf, 0, 1),
                                      "base_correct": bc, "quant_correct": qc}))
    ex = pl.concat(rows)
    return AnalysisData(Path("."), summary=pl.DataFrame({"model": ["q8", "q4"], "task": ["a", "a"],
                                                              "metric": ["acc", "acc"]}),
                        examples=ex, tokens=pl.DataFrame(), calibration=pl.DataFrame(), strata=pl.DataFrame(),
                        groups=pl.DataFrame(),
                        settings={"models": ["q8", "q4"], "n_strata": 4, "bootstrap": 4000, "seed": 3,
                                  "confidence": 0.9})


def test_strata_table_against_numpy_scipy_and_statsmodels():
    """The analysis' strata (the report draws them, it no longer bootstraps itself): equal-count
    strata of base confidence, per-stratum means with bootstrap intervals, Wilson flip rates."""
    from qfair.analyze.summary import StatsConfig, strata_rows

    rng = np.random.default_rng(0)
    n = 400
    bconf = rng.uniform(0.25, 1.0, n)
    dconf = rng.normal(-0.1 * bconf, 0.05)
    bc = (rng.uniform(size=n) < bconf).astype(float)
    qc = np.where(rng.uniform(size=n) < 0.15, 1 - bc, bc)
    bp, qp = bconf * 0.8, np.clip(bconf * 0.8 + dconf, 0, 1)
    j = pl.DataFrame({"kind": "multiple_choice", "base_conf": bconf, "quant_conf": np.clip(bconf + dconf, 0, 1),
                      "base_correct": bc, "quant_correct": qc, "base_pred": np.zeros(n), "quant_pred": np.zeros(n),
                      "base_p_gold": bp, "quant_p_gold": qp, "choice_js": np.abs(dconf)})
    st = strata_rows(j, StatsConfig(resamples=4000, seed=3, confidence=0.9), "confidence", 4)
    edges = np.quantile(bconf, [0.25, 0.5, 0.75])
    s = np.digitize(bconf, edges, right=True)  # value == edge goes to the lower stratum
    assert st["stratum"].to_list() == [0, 1, 2, 3] and st["n"].sum() == n
    dq = j["quant_conf"].to_numpy() - bconf
    for r in st.iter_rows(named=True):
        m = s == r["stratum"]
        assert r["n"] == m.sum()
        lo, hi = proportion_confint(int((bc != qc)[m].sum()), int(m.sum()), alpha=0.1, method="wilson")
        assert (r["flip_ci_low"], r["flip_ci_high"]) == pytest.approx((lo, hi), abs=1e-9)
        for col, v in (("delta_conf", dq), ("delta_acc", qc - bc), ("delta_p_gold", qp - bp),
                       ("choice_js", np.abs(dconf))):
            assert r[col] == pytest.approx(v[m].mean())
            ref = sps.bootstrap((v[m],), np.mean, n_resamples=4000, confidence_level=0.9,
                                method="percentile" if m.sum() < 30 else "bca", random_state=0).confidence_interval
            se = v[m].std() / math.sqrt(m.sum())
            assert r[f"{col}_low"] == pytest.approx(ref.low, abs=0.2 * se + 1e-12), col
            assert r[f"{col}_high"] == pytest.approx(ref.high, abs=0.2 * se + 1e-12), col


def test_strata_view_reads_the_analysis(analysis):
    data = load_analysis(analysis / "analysis")
    v = strata_view(data)
    assert v.height == data.strata.height and set(v["task"]) == set(TASKS)
    assert {"choice_js_low", "delta_p_gold_high", "delta_acc"} <= set(v.columns)


def test_range_labels_keep_distinct_ends_distinct():
    assert range_label(0.31, 0.5) == "0.31–0.50"
    assert range_label(0.99996, 0.99999) == "0.99996–0.99999"     # not "1.000–1.000"
    assert range_label(0.999999953, 1.0) != "1.000000–1.000000"
    assert range_label(0.4, 0.4) == "0.4"


def test_accuracy_view_wilson_against_statsmodels():
    data = _synthetic(n_per_task=57, seed=4)
    data.examples = data.examples.with_columns(pl.lit(4).alias("n_choices"))
    v = accuracy_view(data)
    assert (v["chance"] == 0.25).all()
    assert set(v["model"]) == {"base", "q8", "q4"}
    ex = data.examples
    for r in v.iter_rows(named=True):
        src = "q8" if r["model"] == "base" else r["model"]
        col = "base_correct" if r["model"] == "base" else "quant_correct"
        c = ex.filter((pl.col("model") == src) & (pl.col("task") == r["task"]))[col].to_numpy()
        assert (r["n"], r["correct"]) == (c.size, int(c.sum()))
        lo, hi = proportion_confint(int(c.sum()), c.size, alpha=0.1, method="wilson")
        assert (r["acc_low"], r["acc_high"]) == pytest.approx((lo, hi), abs=1e-9)


def test_flip_table_counts_match_the_examples_table(analysis):
    data = load_analysis(analysis / "analysis")
    assert gold_tasks(data) == GOLD
    ft = flip_table(data)
    assert ft["task"].to_list() == GOLD  # CrowS-Pairs has no gold answer: no flips
    for r in ft.iter_rows(named=True):
        e = data.examples.filter((pl.col("model") == r["model"]) & (pl.col("task") == r["task"]))
        b, q = e["base_correct"].to_numpy(), e["quant_correct"].to_numpy()
        assert r["n"] == e.height
        assert r["c2i"] == int(((b == 1) & (q == 0)).sum())
        assert r["i2c"] == int(((b == 0) & (q == 1)).sum())
        assert r["changed"] == int((e["base_pred"] != e["quant_pred"]).sum())
        bb, cc = r["c2i"], r["i2c"]
        want = 1.0 if bb + cc == 0 else sps.binomtest(bb, bb + cc, 0.5).pvalue
        assert r["p_mcnemar"] == pytest.approx(want, rel=1e-9)
    assert set(accuracy_view(data)["task"]) == set(GOLD)


def test_report_figures_follow_the_task_kind(analysis, tmp_path):
    r = build_report(analysis / "analysis", tmp_path / "rep")
    names = {p.stem for p in r.figures}
    assert {f"reliability_{t}" for t in GOLD} <= names and "reliability_crows_pairs_english" not in names
    assert {"confidence_strata", "uncertainty_tests", "accuracy", "flips", "groups_crows_pairs_english"} <= names
    data = load_analysis(analysis / "analysis")
    head = headline_rows(data.summary, data.models)
    assert [(x["task"], x["metric"]) for x in head] == [("piqa", "acc"), ("arc_easy", "acc"),
                                                          ("crows_pairs_english", "pct_stereotype"),
                                                          ("crows_pairs_english", "likelihood_diff")]
    crows = [x for x in head if x["task"] == "crows_pairs_english"]
    assert all(x["c2i"] is None and x["d_ece"] is None for x in crows)
    html = r.html.read_text(encoding="utf-8")
    assert "pct_stereotype" in html and "incorrect → correct" in html


def test_group_view_keeps_multi_group_tasks_sorted_by_effect():
    rows = []
    for m, scale in (("q8", 1.0), ("q4", 3.0)):
        for g, d in (("age", 0.01), ("gender", -0.2), ("race", 0.05)):
            rows.append({"model": m, "task": "crows_pairs_english", "task_kind": "crows_pairs", "group": g,
                         "metric": "pct_stereotype", "n": 10, "diff": d * scale, "ci_low": d * scale - 0.1,
                         "ci_high": d * scale + 0.1})
            rows.append({"model": m, "task": "crows_pairs_english", "task_kind": "crows_pairs", "group": g,
                         "metric": "acc", "n": 10, "diff": 0.9, "ci_low": 0.0, "ci_high": 1.0})
        rows.append({"model": m, "task": "xstorycloze_en", "task_kind": "multiple_choice", "group": "en",
                     "metric": "acc", "n": 10, "diff": 0.5, "ci_low": 0.0, "ci_high": 1.0})
    data = _synthetic()
    data.groups = pl.DataFrame(rows)
    v = group_view(data)
    assert set(v["task"]) == {"crows_pairs_english"}  # one group only: not a group comparison
    assert set(v["metric"]) == {"pct_stereotype"}
    assert v.filter(pl.col("model") == "q8")["group"].to_list() == ["gender", "race", "age"]


def _summary_rows():
    out = []
    for m in ("q8", "q4"):
        for t, kind, n in (("a", "multiple_choice", 40), ("b", "mc2", 25), ("c", "crows_pairs", 30)):
            rows = [("acc", 0.6, 0.55, -0.05, -0.1, 0.0, 0.3), ("ece", 0.1, 0.15, 0.05, 0.01, 0.09, 0.02),
                    ("confidence", 0.7, 0.65, -0.05, -0.07, -0.03, 0.001),
                    ("kl_pq", None, None, 0.031, 0.02, 0.04, None), ("flips_c2i", None, None, 4 / n, 0, 0.2, None),
                    ("flips_i2c", None, None, 2 / n, 0, 0.1, None), ("flips", None, None, 6 / n, 0, 0.3, None)]
            if kind == "mc2":
                rows.append(("mc2", 0.40, 0.30, -0.10, -0.15, -0.05, 0.0001))
            if kind == "crows_pairs":
                rows = [r for r in rows if r[0] in ("confidence", "kl_pq")]
                rows += [("pct_stereotype", 0.55, 0.70, 0.15, 0.05, 0.25, 0.003),
                         ("pct_stereotype_from_neutral", 0.05, 0.20, 0.15, 0.05, 0.25, 0.003),
                         ("likelihood_diff", 3.2, 3.889, 0.689, 0.25, 1.13, 0.0028)]
            for metric, base, quant, diff, lo, hi, p in rows:
                out.append({"model": m, "task": t, "task_kind": kind, "metric": metric, "n": n, "base": base,
                            "quant": quant, "diff": diff, "ci_low": lo, "ci_high": hi, "p": p,
                            "p_holm": None if p is None else min(1.0, 30 * p),
                            "p_mcnemar": 0.69 if metric == "flips" else None})
    return pl.DataFrame(out)


def test_headline_metric_and_reading_follow_the_task_kind():
    s = _summary_rows()
    rows = headline_rows(s, ["q8", "q4"])
    assert [(r["task"], r["metric"]) for r in rows[:4]] == [("a", "acc"), ("b", "mc2"), ("b", "acc"),
                                                            ("c", "pct_stereotype")]
    by = {(r["model"], r["task"], r["metric"]): r for r in rows}
    # accuracy -0.05 with an interval touching 0: not significant
    assert by[("q8", "a", "acc")]["reading"] == "n.s."
    # mc2 down and significant after Holm: worse (higher is better)
    assert by[("q8", "b", "mc2")]["reading"] == "worse"
    # CrowS-Pairs: further from the 50 % neutral point, unadjusted only
    assert by[("q8", "c", "pct_stereotype")]["reading"] == "away from 50%, raw"
    # likelihood_diff up (lower is better), p = 0.0028 -> p_holm 0.084: worse before adjustment only
    assert by[("q8", "c", "likelihood_diff")]["reading"] == "worse, raw"
    # no flips or calibration for a kind without gold answers
    assert by[("q8", "c", "pct_stereotype")]["c2i"] is None and by[("q8", "c", "pct_stereotype")]["d_ece"] is None
    assert (by[("q8", "a", "acc")]["c2i"], by[("q8", "a", "acc")]["i2c"]) == (4, 2)
    assert by[("q8", "a", "acc")]["p_mcnemar"] == 0.69 and by[("q8", "a", "acc")]["kl"] == 0.031


def test_reading_words():
    up = {"diff": 0.1, "p": 0.01, "p_holm": 0.02}
    assert reading(up, +1) == "better" and reading(up, -1) == "worse" and reading(up, 0) == "up"
    assert reading({**up, "p": 0.2, "p_holm": 1.0}, +1) == "n.s."
    assert reading(None, 1, neutral=0.5, neutral_row={"diff": -0.1, "p": 0.001, "p_holm": 0.01}) == "toward 50%"


def test_reading_names_the_family_and_uses_its_adjustment():
    """A primary row is read by Holm over the primary family (p_holm), a secondary one by
    Benjamini-Hochberg within its class (p_bh), and the word says which."""
    prim = {"diff": -0.1, "p": 0.001, "p_holm": 0.01, "p_bh": 0.9, "family": "primary"}
    assert reading(prim, +1) == "worse"
    assert reading({**prim, "p_holm": 0.2, "p_bh": 0.01}, +1) == "worse, raw"  # BH does not count for it
    sec = {**prim, "family": "secondary", "p_holm": 0.9, "p_bh": 0.02}
    assert reading(sec, +1) == "worse, secondary"
    assert reading({**sec, "p_holm": 0.01, "p_bh": 0.2}, +1) == "worse, raw"  # Holm does not count for it
    assert reading({**sec, "p": 0.3}, +1) == "n.s."
    s = _summary_rows().with_columns(
        pl.when(pl.col("metric").is_in(["acc", "mc2", "pct_stereotype_from_neutral"]) & pl.col("p").is_not_null())
        .then(pl.lit("primary")).when(pl.col("p").is_not_null()).then(pl.lit("secondary")).alias("family"),
        pl.col("p").alias("p_bh"))
    by = {(r["model"], r["task"], r["metric"]): r for r in headline_rows(s, ["q8"])}
    # likelihood_diff is CrowS-Pairs' second headline metric: secondary, p_bh = p = 0.0028 passes
    assert by[("q8", "c", "likelihood_diff")]["reading"] == "worse, secondary"
    assert by[("q8", "c", "likelihood_diff")]["p_adj"] == 0.0028 and by[("q8", "c", "likelihood_diff")]["family"] == "secondary"
    # pct_stereotype is read (and adjusted) by its from-neutral row: primary, p_holm 0.09
    assert by[("q8", "c", "pct_stereotype")]["reading"] == "away from 50%, raw"
    assert by[("q8", "c", "pct_stereotype")]["family"] == "primary" and by[("q8", "c", "pct_stereotype")]["p_adj"] == 0.09


def test_compact_summary_rows_and_layout():
    s = _summary_rows()
    rows = compact_rows(s, ["q8", "q4"])
    assert [(r["model"], r["task"]) for r in rows] == [(m, t) for m in ("q8", "q4") for t in ("a", "b", "c")]
    r = rows[0]
    assert (r["n"], r["c2i"], r["i2c"]) == (40, 4, 2)
    assert (r["base"], r["quant"], r["diff"], r["kl"]) == (0.6, 0.55, -0.05, 0.031)
    text = compact_summary(s, ["q8", "q4"])
    lines = text.splitlines()
    assert "base vs q8" in lines and "base vs q4" in lines
    row = next(line for line in lines if line.startswith("a "))
    assert "acc" in row and "0.600→0.550" in row and "-0.050 [-0.10,+0.00]" in row and "4/2" in row
    assert "0.0310" in row and "n.s." in row
    crows = [line for line in lines if "pct_stereotype" in line or "likelihood_diff" in line]
    assert len(crows) == 4 and all("4/2" not in line for line in crows)
    assert any("3.200→3.889" in line and "+0.689" in line and "worse, raw" in line for line in crows)
    assert max(map(len, lines)) <= 110


# ---------------------------------------------------------------------------
# reading analysis directories


def test_csv_only_directory_reads_like_parquet(analysis, tmp_path):
    src = analysis / "analysis"
    d = tmp_path / "csv_only"
    d.mkdir()
    for f in src.iterdir():
        if f.suffix in (".csv", ".json"):
            shutil.copy(f, d / f.name)
    a, b = load_analysis(src), load_analysis(d)
    for name in ("summary", "examples", "calibration", "strata", "groups"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        for c in x.columns:
            if x.schema[c].is_numeric():
                np.testing.assert_allclose(x[c].cast(pl.Float64).to_numpy(), y[c].cast(pl.Float64).to_numpy(),
                                           rtol=1e-12, equal_nan=True, err_msg=f"{name}.{c}")
    r = build_report(d, tmp_path / "rep")
    assert r.html.is_file() and len(r.figures) >= len(TASKS) + 4


def test_provenance_from_manifests_then_missing_after_move(analysis, tmp_path):
    d = tmp_path / "a"
    shutil.copytree(analysis / "analysis", d)
    prov = load_analysis(d).provenance
    assert list(prov["dumps"]) == ["base", "bnb-nf4"]
    assert prov["dumps"]["bnb-nf4"]["manifest"]["model"]["quantization"]["name"] == "bnb-nf4"
    assert prov["analysis"]["bootstrap"] == 300
    # settings.json paths pointing nowhere: the report still builds and says what is missing
    s = json.loads((d / "settings.json").read_text())
    s["settings"]["base"] = str(tmp_path / "gone" / "base")
    s["settings"]["quant"] = [str(tmp_path / "gone" / "bnb-nf4")]
    (d / "settings.json").write_text(json.dumps(s))
    r = build_report(d)
    assert any("gone/base/manifest.json not found" in n for n in r.notes)
    assert "manifest unavailable" in r.html.read_text()


def test_provenance_json_travels_with_the_directory_and_stale_one_is_ignored(analysis, tmp_path):
    from qfair.report import write_provenance

    d = tmp_path / "a"
    shutil.copytree(analysis / "analysis", d)
    write_provenance(d)
    saved = json.loads((d / "provenance.json").read_text())
    assert saved["dumps"]["base"]["manifest"]["run"]["seed"] == 0
    moved = tmp_path / "moved"
    shutil.move(str(d), moved)  # dumps are still where settings.json says, but use the copy
    prov = load_analysis(moved).provenance
    assert prov["source"].endswith("provenance.json")
    # a provenance.json describing other dumps is not trusted
    saved["dumps"] = {"base": {"role": "base", "path": "/elsewhere/base"}}
    (moved / "provenance.json").write_text(json.dumps(saved))
    prov = load_analysis(moved).provenance
    assert "manifest" in prov["dumps"]["base"] and prov["dumps"]["base"]["path"] != "/elsewhere/base"


@pytest.mark.parametrize("damage, needle", [
    ("rm_summary", "summary.parquet: missing"),
    ("corrupt_examples", "examples.parquet: cannot be read"),
    ("drop_column", "column 'metric' missing"),
    ("bad_settings", "settings.json: not valid JSON"),
])
def test_bad_analysis_dir_gives_one_line_error(analysis, tmp_path, damage, needle):
    from qfair.cli import main

    d = tmp_path / "a"
    shutil.copytree(analysis / "analysis", d)
    if damage == "rm_summary":
        (d / "summary.parquet").unlink()
        (d / "summary.csv").unlink()
    elif damage == "corrupt_examples":
        (d / "examples.parquet").write_bytes(b"PAR1 not really")
    elif damage == "drop_column":
        pl.read_parquet(d / "summary.parquet").drop("metric").write_parquet(d / "summary.parquet")
    elif damage == "bad_settings":
        (d / "settings.json").write_text("{not json")
    with pytest.raises(ReportError, match=needle.replace("(", r"\(")):
        load_analysis(d)
    res = CliRunner().invoke(main, ["report", str(d), "--no-progress"])
    assert res.exit_code == 1
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and needle in err[0]


def test_report_cli_default_out(analysis, tmp_path):
    from qfair.cli import main

    d = tmp_path / "a"
    shutil.copytree(analysis / "analysis", d)
    res = CliRunner().invoke(main, ["report", str(d), "--no-progress", "--title", "T <&>"])
    assert res.exit_code == 0, res.output
    html = d / "report" / "report.html"
    assert res.stdout.rstrip().splitlines()[-1] == f"report: {html.resolve()}"
    text = html.read_text()
    assert "<title>T &lt;&amp;&gt;</title>" in text
    assert (d / "report" / "provenance.json").is_file()


def test_missing_matplotlib_is_a_one_line_error(analysis, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(ReportError, match=r"needs matplotlib: pip install 'qfair\[report\]'"):
        build_report(analysis / "analysis")


def test_token_kl_figure_on_a_large_table_draws_quantiles():
    import matplotlib.pyplot as plt

    from qfair.report.figures import CDF_POINTS, fig_token_kl

    rng = np.random.default_rng(2)
    kl = np.r_[rng.lognormal(-3, 1.5, 60_000), np.zeros(10)]
    data = _synthetic(n_per_task=5)
    data.tokens = pl.DataFrame({"model": ["q8"] * kl.size, "kl_pq": kl})
    data.settings["models"] = ["q8"]
    data.summary = pl.DataFrame({"model": ["q8"], "task": ["a"], "metric": ["acc"]})
    (f,) = fig_token_kl(data)
    curve = f.fig.axes[0].lines[0]
    x, y = curve.get_xdata(), curve.get_ydata()
    assert x.size == CDF_POINTS and y[0] == 0 and y[-1] == 1
    i = np.searchsorted(y, 0.5)
    assert x[i] == pytest.approx(np.median(kl), rel=1e-9)
    assert x.min() > 0  # zeros drawn at the floor on the log axis
    assert "drawn at" in f.caption
    plt.close(f.fig)
