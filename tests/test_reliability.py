"""Damaged and hostile inputs: each is refused with one line (exit status 1, no
traceback) or analyzed correctly; nothing is silently wrong and nothing
written is lost. Every test here failed before the reliability work.

Synthetic dumps are written through DumpWriter (tests/test_analyze.py's
``write_dump``); the expected numbers are recomputed here with scipy from the
stored rows.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from test_analyze import make_corpus, make_rows, write_dump
from test_dump_support import resign, stored_kl_oracle

import qfair
from qfair.analyze import compare
from qfair.cli import main
from qfair.dump import DumpError, DumpWriter, open_dump

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(0, n_per_task=4)


@pytest.fixture(scope="module")
def clean(tmp_path_factory, corpus):
    """A base and a quantized dump (f16, several shards) that analyze cleanly."""
    root = tmp_path_factory.mktemp("clean")
    b = make_rows(corpus, 1)
    q = make_rows(corpus, 2, base_rows=b, noise=0.5)
    return {"base": write_dump(root / "base", corpus, b, shard_rows=20),
            "q": write_dump(root / "q", corpus, q, shard_rows=20), "b_rows": b, "q_rows": q, "root": root}


@pytest.fixture
def pair(clean, tmp_path):
    """Fresh copies of the clean pair, to damage."""
    out = {}
    for k in ("base", "q"):
        out[k] = tmp_path / k
        shutil.copytree(clean[k], out[k])
    return out


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(res, needle: str) -> str:
    """Exit status 1 through click (not an escaped exception), one 'Error:' line holding ``needle``."""
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), f"escaped: {res.exception!r}\n{res.output}"
    assert "Traceback" not in res.output
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1, res.output
    assert needle in err[0], err[0]
    return err[0]


def analyze(pair, out, *extra):
    return run_cli("analyze", pair["base"], pair["q"], "--out", out, "--bootstrap", 50, "--no-progress", *extra)


# ---------------------------------------------------------------------------
# 1. non-finite values in logits shards

def _expected_task_means(d: Path, kl: np.ndarray) -> dict[str, tuple[int, float]]:
    """Per task: (examples with a valid token, mean over them of the example's mean KL over its valid tokens)."""
    t = open_dump(d).tokens.with_columns(pl.Series("kl", kl[open_dump(d).tokens["row"].to_numpy()]))
    per_ex = t.group_by("task", "example_id").agg(pl.col("kl").fill_nan(None).mean())
    out = {}
    for task, sub in per_ex.group_by("task"):
        v = sub["kl"].drop_nulls().to_numpy()
        out[task[0]] = (len(v), float(v.mean()))
    return out


@pytest.mark.parametrize("side, damage", [
    ("q", "nan"), ("q", "posinf"), ("q", "allneginf"), ("base", "nan"), ("base", "allneginf"),
])
def test_nonfinite_rows_are_counted_and_left_out(corpus, tmp_path, side, damage):
    b = make_rows(corpus, 1)
    q = make_rows(corpus, 2, base_rows=b, noise=0.5)
    victim = b if side == "base" else q
    {"nan": lambda r: r.__setitem__((5, 7), np.nan), "posinf": lambda r: r.__setitem__((5, 7), np.inf),
     "allneginf": lambda r: r.__setitem__((5, slice(None)), -np.inf)}[damage](victim)
    write_dump(tmp_path / "base", corpus, b, shard_rows=20)
    write_dump(tmp_path / "q", corpus, q, shard_rows=20)

    res = analyze({"base": tmp_path / "base", "q": tmp_path / "q"}, tmp_path / "out")
    assert res.exit_code == 0, res.output
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    counts = settings["settings"]["nonfinite"]["q"]
    assert counts["nonfinite_rows"] == 1
    assert counts["nonfinite_base_rows" if side == "base" else "nonfinite_quant_rows"] == 1
    assert counts["nonfinite_quant_rows" if side == "base" else "nonfinite_base_rows"] == 0
    assert any("not a distribution" in n for n in settings["notes"])

    kl = stored_kl_oracle(tmp_path / "base", tmp_path / "q")[0]
    assert np.isnan(kl).sum() == 1 and np.isfinite(kl[~np.isnan(kl)]).all()
    s = pl.read_parquet(tmp_path / "out" / "summary.parquet").filter(pl.col("metric") == "kl_pq")
    for task, (n, mean) in _expected_task_means(tmp_path / "base", kl).items():
        row = s.filter(pl.col("task") == task).row(0, named=True)
        assert row["n"] == n and row["diff"] == pytest.approx(mean, rel=1e-4), task
        assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    # the token of the bad row has NaN metrics, every other token finite ones
    tok = pl.read_parquet(tmp_path / "out" / "tokens.parquet")
    bad = tok.filter(pl.col("row") == 5)
    assert all(math.isnan(bad[c][0]) for c in ("kl_pq", "js", "logprob_p", "logprob_q", "entropy_p", "margin_p"))
    assert tok.filter(pl.col("row") != 5)["kl_pq"].is_finite().all()
    # and the report builds from it
    r = run_cli("report", tmp_path / "out", "--no-progress")
    assert r.exit_code == 0, r.output


def test_neg_inf_entry_is_a_zero_probability(corpus, tmp_path):
    """-inf where the base gives mass: KL(P||Q) = inf for that token, reported as an
    infinite mean without an interval; KL(Q||P) stays finite, with its interval (a
    divergence is described, not tested against 0)."""
    b = make_rows(corpus, 1)
    q = make_rows(corpus, 2, base_rows=b, noise=0.5)
    q[3, 11] = -np.inf
    write_dump(tmp_path / "base", corpus, b, shard_rows=20)
    write_dump(tmp_path / "q", corpus, q, shard_rows=20)
    c = compare(tmp_path / "base", tmp_path / "q", bootstrap=50)
    kl = stored_kl_oracle(tmp_path / "base", tmp_path / "q")[0]
    assert np.isinf(kl[3]) and not np.isnan(kl).any()
    task = open_dump(tmp_path / "base").tokens.filter(pl.col("row") == 3)["task"][0]
    row = c.summary.filter((pl.col("task") == task) & (pl.col("metric") == "kl_pq")).row(0, named=True)
    assert row["diff"] == math.inf and row["test"] == "none (infinite values)"
    assert row["ci_low"] is None and row["p"] is None and row["n"] == 4
    rev = c.summary.filter((pl.col("task") == task) & (pl.col("metric") == "kl_qp")).row(0, named=True)
    assert math.isfinite(rev["diff"]) and rev["ci_low"] is not None and rev["test"].startswith("none (descriptive")
    counts = c.settings["nonfinite"]["q"]
    assert counts["infinite_kl_pq_rows"] == 1 and counts["nonfinite_rows"] == 0
    assert any("kl_pq is infinite for 1 token" in n for n in c.notes)
    out = tmp_path / "out"
    c.write(out, formats=("parquet", "csv", "md"))
    assert run_cli("report", out, "--no-progress").exit_code == 0


# ---------------------------------------------------------------------------
# 2. damaged files and manifests: one line naming file and field

def _edit_manifest(d: Path, fn) -> None:
    mp = d / "manifest.json"
    m = json.loads(mp.read_text())
    fn(m)
    mp.write_text(json.dumps(m))


def _npy_header_edit(d: Path, fn) -> None:
    """Rewrite shard 0's header text in place (same length), then re-sign the dump."""
    p = d / "logits" / "00000.npy"
    data = bytearray(p.read_bytes())
    hlen = int.from_bytes(data[8:10], "little")
    text = data[10:10 + hlen].decode("latin1").rstrip()
    new = fn(text)
    assert len(new) <= hlen
    data[10:10 + hlen] = new.ljust(hlen - 1).encode("latin1") + b"\n"
    p.write_bytes(bytes(data))
    resign(d)


def _drop_column(d: Path, table: str, col: str) -> None:
    pl.read_parquet(d / f"{table}.parquet").drop(col).write_parquet(d / f"{table}.parquet")
    resign(d)


def _cast_column(d: Path, table: str, col: str, dtype) -> None:
    df = pl.read_parquet(d / f"{table}.parquet")
    df.with_columns(pl.col(col).cast(dtype)).write_parquet(d / f"{table}.parquet")
    resign(d)


DAMAGE = [
    ("garbled npy header", lambda d: _npy_header_edit(d, lambda t: t.replace("'shape': (", "'shape': ((")),
     "00000.npy: not a readable .npy shard (garbled .npy header"),
    ("fortran header", lambda d: _npy_header_edit(d, lambda t: t.replace("False", "True ")), "Fortran order"),
    ("shard file a number", lambda d: _edit_manifest(d, lambda m: m["shards"][0].update(file=5)),
     "field 'shards[0].file' is 5 (an integer)"),
    ("shard entry a string", lambda d: _edit_manifest(d, lambda m: m["shards"].__setitem__(1, "00001.npy")),
     "field 'shards[1]' is '00001.npy' (a string), expected an object"),
    ("tokenizer a list", lambda d: _edit_manifest(d, lambda m: m.update(tokenizer=[1, 2])),
     "field 'tokenizer' is [1, 2] (a list), expected an object or null"),
    ("tasks a string", lambda d: _edit_manifest(d, lambda m: m.update(tasks="toy_mc")),
     "field 'tasks' is 'toy_mc' (a string), expected a list"),
    ("task name missing", lambda d: _edit_manifest(d, lambda m: m["tasks"][0].pop("name")),
     "field 'tasks[0].name' missing"),
    ("rows missing", lambda d: _edit_manifest(d, lambda m: m["shards"][0].pop("rows")),
     "field 'shards[0].rows' missing"),
    ("rows a string", lambda d: _edit_manifest(d, lambda m: m["shards"][0].update(rows=str(m["shards"][0]["rows"]))),
     "field 'shards[0].rows' is '21' (a string), expected an integer >= 0"),
    ("rows negative", lambda d: _edit_manifest(d, lambda m: m["shards"][0].update(rows=-1)),
     "field 'shards[0].rows' is -1"),
    ("vocab a float", lambda d: _edit_manifest(d, lambda m: m.update(vocab_size=48.0)), "field 'vocab_size' is 48.0"),
    ("storage a list", lambda d: _edit_manifest(d, lambda m: m.update(storage=[])), "field 'storage' is [] (a list)"),
    ("sha256 not hex", lambda d: _edit_manifest(d, lambda m: m["shards"][0].update(sha256="xyz")),
     "field 'shards[0].sha256' is 'xyz'"),
    ("examples not contiguous", lambda d: _edit_manifest(d, lambda m: m["shards"][1].update(examples=[4, 6])),
     "field 'shards[1].examples' is [4, 6]"),
    ("table file renamed", lambda d: _edit_manifest(d, lambda m: m["tables"]["tokens"].update(file="t.parquet")),
     "field 'tables.tokens.file' is 't.parquet'"),
    ("manifest a list", lambda d: (d / "manifest.json").write_text("[]"), "top level is list"),
    ("manifest deeply nested", lambda d: (d / "manifest.json").write_text("[" * 100000 + "]" * 100000),
     "manifest.json: not valid JSON"),
    ("tokens without a column", lambda d: _drop_column(d, "tokens", "rank"),
     "tokens.parquet: column 'rank' missing"),
    ("tokens column of another dtype", lambda d: _cast_column(d, "tokens", "logprob", pl.Float64),
     "tokens.parquet: column 'logprob' has dtype Float64, expected Float32"),
    ("examples without a column", lambda d: _drop_column(d, "examples", "label"),
     "examples.parquet: column 'label' missing"),
    ("choices column of another dtype", lambda d: _cast_column(d, "choices", "choice", pl.Int32),
     "choices.parquet: column 'choice' has dtype Int32"),
]


@pytest.mark.parametrize("what, damage, needle", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_dump_is_one_line_error(pair, tmp_path, what, damage, needle):
    damage(pair["base"])
    line = assert_one_line_error(analyze(pair, tmp_path / "out"), needle)
    assert str(pair["base"]) in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_garbled_header_through_the_stream_too(pair):
    """qfair.stream_divergence reads shards by path: a garbled header is a ValueError there, not a
    tokenizer error from numpy."""
    _npy_header_edit(pair["base"], lambda t: t.replace("'descr'", "'descr"))
    with pytest.raises(ValueError, match="garbled .npy header"):
        next(qfair.stream_divergence(str(pair["base"] / "logits" / "00000.npy"),
                                     str(pair["q"] / "logits" / "00000.npy")))


# ---------------------------------------------------------------------------
# 3. integrity: sizes always, sha256 by default

def test_shard_replaced_by_a_valid_shard_of_the_same_shape_is_refused(pair, tmp_path):
    a, b = pair["base"] / "logits" / "00000.npy", pair["q"] / "logits" / "00000.npy"
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    shutil.copy(b, a)  # a perfectly valid shard, just not this dump's
    assert_one_line_error(analyze(pair, tmp_path / "out"), "00000.npy: xxh3_128 differs from manifest.json shards[0]")
    # hashing can be skipped for very large dumps; the settings say so
    res = analyze(pair, tmp_path / "out", "--skip-hash")
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "out" / "settings.json").read_text())["settings"]
    assert s["integrity"] == "size and header of every file (digests skipped)"
    assert "sha256" in compare(pair["q"], pair["q"], bootstrap=20).settings["integrity"]


