"""Bias-aware bit allocation: the multiple-choice knapsack against brute force,
the width scan, and ``qfair recommend`` on a width scan end to end (the printed
spec loads at the predicted size), with its refusals."""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from qfair.sensitivity.allocate import multiple_choice_knapsack


def _brute(weights, values, cap):
    best = None
    for ch in itertools.product(*[range(len(w)) for w in weights]):
        w = sum(weights[g][k] for g, k in enumerate(ch))
        if w > cap:
            continue
        v = sum(values[g][k] for g, k in enumerate(ch))
        if best is None or v < best[0] - 1e-12:
            best = (v, w)
    return best


def test_multiple_choice_knapsack_equals_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(150):
        g = int(rng.integers(1, 6))
        k = int(rng.integers(1, 4))
        weights = [[int(x) for x in rng.integers(0, 30, k)] for _ in range(g)]
        if trial % 3 == 0:  # adversarial: ties everywhere, zero weights, negative costs
            values = [[float(x) for x in rng.integers(-2, 3, k)] for _ in range(g)]
        else:
            values = [[float(x) for x in rng.normal(0, 1, k)] for _ in range(g)]
        cap = int(rng.integers(0, 30 * g))
        want = _brute(weights, values, cap)
        if want is None:
            with pytest.raises(ValueError, match="nothing fits"):
                multiple_choice_knapsack(weights, values, cap)
            continue
        ch, cell = multiple_choice_knapsack(weights, values, cap)
        assert cell == 1
        assert sum(weights[i][c] for i, c in enumerate(ch)) <= cap
        assert sum(values[i][c] for i, c in enumerate(ch)) == pytest.approx(want[0], abs=1e-9)


