"""The compressed-tensors ``pack-quantized`` export (qfair.compress.export):
the packing against an independent bit-level reference and against
compressed-tensors' own packer, transformers reloading the export to exactly
qfair's de-quantized weights, and a dump of the reloaded model equal to the
dump of the model quantized in memory."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qfair.compress.export import pack_int32_rows  # noqa: E402
from qfair.compress.grid import Grid  # noqa: E402


def reference_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Each row as one Python integer holding code i at bits [i*bits, (i+1)*bits),
    cut into 32-bit words, least significant first, read as signed int32."""
    rows, n = codes.shape
    words = (n * bits + 31) // 32
    out = np.zeros((rows, words), dtype=np.int64)
    for r in range(rows):
        acc = 0
        for i, c in enumerate(codes[r].tolist()):
            acc |= int(c) << (i * bits)
        for k in range(words):
            u = (acc >> (32 * k)) & 0xFFFFFFFF
            out[r, k] = u - (1 << 32) if u >= 1 << 31 else u
    return out.astype(np.int32)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n", [1, 31, 32, 33, 64, 100])
def test_pack_int32_rows_equals_bit_reference(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2 ** bits, (5, n), generator=g, dtype=torch.uint8)
    codes[0] = 2 ** bits - 1        # all bits set: the sign bit of a word
    codes[1] = 0
    got = pack_int32_rows(codes, bits)
    assert got.dtype == torch.int32 and got.shape == (5, (n * bits + 31) // 32)
    np.testing.assert_array_equal(got.numpy(), reference_pack(codes.numpy(), bits))


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_int32_rows_equals_compressed_tensors(bits):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (7, 72), generator=g, dtype=torch.uint8)
    signed = (codes.to(torch.int16) - (1 << (bits - 1))).to(torch.int8)
    assert torch.equal(pack_int32_rows(codes, bits), helpers.pack_to_int32(signed, bits))
    # zero points are packed along the output dimension
    zp = codes[:, :3]
    assert torch.equal(pack_int32_rows(zp.T, bits).T.contiguous(),
                       helpers.pack_to_int32((zp.to(torch.int16) - (1 << (bits - 1))).to(torch.int8), bits,
                                             packed_dim=0))
    assert torch.equal(helpers.unpack_from_int32(pack_int32_rows(codes, bits), bits, codes.shape), signed)


# ---------------------------------------------------------------------------
# transformers reloads the export

def _float(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval(), \
        AutoTokenizer.from_pretrained(str(path))


def _reload(directory, dequantize):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, **kw).eval()


GRIDS = [Grid(4, 32, True), Grid(4, 32, False), Grid(8, -1, True), Grid(8, 64, False), Grid(2, -1, False),
         Grid(3, 32, True), Grid(5, 64, False), Grid(6, 32, True), Grid(7, -1, False)]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"b{g.bits}-g{g.group_size}-{'sym' if g.sym else 'asym'}")
