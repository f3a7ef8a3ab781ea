"""`qfair analyze` on synthetic dumps: output files, printed summary, exit codes."""
from __future__ import annotations

import json

import polars as pl
import pytest
from click.testing import CliRunner
from test_analyze import make_corpus, make_rows, write_dump

from qfair.cli import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = make_corpus(1, n_per_task=10)
    b = make_rows(corpus, 4)
    q = make_rows(corpus, 5, base_rows=b, noise=0.5)
    return root, write_dump(root / "base", corpus, b), write_dump(root / "nf4", corpus, q)


def test_analyze_writes_tables_and_prints_summary(pair):
    root, base, nf4 = pair
    out = root / "out"
    r = CliRunner().invoke(main, ["analyze", str(base), str(nf4), "--out", str(out), "--bootstrap", "200",
                                  "--bins", "5", "--format", "parquet,md,latex", "--no-progress",
                                  "--strata", "entropy", "--n-strata", "3", "--topk", "1,3", "--print", "rows"])
    assert r.exit_code == 0, r.output
    assert "| model | task | metric |" in r.output and "kl_pq" in r.output
    assert (out / "summary.tex").is_file() and not (out / "summary.csv").exists()
    strata = pl.read_parquet(out / "strata.parquet")
    assert set(strata["by"]) == {"entropy"} and strata["stratum"].max() <= 2
    tokens = pl.read_parquet(out / "tokens.parquet")
    assert "overlap_at_3" in tokens.columns and "overlap_at_10" not in tokens.columns
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["bootstrap"] == 200 and settings["settings"]["models"] == ["nf4"]


def test_analyze_misaligned_is_one_line_error(pair, tmp_path):
    root, base, _ = pair
    other = write_dump(tmp_path / "other", make_corpus(2, n_per_task=10), make_rows(make_corpus(2, n_per_task=10), 1))
    r = CliRunner().invoke(main, ["analyze", str(base), str(other), "--out", str(tmp_path / "o"), "--bootstrap", "50"])
    assert r.exit_code == 1
    assert "Error:" in r.output and "not aligned" in r.output and len(r.output.strip().splitlines()) == 1


def test_analyze_not_a_dump_and_bad_options(pair, tmp_path):
    root, base, _ = pair
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["analyze", str(base), str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "manifest.json" in r.output
    r = CliRunner().invoke(main, ["analyze", str(base), str(base), "--out", str(tmp_path / "o"), "--format", "xlsx"])
    assert r.exit_code == 2 and "xlsx" in r.output
    r = CliRunner().invoke(main, ["analyze", str(base), str(base), "--out", str(tmp_path / "o"), "--topk", "0,5"])
    assert r.exit_code == 2


def test_analyze_prints_the_headline_table_and_collapses_notes(pair, tmp_path):
    """Default output: the demo's per-task headline table (every task, its own metric), not raw rows;
    a note repeated per task and model prints once with its count."""
    from qfair.analyze.notes import collapse_notes
    from qfair.report.text import compact_summary

    root, base, nf4 = pair
    r = CliRunner().invoke(main, ["analyze", str(base), str(nf4), "--out", str(tmp_path / "o"),
                                  "--bootstrap", "200", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "| model | task | metric |" not in r.stdout
    summary = pl.read_parquet(tmp_path / "o" / "summary.parquet")
    table = compact_summary(summary, ["nf4"])
    assert table in r.stdout  # the same table, built from the written summary
    for task, metric in (("toy_mc", "acc"), ("toy_mc2", "mc2"), ("toy_crows", "pct_stereotype")):
        assert any(line.startswith(task) and metric in line for line in r.stdout.splitlines()), (task, metric)
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == len(set(notes))
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert notes == [f"note: {n}" for n in collapse_notes(settings["notes"])]


def test_collapse_notes_counts_each_pattern_once():
    from qfair.analyze.notes import collapse_notes

    notes = [f"{t}/nf4: spearman(entropy,{s}) undefined (the shift is constant over {n} examples); no row"
             for t, n in (("arc_easy", 4), ("piqa", 5)) for s in ("abs_dconf", "dloglik", "kl")]
    notes += ["nf4: 3 token(s) whose logits row is not a distribution", "Holm over the 6 primary rows ..."]
    got = collapse_notes(notes)
    assert got == [f"(6 notes like this) {notes[0]}", notes[6], notes[7]]
    assert collapse_notes(notes[:1]) == notes[:1] and collapse_notes([]) == []
