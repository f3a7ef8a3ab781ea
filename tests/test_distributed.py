"""Data-parallel dumps: ``torchrun --nproc-per-node N -m qfair dump`` (gloo, CPU).

Oracle: the single-process dump with the same options and one torch thread per
process. The merged dump must hold the same files byte for byte (tables and
shards) and the same manifest except the run's times and its ``distributed``
record; an interrupted rank resumes its own part.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_dump_support import data_files, load_tiny, stable_manifest, write_mc_file  # noqa: E402

import qfair.tasks as T  # noqa: E402
from qfair.dump import DumpError, open_dump  # noqa: E402
from qfair.dump import distributed as D  # noqa: E402
from qfair.dump.run import run_dump  # noqa: E402
from qfair.dump.writer import ShardPlan, split_plans  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 40


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("dp")
    model_dir = make_tiny_model("llama", root / "tiny", seed=1)
    mc = write_mc_file(root / "mc.jsonl", 40, seed=3)
    loaded = load_tiny(model_dir)
    ref = root / "ref"
    run_dump(ref, loaded, [T.get("mc", data_file=mc)], shard_rows=ROWS, progress=False, config={"model": "tiny"})
    return {"root": root, "model_dir": model_dir, "mc": mc, "loaded": loaded, "ref": ref}


def _without_run(m: dict) -> dict:
    m = dict(m)
    m.pop("run")
    return m


# ---------------------------------------------------------------------------
# the split
# ---------------------------------------------------------------------------

def _plans(rows):
    out, first = [], 0
    for i, r in enumerate(rows):
        out.append(ShardPlan(i, i, i + 1, first, r))
        first += r
    return out


def test_split_is_contiguous_covering_and_balanced_by_rows():
    assert split_plans(_plans([10, 10, 10, 10]), 2) == [(0, 2), (2, 4)]
    assert split_plans(_plans([10, 10, 10, 10]), 3) == [(0, 1), (1, 3), (3, 4)]
    # a heavy shard goes where the rows balance best
    assert split_plans(_plans([100, 10, 10, 10]), 2) == [(0, 1), (1, 4)]
    # more ranks than shards: some ranks write nothing (boundaries at the nearest shard edge: 0 or 5 rows)
    assert split_plans(_plans([5]), 3) == [(0, 0), (0, 1), (1, 1)]
    for world in range(1, 7):
        ranges = split_plans(_plans([3, 9, 1, 4, 4, 7, 2]), world)
        assert ranges[0][0] == 0 and ranges[-1][1] == 7
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


# ---------------------------------------------------------------------------
# parts written in this process, then merged
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("world", [2, 3, 40])
def test_parts_merge_into_the_single_process_dump(env, tmp_path, world):
    out = tmp_path / "dp"
    for r in range(world):
        s = run_dump(D.part_dir(out, r), env["loaded"], [T.get("mc", data_file=env["mc"])], shard_rows=ROWS,
                     progress=False, config={"model": "tiny"}, part=(r, world))
        assert s is None
        m = json.loads((D.part_dir(out, r) / "manifest.json").read_text())
        assert m["status"] == "partial" and m["part"]["done"] and m["part"]["rank"] == r
    D.merge_parts(out, world)
    assert not (out / "ranks").exists()
    assert data_files(out) == data_files(env["ref"])
    a, b = stable_manifest(out), stable_manifest(env["ref"])
    assert _without_run(a) == _without_run(b)
    assert a["run"]["config"] == b["run"]["config"]
    dist = json.loads((out / "manifest.json").read_text())["run"]["distributed"]
    assert dist["world_size"] == world and [x["rank"] for x in dist["ranks"]] == list(range(world))
    open_dump(out).verify()


def test_an_interrupted_part_resumes_and_merges_identically(env, tmp_path, monkeypatch):
    import qfair.scoring as S

    out = tmp_path / "dp"
    tasks = [T.get("mc", data_file=env["mc"])]
    run_dump(D.part_dir(out, 0), env["loaded"], tasks, shard_rows=ROWS, progress=False, config={"model": "tiny"},
             part=(0, 2))
    real = S.Scorer.score
    calls = {"n": 0}

    def interrupted(self, ex):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real(self, ex)

    monkeypatch.setattr(S.Scorer, "score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_dump(D.part_dir(out, 1), env["loaded"], tasks, shard_rows=ROWS, progress=False,
                 config={"model": "tiny"}, part=(1, 2))
    monkeypatch.setattr(S.Scorer, "score", real)
    m = json.loads((D.part_dir(out, 1) / "manifest.json").read_text())
    assert not m["part"]["done"] and 1 <= len(m["shards"]) < m["part"]["shards"][1] - m["part"]["shards"][0]
    with pytest.raises(DumpError, match="has not finished its shards"):
        D.merge_parts(out, 2)
    # the part's own resume continues at its first unfinished shard
    run_dump(D.part_dir(out, 1), env["loaded"], tasks, shard_rows=ROWS, progress=False, config={"model": "tiny"},
             part=(1, 2), resume=True)
    # a part of another split is refused on resume
    with pytest.raises(DumpError, match="part"):
        run_dump(D.part_dir(out, 1), env["loaded"], tasks, shard_rows=ROWS, progress=False,
                 config={"model": "tiny"}, part=(1, 3), resume=True)
    D.merge_parts(out, 2)
    assert data_files(out) == data_files(env["ref"])


def test_merge_refuses_parts_of_different_runs(env, tmp_path):
    out = tmp_path / "dp"
    tasks = [T.get("mc", data_file=env["mc"])]
    run_dump(D.part_dir(out, 0), env["loaded"], tasks, shard_rows=ROWS, progress=False, config={"model": "tiny"},
             part=(0, 2))
    run_dump(D.part_dir(out, 1), env["loaded"], tasks, shard_rows=ROWS, progress=False,
             config={"model": "other"}, part=(1, 2))
    with pytest.raises(DumpError, match=r"rank-00001/manifest.json: field 'run.config.model' differs"):
        D.merge_parts(out, 2)


def test_generation_dumps_are_refused_in_parallel(env, tmp_path):
    from qfair.dump import run as R

    with pytest.raises(DumpError, match="generation dumps cut their shards"):
        R._task_dump(tmp_path / "g", str(env["model_dir"]), "none", "gen_stories", None, 1, {}, 1, None,
                     part=(0, 2), store="full", store_dtype="f16", shard_rows=ROWS, batch_size=4, resume=False,
                     overwrite=False, seed=0, progress=False)


# ---------------------------------------------------------------------------
# torchrun, 2 processes, gloo
# ---------------------------------------------------------------------------

def _torchrun(env, out, *extra, nproc=2, popen=False, mc=None):
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", str(nproc), "-m", "qfair", "dump",
           "--model", str(env["model_dir"]), "--tasks", "mc", "--data-file", f"mc={mc or env['mc']}",
           "--shard-rows", str(ROWS), "--threads", "1", "--no-progress", "--out", str(out), *extra]
    e = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=600)


def _cli_single(env, out, mc):
    cmd = [sys.executable, "-m", "qfair", "dump", "--model", str(env["model_dir"]), "--tasks", "mc", "--data-file",
           f"mc={mc}", "--shard-rows", str(ROWS), "--threads", "1", "--no-progress", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed beside this python")
def test_torchrun_two_processes_give_the_single_process_dump(env, tmp_path):
    single, dp = tmp_path / "single", tmp_path / "dp"
    _cli_single(env, single, env["mc"])
    r = _torchrun(env, dp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("Wrote ") == 1  # reported once, by rank 0
    assert data_files(dp) == data_files(single)
    a, b = stable_manifest(dp), stable_manifest(single)
    assert _without_run(a) == _without_run(b)
    ranks = json.loads((dp / "manifest.json").read_text())["run"]["distributed"]["ranks"]
    assert [x["shards"] for x in ranks] == [list(x) for x in split_plans(
        [ShardPlan(**{"index": p["index"], "ex_start": p["examples"][0], "ex_end": p["examples"][1],
                      "first_row": p["first_row"], "rows": p["rows"]}) for p in a["plan"]], 2)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed beside this python")
def test_torchrun_killed_then_resumed_per_rank(env, tmp_path):
    psutil = pytest.importorskip("psutil")
    mc = write_mc_file(tmp_path / "big.jsonl", 300, seed=11)
    single, dp = tmp_path / "single", tmp_path / "dp"
    _cli_single(env, single, mc)
    p = _torchrun(env, dp, popen=True, mc=mc)
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and p.poll() is None:
        try:
            parts = [json.loads((D.part_dir(dp, r) / "manifest.json").read_text()) for r in range(2)]
        except (OSError, ValueError):
            parts = None
        if parts and all(len(m["shards"]) >= 1 for m in parts) and not all(m["part"]["done"] for m in parts):
            # torchrun starts its workers in sessions of their own: kill them and torchrun at once
            procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            for proc in procs:
                proc.send_signal(signal.SIGKILL)
            psutil.wait_procs(procs, timeout=30)
            killed = True
            break
        time.sleep(0.01)
    p.wait(timeout=60)
    assert killed, "the run finished before it could be killed"
    assert not (dp / "manifest.json").exists() and (dp / "ranks").is_dir()
    # another world size is refused; the same one finishes each rank's part
    r = _torchrun(env, dp, "--resume", nproc=3, mc=mc)
    assert r.returncode != 0 and "started with 2 processes" in r.stderr
    r = _torchrun(env, dp, "--resume", mc=mc)
    assert r.returncode == 0, r.stderr[-3000:]
    assert data_files(dp) == data_files(single)
    assert _without_run(stable_manifest(dp)) == _without_run(stable_manifest(single))
    # a second run refuses the directory on every rank, with one line; --resume of a complete dump does nothing
    r2 = _torchrun(env, dp, mc=mc)
    assert r2.returncode != 0 and "directory exists and is not empty" in r2.stderr
    r3 = _torchrun(env, dp, "--resume", mc=mc)
    assert r3.returncode == 0 and "already complete" in r3.stdout