def test_table_replaced_is_refused_and_sizes_are_always_checked(pair, clean, tmp_path):
    shutil.copy(pair["q"] / "choices.parquet", pair["base"] / "choices.parquet")
    assert_one_line_error(analyze(pair, tmp_path / "out"), "choices.parquet: ")
    shutil.copy(clean["base"] / "choices.parquet", pair["base"] / "choices.parquet")
    data = (pair["base"] / "logits" / "00002.npy").read_bytes()
    (pair["base"] / "logits" / "00002.npy").write_bytes(data[:-1])  # sizes are checked even without hashing
    assert_one_line_error(analyze(pair, tmp_path / "out", "--skip-hash"), "00002.npy: 2527 bytes")


def test_shard_truncated_at_every_byte_is_refused(pair):
    """Every cut of a shard is refused before analysis: with the manifest as written (its size
    check), and with a manifest that lists the cut size (the header and data length checks; the
    schema alone already refuses most of those)."""
    shard = pair["base"] / "logits" / "00003.npy"
    data = shard.read_bytes()
    as_written, signed = open_dump(pair["base"]), open_dump(pair["base"])
    for cut in range(len(data) - 1, -1, -1):
        os.truncate(shard, cut)
        with pytest.raises(DumpError, match=r"00003\.npy: \d+ bytes, manifest\.json shards\[3\]\.bytes"):
            as_written.verify(hash=False)
        signed.manifest["shards"][3]["bytes"] = cut
        with pytest.raises(DumpError, match=r"00003\.npy: (not a readable \.npy shard|header and data take)"):
            signed.verify(hash=False)
    shard.write_bytes(data)
    open_dump(pair["base"]).verify()


