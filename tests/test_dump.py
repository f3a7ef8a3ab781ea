"""The dump: files, tables, storage modes, resume after SIGKILL / disk full, reader.

Oracles: the plain full-sequence scoring (``Scorer.score_naive``), torch's
float32 log-softmax, numpy argmax for acc / acc_norm, byte-for-byte
comparison with an uninterrupted run.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")

from test_dump_support import data_files, load_tiny, stable_manifest, write_mc_file  # noqa: E402

import qfair  # noqa: E402
import qfair.tasks as T  # noqa: E402
from qfair.dump import DumpError, open_dump  # noqa: E402
from qfair.dump import writer as W  # noqa: E402
from qfair.dump.run import run_dump  # noqa: E402
from qfair.scoring import Scorer, encode_example  # noqa: E402

SHARD_ROWS = 60

pytestmark = pytest.mark.usefixtures("one_torch_thread")




@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("dumpenv")
    model_dir = make_tiny_model("llama", root / "tiny", seed=1)
    mc = write_mc_file(root / "mc.jsonl", 30, seed=2)
    loaded = load_tiny(model_dir)
    return {"root": root, "model_dir": model_dir, "mc": mc, "loaded": loaded}


def _tasks(env, limit=None):
    return [T.get("mc", data_file=env["mc"], limit=limit), T.get("piqa", limit=3)]


@pytest.fixture(scope="module")
def full(env):
    out = env["root"] / "full"
    summary = run_dump(out, env["loaded"], _tasks(env), shard_rows=SHARD_ROWS, progress=False,
                       config={"model": str(env["model_dir"])})
    return out, summary


# ---------------------------------------------------------------------------
# a complete dump
# ---------------------------------------------------------------------------

def test_manifest_fields(full, env):
    out, summary = full
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "qfair-dump" and m["format_version"] == 2 and m["status"] == "complete"
    assert m["kind"] == "multiple_choice"
    assert m["model"]["model"] == str(env["model_dir"])
    tok = env["loaded"].tokenizer
    assert m["tokenizer"]["vocab_size"] == len(tok.get_vocab()) and len(m["tokenizer"]["vocab_sha256"]) == 64
    assert [t["name"] for t in m["tasks"]] == ["mc", "piqa"]
    for t in m["tasks"]:
        assert t["prompt_format_version"] and t["source"] and len(t["source_hash"]) == 64
    assert m["storage"]["mode"] == "full" and m["storage"]["dtype"] == "f16"
    assert m["libraries"]["torch"] == torch.__version__.split("+")[0] or m["libraries"]["torch"].startswith(
        torch.__version__.split("+")[0])
    assert m["run"]["seed"] == 0 and m["run"]["start_time"] and m["run"]["end_time"]
    assert len(m["shards"]) == summary.n_shards > 2
    assert [s["file"] for s in m["shards"]] == [f"logits/{i:05d}.npy" for i in range(len(m["shards"]))]
    assert not (out / "parts").exists()
    assert sorted(p.name for p in out.iterdir()) == ["choices.parquet", "examples.parquet", "logits",
                                                      "manifest.json", "tokens.parquet"]
    # every shard except the last holds at least --shard-rows rows, cut at example boundaries
    assert all(s["rows"] >= SHARD_ROWS for s in m["shards"][:-1])


def test_tables_columns_and_values(full, env):
    out, _ = full
    d = qfair.open_dump(out)
    assert d.is_complete and d.status == "complete" and d.has_logits and d.logits_dtype == "f16"
    assert d.examples.columns[:9] == ["example_id", "task", "doc_index", "group", "label", "n_choices",
                                      "context", "choices", "labels"]
    assert d.choices.columns == ["task", "example_id", "doc_index", "choice", "loglik", "n_tokens", "n_chars",
                                 "n_bytes", "is_greedy", "first_row", "n_rows"]
    assert d.tokens.columns == ["row", "task", "example_id", "choice", "pos", "target", "logprob", "entropy",
                                "max_logprob", "argmax", "rank"]
    assert d.choices.schema["loglik"] == pl.Float64
    docs = [doc for t in _tasks(env) for doc in t.docs()]
    assert d.examples["example_id"].to_list() == [doc.example_id for doc in docs]
    assert d.examples["doc_index"].to_list() == [doc.doc_index for doc in docs]

    lo = env["loaded"]
    naive = Scorer(lo.model, lo.tokenizer, keep_rows=True)
    ch = d.choices
    tk = d.tokens
    blocks = d.logit_blocks(verify=True)
    stored = np.concatenate([np.asarray(b) for b in blocks]).astype(np.float32)
    assert stored.shape == (d.n_rows, d.vocab_size) == (tk.height, lo.model.config.vocab_size)
    i = 0
    for doc, t in zip(docs, [task for task in _tasks(env) for _ in task.docs()]):
        ex = encode_example(lo.tokenizer, doc.context, doc.choices, t.target_delimiter)
        want = naive.score_naive(ex)
        for c, w in enumerate(want):
            r = ch.row(i, named=True)
            i += 1
            assert (r["example_id"], r["choice"], r["task"]) == (doc.example_id, c, doc.task)
            assert abs(r["loglik"] - w.loglik) <= 1e-5 + 5e-7 * abs(w.loglik)
            assert r["is_greedy"] == w.is_greedy
            assert r["n_tokens"] == r["n_rows"] == w.n_tokens == len(ex.conts[c])
            assert r["n_chars"] == len(doc.choices[c]) and r["n_bytes"] == len(doc.choices[c].encode())
            rows = tk.slice(r["first_row"], r["n_tokens"])
            assert rows["row"].to_list() == list(range(r["first_row"], r["first_row"] + r["n_tokens"]))
            assert rows["pos"].to_list() == list(range(r["n_tokens"]))
            assert rows["target"].to_list() == ex.conts[c]
            np.testing.assert_allclose(rows["logprob"].to_numpy(), w.logprob, atol=1e-5, rtol=1e-5)
            # argmax and rank are exact up to near-ties: batched and one-by-one scoring round float32
            # differently (seen: a token 2e-7 nats from the target moved the rank 68 -> 69 on an AMD
            # EPYC), so a token within the logprob tolerance of the target may count either way
            ref = w.rows.numpy().astype(np.float64)
            tgt = ref[np.arange(len(ex.conts[c])), ex.conts[c]][:, None]
            tol = 1e-5 + 1e-5 * np.abs(tgt)
            rank = rows["rank"].to_numpy()
            assert np.all((1 + (ref > tgt + tol).sum(1) <= rank) & (rank <= 1 + (ref > tgt - tol).sum(1)))
            amax = rows["argmax"].to_numpy()
            top = ref.max(1)
            assert np.all(ref[np.arange(len(amax)), amax] >= top - (1e-5 + 1e-5 * np.abs(top)))
            # the stored f16 row is the float32 log-softmax row, rounded
            got = stored[r["first_row"]:r["first_row"] + r["n_tokens"]]
            np.testing.assert_allclose(got, w.rows.numpy(), rtol=2 ** -10, atol=1e-6)
    assert i == ch.height
    # first_row is contiguous over the whole dump
    fr = ch["first_row"].to_numpy()
    assert fr[0] == 0 and np.all(fr[1:] == fr[:-1] + ch["n_rows"].to_numpy()[:-1])


def test_summary_metrics_are_lm_eval_acc(full):
    out, summary = full
    d = open_dump(out)
    for task in ("mc", "piqa"):
        ex = d.examples.filter(pl.col("task") == task)
        accs, norms = [], []
        for row in ex.iter_rows(named=True):
            c = d.choices.filter(pl.col("example_id") == row["example_id"]).sort("choice")
            ll = c["loglik"].to_numpy()
            lens = np.array([len(s) for s in row["choices"]], dtype=float)
            accs.append(float(np.argmax(ll) == row["label"]))
            norms.append(float(np.argmax(ll / lens) == row["label"]))
        assert summary.metrics[task]["acc"] == pytest.approx(np.mean(accs), abs=0)
        assert summary.metrics[task]["acc_norm"] == pytest.approx(np.mean(norms), abs=0)
        assert summary.metrics[task]["n"] == ex.height
    text = summary.text()
    assert "mc (n=30" in text and "piqa (n=3" in text and "shard" in text and "\n" not in text


def test_store_none_same_numbers(full, env, tmp_path):
    out_full, _ = full
    out = tmp_path / "none"
    s = run_dump(out, env["loaded"], _tasks(env), store="none", shard_rows=SHARD_ROWS, progress=False)
    d, f = open_dump(out), open_dump(out_full)
    assert not d.has_logits and d.logit_blocks() == [] and d.logit_paths == [] and d.n_rows == 0
    assert not (out / "logits").exists()
    np.testing.assert_array_equal(d.choices["loglik"].to_numpy(), f.choices["loglik"].to_numpy())
    assert (d.choices["first_row"] == -1).all() and (d.tokens["row"] == -1).all()
    assert d.tokens.drop("row").equals(f.tokens.drop("row"))
    assert s.metrics == json.loads(json.dumps(s.metrics))  # plain floats
    d.aligned_with(f)  # same keys: aligned


def test_store_f32_and_bf16(env, tmp_path):
    lo = env["loaded"]
    tasks = [T.get("mc", data_file=env["mc"], limit=4)]
    o32, o16 = tmp_path / "f32", tmp_path / "bf16"
    run_dump(o32, lo, tasks, store_dtype="f32", shard_rows=SHARD_ROWS, progress=False)
    run_dump(o16, lo, tasks, store_dtype="bf16", shard_rows=SHARD_ROWS, progress=False)
    d32, d16 = open_dump(o32), open_dump(o16)
    b32 = np.concatenate(d32.logit_blocks(verify=True))
    b16 = np.concatenate(d16.logit_blocks(verify=True))
    assert b32.dtype == np.float32 and b16.dtype == np.uint16 and d16.logits_dtype == "bf16"
    naive = Scorer(lo.model, lo.tokenizer, keep_rows=True)
    want = []
    for doc in tasks[0].docs():
        for s in naive.score_naive(encode_example(lo.tokenizer, doc.context, doc.choices, " ")):
            want.append(s.rows.numpy())
    want = np.concatenate(want)
    np.testing.assert_allclose(b32, want, atol=1e-5, rtol=1e-5)
    as_f32 = torch.from_numpy(b16.astype(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_allclose(as_f32, want, rtol=2 ** -8, atol=1e-6)


def test_nonfinite_rows_are_counted(env, tmp_path):
    import copy
    import types

    lo = env["loaded"]
    bad = copy.deepcopy(lo.model)
    with torch.no_grad():
        bad.lm_head.weight[7] = float("nan")
    loaded = types.SimpleNamespace(**{**vars(lo), "model": bad})
    s = run_dump(tmp_path / "nan", loaded, [T.get("mc", data_file=env["mc"], limit=2)], progress=False)
    m = json.loads((tmp_path / "nan" / "manifest.json").read_text())
    assert s.nonfinite_rows == m["counts"]["nonfinite_rows"] == s.n_rows > 0
    assert "NaN" in s.text()
    tk = open_dump(tmp_path / "nan").tokens
    assert tk["entropy"].is_nan().all() and tk["logprob"].is_nan().all()  # kept as NaN, never averaged away


# ---------------------------------------------------------------------------
# interruption and resume
# ---------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import qfair.tasks as T
    from qfair.dump.run import run_dump
    from test_dump_support import load_tiny
    loaded = load_tiny({model!r})
    run_dump({out!r}, loaded, [T.get("mc", data_file={mc!r})], shard_rows={rows}, progress=False,
             resume={resume}, config={{"model": "tiny"}})
""")


