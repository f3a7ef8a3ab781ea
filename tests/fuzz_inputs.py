"""Property-based fuzzing of everything a user can hand qfair: damaged dumps for
``qfair analyze`` / ``qfair report``, arrays for ``qfair.divergence`` /
``qfair.stream_divergence``, study files (path-like labels and names, numbers
such as inf, nan, 1e400 and negatives), lm-eval sample lines and ``.kld`` rows.

The property: every input either succeeds with correct, finite-aware results
or is refused with exit status 1 (a ValueError in the library) and one line,
never a traceback, never a wrong number with exit status 0.

Used by tests/test_fuzz.py (a budget of a few seconds in the normal test run)
and bench/fuzz_inputs.py (a long run that reports the number of cases tried).
Nothing here is collected by pytest itself.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

CASES = {"dump": 0, "divergence": 0, "report": 0, "study": 0, "lm_eval": 0, "kld": 0, "outcomes": {}}
_TEMPLATE: dict[str, Path] = {}


def _count(kind: str, outcome: str) -> None:
    CASES[kind] += 1
    CASES["outcomes"][f"{kind}:{outcome}"] = CASES["outcomes"].get(f"{kind}:{outcome}", 0) + 1


# ---------------------------------------------------------------------------
# dumps

def template() -> dict[str, Path]:
    """A small valid pair (3 tasks x 2 examples, f16 base and f32 quant, several shards), built once."""
    if not _TEMPLATE:
        from test_analyze import make_corpus, make_rows, write_dump

        root = Path(tempfile.mkdtemp(prefix="qfair-fuzz-"))
        c = make_corpus(0, n_per_task=2)
        b = make_rows(c, 1)
        q = make_rows(c, 2, base_rows=b, noise=0.5)
        _TEMPLATE["base"] = write_dump(root / "base", c, b, shard_rows=12)
        _TEMPLATE["q"] = write_dump(root / "q", c, q, shard_rows=12, dtype="f32")
        _TEMPLATE["root"] = root
    return _TEMPLATE


def _paths(x, prefix=()):
    """Every path (tuple of keys) inside a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += _paths(v, prefix + (i,))
    return out


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**65, 2**65), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../q/logits/00000.npy", "/etc/passwd", "logits/00001.npy", "examples.parquet",
                     "tokens.parquet", "", "0" * 64, "f" * 64, "multiple_choice", "choices_only", "complete",
                     "partial", "full", "none", "f32", "bf16", "log_softmax"]),
    st.lists(st.integers(-3, 100), max_size=3), st.dictionaries(st.sampled_from(["file", "rows", "x"]),
                                                              st.integers(-1, 50), max_size=2),
)
SPECIAL = [float("nan"), float("inf"), float("-inf"), -65504.0, 0.0, 30.0, -30.0, -1e30]


def _resign(d: Path) -> None:
    from test_dump_support import resign

    resign(d)


def _mutate_manifest(data, d: Path) -> str:
    mp = d / "manifest.json"
    m = json.loads(mp.read_text())
    paths = _paths(m)
    path = data.draw(st.sampled_from(paths), label="manifest path")
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = data.draw(st.sampled_from(["replace", "delete", "nudge"]), label="op")
    old = parent[key]
    if op == "delete" and isinstance(parent, dict):
        del parent[key]
    elif op == "nudge" and type(old) is int:
        parent[key] = old + data.draw(st.sampled_from([-1, 1, -old - 1, 2**63]), label="delta")
    else:
        parent[key] = data.draw(JSON_VALUES, label="value")
    mp.write_text(json.dumps(m))
    return f"manifest {op} {'.'.join(map(str, path))}"