# ---------------------------------------------------------------------------
# 4. paths in a manifest never lead outside the dump

@pytest.mark.parametrize("path, needle", [
    ("../q/logits/00000.npy", "a path with '..'"),
    ("logits/../../q/logits/00000.npy", "a path with '..'"),
    ("/etc/passwd", "an absolute path"),
    ("logits//00000.npy", "empty or '.' parts"),
    ("logits\\00000.npy", "backslash"),
])
def test_manifest_paths_outside_the_dump_are_refused(pair, tmp_path, path, needle):
    _edit_manifest(pair["base"], lambda m: m["shards"][0].update(file=path))
    assert_one_line_error(analyze(pair, tmp_path / "out"), needle)


_OPENS: list[list[str]] = []


def _audit(event, args):
    if event == "open" and args and _OPENS:
        _OPENS[-1].append(str(args[0]))


def _record_opens() -> list[str]:
    """Paths opened from now on (Python-level opens: open, os.open, numpy's memmap), for this test."""
    if not _OPENS:
        sys.addaudithook(_audit)  # hooks cannot be removed: one for the session, idle between tests
    _OPENS.clear()
    _OPENS.append([])
    return _OPENS[-1]


def test_symlink_out_of_the_dump_is_refused_and_never_opened(pair, tmp_path, monkeypatch):
    secret = tmp_path / "outside" / "secret.npy"
    secret.parent.mkdir()
    shutil.copy(pair["q"] / "logits" / "00000.npy", secret)  # same bytes and hash as a real shard
    shard = pair["base"] / "logits" / "00000.npy"
    shard.unlink()
    shard.symlink_to(secret)
    resign(pair["base"])
    opened = _record_opens()
    real = pl.read_parquet
    monkeypatch.setattr(pl, "read_parquet", lambda p, *a, **k: (opened.append(str(p)), real(p, *a, **k))[1])
    with pytest.raises(DumpError, match="leads outside the dump directory"):
        compare(pair["base"], pair["q"], bootstrap=20)
    d = open_dump(pair["base"])
    with pytest.raises(DumpError, match="leads outside"):
        d.logit_blocks()
    with pytest.raises(DumpError, match="leads outside"):
        _ = d.logit_paths
    assert not [p for p in opened if "outside" in p]
    # a table symlinked out of the dump is refused the same way
    t = pair["q"] / "tokens.parquet"
    shutil.move(t, tmp_path / "outside" / "tokens.parquet")
    t.symlink_to(tmp_path / "outside" / "tokens.parquet")
    with pytest.raises(DumpError, match="tokens.parquet: leads outside"):
        _ = open_dump(pair["q"]).tokens
    assert not [p for p in opened if "outside" in p]


