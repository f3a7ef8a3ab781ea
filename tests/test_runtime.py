"""What the core runs with: the thread-count rule shared by every parallel
call (cpp/include/qfair/parallel.hpp), the instruction sets, and `qfair doctor`
which reports both."""
from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import qfair
from qfair import stats
from qfair._native import core


def test_thread_rule_default_cap_and_negative():
    cpus = len(os.sched_getaffinity(0))
    assert core.resolve_threads(0) == cpus
    assert core.resolve_threads(1) == 1
    # A huge request is capped at something the process can start.
    assert 1 <= core.resolve_threads(10**6) <= min(1024, 8 * cpus)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        core.resolve_threads(-1)


def test_negative_threads_rejected_by_every_parallel_call():
    a = np.zeros((8, 10), np.float32)
    d = np.linspace(-1, 1, 20)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        core.divergence(a, a, threads=-1)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        core.distribution_stats(a, threads=-1)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        core.paired_bootstrap([{"kind": "mean", "y": d}], resamples=10, threads=-1)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        core.sign_flip_test(d, resamples=10, threads=-1)


def test_huge_thread_request_runs_and_matches_one_thread():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 300)).astype(np.float32)
    b = a + 0.1 * rng.standard_normal((40, 300)).astype(np.float32)
    one = core.divergence(a, b, threads=1)["metrics"]
    many = core.divergence(a, b, threads=10**6)["metrics"]
    for name in one:
        np.testing.assert_array_equal(one[name], many[name], err_msg=name)
    y = rng.uniform(size=500)
    r1 = stats.paired_bootstrap([stats.MeanDiff(y)], resamples=200, threads=1, keep_distribution=True)
    rn = stats.paired_bootstrap([stats.MeanDiff(y)], resamples=200, threads=10**6, keep_distribution=True)
    np.testing.assert_array_equal(r1[0].distribution, rn[0].distribution)
    p1 = stats.sign_flip_test(y - 0.5, resamples=300, threads=1)
    pn = stats.sign_flip_test(y - 0.5, resamples=300, threads=10**6)
    assert p1 == pn


@pytest.mark.parametrize("bad_row", [0, 31, 63])
def test_worker_exception_from_any_block_including_the_callers(bad_row):
    # Block 0 runs on the calling thread; the others on workers. Whichever
    # meets the bad row, the error comes back once every thread has joined.
    a = np.zeros((64, 10), np.float32)
    t = np.zeros(64, np.int64)
    t[bad_row] = 99
    for threads in (1, 2, 4):
        with pytest.raises(ValueError, match=f"row {bad_row} has token id 99"):
            qfair.divergence(a, a, targets=t, threads=threads)


def test_lowest_block_error_wins():
    a = np.zeros((64, 10), np.float32)
    t = np.zeros(64, np.int64)
    t[5] = 99   # block 0 of 4
    t[40] = 98  # block 2 of 4
    with pytest.raises(ValueError, match="row 5 has"):
        qfair.divergence(a, a, targets=t, threads=4)


def test_available_isas_end_with_baseline_and_include_the_active_one():
    isas = core.available_isas()
    assert isas[-1] == "baseline"
    assert core.active_isa() in isas
    assert set(isas) <= {"avx512", "avx2", "baseline"}


# ---- qfair doctor / qfair --version -------------------------------------------------


def test_doctor_prints_the_isa_threads_and_measurements():
    from qfair.cli import main

    r = CliRunner().invoke(main, ["doctor", "--seconds", "0", "--threads", "1"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"qfair {qfair.__version__}"
    isa_line = next(line for line in lines if line.startswith("ISA: "))
    assert isa_line.startswith(f"ISA: {core.active_isa()} (available: {', '.join(core.available_isas())}")
    assert any(line.startswith("threads: 1 ") for line in lines)
    assert any(line.startswith("divergence: ") and "G pairs/s" in line for line in lines)
    assert any(line.startswith("bootstrap: ") and "resamples/s" in line for line in lines)


def test_doctor_reports_cached_and_streamed_rates_and_names_the_one_a_large_dump_sees():
    from qfair.cli import main

    r = CliRunner().invoke(main, ["doctor", "--seconds", "0", "--threads", "1", "--stream-mib", "16"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    cached = next(line for line in lines if line.startswith("divergence: "))
    assert " G pairs/s on rows that stay in cache (24 MiB of float16 rows" in cached
    streamed = next(line for line in lines if line.startswith("divergence streamed: "))
    assert " G pairs/s on 16 MiB of rows streamed from memory (larger than the " in streamed
    assert "; a pure read of them: " in streamed and "the kernel reaches " in streamed
    assert "a large dump sees: the streamed figure (its rows do not fit in the cache)" in lines
    # without the streamed measurement the report says the cached figure is all there is
    r = CliRunner().invoke(main, ["doctor", "--seconds", "0", "--threads", "1", "--stream-mib", "0"])
    assert r.exit_code == 0, r.output
    assert "divergence streamed:" not in r.output
    assert "a large dump sees: the cached figure (not measured streamed" in r.output


def test_doctor_streamed_measurement_in_the_library_report():
    from qfair.doctor import MIN_STREAM_BYTES, doctor, last_level_cache_bytes, streamed_bytes

    rep = doctor(seconds=0, threads=1, stream_bytes=8 << 20)
    assert rep.stream_bytes == 8 << 20 and rep.large_dump_sees == "streamed"
    assert rep.streamed.rate > 0 and rep.streamed.runs >= 1
    assert rep.read_ceiling.rate > 0
    assert rep.cached_bytes == 2 * rep.rows * rep.vocab * 2
    assert last_level_cache_bytes() >= 0
    assert streamed_bytes(0) == MIN_STREAM_BYTES == 1 << 30
    assert streamed_bytes(1 << 30) == 4 << 30  # at least 4x the cache
    rep = doctor(seconds=0, threads=1, stream_bytes=0)
    assert rep.streamed is None and rep.read_ceiling is None and rep.large_dump_sees == "cached"
    with pytest.raises(ValueError, match="stream_bytes"):
        doctor(stream_bytes=-1, measure=False)


def test_doctor_isa_cap_and_no_measure():
    from qfair.cli import main

    try:
        r = CliRunner().invoke(main, ["doctor", "--isa", "baseline", "--no-measure"])
        assert r.exit_code == 0, r.output
        assert "ISA: baseline (available: " in r.output
        assert "divergence:" not in r.output
    finally:
        core.select_isa("avx512")


def test_version_shows_the_kernels():
    from qfair.cli import main

    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0
    assert qfair.__version__ in r.output and f"{core.active_isa()} kernels" in r.output


def test_doctor_library_report():
    from qfair.doctor import doctor

    rep = doctor(seconds=0, threads=1)
    assert rep.isa == core.active_isa() and rep.threads == 1
    assert rep.divergence.rate > 0 and rep.divergence.runs >= 3
    assert rep.bootstrap.rate > 0
    with pytest.raises(ValueError):
        doctor(threads=-1, measure=False)
