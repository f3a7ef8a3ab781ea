"""``qfair study``: the grid in one command.

Oracles: each pair's own analysis (the study table must carry its summary rows
unchanged), each dump's manifest (bits per weight and bytes measured at load),
the dumps' actual row counts (the dry run's prediction), and the files on disk
(a second run rewrites nothing).
"""
from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")
pytest.importorskip("matplotlib")

from click.testing import CliRunner  # noqa: E402

from qfair.cli import main  # noqa: E402
from qfair.study import StudyError, load_study, make_plan, run_study  # noqa: E402
from qfair.study.config import parse_size  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny Llama and OPT models of two sizes (1 and 3 decoder layers)."""
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("study-models")
    for arch in ("llama", "opt"):
        for layers in (1, 3):
            make_tiny_model(arch, root / f"{arch}-{layers}", seed=0, layers=layers)
    return root


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


GRID = """\
    name = "tiny-grid"
    quant = ["bnb-int8", "bnb-nf4"]
    tasks = ["piqa", "crows_pairs_english"]

    [[models]]
    id = "{root}/llama-1"
    family = "llama"

    [[models]]
    id = "{root}/llama-3"
    family = "llama"

    [[models]]
    path = "{root}/opt-1"
    label = "opt-small"

    [[models]]
    id = "{root}/opt-3"
    label = "opt-large"
    size = "0.53M"

    [dump]
    limit = 4
    threads = 1

    [analysis]
    bootstrap = 200
