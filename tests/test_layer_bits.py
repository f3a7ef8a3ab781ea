"""Per-layer bit widths (``layer_bits=``) of the rtn and gptq specs: each layer
quantized on its own grid, equal bit for bit to a single-width run at its bits,
saved and reloaded with its own bits, and part of the cache key."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from test_compress import CAL_TEXTS, _load_float, _texts_ids

from qfair.compress.grid import Grid
from qfair.compress.rtn import rtn_quantize


def _linears(model, ignore=("lm_head",)):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in ignore]


def test_layer_bits_option_parses_round_trips_and_refuses(tmp_path):
    from qfair.models import ModelError, parse_quant_spec

    s = parse_quant_spec("rtn:layer_bits=*.down_proj:8+model.layers.0.*:3")
    assert s.options["layer_bits"] == ("*.down_proj:8", "model.layers.0.*:3")
    assert parse_quant_spec(str(s)) == s
    f = tmp_path / "bits.json"
    f.write_text(json.dumps({"model.layers.0.mlp.up_proj": 5, "model.layers.1.self_attn.q_proj": 2}))
    g = parse_quant_spec(f"gptq:layer_bits={f}")
    assert g.options["layer_bits"] == ("model.layers.0.mlp.up_proj:5", "model.layers.1.self_attn.q_proj:2")
    for bad, frag in [("rtn:layer_bits=x:9", "'layer_bits'.*expected an integer from 2 to 8"),
                      ("rtn:layer_bits=x:1", "'layer_bits'.*expected an integer from 2 to 8"),
                      ("rtn:layer_bits=x", "'layer_bits'.*PATTERN:BITS"),
                      (f"rtn:layer_bits={tmp_path / 'none.json'}", "'layer_bits'.*layer -> bits")]:
        with pytest.raises(ModelError, match=frag) as e:
            parse_quant_spec(bad)
        assert "\n" not in str(e.value)


@pytest.mark.usefixtures("one_torch_thread")
def test_rtn_layer_bits_each_layer_on_its_own_grid(tiny_model):
    from qfair.models import ModelError, load_model

    path = tiny_model("llama")
    f = load_model(str(path), dtype="float32", device="cpu", progress=False)
    q = load_model(str(path), quant="rtn:bits=4,group_size=32,layer_bits=*.down_proj:8+model.layers.0.*:3",
                   progress=False)
    names = _linears(f.model)
    want = {n: 8 if n.endswith("down_proj") else 3 if n.startswith("model.layers.0.") else 4 for n in names}
    assert len(set(want.values())) == 3
    for n in names:
        w = f.model.get_submodule(n).weight.detach()
        qw = rtn_quantize(w, Grid(want[n], 32, True))
        assert int(qw.codes.max()) < 2 ** want[n]
        assert torch.equal(q.model.get_submodule(n).weight, qw.dequantize())
        rows, cols = w.shape
        assert q.extra["packed_bytes"][n] == (rows * cols * want[n] + 7) // 8 + rows * cols // 32 * 4
    with pytest.raises(ModelError, match="layer_bits: pattern 'nothing.here' matches no quantized layer"):
        load_model(str(path), quant="rtn:layer_bits=nothing.here:3", progress=False)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_model_layer_bits_equal_single_width_runs(tiny_model, method):
    """Every layer set to 3 bits under bits=4 equals a uniform 3-bit run bit for
    bit (codes, scales, recorded errors); a mixed map gives, in block 0 (same
    inputs in every run), each layer exactly its width's uniform result."""
    from qfair.compress.model import quantize_model

    fm, tok = _load_float(tiny_model("llama"))
    cal = _texts_ids(tok, CAL_TEXTS[:6]) if method == "gptq" else ()
    names = _linears(fm)
    run = {b: quantize_model(copy.deepcopy(fm), method, Grid(b, 32), calibration=cal) for b in (3, 4, 8)}
    all3 = quantize_model(copy.deepcopy(fm), method, Grid(4, 32), calibration=cal, layer_bits={n: 3 for n in names})
    for n in names:
        assert all3.weights[n].grid == Grid(3, 32)
        assert torch.equal(all3.weights[n].codes, run[3].weights[n].codes)
        assert torch.equal(all3.weights[n].scale, run[3].weights[n].scale)
        assert all3.layers[n] == run[3].layers[n]
    mix = {n: (3, 4, 8)[i % 3] for i, n in enumerate(names)}
    mixed_model = copy.deepcopy(fm)
    res = quantize_model(mixed_model, method, Grid(4, 32), calibration=cal, layer_bits=mix)
    for n in names:
        qw = res.weights[n]
        assert qw.grid.bits == mix[n] and int(qw.codes.max()) < 2 ** mix[n]
        assert torch.equal(mixed_model.get_submodule(n).weight, qw.dequantize())
        if method == "rtn" or n.startswith("model.layers.0."):
            ref = run[mix[n]]
            assert torch.equal(qw.codes, ref.weights[n].codes) and torch.equal(qw.scale, ref.weights[n].scale)
            assert res.layers[n] == ref.layers[n]