def test_multiple_choice_knapsack_coarse_cells_never_exceed_the_budget():
    rng = np.random.default_rng(1)
    for _ in range(60):
        g, k = int(rng.integers(1, 6)), 3
        weights = [[int(x) for x in rng.integers(0, 5000, k)] for _ in range(g)]
        values = [[float(x) for x in rng.normal(0, 1, k)] for _ in range(g)]
        cap = int(rng.integers(min(min(w) for w in weights) * g, 5000 * g))
        try:
            ch, cell = multiple_choice_knapsack(weights, values, cap, max_cells=50)
        except ValueError:
            continue
        assert cell == math.ceil(cap / 50) and cell > 1
        assert sum(weights[i][c] for i, c in enumerate(ch)) <= cap
        # exact for the weights rounded up to whole cells
        rounded = [[math.ceil(x / cell) for x in w] for w in weights]
        want = _brute(rounded, values, cap // cell)
        assert sum(values[i][c] for i, c in enumerate(ch)) == pytest.approx(want[0], abs=1e-9)


def test_multiple_choice_knapsack_is_exact_on_whole_steps_of_large_weights():
    """Byte differences that are multiples of a large step (a block at 3/4/5 bits):
    the cells are the step itself, so the answer equals brute force and the
    budget of the uniform middle choice is spent in full, where cells of
    capacity / max_cells bytes, rounded up, could not even hold that choice."""
    rng = np.random.default_rng(5)
    step = 442_368
    for trial in range(40):
        g = int(rng.integers(2, 8))
        weights = [[0, step, 2 * step] for _ in range(g)]
        values = [[float(x) for x in rng.normal(0, 1, 3)] for _ in range(g)]
        cap = g * step  # everything at the middle width
        ch, cell = multiple_choice_knapsack(weights, values, cap, max_cells=8)
        assert cell == step
        want = _brute(weights, values, cap)
        assert sum(values[i][c] for i, c in enumerate(ch)) == pytest.approx(want[0], abs=1e-9)
        assert sum(weights[i][c] for i, c in enumerate(ch)) <= cap
        if trial == 0:  # all at the middle is the only choice of weight cap when it is the best
            mid = [[5.0, 0.0, 5.0] for _ in range(g)]
            ch, _ = multiple_choice_knapsack(weights, mid, cap, max_cells=8)
            assert ch == [1] * g


# ---------------------------------------------------------------------------
# a width scan of a tiny model

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")
SPEC = "rtn:bits=4,group_size=32"


@pytest.fixture(scope="module")
def width_scan(tmp_path_factory):
    from qfair.models.tiny import make_tiny_model
    from qfair.sensitivity import run_scan

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("alloc")
    model = make_tiny_model("llama", root / "m", seed=2, layers=2)
    out = root / "scan"
    run_scan(out, model=str(model), quant=SPEC, tasks="crows_pairs_english,arc_easy", limit=12, unit="linear",
             widths="3,4,8", resamples=200, progress=False)
    yield model, out
    torch.set_num_threads(n)


def test_width_scan_rows_are_the_swapped_models(width_scan):
    """Each (layer, width) row is the spec's model with that layer from the other
    width's model: rescored independently here, same KL; the reference width is
    the uniform row; bytes per width are the stored codes + scales."""
    from qfair.models import load_model
    from qfair.sensitivity.measure import compare, score_probes
    from qfair.sensitivity.probes import Split, build_probes, load_tasks
    from qfair.sensitivity.scan import read_scan

    model, out = width_scan
    scan = read_scan(out)
    w, wu = scan["widths"], scan["width_units"]
    names = scan["units"]["unit"].to_list()
    assert scan["manifest"]["settings"]["widths"] == [3, 4, 8] and scan["manifest"]["settings"]["reference_bits"] == 4
    assert sorted(set(zip(wu["unit"].to_list(), wu["bits"].to_list()))) == sorted(
        (n, b) for n in names for b in (3, 4, 8))
    for r in wu.iter_rows(named=True):
        rows_cols = r["n_params"]
        assert r["bytes"] == (rows_cols * r["bits"] + 7) // 8 + rows_cols // 32 * 4
    kl = w.filter((pl.col("set") == "all") & (pl.col("metric") == "kl") & pl.col("group").is_null())
    uni = scan["sensitivity"].filter((pl.col("mode") == "uniform") & (pl.col("set") == "all")
                                     & (pl.col("metric") == "kl"))["delta"][0]
    assert kl.filter(pl.col("bits") == 4)["delta"].to_list() == [uni] * len(names)
    # one (layer, width) row recomputed from models loaded here
    target = names[3]
    f = load_model(str(model), dtype="float32", device="cpu", progress=False)
    q4 = load_model(str(model), quant=SPEC, progress=False)
    q8 = load_model(str(model), quant="rtn:bits=8,group_size=32", progress=False)
    q4.model.get_submodule(target).weight.data = q8.model.get_submodule(target).weight.data.clone()
    probes = build_probes(load_tasks("crows_pairs_english,arc_easy", None, 12), f.tokenizer, Split.parse("0.5:0"),
                          "scan")
    with torch.inference_mode():
        base = score_probes(f.model, f.tokenizer, probes, keep_rows=True)
        s = score_probes(q4.model, q4.tokenizer, probes, base=base)
    mine = [r for r in compare(probes, base, s, resamples=200) if r["metric"] == "kl" and r["group"] is None][0]
    got = kl.filter((pl.col("unit") == target) & (pl.col("bits") == 8))["delta"][0]
    assert got == pytest.approx(mine["delta"], rel=1e-6)


def _check_optimal(scan, a, bias_weight):
    """The choice is optimal for the scan's own costs, recomputed from its table
    (bias_weight * gap shift + KL): brute force over the first layers with the
    others fixed at the chosen widths."""
    j = {}
    t = scan["widths"].filter(pl.col("group").is_null())
    for (st, metric), w in ((("bias", "gap_shift"), bias_weight), (("all", "kl"), 1.0)):
        for r in t.filter((pl.col("set") == st) & (pl.col("metric") == metric)).iter_rows(named=True):
            j[(r["unit"], r["bits"])] = j.get((r["unit"], r["bits"]), 0.0) + w * r["delta"]
    nb = {(r["unit"], r["bits"]): r["bytes"] for r in scan["width_units"].iter_rows(named=True)}
    names = list(a.bits)
    free = names[:6]
    cap = a.budget_bytes - (a.predicted_bytes - sum(nb[(n, a.bits[n])] for n in free))
    best = min(sum(j[(n, b)] for n, b in zip(free, ch)) for ch in itertools.product((3, 4, 8), repeat=len(free))
               if sum(nb[(n, b)] for n, b in zip(free, ch)) <= cap)
    assert sum(j[(n, a.bits[n])] for n in free) == pytest.approx(best, abs=1e-9)


def test_allocation_spec_loads_at_the_predicted_size(width_scan, tmp_path):
    from qfair.compress.grid import Grid
    from qfair.compress.rtn import rtn_quantize
    from qfair.models import load_model
    from qfair.sensitivity.allocate import allocate
    from qfair.sensitivity.scan import read_scan
    from qfair.sensitivity.units import model_bytes

    model, out = width_scan
    scan = read_scan(out)
    a = allocate(out, budget="5.5bpw", bias_weight=1.0, out=tmp_path / "a", progress=False)
    assert set(a.bits.values()) <= {3, 4, 8} and len(set(a.bits.values())) > 1
    lm = load_model(str(model), quant=a.spec, progress=False)
    measured = model_bytes(lm.model, lm.extra["packed_bytes"])
    assert a.measured_bytes == measured and abs(measured - a.predicted_bytes) <= 0.005 * a.predicted_bytes
    from qfair.models.size import measure

    assert measure(lm.model, lm.extra["packed_bytes"])["stored_bytes"] == measured  # a dump's model.size
    assert measured <= a.budget_bytes and a.bpw <= 5.5
    f = load_model(str(model), dtype="float32", device="cpu", progress=False)
    for n, b in a.bits.items():  # every layer at its allocated width
        w = f.model.get_submodule(n).weight.detach()
        assert torch.equal(lm.model.get_submodule(n).weight, rtn_quantize(w, Grid(b, 32)).dequantize())
    assert (tmp_path / "a" / "spec.txt").read_text().strip() == a.spec
    _check_optimal(scan, a, 1.0)
    k = allocate(out, budget="5.5bpw", bias_weight=0.0, out=tmp_path / "k", measure=False, progress=False)
    assert k.measured_bytes is None and k.predicted_bytes <= k.budget_bytes
    _check_optimal(scan, k, 0.0)


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "qfair", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "1e400bpw"], "bad --budget '1e400bpw'; expected a finite size"),
    (["--budget", "1e400"], "bad --budget '1e400'; expected a finite size"),
    (["--budget", "nan"], "bad --budget 'nan'"),
    (["--budget", "3.5bpw"], "below what uniform quantization at the smallest candidate width (3 bits) needs"),
    (["--budget", "6bpw", "--bits", "4,9"], "--bits 4,9: expected bit widths from 2 to 8"),
    (["--budget", "6bpw", "--bits", "1,4"], "--bits 1,4: expected bit widths from 2 to 8"),
    (["--budget", "6bpw", "--bits", "2,4"], "the scan has widths 3,4,8 only (not 2)"),
    (["--budget", "6bpw", "--bias-weight", "-1"], "--bias-weight -1.0: expected a finite number >= 0"),
    (["--budget", "6bpw", "--bias-weight", "nan"], "--bias-weight nan: expected a finite number >= 0"),
])
def test_cli_allocation_refusals_write_nothing(width_scan, tmp_path, args, fragment):
    _, scan_dir = width_scan
    r = _cli("recommend", str(scan_dir), "--no-progress", "--out", str(tmp_path / "r"), *args)
    assert r.returncode == 1 and fragment in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_cli_sensitivity_bits_refusals_write_nothing(width_scan, tmp_path):
    model, _ = width_scan
    for extra, frag in [(["--unit", "linear", "--bits", "3,9"], "--bits 3,9: expected bit widths from 2 to 8"),
                        (["--unit", "linear", "--bits", "3,4"], "need an rtn or gptq spec"),
                        (["--bits", "3,4"], "need an rtn or gptq spec")]:
        quant = "bnb-nf4" if frag == "need an rtn or gptq spec" else SPEC
        r = _cli("sensitivity", "--model", str(model), "--quant", quant, "--out", str(tmp_path / "s"),
                 "--limit", "2", "--no-progress", *extra)
        assert r.returncode == 1 and frag in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "s").exists()