def _run_script(env, out, mc, rows, resume):
    code = KILL_SCRIPT.format(tests=str(Path(__file__).parent), model=str(env["model_dir"]), out=str(out),
                              mc=str(mc), rows=rows, resume=resume)
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_vars)


@pytest.mark.slow
def test_sigkill_then_resume_gives_same_bytes(env, tmp_path):
    mc = write_mc_file(tmp_path / "big.jsonl", 200, seed=9)
    rows = 40
    ref = tmp_path / "ref"  # uninterrupted, in this process (also one torch thread)
    run_dump(ref, env["loaded"], [T.get("mc", data_file=mc)], shard_rows=rows, progress=False,
             config={"model": "tiny"})

    out = tmp_path / "killed"
    p = _run_script(env, out, mc, rows, False)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and p.poll() is None:
        try:
            m = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError):
            m = None
        if m and len(m["shards"]) >= 1:
            os.kill(p.pid, signal.SIGKILL)
            killed_at = len(m["shards"])
            break
        time.sleep(0.005)
    p.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed"
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "partial" and len(m["shards"]) < len(m["plan"])
    # the partial dump is readable: its finished shards verify
    d = open_dump(out)
    assert not d.is_complete and len(d.logit_blocks(verify=True)) == len(m["shards"])
    assert d.choices.height == sum(s["parts"]["choices"]["rows"] for s in m["shards"])

    # a plain second run refuses to clobber it; --resume finishes it
    with pytest.raises(DumpError, match="--resume"):
        run_dump(out, env["loaded"], [T.get("mc", data_file=mc)], shard_rows=rows, progress=False,
                 config={"model": "tiny"})
    s = run_dump(out, env["loaded"], [T.get("mc", data_file=mc)], shard_rows=rows, progress=False,
                 resume=True, config={"model": "tiny"})
    assert s.resumed_from_shard == len(m["shards"]) >= killed_at
    assert data_files(out) == data_files(ref)
    assert stable_manifest(out) == stable_manifest(ref)
    assert json.loads((out / "manifest.json").read_text())["run"]["resumed_at"]