def _mutate_table(data, d: Path) -> str:
    name = data.draw(st.sampled_from(["examples", "choices", "tokens"]), label="table")
    p = d / f"{name}.parquet"
    df = pl.read_parquet(p)
    col = data.draw(st.sampled_from(df.columns), label="column")
    op = data.draw(st.sampled_from(["drop", "cast", "rename", "value", "head", "reverse", "null"]), label="op")
    if op == "drop":
        df = df.drop(col)
    elif op == "cast":
        to = data.draw(st.sampled_from([pl.Utf8, pl.Float64, pl.Float32, pl.Int32, pl.Int64, pl.Boolean]))
        try:
            df = df.with_columns(pl.col(col).cast(to, strict=False))
        except pl.exceptions.PolarsError:  # e.g. a list column to a number: replace it instead
            df = df.with_columns(pl.lit(None, dtype=to).alias(col))
    elif op == "rename":
        df = df.rename({col: col + "_x"})
    elif op == "head":
        df = df.head(data.draw(st.integers(0, max(0, df.height - 1)), label="rows"))
    elif op == "reverse":
        df = df.reverse()
    else:
        i = data.draw(st.integers(0, df.height - 1), label="row")
        dtype = df.schema[col]
        if op == "null":
            v = None
        elif dtype.is_float():
            v = data.draw(st.sampled_from(SPECIAL + [1.0]), label="v")
        elif dtype.is_integer():
            v = data.draw(st.sampled_from([-1, 0, 1, 2, 7, 10**12, -2**63, 2**63 - 1]), label="v")
        elif dtype == pl.Utf8:
            v = data.draw(st.sampled_from(["", "x", "toy_mc-000", "toy_mc", "<script>", "a" * 1000]), label="v")
        elif dtype == pl.Boolean:
            v = True
        else:
            v = None
        try:
            df = df.with_columns(pl.when(pl.int_range(pl.len()) == i).then(pl.lit(v, dtype=dtype))
                                 .otherwise(pl.col(col)).alias(col))
        except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
            df = df.with_columns(pl.when(pl.int_range(pl.len()) == i).then(None).otherwise(pl.col(col)).alias(col))
    df.write_parquet(p)
    return f"table {name} {op} {col}"


def _shards(d: Path) -> list[Path]:
    return sorted((d / "logits").glob("*.npy"))


def _mutate_header(data, d: Path) -> str:
    p = data.draw(st.sampled_from(_shards(d)), label="shard")
    raw = bytearray(p.read_bytes())
    op = data.draw(st.sampled_from(["bytes", "text"]), label="op")
    if op == "bytes":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, 127), label="at")
            raw[i] = data.draw(st.integers(0, 255), label="byte")
    else:
        hlen = int.from_bytes(raw[8:10], "little")
        text = raw[10:10 + hlen].decode("latin1").rstrip()
        new = data.draw(st.sampled_from([
            text.replace("False", "True"), text.replace("'<f2'", "'<f4'").replace("'<f4'", "'<f8'"),
            text.replace("'<f2'", "'|O'").replace("'<f4'", "'|O'"), text.replace("'<f2'", "'>f2'"),
            text.replace("'shape': (", "'shape': (1, "), text.replace("'shape': (", "'shape': (0, "),
            text.replace("'descr'", "'descr"), "{}", "[1, 2]", "__import__('os').system('true')",
            text.replace("}", ", 'extra': 1}"), text.replace("(", "((")]), label="header")
        if len(new) < hlen:
            raw[10:10 + hlen] = new.ljust(hlen - 1).encode("latin1") + b"\n"
    p.write_bytes(bytes(raw))
    return f"header {op} {p.name}"


def _mutate_payload(data, d: Path) -> str:
    p = data.draw(st.sampled_from(_shards(d)), label="shard")
    a = np.load(p)
    n = data.draw(st.integers(1, 4), label="entries")
    for _ in range(n):
        r = data.draw(st.integers(0, a.shape[0] - 1), label="row")
        if data.draw(st.booleans(), label="whole row"):
            a[r, :] = data.draw(st.sampled_from([float("-inf"), float("nan"), 0.0]), label="row value")
        else:
            with np.errstate(over="ignore"):
                a[r, data.draw(st.integers(0, a.shape[1] - 1), label="col")] = data.draw(st.sampled_from(SPECIAL))
    np.save(p, a)
    return f"payload {p.name} x{n}"


def _truncate(data, d: Path) -> tuple[str, bool]:
    files = [d / "manifest.json", d / "examples.parquet", d / "choices.parquet", d / "tokens.parquet", *_shards(d)]
    p = data.draw(st.sampled_from(files), label="file")
    size = p.stat().st_size
    at = data.draw(st.integers(0, size), label="byte")
    p.write_bytes(p.read_bytes()[:at])
    return f"truncate {p.name} at {at}/{size}", at == size


def _one_line(res) -> None:
    assert isinstance(res.exception, SystemExit) or res.exception is None, \
        f"escaped exception {res.exception!r}\n{res.output[-2000:]}"
    assert "Traceback" not in res.output, res.output[-2000:]
    if res.exit_code != 0:
        assert res.exit_code == 1, (res.exit_code, res.output[-2000:])
        err = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert len(err) == 1 and len(res.output.strip().splitlines()) == 1, res.output[-2000:]


