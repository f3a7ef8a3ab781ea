"""Measured model sizes (bits per weight, bytes) and models split across devices.

Oracles: the sizes derived by hand from the architecture's dimensions (float
and LLM.int8 storage), the bytes ``save_pretrained`` writes (NF4), and the
logits of the un-split model for a model whose layers an accelerate device map
offloads to disk.
"""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from test_dump_support import data_files, saved_tensor_bytes, write_mc_file  # noqa: E402

from qfair.models import ModelError, load_model  # noqa: E402
from qfair.models.loading import parse_max_memory  # noqa: E402
from qfair.models.size import architecture_weights, measure  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _llama_dims(cfg):
    h, f, layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    hd = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    linears = [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)]  # (out, in): q k v o gate up down
    return h, v, layers, linears


def test_float_and_int8_sizes_match_the_architecture(tiny_model):
    path = tiny_model("llama", 0)
    f = load_model(str(path), progress=False, device="cpu")
    h, v, layers, linears = _llama_dims(f.model.config)
    lin = sum(o * i for o, i in linears)
    n = 2 * v * h + layers * (lin + 2 * h) + h  # embeddings, lm_head (untied), blocks, final norm
    size = f.manifest()["size"]
    assert size["n_weights"] == n == architecture_weights(f.model)
    assert size["stored_bytes"] == 4 * n and size["bits_per_weight"] == 32.0
    assert size["bytes_by_dtype"] == {"float32": 4 * n}
    # LLM.int8: every decoder linear as int8 weights + one float32 scale per output row
    # (+ bitsandbytes' one-byte weight_format); the rest stays float32
    q = load_model(str(path), quant="bnb-int8", progress=False, device="cpu")
    qs = q.manifest()["size"]
    int8 = layers * lin
    scb = layers * sum(o for o, _ in linears)
    rest = n - int8
    assert qs["n_weights"] == n
    assert qs["bytes_by_dtype"] == {"float32": 4 * (rest + scb), "int8": int8, "uint8": layers * len(linears)}
    assert qs["stored_bytes"] == 4 * (rest + scb) + int8 + layers * len(linears)
    assert qs["bits_per_weight"] == pytest.approx(8 * qs["stored_bytes"] / n)


def test_nf4_size_is_what_save_pretrained_writes(tiny_model, tmp_path):
    q = load_model(str(tiny_model("bloom", 0)), quant="bnb-nf4", progress=False, device="cpu")
    size = q.manifest()["size"]
    total = saved_tensor_bytes(q.model, tmp_path / "saved")
    assert size["stored_bytes"] == total
    # tied embeddings counted once: BLOOM's float model has as many weights as parameters
    f = load_model(str(tiny_model("bloom", 0)), progress=False, device="cpu")
    assert size["n_weights"] == f.model.num_parameters() == f.manifest()["size"]["stored_bytes"] // 4
    assert 4 < size["bits_per_weight"] < 32


def test_max_memory_parsing():
    assert parse_max_memory("0=20GiB,cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert parse_max_memory("cuda:1=1000,cpu=2MB") == {1: 1000, "cpu": "2MB"}
    assert parse_max_memory(None) is None
    for bad, msg in (("cpu", "DEVICE=SIZE"), ("gpu=1GB", "device 'gpu'"), ("cpu=lots", "positive size"),
                     ("0=-5", "positive size")):
        with pytest.raises(ModelError, match=msg):
            parse_max_memory(bad)
    with pytest.raises(ModelError, match="add --device-map auto"):
        load_model("whatever", max_memory="cpu=1GB", progress=False)


def test_offloaded_layers_give_the_unsplit_logits(tiny_model, tmp_path):
    """A device map with too little memory for the model offloads part of its layers
    to disk; the dump's rows and tables are those of the un-split model, byte for byte."""
    from qfair.dump.run import dump

    path = tiny_model("llama", 0)
    split = load_model(str(path), progress=False, device_map="auto", max_memory={"cpu": 1_500_000})
    placed = set(split.model.hf_device_map.values())
    assert placed == {"cpu", "disk"}, split.model.hf_device_map
    whole = load_model(str(path), progress=False, device="cpu")
    x = torch.tensor([[1, 5, 9, 20, 33, 7]])
    with torch.inference_mode():
        assert torch.equal(split.model(x).logits, whole.model(x).logits)
    mc = write_mc_file(tmp_path / "mc.jsonl", 8, seed=4)
    common = dict(model=str(path), tasks="mc", data_files={"mc": mc}, shard_rows=50, progress=False, threads=1)
    dump(tmp_path / "whole", **common)
    dump(tmp_path / "split", **common, load_kwargs={"device_map": "auto", "max_memory": "cpu=1500000"})
    assert data_files(tmp_path / "split") == data_files(tmp_path / "whole")
    m = json.loads((tmp_path / "split" / "manifest.json").read_text())["model"]
    assert "disk" in m["device_map"].values() and m["max_memory"] == {"cpu": 1500000}
    assert m["size"]["offloaded_bytes"] > 0 and m["size"]["stored_bytes"] == 4 * m["size"]["n_weights"]


def _bnb_repacked(model) -> bool:
    """Whether bitsandbytes repacked any 4-bit weight for its CPU kernels (only on CPUs with AVX512-BF16)."""
    return any(getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)
               for m in model.modules())


@pytest.mark.parametrize("cpu", ["this", "without_avx512bf16"])
def test_measure_refuses_a_bnb_4bit_model_iff_its_cpu_forward_repacked_it(tiny_model, cpu, monkeypatch):
    """bitsandbytes repacks 4-bit weights on the first CPU forward only where its AVX512-BF16 kernel
    runs; reading the state afterwards would corrupt the model. The refusal follows the repack
    itself: refused if and only if the state changed, and an unchanged state measures the same.
    ``without_avx512bf16`` makes bitsandbytes see an AVX2-only CPU, so both branches run here."""
    from qfair.models.size import SizeError

    if cpu == "without_avx512bf16":
        import bitsandbytes.nn.modules as bnb_modules
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)
    q = load_model(str(tiny_model("llama", 0)), quant="bnb-nf4", progress=False, device="cpu")
    before = q.manifest()["size"]
    assert before["stored_bytes"] > 0  # measured at load
    with torch.inference_mode():
        q.model(torch.tensor([[1, 5, 9]]))
    if _bnb_repacked(q.model):
        with pytest.raises(SizeError, match="before its first forward"):
            measure(q.model)
    else:
        assert measure(q.model)["stored_bytes"] == before["stored_bytes"]


def test_measure_refuses_a_repacked_bnb_4bit_state_on_any_cpu(tiny_model):
    """The refusal path itself, on every CPU: a state flagged as repacked for the CPU kernels (what
    the first forward leaves on AVX512-BF16 machines) is refused, and the model is left untouched."""
    from qfair.models.size import SizeError

    q = load_model(str(tiny_model("llama", 0)), quant="bnb-nf4", progress=False, device="cpu")
    lin = next(m for m in q.model.modules() if type(m).__name__ == "Linear4bit")
    packed = lin.weight.data.clone()
    lin.weight.quant_state.packing_format_for_cpu = True
    with pytest.raises(SizeError, match="before its first forward"):
        measure(q.model)
    assert torch.equal(lin.weight.data, packed) and lin.weight.quant_state.packing_format_for_cpu