def test_transformers_reloads_the_export_bit_for_bit(tiny_model, tmp_path, grid):
    pytest.importorskip("compressed_tensors")
    from qfair.compress.export import save_compressed_tensors
    from qfair.compress.model import quantize_model

    fm, tok = _float(tiny_model("llama"))
    g = torch.Generator().manual_seed(grid.bits)
    cal = [torch.randint(0, 200, (int(n),), generator=g) for n in (9, 17, 30, 5)]
    qm = copy.deepcopy(fm)
    # GPTQ for one grid (what the cache exports), RTN for the others (fast; same format)
    method = "gptq" if grid == GRIDS[1] else "rtn"
    res = quantize_model(qm, method, grid, calibration=cal, layer_bits={"model.layers.0.mlp.down_proj": 3}
                         if grid == GRIDS[0] else None)
    save_compressed_tensors(qm, tok, res.weights, tmp_path / "ct")
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "pack-quantized"
    assert sorted(n for grp in cfg["config_groups"].values() for n in grp["targets"]) == sorted(res.weights)
    ids = tok("Numbers such as 3.14 appear in many sentences.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = qm(ids).logits
    # transformers' two routes (qfair.compress.export.reload_refusal): de-quantizing on load takes one width,
    # the default (compressed) route only symmetric grids
    mixed = len({qw.grid for qw in res.weights.values()}) > 1
    routes = ((False,) if mixed else (True, False)) if grid.sym else (True,)
    for dequantize in routes:
        back = _reload(tmp_path / "ct", dequantize)
        with torch.no_grad():
            assert torch.equal(back(ids).logits, ref), dequantize
        for name, qw in res.weights.items():
            assert torch.equal(back.get_submodule(name).weight, qw.dequantize()), (name, dequantize)
        state, want = back.state_dict(), qm.state_dict()
        for k, v in want.items():  # every other tensor (embeddings, norms, the float head) as it was
            if k in state:
                assert torch.equal(state[k], v), k
    if grid == GRIDS[0]:
        assert res.weights["model.layers.0.mlp.down_proj"].grid.bits == 3 and len(cfg["config_groups"]) == 2


def test_export_refuses_weights_that_are_not_their_codes_and_mixed_asymmetric_widths(tiny_model, tmp_path):
    from qfair.compress.errors import CompressError
    from qfair.compress.export import save_compressed_tensors
    from qfair.compress.model import quantize_model

    fm, tok = _float(tiny_model("llama"))
    mixed = copy.deepcopy(fm)
    res = quantize_model(mixed, "rtn", Grid(4, 32, False), layer_bits={"model.layers.0.mlp.up_proj": 8})
    with pytest.raises(CompressError, match="^compressed-tensors export: layers of several widths with sym=false"):
        save_compressed_tensors(mixed, tok, res.weights, tmp_path / "ct")
    res = quantize_model(fm, "rtn", Grid(4, 32))
    with torch.no_grad():
        fm.get_submodule("model.layers.1.self_attn.o_proj").weight[0, 0] += 1e-3
    with pytest.raises(CompressError, match="model.layers.1.self_attn.o_proj: the model's weights differ"):
        save_compressed_tensors(fm, tok, res.weights, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


# ---------------------------------------------------------------------------
# the cache entry's export, dumped

def _dump_arrays(path):
    from qfair.dump import open_dump

    d = open_dump(path)
    return d.choices, d.tokens, d.logit_blocks(verify=True)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("sym", [True, False])
def test_dump_of_the_reloaded_export_equals_the_in_memory_dump(tiny_model, tmp_path, sym):
    pytest.importorskip("compressed_tensors")
    from qfair.dump.run import dump
    from qfair.models import load_model

    path = str(tiny_model("llama"))
    spec = f"gptq:samples=6,seqlen=24,group_size=32,sym={str(sym).lower()}"
    cache = tmp_path / "cache"
    lm = load_model(path, quant=spec, cache_dir=cache, progress=False)
    export = lm.extra["quant_details"]["compressed_tensors"]
    entry = Path(lm.extra["quant_details"]["cache_entry"])
    assert export == str(entry / "compressed-tensors")
    assert json.loads((entry / "compressed-tensors" / "config.json").read_text())["quantization_config"]
    # an entry without the export (built before it existed) gets it on its next load, the same bytes
    files = {p.name: p.read_bytes() for p in Path(export).iterdir() if p.suffix == ".safetensors"}
    shutil.rmtree(export)
    again = load_model(path, quant=spec, cache_dir=cache, progress=False)
    assert again.extra["quant_details"]["cache_hit"] and again.extra["quant_details"]["compressed_tensors"] == export
    assert {p.name: p.read_bytes() for p in Path(export).iterdir() if p.suffix == ".safetensors"} == files
    assert [p.name for p in entry.iterdir() if p.name.startswith(".tmp")] == []
    common = dict(tasks="arc_easy", limit=3, progress=False, threads=1)
    dump(tmp_path / "mem", model=path, quant=spec, load_kwargs={"cache_dir": str(cache)}, **common)
    dump(tmp_path / "ct", model=export, **common)
    a, b = _dump_arrays(tmp_path / "mem"), _dump_arrays(tmp_path / "ct")
    assert a[0].equals(b[0]) and a[1].equals(b[1])    # per-choice log-likelihoods, tokens: exactly
    assert len(a[2]) == len(b[2]) and all(np.array_equal(x, y) for x, y in zip(a[2], b[2]))
    q = json.loads((tmp_path / "ct" / "manifest.json").read_text())["model"]["quantization"]
    assert q["name"] == "prequantized" and q["options"]["method"] == "compressed-tensors", q
