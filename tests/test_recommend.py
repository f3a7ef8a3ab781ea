"""qfair recommend: exact choice under the budget, a spec that loads with exactly
the chosen units in full precision, and the held-out validation."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from qfair.sensitivity.recommend import SensitivityError, knapsack, parse_budget, random_sets


def test_knapsack_is_exact_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(1, 10))
        costs = [int(c) for c in rng.integers(0, 50, n)]
        gains = [float(g) for g in rng.normal(0.5, 1.0, n)]
        cap = int(rng.integers(0, 120))
        best = max((sum(gains[i] for i in s), -sum(costs[i] for i in s))
                   for k in range(n + 1) for s in itertools.combinations(range(n), k)
                   if sum(costs[i] for i in s) <= cap and all(gains[i] > 0 for i in s))
        idx, exact = knapsack(costs, gains, cap)
        assert exact
        assert sum(costs[i] for i in idx) <= cap
        assert sum(gains[i] for i in idx) == pytest.approx(best[0])
        assert all(gains[i] > 0 for i in idx)


def test_knapsack_falls_back_greedily_when_the_frontier_explodes():
    costs = list(range(1, 25))
    gains = [c + 0.01 * (i % 3) for i, c in enumerate(costs)]
    idx, exact = knapsack(costs, gains, 100, max_frontier=5)
    assert not exact and sum(costs[i] for i in idx) <= 100


@pytest.mark.parametrize("text, expect", [("52000000", 52_000_000), ("52MB", 52_000_000), ("50 MiB", 50 * 2 ** 20),
                                          ("1.5kB", 1500), ("2GiB", 2 * 2 ** 30), ("4.5bits", 1000 + 45)])
def test_parse_budget(text, expect):
    assert parse_budget(text, unit_params=80, outside_bytes=1000)[0] == expect


@pytest.mark.parametrize("bad", ["", "lots", "5 parsecs", "-3MB"])
def test_parse_budget_refuses(bad):
    with pytest.raises(SensitivityError, match="budget"):
        parse_budget(bad, unit_params=1, outside_bytes=0)


def test_random_sets_keep_the_byte_target():
    names = [f"u{i}" for i in range(8)]
    costs = {n: 10 + i for i, n in enumerate(names)}
    sets = random_sets(names, costs, 35, 6)
    assert len(sets) == 6 and len({tuple(s) for s in sets}) > 1
    assert all(sum(costs[n] for n in s) <= 35 for s in sets)


# ---------------------------------------------------------------------------
# end to end on a tiny model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pl = pytest.importorskip("polars")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    from qfair.models.tiny import make_tiny_model
    from qfair.sensitivity import run_scan

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rec")
    model = make_tiny_model("llama", root / "m", seed=1, layers=3)
    out = root / "scan"
    run_scan(out, model=str(model), quant="bnb-nf4", tasks="crows_pairs_english,arc_easy", limit=16,
             mode="both", resamples=300, progress=False)
    yield model, out
    torch.set_num_threads(n)


def test_recommendation_respects_the_budget_and_its_spec_loads(scanned, tmp_path):
    from qfair.models import load_model
    from qfair.sensitivity.recommend import recommend
    from qfair.sensitivity.scan import read_scan

    model, scan_dir = scanned
    s = read_scan(scan_dir)
    units = s["units"]
    cost = dict(zip(units["unit"].to_list(), (units["float_bytes"] - units["quant_bytes"]).to_list()))
    uniform = s["manifest"]["bytes"]["quantized_model"]
    one_block = max(cost.values())
    budget = uniform + one_block + one_block // 2  # room for one block, not two
    r = recommend(scan_dir, budget=str(budget), objective="kl", seeds=3, resamples=300, progress=False,
                  out=tmp_path / "rec")
    assert len(r.kept) == 1 and r.measured_bytes == r.predicted_bytes <= budget
    # the chosen block is the scan's most harmful one for KL
    t = s["sensitivity"].filter((pl.col("mode") == "single") & (pl.col("set") == "all") & (pl.col("metric") == "kl"))
    assert r.kept == [t.sort("value", descending=True)["unit"][0]]
    assert r.spec == f"bnb-nf4:skip_modules=lm_head+{r.kept[0]}"
    # the spec loads and keeps exactly that block (and the output head) in full precision
    lm = load_model(str(model), quant=r.spec, progress=False, device="cpu")
    for name, m in lm.model.named_modules():
        if name.endswith(("_proj",)):
            assert (type(m).__name__ == "Linear") == name.startswith(r.kept[0] + "."), name
    assert type(lm.model.lm_head).__name__ == "Linear"
    rec = json.loads((tmp_path / "rec" / "recommendation.json").read_text())
    assert rec["bytes"]["measured"] == rec["bytes"]["predicted"] and rec["spec"] == r.spec
    assert (tmp_path / "rec" / "spec.txt").read_text().strip() == r.spec
    v = pl.read_parquet(tmp_path / "rec" / "validation.parquet")
    assert {"uniform", "recommended", "recommended_spec", "random0", "random1", "random2"} <= set(v["config"].to_list())
    # the loaded spec's rows equal the swapped configuration's (bitwise-equal scores)
    a = v.filter((pl.col("config") == "recommended") & (pl.col("comparison") == "vs_base"))
    b = v.filter((pl.col("config") == "recommended_spec") & (pl.col("comparison") == "vs_base"))
    assert a["delta"].to_list() == b["delta"].to_list()
    assert {"vs_base", "vs_uniform", "vs_random"} <= set(v["comparison"].to_list())
    # the held-out side only, and the loaded spec scores exactly like the swapped configuration
    assert rec["validation"]["side"] == "heldout"
    assert rec["validation"]["n_examples"] == s["manifest"]["split"]["n_heldout"]
    assert rec["validation"]["spec_check"]["bitwise_equal"] is True
    # recommended - uniform is the paired mean difference of the two configurations
    a = v.filter((pl.col("config") == "recommended") & (pl.col("comparison") == "vs_base") & (pl.col("set") == "all")
                 & (pl.col("metric") == "kl")).row(0, named=True)
    b = v.filter((pl.col("config") == "uniform") & (pl.col("comparison") == "vs_base") & (pl.col("set") == "all")
                 & (pl.col("metric") == "kl")).row(0, named=True)
    d = v.filter((pl.col("comparison") == "vs_uniform") & (pl.col("metric") == "kl")).row(0, named=True)
    assert d["delta"] == pytest.approx(a["value"] - b["value"])


def test_budget_edges(scanned, tmp_path):
    from qfair.sensitivity.recommend import recommend
    from qfair.sensitivity.scan import read_scan

    _, scan_dir = scanned
    man = read_scan(scan_dir)["manifest"]
    with pytest.raises(SensitivityError, match="below the uniformly quantized"):
        recommend(scan_dir, budget=str(man["bytes"]["quantized_model"] - 1), probe_split="none", progress=False,
                  out=tmp_path / "a")
    r = recommend(scan_dir, budget=str(man["bytes"]["quantized_model"]), probe_split="none", progress=False,
                  out=tmp_path / "b")
    assert r.kept == [] and r.spec == "bnb-nf4"
    r = recommend(scan_dir, budget=str(man["bytes"]["float_model"]), objective="kl", source="leave-one-out",
                  probe_split="none", progress=False, out=tmp_path / "c")
    assert r.predicted_bytes <= man["bytes"]["float_model"] and len(r.kept) >= 1


def test_bnb_skip_list_matches_whole_module_names(tmp_path):
    """'model.layers.1' keeps block 1 only, not blocks 10 and 11 (transformers
    matches a skip name up to a module boundary)."""
    from qfair.models import load_model
    from qfair.models.tiny import make_tiny_model

    m = make_tiny_model("llama", tmp_path / "m12", seed=0, layers=12)
    lm = load_model(str(m), quant="bnb-nf4:skip_modules=lm_head+model.layers.1", progress=False, device="cpu")
    kinds = {i: type(lm.model.model.layers[i].mlp.down_proj).__name__ for i in range(12)}
    assert kinds[1] == "Linear" and all(kinds[i] == "Linear4bit" for i in range(12) if i != 1)


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "lots"], "bad --budget"),
    (["--budget", "1"], "below the uniformly quantized"),
])
def test_cli_errors(scanned, args, fragment):
    _, scan_dir = scanned
    r = subprocess.run([sys.executable, "-m", "qfair", "recommend", str(scan_dir), "--no-progress", *args],
                       capture_output=True, text=True)
    assert r.returncode == 1 and fragment in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_refuses_a_directory_that_is_no_scan(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qfair", "recommend", str(tmp_path), "--budget", "1MB"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "not a sensitivity directory" in r.stderr


def test_report_of_a_scan_with_its_recommendation(scanned):
    pytest.importorskip("matplotlib")
    from qfair.report import build_report
    from qfair.report.sensitivity import heatmap_data
    from qfair.sensitivity.recommend import recommend
    from qfair.sensitivity.scan import read_scan

    _, scan_dir = scanned
    s = read_scan(scan_dir)
    r = recommend(scan_dir, budget="5bits", objective="bias", seeds=2, resamples=200, progress=False)
    rep = build_report(scan_dir)
    page = rep.html.read_text()
    assert page.count("data:image/png;base64,") == 2  # single and leave-one-out heatmaps
    assert "Top units per metric (single)" in page and r.spec in page and "validation on the heldout side" in page
    assert "src='http" not in page and "src=\"http" not in page
    units, labels, vals, _ = heatmap_data(s, "single")
    t = s["sensitivity"].filter((pl.col("mode") == "single") & pl.col("group").is_null() & (pl.col("set") == "all")
                                & (pl.col("metric") == "kl"))
    j = labels.index("token KL")
    assert [vals[units.index(u), j] for u in t["unit"].to_list()] == t["delta"].to_list()


def test_keep_units_in_a_higher_bit_spec(scanned, tmp_path):
    """--keep bnb-int8 on a bnb-nf4 scan: a mixed spec (bitsandbytes has no per-module bit width) that
    loads with the kept block in int8 and the rest in nf4, sized exactly as predicted."""
    from qfair.models import load_model, parse_quant_spec
    from qfair.sensitivity.recommend import recommend
    from qfair.sensitivity.scan import read_scan

    model, scan_dir = scanned
    man = read_scan(scan_dir)["manifest"]
    r = recommend(scan_dir, budget=str(man["bytes"]["quantized_model"] + 100_000), objective="kl", keep="bnb-int8",
                  seeds=2, resamples=200, progress=False, out=tmp_path / "rec")
    assert r.kept and r.spec.startswith("mixed:base=bnb-nf4,high=bnb-int8,modules=")
    assert parse_quant_spec(r.spec).options["modules"] == tuple(r.kept)
    assert r.measured_bytes == r.predicted_bytes <= man["bytes"]["quantized_model"] + 100_000
    lm = load_model(str(model), quant=r.spec, progress=False, device="cpu")
    for name, m in lm.model.named_modules():
        if name.endswith("_proj"):
            kept = any(name.startswith(k + ".") for k in r.kept)
            assert type(m).__name__ == ("Linear8bitLt" if kept else "Linear4bit"), name
    assert r.validation["spec_check"]["bitwise_equal"] is True
    man_q = lm.manifest()["quantization"]
    assert man_q["name"] == "mixed" and man_q["details"]["modules"] == r.kept
    assert json.loads(json.dumps(man_q)) == man_q


def test_mixed_spec_errors(tmp_path):
    from qfair.models import ModelError, load_model, parse_quant_spec
    from qfair.models.tiny import make_tiny_model

    with pytest.raises(ModelError, match="inner spec cannot be 'mixed'"):
        parse_quant_spec("mixed:base=mixed,modules=a")
    with pytest.raises(ModelError, match="unknown quantization spec 'bnb-nf5'"):
        parse_quant_spec("mixed:base=bnb-nf5,modules=a")
    s = parse_quant_spec("mixed:base=bnb-nf4:double_quant=true;compute_dtype=bf16,high=bnb-int8,modules=lm_head")
    assert s.options["base"] == "bnb-nf4:compute_dtype=bfloat16;double_quant=true"
    assert parse_quant_spec(str(s)) == s
    m = make_tiny_model("llama", tmp_path / "m", seed=0)
    with pytest.raises(ModelError, match="needs base=SPEC and modules"):
        load_model(str(m), quant="mixed:base=bnb-nf4", progress=False)
    with pytest.raises(ModelError, match="no module 'model.layers.9'"):
        load_model(str(m), quant="mixed:base=bnb-nf4,modules=model.layers.9", progress=False)


def test_cli_recommend_prints_a_spec_that_loads(scanned, tmp_path):
    from qfair.models import parse_quant_spec
    from qfair.sensitivity.scan import read_scan

    _, scan_dir = scanned
    man = read_scan(scan_dir)["manifest"]
    r = subprocess.run([sys.executable, "-m", "qfair", "recommend", str(scan_dir), "--budget",
                        str(man["bytes"]["float_model"]), "--objective", "kl", "--probe-split", "none",
                        "--out", str(tmp_path / "r"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    spec = (tmp_path / "r" / "spec.txt").read_text().strip()
    assert f"spec: {spec}" in r.stdout and parse_quant_spec(spec).name == "bnb-nf4"
