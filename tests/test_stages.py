"""The per-stage timer of `qfair analyze --profile`, file digests checked on a
second thread, and the uncertainty tests run beside the other tables: exclusive
stage times, one pass over the rows, corrupt files still refused (with the
analysis' result discarded), the same tables at any thread count."""
from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner
from test_analyze import make_corpus, make_rows, write_dump

from qfair.analyze import compare
from qfair.cli import main
from qfair.dump import DumpError
from qfair.stages import StageTimer, beside, profiling, stage


def test_stage_times_are_exclusive_and_add_up():
    with profiling() as t:
        with stage("outer"):
            time.sleep(0.05)
            with stage("inner"):
                time.sleep(0.10)
            with stage("inner"):
                time.sleep(0.02)
    assert t.calls == {"inner": 2, "outer": 1}
    assert t.seconds["inner"] == pytest.approx(0.12, abs=0.05)
    assert t.seconds["outer"] == pytest.approx(0.05, abs=0.04)   # the inner stages are not counted twice
    assert sum(t.seconds.values()) <= t.wall() + 1e-6
    assert "inner" in t.format() and "wall" in t.format()


def test_stage_is_a_no_op_without_an_active_timer():
    with stage("anything"):
        pass
    t = StageTimer()
    with profiling(t):
        pass
    with stage("after"):               # the timer is no longer active
        pass
    assert t.seconds == {}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    corpus = make_corpus(3, n_per_task=8)
    b = make_rows(corpus, 4)
    q = make_rows(corpus, 5, base_rows=b, noise=0.5)
    return root, write_dump(root / "base", corpus, b), write_dump(root / "q", corpus, q)


def test_profile_prints_each_stage_once_per_pass(pair):
    root, base, q = pair
    r = CliRunner().invoke(main, ["analyze", str(base), str(q), "--out", str(root / "out"),
                                                  "--bootstrap", "100", "--no-progress", "--profile"])
    assert r.exit_code == 0, r.output + r.stderr
    lines = {ln.split("  ")[0].strip(): ln for ln in r.stderr.splitlines()}
    for name in ("check sizes and headers", "read rows + divergence kernel", "hash (second thread)",
                 "hash wait", "summary rows (bootstrap)", "assemble tables (polars)", "write tables", "wall"):
        assert name in lines, (name, r.stderr)


def test_skip_hash_has_no_hash_stage(pair):
    root, base, q = pair
    r = CliRunner().invoke(main, ["analyze", str(base), str(q), "--out", str(root / "out2"),
                                                  "--bootstrap", "50", "--no-progress", "--profile", "--skip-hash"])
    assert r.exit_code == 0 and "hash (second thread)" not in r.stderr and "hash wait" not in r.stderr