# ---------------------------------------------------------------------------
# 5. one writer per directory

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from qfair.lock import lock_dir
    from qfair.analyze.outdir import lock_analysis_dir
    lock = lock_analysis_dir(sys.argv[2]) if sys.argv[1] == "analysis" else lock_dir(sys.argv[2])
    print("locked", flush=True)
    time.sleep(120)
""")


def _holder(kind: str, path: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, kind, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _choices_only_writer(path: Path, n: int = 6, **kw) -> DumpWriter:
    ex = {"example_id": [f"e{i}" for i in range(n)], "task": ["t"] * n, "doc_index": list(range(n)),
          "group": [None] * n, "label": [0] * n, "n_choices": [2] * n, "context": ["c"] * n,
          "choices": [["a", "b"]] * n, "labels": [None] * n, "extras": [None] * n}
    return DumpWriter(path, kind="choices_only", examples=ex, vocab_size=1, tokenizer=None,
                      tasks=[{"name": "t", "kind": "multiple_choice"}], store="none", **kw)


def _add_all(w: DumpWriter) -> dict:
    for i in range(w.start, w.n_examples):
        w.add({"choices": {"task": ["t"] * 2, "example_id": [f"e{i}"] * 2, "doc_index": [i] * 2, "choice": [0, 1],
                           "loglik": [-1.0, -2.0], "n_tokens": [1, 1], "n_chars": [1, 1], "n_bytes": [1, 1],
                           "is_greedy": [False, False], "first_row": [-1, -1], "n_rows": [0, 0]}})
    return w.close()


def test_second_writer_stops_at_once_and_the_first_finishes(tmp_path):
    out = tmp_path / "d"
    p = _holder("dump", out)
    try:
        with pytest.raises(DumpError, match=rf"being written by another qfair process \(pid {p.pid} on "):
            _choices_only_writer(out)
        # qfair dump stops before loading any model (this one does not even exist)
        res = run_cli("dump", "--model", tmp_path / "no-such-model", "--tasks", "piqa", "--out", out, "--no-progress")
        assert_one_line_error(res, f"pid {p.pid}")
    finally:
        p.kill()
        p.wait()
    # the holder died without releasing: its lock is taken over, and gone after close()
    assert (out / ".qfair.lock").exists()
    m = _add_all(_choices_only_writer(out))
    assert m["status"] == "complete" and not (out / ".qfair.lock").exists()
    assert sorted(x.name for x in out.iterdir()) == ["choices.parquet", "examples.parquet", "manifest.json"]
    open_dump(out).verify()


def test_two_writers_in_one_process_are_refused_too(tmp_path):
    w = _choices_only_writer(tmp_path / "d")
    with pytest.raises(DumpError, match="another DumpWriter of this process"):
        _choices_only_writer(tmp_path / "d", overwrite=True)
    assert _add_all(w)["status"] == "complete"
    assert _add_all(_choices_only_writer(tmp_path / "d", overwrite=True))["status"] == "complete"


def test_two_dump_processes_on_one_directory(tmp_path):
    """The situation that broke dumps: two producers started on one --out. The second stops
    at once with a clear message; the first writes a complete, valid dump."""
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[2])
        from test_reliability import _choices_only_writer, _add_all
        from qfair.dump import DumpError
        try:
            w = _choices_only_writer(sys.argv[1], n=40, shard_rows=1)
        except DumpError as e:
            print("refused:", e, flush=True); sys.exit(3)
        print("writing", flush=True)
        sys.stdin.readline()  # until the test says go on
        _add_all(w)
        print("done", flush=True)
    """)
    out = tmp_path / "d"
    first = subprocess.Popen([sys.executable, "-c", script, str(out), str(TESTS)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "writing"
    second = subprocess.run([sys.executable, "-c", script, str(out), str(TESTS)], capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 3 and "being written by another qfair process" in second.stdout
    first.stdin.write("go\n")
    first.stdin.close()
    assert first.wait(timeout=120) == 0
    d = open_dump(out)
    d.verify()
    assert d.is_complete and d.choices.height == 80


def test_lock_without_flock_detects_a_dead_owner(tmp_path, monkeypatch):
    import errno
    import fcntl
    import socket

    from qfair.lock import LockError, lock_dir

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    d = tmp_path / "d"
    d.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (d / ".qfair.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = lock_dir(d)  # stale: taken over
    assert json.loads((d / ".qfair.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (d / ".qfair.lock").exists()
    (d / ".qfair.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(LockError, match=f"pid {os.getppid()}"):
        lock_dir(d)


def test_analyze_out_is_locked(pair, tmp_path):
    out = tmp_path / "out"
    p = _holder("analysis", out)
    try:
        assert_one_line_error(analyze(pair, out), f"being written by another qfair process (pid {p.pid}")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert analyze(pair, out).exit_code == 0
    assert not list(tmp_path.glob(".out*"))  # no lock, temp or old directory left beside it


# ---------------------------------------------------------------------------
# 6. an analysis directory describes one run

def test_rerun_replaces_the_whole_directory(pair, clean, corpus, tmp_path):
    other = tmp_path / "q2"
    write_dump(other, corpus, make_rows(corpus, 7, base_rows=clean["b_rows"], noise=0.1), shard_rows=20)
    out = tmp_path / "out"
    assert analyze(pair, out, "--format", "parquet,csv,md").exit_code == 0
    (out / "report").mkdir()
    (out / "report" / "report.html").write_text("old report")
    first = json.loads((out / "settings.json").read_text())
    res = run_cli("analyze", pair["base"], other, "--out", out, "--bootstrap", 50, "--no-progress", "--format", "csv")
    assert res.exit_code == 0, res.output
    second = json.loads((out / "settings.json").read_text())
    assert second["run_id"] != first["run_id"] and second["settings"]["quant"] == [str(other)]
    assert not list(out.glob("*.parquet")) and not list(out.glob("*.md")) and not (out / "report").exists()
    assert set(second["files"]) == {p.name for p in out.iterdir() if p.name != "settings.json"}
    r = run_cli("report", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "q2" in (out / "report" / "report.html").read_text()


def test_report_refuses_tables_of_another_run(pair, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert analyze(pair, a).exit_code == 0
    assert analyze(pair, b, "--seed", "5").exit_code == 0
    shutil.copy(b / "summary.parquet", a / "summary.parquet")  # a parquet file of run b
    assert_one_line_error(run_cli("report", a, "--no-progress"), "summary.parquet: written by analysis run")
    for f in a.glob("*.parquet"):
        f.unlink()
    shutil.copy(b / "summary.csv", a / "summary.csv")  # a CSV of run b (other seed): not run a's bytes
    assert_one_line_error(run_cli("report", a, "--no-progress"), "summary.csv: differs from the file")


def test_analyze_refuses_a_foreign_directory_and_keeps_it(pair, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    assert_one_line_error(analyze(pair, out), "is not a qfair analysis directory")
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_failed_write_leaves_the_previous_analysis_intact(pair, tmp_path, monkeypatch):
    import qfair.analyze.tables as T

    out = tmp_path / "out"
    assert analyze(pair, out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = T.to_markdown

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T, "to_markdown", boom)
    res = analyze(pair, out, "--seed", "9")
    assert res.exit_code == 1 and "No space left" in res.output
    monkeypatch.setattr(T, "to_markdown", real)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(tmp_path.glob(".out*"))


# ---------------------------------------------------------------------------
# 8. smaller ones

def test_divergence_input_edges():
    p = np.log(np.full((3, 8), 1 / 8, dtype=np.float32))
    with pytest.raises(ValueError, match="row 1 has token id 9223372036854775808, outside the vocabulary"):
        qfair.divergence(p, p, targets=np.array([1, 2**63, 3], dtype=np.uint64))
    ok = qfair.divergence(p, p, targets=np.array([1, 2, 3], dtype=np.uint64))
    assert ok["rank_p"].tolist() == [1, 1, 1]
    empty = qfair.divergence(p[:0], p[:0], targets=np.zeros(0, np.int64))
    full = qfair.divergence(p, p, targets=np.zeros(3, np.int64))
    assert empty.n_rows == 0 and list(empty.metrics) == list(full.metrics)
    assert all(v.shape == (0,) and v.dtype == full[k].dtype for k, v in empty.metrics.items())
    assert qfair.distribution_stats(p[:0]).n_rows == 0
    for kw, needle in [({"threads": 2**40}, "threads must be an integer"), ({"threads": 2.5}, "threads must be"),
                       ({"topk": (2**40,)}, r"topk values must be integers in \[1, 1000\]"),
                       ({"topk": (1.5,)}, "topk values"), ({"topk": 5}, "topk must be a sequence"),
                       ({"topk": (5, 5)}, "lists 5 twice")]:
        with pytest.raises(ValueError, match=needle):
            qfair.divergence(p, p, **kw)
    with pytest.raises(ValueError, match="chunk_rows must be an integer"):
        next(qfair.stream_divergence(p, p, chunk_rows=2.5))


def test_huge_cli_values_are_one_line_errors(pair, tmp_path):
    for extra in (["--threads", str(2**40)], ["--topk", str(2**40)], ["--threads", "0"]):
        res = analyze(pair, tmp_path / "out", *extra)
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit) and "Traceback" not in res.output


def test_dump_out_that_cannot_be_written_fails_before_the_model_loads(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli("dump", "--model", tmp_path / "no-such-model", "--tasks", "piqa", "--out", blocker / "d",
                  "--no-progress")
    line = assert_one_line_error(res, str(blocker / "d"))
    assert "no-such-model" not in line


@pytest.fixture(scope="module")
def tiny_dump_env(tiny_model, one_torch_thread, tmp_path_factory):
    from test_dump_support import load_tiny

    return {"model": tiny_model("llama", 4), "loaded": load_tiny(tiny_model("llama", 4)),
            "root": tmp_path_factory.mktemp("tiny")}


def test_prompt_longer_than_the_context_is_reported_once(tiny_dump_env, tmp_path):
    import qfair.tasks as T
    from qfair.dump.run import run_dump

    rows = [{"id": "long", "context": "word " * 3000, "choices": ["a b", "c"], "label": 0},
            {"id": "short", "context": "a short one", "choices": ["a", "b c"], "label": 1},
            {"id": "long2", "context": "other " * 2000, "choices": ["x", "y"], "label": 1}]
    f = tmp_path / "mc.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = run_dump(tmp_path / "d", tiny_dump_env["loaded"], [T.get("mc", data_file=f)], progress=False)
    assert "NOTE: 2 example(s) did not fit the model's context of 512 tokens" in s.text()
    assert s.text().count("did not fit") == 1
    assert open_dump(tmp_path / "d").manifest["counts"]["truncated_examples"] == 2
    rows[1]["choices"] = ["a", "very " * 3000]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DumpError, match="mc example .*: choice 1 is .* tokens long, more than the model's context"):
        run_dump(tmp_path / "d2", tiny_dump_env["loaded"], [T.get("mc", data_file=f)], progress=False)


# ---------------------------------------------------------------------------
# 9. threads

def test_threads_default_to_the_affinity_mask_and_are_recorded(tiny_dump_env, tmp_path, monkeypatch):
    import torch

    from qfair.threads import THREAD_VARIABLES, available_cpus, resolve_threads

    for name in THREAD_VARIABLES:  # the default this test is about: no thread variable set
        monkeypatch.delenv(name, raising=False)
    assert available_cpus() == len(os.sched_getaffinity(0))
    assert resolve_threads(None) == available_cpus()
    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"id": f"q{i}", "context": f"question {i}", "choices": ["yes", "no"],
                                        "label": i % 2}) for i in range(4)) + "\n")
    before = torch.get_num_threads()
    seen = []
    import qfair.dump.run  # the module the spy replaces a function of (imported lazily by the CLI)

    real_run_dump = qfair.dump.run.run_dump

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real_run_dump(*a, **k)

    monkeypatch.setattr(qfair.dump.run, "run_dump", spy)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # as if restricted to 3 CPUs
    model = tiny_dump_env["model"]
    args = ["dump", "--model", model, "--tasks", "mc", "--data-file", f"mc={mc}", "--no-progress", "--out"]
    assert run_cli(*args, tmp_path / "a").exit_code == 0
    assert seen[-1] == 3 and open_dump(tmp_path / "a").manifest["run"]["threads"] == 3
    assert run_cli(*args, tmp_path / "b", "--threads", "1").exit_code == 0
    assert seen[-1] == 1 and open_dump(tmp_path / "b").manifest["run"]["threads"] == 1
    assert torch.get_num_threads() == before  # restored
    # threads are not part of what --resume must match
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "threads" not in m["run"]["config"]


def test_thread_variables_set_the_default_and_threads_wins(monkeypatch):
    from qfair.threads import MAX_THREADS, available_cpus, resolve_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    for name in ("QFAIR_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_threads(None) == available_cpus() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert resolve_threads(None) == 1  # the variable torch respects
    monkeypatch.setenv("OMP_NUM_THREADS", "5,2")  # nested levels: the outer pool's count
    assert resolve_threads(None) == 5
    monkeypatch.setenv("QFAIR_THREADS", "2")
    assert resolve_threads(None) == 2  # qfair's own variable wins over OMP
    assert resolve_threads(4) == 4  # an explicit --threads wins over both
    monkeypatch.setenv("QFAIR_THREADS", "")  # empty: not set
    assert resolve_threads(None) == 5
    for bad in ("0", "two", "-3", str(MAX_THREADS + 1)):
        monkeypatch.setenv("QFAIR_THREADS", bad)
        with pytest.raises(ValueError, match=f"QFAIR_THREADS must be an integer in 1..{MAX_THREADS}, got '{bad}'"):
            resolve_threads(None)
        assert resolve_threads(1) == 1  # a bad variable does not matter when --threads is given


def test_omp_num_threads_sets_a_dumps_threads(tiny_dump_env, tmp_path, monkeypatch):
    import torch

    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"id": f"q{i}", "context": f"question {i}", "choices": ["yes", "no"],
                                        "label": i % 2}) for i in range(4)) + "\n")
    seen = []
    import qfair.dump.run  # the module the spy replaces a function of (imported lazily by the CLI)

    real_run_dump = qfair.dump.run.run_dump

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real_run_dump(*a, **k)

    monkeypatch.setattr(qfair.dump.run, "run_dump", spy)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.delenv("QFAIR_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["dump", "--model", tiny_dump_env["model"], "--tasks", "mc", "--data-file", f"mc={mc}", "--no-progress",
            "--out"]
    assert run_cli(*args, tmp_path / "a").exit_code == 0
    assert seen[-1] == 1 and open_dump(tmp_path / "a").manifest["run"]["threads"] == 1
    monkeypatch.setenv("QFAIR_THREADS", "2")
    assert run_cli(*args, tmp_path / "b").exit_code == 0
    assert seen[-1] == 2 and open_dump(tmp_path / "b").manifest["run"]["threads"] == 2
    monkeypatch.setenv("QFAIR_THREADS", "lots")
    assert_one_line_error(run_cli(*args, tmp_path / "c"), "QFAIR_THREADS must be an integer")
    assert not (tmp_path / "c").exists()


def test_model_commands_take_their_threads_from_the_variables(monkeypatch, tmp_path):
    """qfair sensitivity (like qfair dump) runs torch at QFAIR_THREADS, else OMP_NUM_THREADS,
    --threads winning; a bad variable is one line and the scan never starts."""
    import torch

    import qfair.sensitivity

    seen = []

    class Done:
        def text(self):
            return "done"

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return Done()

    before = torch.get_num_threads()
    monkeypatch.setattr(qfair.sensitivity, "run_scan", spy)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.delenv("QFAIR_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["sensitivity", "--model", "m", "--quant", "rtn", "--no-progress", "--out", str(tmp_path / "s")]
    try:
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        monkeypatch.setenv("QFAIR_THREADS", "2")
        assert CliRunner().invoke(main, args).exit_code == 0
        assert CliRunner().invoke(main, [*args, "--threads", "3"]).exit_code == 0
        assert seen == [1, 2, 3]
        monkeypatch.setenv("QFAIR_THREADS", "two")
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 1 and r.output.strip().splitlines() == [
            "Error: QFAIR_THREADS must be an integer in 1..4096, got 'two'"]
        assert seen == [1, 2, 3]
    finally:
        torch.set_num_threads(before)
