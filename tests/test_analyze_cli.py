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
                                  "--strata", "entropy", "--n-strata", "3", "--topk", "1,3"])
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