def test_a_corrupt_shard_found_by_the_hash_thread_fails_the_comparison(pair, tmp_path):
    import shutil

    root, base, q = pair
    bad = tmp_path / "q"
    shutil.copytree(q, bad)
    shard = sorted((bad / "logits").glob("*.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x40                                    # same size and header: only the digest can tell
    shard.write_bytes(bytes(raw))
    with pytest.raises(DumpError, match=r"00000\.npy: xxh3_128 differs from manifest\.json shards\[0\]\.xxh3_128"):
        compare(base, bad, bootstrap=20)
    out = compare(base, bad, bootstrap=20, verify_hash=False)   # the check is the hash, nothing else
    assert out.summary.height > 0
    r = CliRunner().invoke(main, ["analyze", str(base), str(bad), "--out", str(tmp_path / "o"), "--bootstrap", "20",
                                  "--no-progress"])
    assert r.exit_code == 1 and "xxh3_128 differs" in r.output and not (tmp_path / "o" / "summary.parquet").exists()


def test_background_hash_reads_every_listed_file(pair, monkeypatch):
    """The digests are checked on exactly the files the manifest lists, each once per dump:
    xxh3_128 for the logits shards, sha256 for the tables. (Shards read through the page
    cache, as these small ones are by default; the stream's own digests of shards read
    with O_DIRECT are test_direct_read's.)"""
    import qfair.dump.manifest as mf
    import qfair.dump.reader as reader

    monkeypatch.setenv("QFAIR_DIRECT_READ", "never")
    root, base, q = pair
    seen: list[str] = []
    algorithms: dict[str, str] = {}
    real = mf.file_digest

    def spy(p, algorithm, **kw):
        seen.append(str(p))
        algorithms[str(p)] = algorithm
        return real(p, algorithm, **kw)

    monkeypatch.setattr(mf, "file_digest", spy)
    compare(base, q, bootstrap=20)
    want = [str(d.file(rel, "x")) for d in (reader.open_dump(base), reader.open_dump(q))
            for rel, *_ in d.listed_files()]
    assert sorted(seen) == sorted(want) and len(seen) == len(set(seen))
    assert np.all([s.startswith(str(root)) for s in seen])
    assert {p: a for p, a in algorithms.items() if p.endswith(".npy")} == {p: "xxh3_128" for p in seen
                                                                          if p.endswith(".npy")}
    assert {a for p, a in algorithms.items() if p.endswith(".parquet")} == {"sha256"}


def test_statistics_run_with_one_blas_thread_and_the_pool_is_restored(pair, monkeypatch):
    """The analysis's matrix products run on one BLAS thread (qfair.threads.single_threaded_blas):
    the same rounding on every machine, no spinning pool beside qfair's threads."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import sys

    compare_module = sys.modules[compare.__module__]   # qfair.analyze.compare (the package exports the function)
    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("numpy has no BLAS that threadpoolctl can see")
    root, base, q = pair
    seen: list[list[int]] = []
    real = compare_module.metric_rows

    def spy(*a, **kw):
        seen.append(blas_threads())
        return real(*a, **kw)

    monkeypatch.setattr(compare_module, "metric_rows", spy)
    before = blas_threads()
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        compare(base, q, bootstrap=20, verify_hash=False)
        after = blas_threads()
    assert seen and all(s == [1] * len(s) for s in seen), seen
    assert after == [2] * len(after) and blas_threads() == before


def test_hash_order_follows_the_stream(tmp_path):
    """Tables first, then the shards of base and the first quantized dump by first row
    (base first at equal rows, even with different shard sizes), then a third dump's shards;
    every listed file exactly once."""
    from qfair.dump.reader import hash_order, open_dump

    corpus = make_corpus(3, n_per_task=8)
    b = make_rows(corpus, 4)
    q = make_rows(corpus, 5, base_rows=b, noise=0.5)
    dumps = [open_dump(write_dump(tmp_path / "b", corpus, b, shard_rows=20)),
             open_dump(write_dump(tmp_path / "q", corpus, q, shard_rows=35)),
             open_dump(write_dump(tmp_path / "q2", corpus, q, shard_rows=50))]
    order = hash_order(dumps)
    files = [(str(d.path), item[0]) for d, item in order]
    assert sorted(files) == sorted((str(d.path), item[0]) for d in dumps for item in d.listed_files())
    assert len(files) == len(set(files))
    is_shard = [item[3].startswith("shards[") for _, item in order]
    assert is_shard == sorted(is_shard)                       # every table before every shard
    shards = [(d, d.manifest["shards"][int(item[3][7:item[3].index("]")])]) for d, item in order
              if item[3].startswith("shards[")]
    assert len({id(d) for d, _ in shards[:-len(dumps[2].manifest["shards"])]}) == 2
    first_two = [(s["first_row"], 0 if d is dumps[0] else 1) for d, s in shards
                 if d is not dumps[2]]
    assert len(dumps[0].manifest["shards"]) > 1 and len(dumps[1].manifest["shards"]) > 1
    assert first_two == sorted(first_two)
    assert all(d is dumps[2] for d, _ in shards[len(first_two):])


def test_threads_reach_every_resampling_call_of_the_core(pair, monkeypatch):
    """--threads (compare(threads=...)) is what the core's resampling statistics get: the
    Spearman bootstrap, the permutation nulls and the shared draw's weighted sums."""
    from qfair._native import core

    root, base, q = pair
    seen: dict[str, list[int]] = {}

    def spy(name, at):
        real = getattr(core, name)

        def call(*a, **kw):
            seen.setdefault(name, []).append(int(a[at]))
            return real(*a, **kw)

        monkeypatch.setattr(core, name, call)

    for name, at in (("weighted_spearman", 6), ("pairings_dot", 4), ("weighted_dots", 2)):
        spy(name, at)
    compare(base, q, bootstrap=60, verify_hash=False, threads=1)
    assert {"weighted_spearman", "pairings_dot", "weighted_dots"} <= set(seen), seen
    assert all(t == [1] * len(t) for t in seen.values()), seen


def test_beside_runs_alongside_and_the_block_waits_for_it():
    import threading

    started, release = threading.Event(), threading.Event()

    def fn():
        started.set()
        assert release.wait(5)
        return threading.current_thread().name

    with profiling() as t:
        with beside(fn, "side") as out:
            assert started.wait(5)          # running while the block runs
            release.set()
        assert out.result() == "qfair-side"
    assert t.calls["side (second thread)"] == 1 and t.calls["side wait"] == 1
    with beside(lambda: threading.current_thread().name, "side", concurrent=False) as out:
        pass
    assert out.result() == threading.current_thread().name


def test_beside_errors_reach_the_caller_after_the_thread_ends():
    import threading

    done = threading.Event()

    def slow_fail():
        time.sleep(0.2)
        done.set()
        raise ValueError("from the side")

    with beside(slow_fail, "side") as out:
        pass
    with pytest.raises(ValueError, match="from the side"):
        out.result()
    done.clear()
    with pytest.raises(KeyError):
        with beside(slow_fail, "side"):
            raise KeyError("block")
    assert done.is_set()                    # the block's error waited for the thread


def test_tables_are_the_same_at_one_and_at_three_threads(pair):
    """With threads > 1 the uncertainty tests run beside the summary, strata and groups; with
    one thread they run first. Every table is identical, row order included."""
    from polars.testing import assert_frame_equal

    root, base, q = pair
    one = compare(base, q, bootstrap=300, verify_hash=False, threads=1)
    three = compare(base, q, bootstrap=300, verify_hash=False, threads=3)
    assert (one.summary["metric"].str.starts_with("spearman(")).any()
    for name in ("summary", "groups", "strata", "calibration", "examples"):
        assert_frame_equal(getattr(one, name), getattr(three, name), check_exact=True)