@pytest.mark.usefixtures("one_torch_thread")
def test_gptq_layer_bits_saved_reloaded_and_keyed(tiny_model, tmp_path):
    from qfair.compress.checkpoint import read_codes
    from qfair.models import load_model

    path = str(tiny_model("llama"))
    cache = tmp_path / "cache"
    base = "gptq:samples=4,seqlen=16,group_size=32"
    plain = load_model(path, quant=base, cache_dir=cache, progress=False)
    mixed = load_model(path, quant=base + ",layer_bits=*.mlp.*:3+*.q_proj:8", cache_dir=cache, progress=False)
    other = load_model(path, quant=base + ",layer_bits=*.mlp.*:3+*.q_proj:6", cache_dir=cache, progress=False)
    entries = {lm.extra["quant_details"]["cache_entry"] for lm in (plain, mixed, other)}
    assert len(entries) == 3  # the per-layer map is part of the key
    assert "layer_bits" not in plain.extra["quant_details"]["key"]["spec"]
    assert "layer_bits=*.mlp.*:3+*.q_proj:8" in mixed.extra["quant_details"]["key"]["spec"]
    grid, weights = read_codes(mixed.extra["quant_details"]["cache_entry"])
    assert grid == Grid(4, 32, True)
    for n, qw in weights.items():
        b = 3 if ".mlp." in n else 8 if n.endswith("q_proj") else 4
        assert qw.grid.bits == b and int(qw.codes.max()) < 2 ** b
        assert torch.equal(mixed.model.get_submodule(n).weight, qw.dequantize())
        rows, cols = qw.codes.shape
        assert mixed.extra["packed_bytes"][n] == (rows * cols * b + 7) // 8 + rows * cols // 32 * 4
    again = load_model(path, quant=base + ",layer_bits=*.mlp.*:3+*.q_proj:8", cache_dir=cache, progress=False)
    assert again.extra["quant_details"]["cache_hit"] is True
    assert again.extra["packed_bytes"] == mixed.extra["packed_bytes"]


@pytest.mark.usefixtures("one_torch_thread")
def test_qfair_dump_loads_a_mixed_width_spec(tiny_model, tmp_path):
    """One spec string on the command line: the dump records it and the measured
    size counts each layer's codes at its own width."""
    import os
    import subprocess
    import sys

    from qfair.models import load_model
    from qfair.sensitivity.units import model_bytes

    path = str(tiny_model("llama"))
    spec = "rtn:bits=4,group_size=32,layer_bits=*.down_proj:8+model.layers.0.*:3"
    r = subprocess.run([sys.executable, "-m", "qfair", "dump", "--model", path, "--quant", spec, "--tasks",
                        "arc_easy", "--limit", "2", "--out", str(tmp_path / "d"), "--no-progress"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    lm = load_model(path, quant=spec, progress=False)
    assert man["model"]["size"]["stored_bytes"] == model_bytes(lm.model, lm.extra["packed_bytes"])
    assert "layer_bits=*.down_proj:8+model.layers.0.*:3" in json.dumps(man["model"])