def test_cli_recommend_prints_an_allocation_spec_that_loads(width_scan, tmp_path):
    from qfair.models import load_model
    from qfair.sensitivity.units import model_bytes

    model, scan_dir = width_scan
    r = _cli("recommend", str(scan_dir), "--budget", "4.6bpw", "--bits", "3,4", "--out", str(tmp_path / "r"),
             "--no-progress")
    assert r.returncode == 0, r.stderr
    spec = (tmp_path / "r" / "spec.txt").read_text().strip()
    assert f"spec: {spec}" in r.stdout
    lm = load_model(str(model), quant=spec, progress=False)
    import json

    rec = json.loads((tmp_path / "r" / "allocation.json").read_text())
    assert set(rec["bits"].values()) <= {3, 4}
    assert model_bytes(lm.model, lm.extra["packed_bytes"]) == rec["bytes"]["predicted"] == rec["bytes"]["measured"]


def test_block_width_scan_allocates_whole_blocks(tmp_path):
    """Widths per block: each block's row is the spec's model with all that block's
    layers from the other width's model (rescored here, same KL); the allocation
    puts every layer of a block at the block's width, is optimal for the scan's
    costs (brute force over all blocks) and loads at the predicted size."""
    from qfair.models import load_model
    from qfair.models.tiny import make_tiny_model
    from qfair.sensitivity import run_scan
    from qfair.sensitivity.allocate import allocate
    from qfair.sensitivity.measure import compare, score_probes
    from qfair.sensitivity.probes import Split, build_probes, load_tasks
    from qfair.sensitivity.scan import read_scan
    from qfair.sensitivity.units import model_bytes

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = make_tiny_model("llama", tmp_path / "m", seed=3, layers=3)
        out = tmp_path / "scan"
        run_scan(out, model=str(model), quant=SPEC, tasks="stereoset_intrasentence,arc_easy", limit=12,
                 unit="block", widths="3,4,8", resamples=200, progress=False)
        scan = read_scan(out)
        units = scan["units"]
        assert units["kind"].to_list() == ["block"] * 3 and all(n == 7 for n in units["n_members"].to_list())
        members = dict(zip(units["unit"].to_list(), units["members"].to_list()))
        target = units["unit"][1]
        f = load_model(str(model), dtype="float32", device="cpu", progress=False)
        q4 = load_model(str(model), quant=SPEC, progress=False)
        q8 = load_model(str(model), quant="rtn:bits=8,group_size=32", progress=False)
        for m in members[target]:
            q4.model.get_submodule(m).weight.data = q8.model.get_submodule(m).weight.data.clone()
        probes = build_probes(load_tasks("stereoset_intrasentence,arc_easy", None, 12), f.tokenizer,
                              Split.parse("0.5:0"), "scan")
        with torch.inference_mode():
            base = score_probes(f.model, f.tokenizer, probes, keep_rows=True)
            s = score_probes(q4.model, q4.tokenizer, probes, base=base)
        for metric, st in (("kl", "all"), ("gap_shift", "bias")):
            mine = [r for r in compare(probes, base, s, resamples=200)
                    if r["metric"] == metric and r["set"] == st and r["group"] is None][0]
            got = scan["widths"].filter((pl.col("unit") == target) & (pl.col("bits") == 8) & (pl.col("set") == st)
                                        & (pl.col("metric") == metric) & pl.col("group").is_null())["delta"][0]
            assert got == pytest.approx(mine["delta"], rel=1e-6), metric
        nb = {(r["unit"], r["bits"]): r["bytes"] for r in scan["width_units"].iter_rows(named=True)}
        n_params = dict(zip(units["unit"].to_list(), units["n_params"].to_list()))
        for (u, b), v in nb.items():  # codes + one float32 scale per group of 32, layer by layer
            shapes = [tuple(f.model.get_submodule(m).weight.shape) for m in members[u]]
            assert v == sum((r * c * b + 7) // 8 + r * c // 32 * 4 for r, c in shapes)
            assert sum(r * c for r, c in shapes) == n_params[u]
        a = allocate(out, budget="5bpw", bias_weight=1.0, out=tmp_path / "a", progress=False)
        j: dict = {}
        t = scan["widths"].filter(pl.col("group").is_null())
        for (st, metric), w in ((("bias", "gap_shift"), 1.0), (("all", "kl"), 1.0)):
            for r in t.filter((pl.col("set") == st) & (pl.col("metric") == metric)).iter_rows(named=True):
                j[(r["unit"], r["bits"])] = j.get((r["unit"], r["bits"]), 0.0) + w * r["delta"]
        outside = a.predicted_bytes - sum(nb[(n, a.bits[n])] for n in a.bits)
        best = min((sum(j[(n, b)] for n, b in zip(a.bits, ch)), ch)
                   for ch in itertools.product((3, 4, 8), repeat=3)
                   if outside + sum(nb[(n, b)] for n, b in zip(a.bits, ch)) <= a.budget_bytes)
        assert sum(j[(n, a.bits[n])] for n in a.bits) == pytest.approx(best[0], abs=1e-9)
        assert len(set(a.bits.values())) > 1
        lm = load_model(str(model), quant=a.spec, progress=False)
        assert model_bytes(lm.model, lm.extra["packed_bytes"]) == a.predicted_bytes == a.measured_bytes
        from qfair.compress.grid import Grid
        from qfair.compress.rtn import rtn_quantize

        for u, b in a.bits.items():  # every layer of a block at the block's width
            for m in members[u]:
                w = f.model.get_submodule(m).weight.detach()
                assert torch.equal(lm.model.get_submodule(m).weight, rtn_quantize(w, Grid(b, 32)).dequantize())
    finally:
        torch.set_num_threads(n_threads)