def test_disk_full_keeps_shards_and_resume_completes(env, tmp_path, monkeypatch):
    tasks = [T.get("mc", data_file=env["mc"])]
    ref = tmp_path / "ref"
    run_dump(ref, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False)

    real_write = W.ShardWriter._write

    def failing(self, data):
        if self._plan is not None and self._plan.index >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(W.ShardWriter, "_write", failing)
    out = tmp_path / "full_disk"
    with pytest.raises(DumpError, match=r"disk full while writing .*logits/00002\.npy"):
        run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "partial" and [s["index"] for s in m["shards"]] == [0, 1]
    assert sorted(p.name for p in (out / "logits").iterdir()) == ["00000.npy", "00001.npy"]  # no temp left
    open_dump(out).logit_blocks(verify=True)

    monkeypatch.setattr(W.ShardWriter, "_write", real_write)
    s = run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False, resume=True)
    assert s.resumed_from_shard == 2
    assert data_files(out) == data_files(ref)
    # resuming a complete dump is a no-op that reports it
    again = run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False, resume=True)
    assert again.already_complete and "already complete" in again.text()


def test_resume_refuses_changed_options(env, tmp_path, monkeypatch):
    tasks = [T.get("mc", data_file=env["mc"])]
    real_write = W.ShardWriter._write

    def failing(self, data):
        if self._plan is not None and self._plan.index >= 1:
            raise OSError(errno.EIO, "I/O error")
        return real_write(self, data)

    monkeypatch.setattr(W.ShardWriter, "_write", failing)
    out = tmp_path / "d"
    with pytest.raises(DumpError, match="cannot write"):
        run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False)
    monkeypatch.setattr(W.ShardWriter, "_write", real_write)
    with pytest.raises(DumpError, match=r"shard_rows"):
        run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS + 1, progress=False, resume=True)
    with pytest.raises(DumpError, match=r"store_dtype"):
        run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, store_dtype="f32", progress=False, resume=True)
    with pytest.raises(DumpError, match=r"tasks"):
        run_dump(out, env["loaded"], [T.get("mc", data_file=env["mc"], limit=5)], shard_rows=SHARD_ROWS,
                 progress=False, resume=True)
    # a corrupted finished shard is detected, not silently reused
    shard = out / "logits" / "00000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DumpError, match=r"00000\.npy: xxh3_128 differs"):
        run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False, resume=True)