def _finite_aware(out: Path) -> dict:
    """Invariants of any successful analysis: counts, intervals and p-values where they belong."""
    s = pl.read_parquet(out / "summary.parquet")
    for r in s.iter_rows(named=True):
        assert r["n"] >= 1, r
        if r["test"] == "paired bootstrap":
            assert math.isfinite(r["diff"]) and r["ci_low"] <= r["ci_high"], r
            # p is undefined (NaN) when every resample gives the same value (e.g. n = 1)
            assert 0.0 <= r["p"] <= 1.0 or (math.isnan(r["p"]) and r["ci_low"] == r["ci_high"]), r
        elif r["test"] == "none (infinite values)":
            assert not math.isfinite(r["diff"]) and r["ci_low"] is None and r["p"] is None, r
        if r["kind"] == "flip":
            assert 0.0 <= r["diff"] <= 1.0, r
    settings = json.loads((out / "settings.json").read_text())
    t = pl.read_parquet(out / "tokens.parquet")
    if "kl_pq" in t.columns:
        for label, counts in settings["settings"]["nonfinite"].items():
            kl = t.filter(pl.col("model") == label)["kl_pq"]
            if "nonfinite_rows" in counts and kl.null_count() < kl.len():
                assert counts["nonfinite_rows"] == int(kl.is_nan().sum()), (counts, int(kl.is_nan().sum()))
                assert counts["infinite_kl_pq_rows"] == int(kl.is_infinite().sum())
    return settings


DUMP_FAMILIES = ["manifest", "table", "header", "payload", "truncate"]


def check_dump_case(data, report_every: int = 0) -> None:
    """One fuzz case: copy the template, damage one dump, run qfair analyze (and report)."""
    from qfair.cli import main

    tpl = template()
    family = data.draw(st.sampled_from(DUMP_FAMILIES), label="family")
    who = data.draw(st.sampled_from(["base", "q"]), label="dump")
    resign = data.draw(st.booleans(), label="resign")
    with tempfile.TemporaryDirectory(prefix="qfair-fuzz-case-") as tmp:
        tmp = Path(tmp)
        dirs = {k: tmp / k for k in ("base", "q")}
        for k, p in dirs.items():
            shutil.copytree(tpl[k], p)
        target = dirs[who]
        noop = False
        if family == "manifest":
            what = _mutate_manifest(data, target)
            resign = False
        elif family == "table":
            what = _mutate_table(data, target)
        elif family == "header":
            what = _mutate_header(data, target)
        elif family == "payload":
            what = _mutate_payload(data, target)
        else:
            what, noop = _truncate(data, target)
            resign = resign and not what.startswith("truncate manifest")
        changed = any((tpl[who] / f.relative_to(target)).read_bytes() != f.read_bytes()
                      for f in target.rglob("*") if f.is_file())
        if resign and changed:
            try:
                _resign(target)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a manifest the helper cannot even walk: analyzed as it is
        out = tmp / "out"
        res = CliRunner().invoke(main, ["analyze", str(dirs["base"]), str(dirs["q"]), "--out", str(out),
                                        "--bootstrap", "20", "--format", "parquet", "--no-progress"])
        _one_line(res)
        _count("dump", f"{family}:{'ok' if res.exit_code == 0 else 'refused'}")
        if not changed or noop:
            assert res.exit_code == 0, f"{what}: a no-op refused: {res.output}"
        elif not resign and family != "manifest":
            # an edited file whose manifest was not updated is always refused
            assert res.exit_code == 1, f"{what}: analyzed although the file no longer matches its manifest"
        if family == "payload" and resign:
            assert res.exit_code == 0, f"{what}: {res.output}"
            from test_dump_support import stored_kl_oracle

            kl, bad_p, bad_q = stored_kl_oracle(dirs["base"], dirs["q"])
            c = json.loads((out / "settings.json").read_text())["settings"]["nonfinite"]["q"]
            assert c["nonfinite_base_rows"] == bad_p and c["nonfinite_quant_rows"] == bad_q, (what, c)
            assert c["nonfinite_rows"] == int(np.isnan(kl).sum()), (what, c)
            assert c["infinite_kl_pq_rows"] == int(np.isinf(kl).sum()), (what, c)
            tok = pl.read_parquet(out / "tokens.parquet").sort("row")
            got = tok["kl_pq"].to_numpy()
            assert np.array_equal(np.isnan(got), np.isnan(kl)) and np.array_equal(np.isinf(got), np.isinf(kl))
            fin = np.isfinite(kl)
            np.testing.assert_allclose(got[fin], kl[fin], rtol=1e-3, atol=1e-6, err_msg=what)
        if res.exit_code == 0:
            _finite_aware(out)
            if report_every and CASES["dump"] % report_every == 0:
                rep = CliRunner().invoke(main, ["report", str(out), "--no-progress"])
                _one_line(rep)
                _count("report", f"report:{'ok' if rep.exit_code == 0 else 'refused'}")


