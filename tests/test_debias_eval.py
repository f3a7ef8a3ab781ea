"""qfair debias-eval end to end on a tiny model: output shapes, the paired
differences are analyze's own on the dumps, the KL difference is the paired
mean of the per-example KLs, the equal-bits flags, the Pareto front; and
random allocations at exactly equal bytes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qfair.debias_eval import pareto_front, random_allocations

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")
TASKS = "crows_pairs_english,bbq,winogender_all,arc_easy"
CANDS = {"rtn": "rtn:bits=4,group_size=32", "gptq": "gptq:bits=4,group_size=32,samples=4,seqlen=16",
         "rtn3": "rtn:bits=3,group_size=32"}


def test_pareto_front_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(100):
        pts = [tuple(float(v) for v in p) for p in rng.integers(0, 5, (int(rng.integers(1, 8)), 2))]
        want = [i for i, p in enumerate(pts)
                if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)]
        assert pareto_front(pts) == want


def test_random_allocations_store_exactly_the_same_bytes():
    shapes = {f"model.layers.{i}.{k}": s for i in range(3) for k, s in
              (("self_attn.q_proj", (64, 64)), ("mlp.up_proj", (128, 64)), ("mlp.down_proj", (64, 128)))}
    spec = "rtn:bits=4,layer_bits=model.layers.0.mlp.up_proj:8+*.q_proj:3+model.layers.2.mlp.down_proj:2"
    out = random_allocations(spec, shapes, 4)
    assert len(out) == 4 and len(set(out.values())) > 1

    def bits_of(s):
        from qfair.compress.model import resolve_layer_bits
        from qfair.models import parse_quant_spec
        from qfair.models.backends.weight_quant import layer_bits_rules

        p = parse_quant_spec(s)
        own = resolve_layer_bits(list(shapes), layer_bits_rules(p.options["layer_bits"]))
        return {n: own.get(n, p.options["bits"]) for n in shapes}

    ref = bits_of(spec)
    total = sum(np.prod(shapes[n]) * b for n, b in ref.items())
    for s in out.values():
        b = bits_of(s)
        assert sum(np.prod(shapes[n]) * v for n, v in b.items()) == total
        for shape in set(shapes.values()):
            assert sorted(b[n] for n in shapes if shapes[n] == shape) == sorted(
                ref[n] for n in shapes if shapes[n] == shape)


def test_random_block_allocations_permute_whole_blocks():
    """--random-unit block: each seed's widths are the allocation's blocks in a
    permuted order (same bytes), layer roles kept; unequal blocks are refused."""
    from qfair.compress.model import resolve_layer_bits
    from qfair.models import parse_quant_spec
    from qfair.models.backends.weight_quant import layer_bits_rules
    from qfair.sensitivity import SensitivityError

    roles = (("self_attn.q_proj", (64, 64)), ("mlp.up_proj", (128, 64)))
    shapes = {f"model.layers.{i}.{k}": s for i in range(5) for k, s in roles}
    shapes["lm_head"] = (10, 64)
    spec = "rtn:bits=4,layer_bits=model.layers.0.*:3+model.layers.3.*:5+model.layers.4.mlp.up_proj:6"

    def bits_of(s):
        p = parse_quant_spec(s)
        own = resolve_layer_bits(list(shapes), layer_bits_rules(p.options["layer_bits"]))
        return {n: own.get(n, p.options["bits"]) for n in shapes}

    ref = bits_of(spec)
    out = random_allocations(spec, shapes, 5, unit="block")
    assert len(set(out.values())) > 1
    for s in out.values():
        b = bits_of(s)
        assert b["lm_head"] == ref["lm_head"]
        rows = {i: tuple(b[f"model.layers.{i}.{k}"] for k, _ in roles) for i in range(5)}
        want = sorted(tuple(ref[f"model.layers.{i}.{k}"] for k, _ in roles) for i in range(5))
        assert sorted(rows.values()) == want  # whole blocks moved
    shapes["model.layers.2.mlp.up_proj"] = (64, 64)
    with pytest.raises(SensitivityError, match="--random-unit block"):
        random_allocations(spec, shapes, 2, unit="block")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from qfair.debias_eval import debias_eval
    from qfair.models.tiny import make_tiny_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("debias")
    model = make_tiny_model("llama", root / "m", seed=2, layers=2)
    r = debias_eval(root / "out", model=str(model), candidates=CANDS, tasks=TASKS, limit=6, bootstrap=200,
                    load_kwargs={"cache_dir": str(root / "cache")}, progress=False)
    yield model, root, r
    torch.set_num_threads(n)


def test_outputs_and_paired_differences_equal_a_direct_compare(evaluated):
    from qfair.analyze.compare import compare
    from qfair.debias_eval import HEADLINE_BIAS

    _, root, r = evaluated
    out = root / "out"
    for f in ("debias.parquet", "debias.csv", "debias.json", "paired.parquet", "vs_float.parquet", "pareto.png",
              "report.html"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    t = pl.read_parquet(out / "debias.parquet")
    assert t["candidate"].to_list() == list(CANDS) and t.height == 3
    dumps = out / "dumps"
    paired = pl.read_parquet(out / "paired.parquet")
    for cand in ("rtn", "rtn3"):
        direct = compare(dumps / "gptq", dumps / cand, bootstrap=200, uncertainty=False).summary
        mine = paired.filter(pl.col("candidate") == cand).drop("candidate")
        assert mine.select(direct.columns).equals(direct)
        row = t.filter(pl.col("candidate") == cand).row(0, named=True)
        task, metric = row["bias_diff_metric"].split("/")
        d = direct.filter((pl.col("task") == task) & (pl.col("metric") == metric)
                          & (pl.col("kind").is_in([k for _, k, m in HEADLINE_BIAS if m == metric]))).row(0, named=True)
        assert (row["bias_diff"], row["bias_diff_lo"], row["bias_diff_hi"]) == (d["diff"], d["ci_low"], d["ci_high"])
        # KL difference: the paired mean of the per-example token KLs against the float model
        kls = {}
        for c in (cand, "gptq"):
            ex = compare(dumps / "float", dumps / c, bootstrap=200, uncertainty=False).examples
            kls[c] = ex.sort(["task", "example_id"])["tok_kl_pq"].to_numpy()
        assert row["kl_diff"] == pytest.approx(float(np.mean(kls[cand] - kls["gptq"])), rel=1e-9, abs=1e-12)
        assert row["kl_diff_lo"] <= row["kl_diff"] <= row["kl_diff_hi"]
        assert row["kl"] == pytest.approx(float(kls[cand].mean()), rel=1e-12)
    ref = t.filter(pl.col("candidate") == "gptq").row(0, named=True)
    assert ref["kl_diff"] is None and ref["equal_bits"]
    flags = dict(zip(t["candidate"].to_list(), t["equal_bits"].to_list()))
    assert flags == {"rtn": True, "gptq": True, "rtn3": False}
    # bits per weight are the dumps' measured sizes
    for c in CANDS:
        size = json.loads((dumps / c / "manifest.json").read_text())["model"]["size"]
        assert t.filter(pl.col("candidate") == c)["bpw"][0] == size["bits_per_weight"]


def test_pareto_points_match_the_table(evaluated):
    _, root, r = evaluated
    doc = json.loads((root / "out" / "debias.json").read_text())
    t = pl.read_parquet(root / "out" / "debias.parquet")
    assert [(x["candidate"], x["kl"], x["bias_shift"]) for x in doc["rows"]] == list(
        zip(t["candidate"].to_list(), t["kl"].to_list(), t["bias_shift"].to_list()))
    html = (root / "out" / "report.html").read_text()
    assert all(c in html for c in CANDS) and "data:image/png;base64," in html
    pts = list(zip(t["kl"].to_list(), t["bias_shift"].to_list()))
    front = pareto_front(pts)
    assert front and all(not any(a <= pts[i][0] and b <= pts[i][1] and (a, b) != pts[i] for a, b in pts)
                         for i in front)
    assert all(i in front or any(a <= x and b <= y and (a, b) != (x, y) for a, b in pts)
               for i, (x, y) in enumerate(pts))


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "qfair", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args, frag", [
    (["--candidate", "a=rtn:bits=9"], "--candidate a: bad value '9' for option 'bits'"),
    (["--candidate", "a=rtn", "--reference", "gptq"], "--reference 'gptq': expected one of the candidates (a)"),
    (["--candidate", "float=rtn"], "--candidate 'float'"),
    (["--candidate", "nospec"], "--candidate 'nospec': expected NAME=SPEC"),
])
def test_cli_refusals_write_nothing(tmp_path, args, frag):
    r = _cli("debias-eval", "--out", str(tmp_path / "o"), "--no-progress", *args)
    assert r.returncode == 1 and frag in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
