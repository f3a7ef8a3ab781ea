"""The report's bias section: figures per bias task with base and quantized
bars and their intervals, the table of tested changes, and the section's
absence note when no bias task was analysed."""
from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest
from test_bias_scores import random_lls, write_dump

import qfair
import qfair.tasks as T

pytest.importorskip("matplotlib")


def _analysis(tmp_path, names):
    docs = [d for n in names for d in T.get(n, limit=12).docs()]
    base = write_dump(tmp_path / "base", docs, random_lls(docs, 1))
    quant = write_dump(tmp_path / "nf4", docs, random_lls(docs, 2))
    cmp = qfair.compare(base, quant, bootstrap=200, seed=0, tokens=False)
    out = tmp_path / "analysis"
    cmp.write(out)
    return cmp, out


def test_bias_section_has_a_figure_per_bias_task_and_the_tested_rows(tmp_path):
    from qfair.report import build_report

    names = ["bbq", "stereoset_intrasentence", "winogender_all", "piqa"]
    cmp, out = _analysis(tmp_path, names)
    assert (out / "bias.parquet").is_file() and (out / "bias.md").is_file()
    r = build_report(out)
    page = r.html.read_text(encoding="utf-8")
    section = page[page.index("<section id='bias'>"):page.index("<section id='summary'>")]
    for task in names[:3]:
        assert f"id='fig-bias_{task}'" in section
        assert (r.out / f"bias_{task}.png").is_file()
    assert "fig-bias_piqa" not in page
    assert "accuracy_amb_disparity" in section and "disamb_bias_score" in section and "gender_gap" in section and ">icat<" in section
    # every whole-task bias row of the analysis is in the section's first table
    n_whole = cmp.extra["bias"].filter((pl.col("axis") == "task") | pl.col("metric").str.ends_with("_disparity")).height
    first = section[section.index("<h3>Whole-task"):section.index("<details>")]
    assert len(re.findall(r"<tr", first)) == n_whole + 1       # + header
    assert "<a href='#bias'>Bias benchmarks</a>" in page


def test_report_without_bias_tasks_says_so(tmp_path):
    from qfair.report import build_report

    _, out = _analysis(tmp_path, ["piqa"])
    page = build_report(out).html.read_text(encoding="utf-8")
    assert "No bias benchmark in this analysis" in page


def test_marked_only_when_bootstrap_and_permutation_agree(tmp_path):
    from qfair.report.bias import SIG_COLUMN, load_bias
    from qfair.report.data import load_analysis

    _, out = _analysis(tmp_path, ["bbq"])
    bt = load_bias(load_analysis(out))
    both = np.maximum(bt["p_holm"].fill_nan(None).to_numpy().astype(float),
                      bt["p_perm_holm"].fill_nan(None).to_numpy().astype(float))
    got = bt[SIG_COLUMN].to_numpy().astype(float)
    ok = np.isfinite(both)
    np.testing.assert_allclose(got[ok], both[ok])