"""


@pytest.fixture(scope="module")
def grid(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    sf = _write(root / "study.toml", GRID.format(root=models))
    out = root / "out"
    dry = []
    run_study(sf, out, dry_run=True, log=dry.append)
    lines = []
    res = run_study(sf, out, log=lines.append)
    return {"file": sf, "out": out, "res": res, "dry": "\n".join(dry), "log": "\n".join(lines)}


def test_grid_runs_end_to_end(grid):
    res, out = grid["res"], grid["out"]
    assert not res.failed
    t = pl.read_parquet(out / "results.parquet")
    pairs = t.select("model", "spec").unique().sort("model", "spec").rows()
    assert pairs == [(m, s) for m in ("llama-1", "llama-3", "opt-large", "opt-small") for s in ("bnb-int8", "bnb-nf4")]
    assert set(t["task"].unique()) == {"piqa", "crows_pairs_english"}
    # the study table carries each pair's own summary rows unchanged
    for model, spec in pairs:
        pair = pl.read_parquet(out / "analyses" / model / "tasks" / spec / "summary.parquet")
        mine = t.filter((pl.col("model") == model) & (pl.col("spec") == spec))
        assert mine.height == pair.height
        cols = ["task", "metric", "base", "quant", "diff", "ci_low", "ci_high", "p", "p_holm"]
        assert mine.select(cols).sort("task", "metric").equals(pair.select(cols).sort("task", "metric"))
        # the summary's multiple-testing family travels as test_family ("family" is the model's)
        assert mine.select("task", "metric", "test_family").sort("task", "metric").rows() == \
            pair.select("task", "metric", "family").sort("task", "metric").rows()
        # sizes and bits are those measured when each dump's model was loaded
        qm = json.loads((out / "dumps" / model / "tasks" / spec / "manifest.json").read_text())["model"]["size"]
        bm = json.loads((out / "dumps" / model / "tasks" / "none" / "manifest.json").read_text())["model"]["size"]
        row = mine.row(0, named=True)
        assert row["bits_per_weight"] == qm["bits_per_weight"] == pytest.approx(8 * qm["stored_bytes"] / qm["n_weights"])
        assert row["model_bytes"] == qm["stored_bytes"] and row["base_model_bytes"] == bm["stored_bytes"]
        assert row["base_bits_per_weight"] == 32.0
        assert row["size"] == (0.53e6 if model == "opt-large" else bm["n_weights"])
    assert t.filter(pl.col("model") == "llama-1")["family"].unique().to_list() == ["llama"]
    assert t.filter(pl.col("model") == "opt-small")["family"].unique().to_list() == ["opt"]  # measured model_type
    # nf4 stores fewer bits than int8, which stores fewer than float32
    bits = t.group_by("model", "spec").agg(pl.col("bits_per_weight").first())
    for m in ("llama-1", "llama-3", "opt-small", "opt-large"):
        b = dict(bits.filter(pl.col("model") == m).select("spec", "bits_per_weight").rows())
        assert b["bnb-nf4"] < b["bnb-int8"] < 32


def test_figures_and_report_link_every_pair(grid):
    out = grid["out"]
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    for task, metric in (("piqa", "acc"), ("piqa", "kl_pq"), ("crows_pairs_english", "pct_stereotype")):
        assert f"size_tasks_{task}_{metric}.png" in figs and f"bits_tasks_{task}_{metric}.png" in figs
    page = (out / "report.html").read_text()
    for model in ("llama-1", "llama-3", "opt-small", "opt-large"):
        for spec in ("bnb-int8", "bnb-nf4"):
            rel = f"analyses/{model}/tasks/{spec}/report/report.html"
            assert f"href='{rel}'" in page and (out / rel).is_file()
    assert page.count("<img ") == len(figs)
    assert (out / "results.csv").is_file() and "| model |" in (out / "results.md").read_text()


def test_dry_run_predicts_the_rows_written(grid):
    out = grid["out"]
    for model in ("llama-1", "opt-large"):
        m = json.loads((out / "dumps" / model / "tasks" / "none" / "manifest.json").read_text())
        n, v = m["storage"]["n_rows"], m["vocab_size"]
        line = next(x for x in grid["dry"].splitlines() if x.strip().startswith(f"{model}/tasks/none "))
        assert f" {n:,} " in line and "run" in line
        kb = n * v * 2 / 1e3
        assert (f"{kb:.1f} kB" in line) if kb < 1e3 else (f"{kb / 1e3:.1f} MB" in line)
    assert "12 of 12 dumps" in grid["dry"] and "8 of 8 analyses" in grid["dry"]


def test_second_run_rewrites_nothing_and_an_option_change_reanalyses_only(grid, tmp_path):
    out, sf = grid["out"], grid["file"]
    dumps = {p: p.stat().st_mtime_ns for p in (out / "dumps").rglob("manifest.json")}
    lines = []
    res = run_study(sf, out, log=lines.append)
    assert not res.failed
    assert all(d.action == "skip" for d in res.plan.dumps) and all(a.action == "skip" for a in res.plan.analyses)
    assert {p: p.stat().st_mtime_ns for p in dumps} == dumps
    # another bootstrap count: every pair analysed again, no dump rewritten
    sf2 = _write(tmp_path / "study.toml", sf.read_text().replace("bootstrap = 200", "bootstrap = 150"))
    plan = make_plan(load_study(sf2), out)
    assert all(d.action == "skip" for d in plan.dumps)
    assert all(a.action == "run" and "changed" in a.why for a in plan.analyses)
    # another limit: every dump redone
    sf3 = _write(tmp_path / "study3.toml", sf.read_text().replace("limit = 4", "limit = 3"))
    plan = make_plan(load_study(sf3), out)
    assert all(d.action == "redo" and d.why == "made with other settings" for d in plan.dumps)


def test_interrupted_dump_is_resumed(grid, tmp_path):
    import shutil

    out, sf = grid["out"], grid["file"]
    # make one dump partial, as an interrupted run leaves it
    d = out / "dumps" / "llama-1" / "tasks" / "bnb-nf4"
    m = json.loads((d / "manifest.json").read_text())
    plan = make_plan(load_study(sf), out)
    job = next(j for j in plan.dumps if j.key == "llama-1/tasks/bnb-nf4")
    assert job.action == "skip"
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    m["status"] = "partial"
    (d / "manifest.json").write_text(json.dumps(m))
    try:
        plan = make_plan(load_study(sf), out)
        job = next(j for j in plan.dumps if j.key == "llama-1/tasks/bnb-nf4")
        assert (job.action, job.why) == ("resume", "interrupted")
    finally:
        shutil.rmtree(d)
        shutil.copytree(copy, d)


def test_generation_and_text_groups(models, tmp_path):
    text = tmp_path / "corpus.txt"
    words = "the river keeps its own calendar rising in spring and falling by late summer".split()
    text.write_text(" ".join(words[(i * 7) % len(words)] for i in range(300)) + "\n")
    sf = _write(tmp_path / "study.toml", f"""\
        quant = ["bnb-int8"]

        [[models]]
        id = "{models}/llama-1"

        [[tasks]]
        name = "gen"
        tasks = ["gen_prompts"]
        limit = 2
        max_new_tokens = 4

        [[tasks]]
        name = "wiki"
        text = "corpus.txt"
        ctx = 32
        chunks = 3

        [dump]
        threads = 1

        [analysis]
        bootstrap = 100
        report = false
        """)
    res = run_study(sf, tmp_path / "out", log=lambda s: None)
    assert not res.failed
    out = tmp_path / "out"
    q = json.loads((out / "dumps" / "llama-1" / "gen" / "bnb-int8" / "manifest.json").read_text())
    ref = q["generation"]["reference"]
    assert ref["path"] == str(out / "dumps" / "llama-1" / "gen" / "none")  # teacher-forced on the base texts
    assert json.loads((out / "dumps" / "llama-1" / "wiki" / "none" / "manifest.json").read_text())["kind"] == "text"
    t = res.table
    assert set(t["group"].unique()) == {"gen", "wiki"}
    assert t.filter((pl.col("group") == "wiki") & (pl.col("metric") == "kl_pq")).height == 1


@pytest.mark.slow
def test_submitit_local_executor_runs_the_same_jobs(models, tmp_path):
    """The slurm path (job arrays through submitit), run by submitit's local executor."""
    pytest.importorskip("submitit")
    sf = _write(tmp_path / "study.toml", f"""\
        quant = ["bnb-int8"]
        tasks = ["piqa"]

        [[models]]
        id = "{models}/llama-1"

        [dump]
        limit = 2
        threads = 1

        [analysis]
        bootstrap = 100
        report = false

        [slurm]
        time_min = 10
        cpus_per_job = 1
        """)
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        res = run_study(sf, tmp_path / "out", executor="submitit-local", log=lambda s: None)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    assert not res.failed
    logs = list((tmp_path / "out" / "slurm").glob("*_log.out"))
    assert len(logs) == 3  # two dumps (one array), one analysis
    local = run_study(sf, tmp_path / "out", log=lambda s: None)  # nothing left to do
    assert all(d.action == "skip" for d in local.plan.dumps)
    assert res.table.filter(pl.col("metric") == "acc")["diff"].len() == 1