def test_directory_rules(env, tmp_path):
    tasks = [T.get("mc", data_file=env["mc"], limit=2)]
    other = tmp_path / "notadump"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(DumpError, match="not empty"):
        run_dump(other, env["loaded"], tasks, progress=False)
    with pytest.raises(DumpError, match="not a qfair dump"):
        run_dump(other, env["loaded"], tasks, progress=False, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(DumpError, match="nothing to resume"):
        run_dump(tmp_path / "absent", env["loaded"], tasks, progress=False, resume=True)
    out = tmp_path / "d"
    run_dump(out, env["loaded"], tasks, progress=False)
    run_dump(out, env["loaded"], tasks, progress=False, overwrite=True, store="none")
    assert not open_dump(out).has_logits
    with pytest.raises(DumpError, match="--store"):
        run_dump(tmp_path / "e", env["loaded"], tasks, store="some", progress=False)
    with pytest.raises(DumpError, match="--shard-rows"):
        run_dump(tmp_path / "e", env["loaded"], tasks, shard_rows=0, progress=False)


def test_plan_shards_cuts_at_example_boundaries():
    plans = W.plan_shards([3, 5, 0, 2, 7, 1, 1], 6)
    assert [(p.ex_start, p.ex_end, p.first_row, p.rows) for p in plans] == [
        (0, 2, 0, 8), (2, 5, 8, 9), (5, 7, 17, 2)]
    assert W.plan_shards([], 4) == []
    assert [p.rows for p in W.plan_shards([1] * 10, 1)] == [1] * 10


# ---------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------

@pytest.fixture
def copy_of(full, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(full[0], dst)
    return dst


def test_reader_errors_name_file_and_field(copy_of, tmp_path):
    with pytest.raises(DumpError, match="manifest.json: missing"):
        open_dump(tmp_path)
    with pytest.raises(DumpError, match="not a directory"):
        open_dump(tmp_path / "nope")
    mpath = copy_of / "manifest.json"
    good = json.loads(mpath.read_text())
    for mutate, pattern in [
        (lambda m: m.update(format="other"), "field 'format'"),
        (lambda m: m.pop("shards"), "field 'shards' missing"),
        (lambda m: m.update(format_version=99), "field 'format_version'"),
        (lambda m: m.update(status="done"), "field 'status'"),
        (lambda m: m["storage"].update(dtype="f8"), "field 'storage.dtype'"),
        (lambda m: m["shards"][1].update(xxh3_128="ABC"), r"field 'shards\[1\]\.xxh3_128'.*32 lowercase hex"),
        (lambda m: m["shards"][0].update(xxh3_128=m["shards"][0]["sha256"]), r"shards\[0\]\.xxh3_128"),
    ]:
        m = json.loads(json.dumps(good))
        mutate(m)
        mpath.write_text(json.dumps(m))
        with pytest.raises(DumpError, match=pattern):
            open_dump(copy_of)
    mpath.write_text("{not json")
    with pytest.raises(DumpError, match="not valid JSON"):
        open_dump(copy_of)
    assert issubclass(DumpError, ValueError)


def test_reader_detects_truncated_and_corrupt_shards(copy_of):
    shard = copy_of / "logits" / "00001.npy"
    data = shard.read_bytes()
    d = open_dump(copy_of)
    shard.write_bytes(data[:-10])
    with pytest.raises(DumpError, match=r"00001\.npy: .*bytes.*truncated"):
        d.logit_blocks()
    corrupt = bytearray(data)
    corrupt[200] ^= 0x55
    shard.write_bytes(bytes(corrupt))
    d.logit_blocks()  # sizes fine; contents only checked on request
    with pytest.raises(DumpError, match=r"00001\.npy: xxh3_128 differs from manifest\.json shards\[1\]\.xxh3_128"):
        d.logit_blocks(verify=True)
    # a dump whose manifest records no xxh3_128 (written before it was) is checked by its sha256
    m = json.loads((copy_of / "manifest.json").read_text())
    for s in m["shards"]:
        del s["xxh3_128"]
    (copy_of / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DumpError, match=r"00001\.npy: sha256 differs from manifest\.json shards\[1\]\.sha256"):
        open_dump(copy_of).logit_blocks(verify=True)
    shard.write_bytes(data)
    open_dump(copy_of).logit_blocks(verify=True)
    (copy_of / "tokens.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(DumpError, match="tokens.parquet: not a readable Parquet"):
        _ = open_dump(copy_of).tokens


def test_reader_never_unpickles(copy_of):
    # a shard replaced by an object array (which would need pickle) is refused
    shard = copy_of / "logits" / "00000.npy"
    size = shard.stat().st_size
    np.save(shard, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with open(shard, "ab") as f:  # same size as listed, so the header itself is what gets read
        f.write(b"\0" * (size - shard.stat().st_size))
    with pytest.raises(DumpError, match=r"00000\.npy: not a readable \.npy"):
        open_dump(copy_of).logit_blocks()


def test_blocks_are_memory_maps_in_row_order(full):
    d = open_dump(full[0])
    blocks = d.logit_blocks()
    assert all(isinstance(b, np.memmap) for b in blocks)
    assert [b.shape[0] for b in blocks] == [s["rows"] for s in d.manifest["shards"]]
    assert sum(b.shape[0] for b in blocks) == d.n_rows == d.tokens.height
    assert d.logit_paths == [full[0] / "logits" / f"{i:05d}.npy" for i in range(len(blocks))]


def test_aligned_with(full, env, tmp_path):
    d = open_dump(full[0])
    d.aligned_with(d)
    other = tmp_path / "fewer"
    run_dump(other, env["loaded"], [T.get("mc", data_file=env["mc"], limit=29), T.get("piqa", limit=3)],
             shard_rows=SHARD_ROWS, progress=False)
    with pytest.raises(DumpError, match="not aligned"):
        d.aligned_with(open_dump(other))
    m = json.loads((other / "manifest.json").read_text())
    m["tokenizer"]["vocab_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DumpError, match="vocab_sha256"):
        d.aligned_with(open_dump(other))


def test_ctrl_c_keeps_finished_shards_and_no_temp_files(env, tmp_path, monkeypatch):
    import qfair.scoring as S

    tasks = [T.get("mc", data_file=env["mc"], limit=12)]
    ref = tmp_path / "ref"
    run_dump(ref, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False)
    real = S.Scorer.score
    calls = {"n": 0}

    def interrupted(self, ex):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(self, ex)

    monkeypatch.setattr(S.Scorer, "score", interrupted)
    out = tmp_path / "d"
    with pytest.raises(KeyboardInterrupt):
        run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "partial" and 1 <= len(m["shards"]) < len(m["plan"])
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    monkeypatch.setattr(S.Scorer, "score", real)
    run_dump(out, env["loaded"], tasks, shard_rows=SHARD_ROWS, progress=False, resume=True)
    assert data_files(out) == data_files(ref)


def test_files_get_the_usual_permissions(full):
    out, _ = full
    mask = os.umask(0o022)
    os.umask(mask)
    for p in [out / "manifest.json", out / "tokens.parquet", out / "logits" / "00000.npy"]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