@given(st.data())
def fuzz_dumps(data):
    check_dump_case(data)


@given(st.data())
def fuzz_dumps_with_report(data):
    check_dump_case(data, report_every=10)


# ---------------------------------------------------------------------------
# qfair.divergence / stream_divergence

FAULTS = ["none", "none", "none", "values", "values", "dtype", "layout", "targets", "topk", "threads", "chunk"]


@st.composite
def divergence_inputs(draw):
    """One input to qfair.divergence / stream_divergence: valid in every respect but the
    drawn ``fault`` (or none), so that both outcomes are exercised."""
    fault = draw(st.sampled_from(FAULTS), label="fault")
    rows = draw(st.integers(0, 7), label="rows")
    vocab = draw(st.integers(1 if fault != "layout" else 0, 40), label="vocab")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    a = (rng.standard_normal((rows, vocab)) * draw(st.sampled_from([0.1, 3.0, 30.0]))).astype(np.float32)
    b = (a + rng.standard_normal((rows, vocab)) * draw(st.sampled_from([0.0, 0.01, 1.0]))).astype(np.float32)
    if fault == "values" and rows and vocab:
        for x in (a, b):
            for _ in range(draw(st.integers(1, 4), label="specials")):
                r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, vocab - 1))
                v = draw(st.sampled_from([float("nan"), float("inf"), float("-inf"), -80.0, 80.0, -60.0]))
                if draw(st.booleans(), label="whole row"):
                    x[r, :] = v
                else:
                    x[r, c] = v
        if draw(st.booleans(), label="ties"):
            a[:, : max(1, vocab // 2)] = 0.0
    kinds = ["f32", "f16", "bf16"] + (["f64", "i32", "u16", "list"] if fault == "dtype" else [])
    layouts = ["c", "colslice"] + (["stride2", "reversed", "fortran", "3d", "1d", "shape_mismatch"]
                                   if fault == "layout" else [])
    tkinds = ["none", "i64", "i32", "u64", "u8"] + (["float", "bool", "short"] if fault == "targets" else [])
    tvals = st.integers(-2, max(0, vocab - 1))
    if fault == "targets":
        tvals = st.one_of(tvals, st.sampled_from([vocab, vocab + 1, 2**31, 2**63, 2**64 - 1]))
    topk = st.lists(st.integers(1, 1000), min_size=1, max_size=3, unique=True)
    if fault == "topk":
        topk = st.one_of(st.lists(st.sampled_from([0, -1, 1001, 2**40, 1.5, True, 3, 3]), min_size=1, max_size=3),
                         st.just(5), st.just([]))
    threads = st.sampled_from([None, 1, 2, 3, 4096])
    if fault == "threads":
        threads = st.sampled_from([0, -1, 4097, 2**40, 1.5, True, "2"])
    chunk = st.sampled_from([1, 2, 5, 4096, 2**40])
    if fault == "chunk":
        chunk = st.sampled_from([0, -3, 2.5, True, "7"])
    return dict(a=a, b=b, kind=draw(st.sampled_from(kinds), label="dtype"),
                layout=draw(st.sampled_from(layouts), label="layout"),
                targets_kind=draw(st.sampled_from(tkinds), label="targets"),
                tvals=draw(st.lists(tvals, min_size=rows, max_size=rows), label="ids"),
                topk=draw(topk, label="topk"), threads=draw(threads, label="threads"),
                stream=draw(st.booleans(), label="stream") or fault == "chunk",
                chunk=draw(chunk, label="chunk_rows"), fault=fault)


def _bf16(x: np.ndarray) -> np.ndarray:
    from test_divergence import to_bf16_bits

    return to_bf16_bits(x)


def _prepare(case):
    a, b = case["a"], case["b"]
    kind, dtype = case["kind"], None
    if kind == "f16":
        a, b = a.astype(np.float16), b.astype(np.float16)
    elif kind == "bf16":
        a, b, dtype = _bf16(a), _bf16(b), "bf16"
    elif kind == "f64":
        a, b = a.astype(np.float64), b.astype(np.float64)
    elif kind == "i32":
        a, b = np.clip(np.nan_to_num(a), -99, 99).astype(np.int32), np.clip(np.nan_to_num(b), -99, 99).astype(np.int32)
    elif kind == "u16":
        a, b = _bf16(a), _bf16(b)  # bf16 bits without the hint: refused
    elif kind == "list":
        a, b = a.tolist(), b.tolist()
    lay = case["layout"]
    if isinstance(a, np.ndarray):
        if lay == "colslice" and a.shape[1] > 1:
            a, b = a[:, :-1], b[:, :-1]
        elif lay == "stride2":
            a, b = a[:, ::2], b[:, ::2]
        elif lay == "reversed":
            a, b = a[::-1], b[::-1]
        elif lay == "fortran":
            a, b = np.asfortranarray(a), np.asfortranarray(b)
        elif lay == "3d":
            a, b = a[None], b[None]
        elif lay == "1d":
            a, b = a.reshape(-1), b.reshape(-1)
        elif lay == "shape_mismatch":
            b = b[:-1] if b.shape[0] else np.zeros((1, b.shape[1] + 1), b.dtype)
    rows = a.shape[0] if isinstance(a, np.ndarray) and a.ndim >= 1 else 0
    t = None
    tk = case["targets_kind"]
    if tk != "none":
        vals = case["tvals"][:rows] if tk != "short" else case["tvals"][:max(0, rows - 1)]
        if tk in ("u64", "u8"):
            t = np.array([v % 2**64 for v in vals], dtype=np.uint64)  # -1 -> 2^64 - 1: out of range
            if tk == "u8":
                t = np.array([v % 256 for v in vals], dtype=np.uint8)
        elif tk == "float":
            t = np.array(vals, dtype=np.float64)
        elif tk == "bool":
            t = np.array([bool(v) for v in vals], dtype=np.bool_)
        else:
            t = np.array([min(v, 2**63 - 1) for v in vals], dtype=np.int64)
            if tk == "i32":
                t = np.clip(t, -2**31, 2**31 - 1).astype(np.int32)
    return a, b, t, dtype


def _oracle_check(res, a, b, t, topk, dtype):
    """Valid rows against scipy/numpy (tests/test_divergence.py's oracle), invalid rows NaN and counted."""
    from test_divergence import check_against_oracle, oracle

    def widen(x):
        if dtype == "bf16":
            return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return np.asarray(x, dtype=np.float64)

    xa, xb = widen(np.asarray(a)), widen(np.asarray(b))

    def valid(x):
        return ~np.isnan(x).any(1) & ~np.isposinf(x).any(1) & np.isfinite(x).any(1)

    va, vb = valid(xa), valid(xb)
    ok = va & vb
    assert res.invalid_p == int((~va).sum()) and res.invalid_q == int((~vb).sum())
    assert res.invalid_rows == int((~ok).sum())
    assert np.isnan(res["kl_pq"][~ok]).all() and (res["argmax_q"][~vb] == -1).all()
    if ok.any():
        tt = None if t is None else np.asarray(t)[ok].astype(np.int64)
        use_t = tt is not None and (tt >= 0).all()
        ref = oracle(xa[ok], xb[ok], targets=tt if use_t else None, topk=topk)
        # KL in log space: exp() of a log-prob below -745 underflows to 0 in float64 and scipy's
        # rel_entr then says inf where the divergence is large but finite
        with np.errstate(all="ignore"):
            lp = xa[ok] - logsumexp(xa[ok], axis=1, keepdims=True)
            lq = xb[ok] - logsumexp(xb[ok], axis=1, keepdims=True)
            for name, x, y in (("kl_pq", lp, lq), ("kl_qp", lq, lp)):
                ref[name] = np.where(np.exp(x) == 0.0, 0.0, np.exp(x) * (x - y)).sum(1)
        sub = {k: np.asarray(v)[ok] for k, v in res.metrics.items()}
        if not use_t:
            for k in ("logprob_p", "logprob_q", "delta_p", "rank_p", "rank_q"):
                sub.pop(k, None)
        # rows with -inf entries: KL may be inf on both sides; compare where the oracle is finite
        with np.errstate(invalid="ignore"):
            check_against_oracle(sub, ref)


def check_divergence_case(case) -> None:
    import qfair

    a, b, t, dtype = _prepare(case)
    topk = case["topk"]
    try:
        if case["stream"]:
            chunks = list(qfair.stream_divergence(a, b, targets=t, topk=topk, threads=case["threads"],
                                                  dtype=dtype, chunk_rows=case["chunk"]))
            res = None
            if chunks:
                from qfair.core import DivergenceResult

                m = {k: np.concatenate([c.result.metrics[k] for c in chunks]) for k in chunks[0].result.metrics}
                res = DivergenceResult(m, sum(c.result.n_rows for c in chunks),
                                       sum(c.result.invalid_p for c in chunks), sum(c.result.invalid_q for c in chunks),
                                       sum(c.result.invalid_rows for c in chunks))
        else:
            res = qfair.divergence(a, b, targets=t, topk=topk, threads=case["threads"], dtype=dtype)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert "\n" not in msg.strip() and len(msg) < 400, msg
        assert "incompatible function arguments" not in msg and "Invoked with" not in msg, msg
        _count("divergence", f"refused:{case['fault']}")
        return
    _count("divergence", f"ok:{case['fault']}")
    # what succeeded must be right, and only valid input succeeds
    assert case["kind"] in ("f32", "f16", "bf16"), case["kind"]
    # strided, reversed or Fortran arrays may be read in place when their layout allows (0 or 1
    # rows, a vocabulary of 1): the oracle below is what proves they were read right
    assert case["layout"] not in ("3d", "1d", "shape_mismatch"), case["layout"]
    ks = [int(k) for k in topk]
    assert all(1 <= k <= 1000 for k in ks) and not any(isinstance(k, bool) for k in topk) and len(set(ks)) == len(ks)
    assert case["fault"] not in ("threads", "chunk") or (case["fault"] == "chunk" and not case["stream"]), case
    if t is not None:
        tt = np.asarray(t)
        assert tt.dtype.kind in "iu" and tt.dtype != np.bool_
        assert tt.size == 0 or int(tt.max()) < np.asarray(a).shape[1]
    if res is not None:
        _oracle_check(res, a, b, t, ks, dtype)


@given(divergence_inputs())
def fuzz_divergence(case):
    check_divergence_case(case)


# ---------------------------------------------------------------------------
# study files: names that become paths, numbers that must be finite and in range

#: path-like strings: every one must be refused or stay inside --out
PATHLIKE = ["..", ".", "../x", "../../etc", "/abs/olute", "/", "a/b", "a\\b", "a\x00b", ".hidden", "x/../../y",
            "~", "~/x", "C:\\x", "a/", " .. ", "..\\..", "\x00", "ok-name", "nf4+dq", "model.v2"]
#: numbers as TOML spells them (1e400 reads as infinity)
NUMBERS = ["inf", "-inf", "nan", "1e400", "-1e400", "-1", "0", "1", "0.5", "2.0", "-0.0", "1e-300", "3",
           "4097", "100000", "2147483648", "9223372036854775807", "1099511627776"]


def _toml_str(s: str) -> str:
    # JSON escapes are TOML escapes, except that TOML wants DEL escaped too
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


@st.composite
def study_files(draw):
    """(TOML text, what was drawn): a study file whose labels, names and numbers are hostile."""
    name = st.one_of(st.sampled_from(PATHLIKE), st.text(max_size=12))
    num = st.sampled_from(NUMBERS)
    drawn: dict = {}
    gen = draw(st.booleans(), label="generation group")
    lines = []
    if draw(st.booleans(), label="out in file"):
        drawn["out"] = draw(name, label="out")
        lines.append(f"out = {_toml_str(drawn['out'])}")
    spec_label = draw(st.none() | name, label="spec label")
    if spec_label is None:
        lines.append('quant = ["bnb-int8"]')
    else:
        lines.append(f'quant = [{{spec = "bnb-int8", label = {_toml_str(spec_label)}}}]')
    lines += ["[[models]]", f"id = {_toml_str(draw(st.sampled_from(['m', '..', '.', '/', 'a/..']) | name, label='id'))}"]
    model_label = draw(st.none() | name, label="model label")
    if model_label is not None:
        lines.append(f"label = {_toml_str(model_label)}")
    if draw(st.booleans(), label="with size"):
        lines.append(f"size = {draw(num, label='size')}")
    lines += ["[[tasks]]", f"name = {_toml_str(draw(name, label='group'))}",
              f'tasks = ["{"gen_prompts" if gen else "piqa"}"]']
    keys = ["limit", "threads", "seed", "shard_rows", "batch_size"]
    keys += ["max_new_tokens", "temperature", "top_p", "samples"] if gen else []
    for k in draw(st.lists(st.sampled_from(keys), unique=True, max_size=4), label="group keys"):
        lines.append(f"{k} = {draw(num, label=k)}")
    lines.append("[analysis]")
    for k in draw(st.lists(st.sampled_from(["bootstrap", "confidence", "threads", "bins", "n_strata", "seed"]),
                           unique=True, max_size=3), label="analysis keys"):
        v = draw(st.one_of(num, st.sampled_from(['"abc"', '"15,ece=0"', '{nope = 3}', '{ece = 1e400}'])),
                 label=f"analysis.{k}")
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


def check_study_case(text: str) -> None:
    """The study file's checks (shared by --dry-run and the run) either refuse it with
    one StudyError line, or every planned path lies inside --out and every option
    the dumps will get is one they accept."""
    from qfair.generation.decode import DecodeSettings
    from qfair.study import StudyError, load_study, make_plan
    from qfair.threads import MAX_THREADS

    with tempfile.TemporaryDirectory(prefix="qfair-fuzz-study-") as tmp:
        tmp = Path(tmp)
        sf = tmp / "sub" / "s.toml"
        sf.parent.mkdir()
        sf.write_text(text, encoding="utf-8")
        out = tmp / "sub" / "out"
        try:
            study = load_study(sf)
            plan = make_plan(study, out)
        except StudyError as e:
            assert str(e).strip() and str(e).startswith(str(sf)) or "--out" in str(e) or "out" in str(e), str(e)
            _count("study", "refused")
            return
        root = out.resolve()
        for p in [x for d in plan.dumps for x in (d.path, d.record)] + \
                [x for a in plan.analyses for x in (a.path, a.record)]:
            assert root in Path(os.path.realpath(p)).parents, (p, text)
        for g in study.groups:
            if g.kind == "generation":
                DecodeSettings(**g.generation)
            opts = study.dump_options(g)
            for k, v in opts.items():
                if k != "store" and k != "store_dtype":
                    assert type(v) is int and 0 <= v < 2**63, (k, v)
            if "threads" in opts:
                assert 1 <= opts["threads"] <= MAX_THREADS
        for k, v in study.analysis.items():
            if isinstance(v, float):
                assert math.isfinite(v), (k, v)
        _count("study", "ok")


@given(study_files())
def fuzz_study_files(text):
    check_study_case(text)


# ---------------------------------------------------------------------------
# lm-eval sample lines

LM_EVAL_RUN = Path(__file__).parent / "data" / "lm_eval" / "fp32"
LOGLIK_VALUES = [float("nan"), float("inf"), float("-inf"), "nan", "inf", "-inf", "1e400", "NaN", 1e30, 0.5,
                 -1e-300, -0.0, -3.5, -1e6, "x", None, True, [], "-2.25"]


def check_lm_eval_case(data) -> None:
    """Damage one sample line (a log-likelihood, the gold target, is_greedy, the
    doc id); the import is refused with one line and writes nothing, or its
    accuracy equals lm-eval's results file and every log-likelihood is finite."""
    from qfair.cli import main
    from qfair.dump.reader import open_dump

    with tempfile.TemporaryDirectory(prefix="qfair-fuzz-lmeval-") as tmp:
        d = Path(tmp) / "run"
        shutil.copytree(LM_EVAL_RUN, d)
        f = next(d.glob("samples_qfair_piqa_*.jsonl"))
        lines = f.read_text().splitlines()
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        s = json.loads(lines[i])
        what = data.draw(st.sampled_from(["loglik", "loglik", "loglik", "greedy", "target", "doc_id"]), label="what")
        if what == "loglik":
            j = data.draw(st.integers(0, len(s["filtered_resps"]) - 1), label="choice")
            s["filtered_resps"][j][0] = data.draw(st.sampled_from(LOGLIK_VALUES) | st.floats(), label="value")
        elif what == "greedy":
            j = data.draw(st.integers(0, len(s["filtered_resps"]) - 1), label="choice")
            s["filtered_resps"][j][1] = data.draw(st.sampled_from(["True", "False", "yes", 1, None]), label="value")
        elif what == "target":
            s["target"] = data.draw(st.sampled_from([-1, 0, 1, 2, 99, "[0, 1]", "", None, "x"]), label="value")
        else:
            s["doc_id"] = data.draw(st.sampled_from([-1, "x", None, 10**30, s["doc_id"]]), label="value")
        try:
            lines[i] = json.dumps(s, allow_nan=True)
        except (TypeError, ValueError):
            return
        f.write_text("\n".join(lines) + "\n")
        out = Path(tmp) / "o"
        res = CliRunner().invoke(main, ["import", "lm-eval", str(d), "--out", str(out)])
        _one_line(res)
        _count("lm_eval", "ok" if res.exit_code == 0 else "refused")
        if res.exit_code != 0:
            assert not out.exists() or not any(p.name != ".qfair.lock" for p in out.iterdir()), res.output
            return
        results = json.loads(next(d.glob("results_*.json")).read_text())["results"]
        dump = open_dump(out)
        ch = dump.choices
        assert np.isfinite(ch["loglik"].to_numpy()).all(), what
        from qfair.dump.summary import task_metrics

        kinds = {t["name"]: t["kind"] for t in dump.manifest["tasks"]}
        for task, m in task_metrics(dump.examples, ch, kinds).items():
            want = results.get(task, {}).get("acc,none")
            if want is not None and "acc" in m:
                assert abs(m["acc"] - want) <= 1e-12, (task, m["acc"], want, what)


@given(st.data())
def fuzz_lm_eval_lines(data):
    check_lm_eval_case(data)


# ---------------------------------------------------------------------------
# .kld rows

KLD_FLOATS = [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 0.0, -0.0, 1.0, -1.0, -16.0, -40.0, 0.5,
              1e-30, 3.4e38, -3.4e38]


def check_kld_case(data) -> None:
    """Damage one row of a small .kld file (its scale, its min_log_prob or its codes):
    the reader refuses exactly that row, naming its chunk and row, or every row it
    yields decodes (float64 oracle) to log-probabilities: max <= 0 up to rounding,
    probabilities summing to about 1."""
    from qfair.llamacpp import LOG_MASS_SLACK, MAX_LOGPROB_SLACK, KldError, KldHeader, KldReader, encode_rows, write_kld

    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    vocab = data.draw(st.sampled_from([2, 3, 17, 64]), label="vocab")
    n_ctx, n_chunk = 8, 2
    h = KldHeader(n_ctx, vocab, n_chunk)
    spread = data.draw(st.sampled_from([0.1, 3.0, 30.0]), label="spread")
    chunks = [encode_rows((rng.normal(0, spread, (h.rows_per_chunk, vocab))).astype(np.float32))
              for _ in range(n_chunk)]
    k = data.draw(st.integers(0, n_chunk - 1), label="chunk")
    r = data.draw(st.integers(0, h.rows_per_chunk - 1), label="row")
    what = data.draw(st.sampled_from(["none", "scale", "min", "codes"]), label="what")
    row = chunks[k][r]
    if what in ("scale", "min"):
        hdr = row[:4].view("<f4").copy()
        hdr[0 if what == "scale" else 1] = np.float32(data.draw(st.sampled_from(KLD_FLOATS) | st.floats(width=32),
                                                                label="value"))
        row[:4] = hdr.view("<u2")
    elif what == "codes":
        j = data.draw(st.integers(0, vocab - 1), label="entry")
        row[4 + j] = data.draw(st.integers(0, 65535), label="code")
    with tempfile.TemporaryDirectory(prefix="qfair-fuzz-kld-") as tmp:
        p = Path(tmp) / "b.kld"
        write_kld(p, h, rng.integers(0, vocab, n_ctx * n_chunk), iter(chunks))
        got = []
        try:
            with KldReader(p) as rd:
                for kk, raw in rd.chunks():
                    got.append((kk, np.array(raw)))
        except KldError as e:
            assert "\n" not in str(e)
            assert f"chunk {k}, row {k * h.rows_per_chunk + r}" in str(e), (what, str(e))
            assert what != "none", str(e)
            _count("kld", f"{what}:refused")
            return
        _count("kld", f"{what}:ok")
        for _, raw in got:
            hdr = raw[:, :4].copy().view("<f4")
            scale, lo = hdr[:, 0].astype(np.float64), hdr[:, 1].astype(np.float64)
            dec = raw[:, 4:4 + vocab].astype(np.float64) * scale[:, None] + lo[:, None]
            assert np.isfinite(dec).all()
            assert (dec.max(axis=1) <= MAX_LOGPROB_SLACK + 1e-5).all(), (what, dec.max(axis=1))
            lm = logsumexp(dec, axis=1)
            hi = math.log1p(vocab * math.exp(-16.0)) + LOG_MASS_SLACK
            assert ((lm >= -LOG_MASS_SLACK - 1e-5) & (lm <= hi + 1e-5)).all(), (what, lm)


@given(st.data())
def fuzz_kld_rows(data):
    check_kld_case(data)