# ---------------------------------------------------------------------------
# the study file
# ---------------------------------------------------------------------------

def test_sizes_parse():
    assert parse_size("560M") == 560e6 and parse_size("7B") == 7e9 and parse_size("1.3b") == 1.3e9
    assert parse_size(125e6) == 125e6 and parse_size("125e6") == 125e6
    for bad in ("big", "-1", 0, True, "7Q"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize("body, msg", [
    ('quant = ["bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\nquant = ["x"]\n',
     "field 'models[0].quant' is not a known field"),
    ('quant = ["bnb-int9"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\n', "field 'quant[0]'"),
    ('quant = ["bnb-int8"]\ntasks = ["piqa"]\n', "field 'models' missing or empty"),
    ('quant = ["bnb-int8"]\ntasks = ["nope"]\n[[models]]\nid = "m"\n', "field 'tasks'"),
    ('quant = ["bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\nsize = "huge"\n', "field 'models[0].size'"),
    ('quant = ["bnb-int8"]\n[[models]]\nid = "m"\n[[tasks]]\nname = "x"\ntasks = ["piqa", "gen_stories"]\n',
     "mixes generation tasks"),
    ('quant = ["bnb-int8"]\n[[models]]\nid = "m"\n[[tasks]]\nname = "x"\ntasks = ["piqa"]\nmax_new_tokens = 3\n',
     "is a generation option"),
    ('quant = ["bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\n[dump]\nstore = "topk:0"\n',
     "field 'dump.store'"),
    ('quant = ["bnb-int8", "bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\n', "clashing labels"),
    ('quant = ["bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "a/m"\n[[models]]\nid = "b/m"\n',
     "clashing labels"),
    ('quant = ["bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\n[analysis]\nconfidence = 2\n',
     "field 'analysis.confidence'"),
    ('quant = ["bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\n[slurm]\ngpus = 1\n',
     "field 'slurm.gpus' is not a known field"),
    ('quant = ["bnb-int8"\n', "not valid TOML"),
])
def test_bad_study_files_are_refused_with_the_field(tmp_path, body, msg):
    sf = tmp_path / "s.toml"
    sf.write_text(body)
    with pytest.raises(StudyError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        load_study(sf)


def test_cli_errors_are_one_line(tmp_path):
    sf = tmp_path / "s.toml"
    sf.write_text('quant = ["bnb-int8"]\ntasks = ["piqa"]\n[[models]]\nid = "m"\n')
    r = CliRunner().invoke(main, ["study", str(sf)])
    assert r.exit_code == 1 and "no output directory" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["study", str(sf), "--out", str(tmp_path / "o"), "--executor", "pbs"])
    assert r.exit_code == 2 and "pbs" in r.output
