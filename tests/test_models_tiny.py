"""Every quantization spec on a tiny random-weight model of every supported
architecture (Llama, Mistral, BLOOM, OPT), plus pre-quantized checkpoints and
the tiny-model builder itself.  All offline; each load takes well under a second."""
from __future__ import annotations

import json
import math

import pytest
from conftest import quantizing_specs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qfair.models import ModelError, load_model, parse_quant_spec, vocab_hash  # noqa: E402
from qfair.models.quant import spec_availability  # noqa: E402
from qfair.models.tiny import ARCHITECTURES, make_tiny_model  # noqa: E402

TEXT = "The committee met on Tuesday and the river kept rising; ¿qué pasó? 🙂"

# every spec of the registry; the ones not available here skip with the reason
# load-time quantizers (bnb, quanto, torchao, ...); the specs qfair makes from the float model
# (rtn, gptq, prune-*) run on every tiny architecture in tests/test_compress.py and tests/test_pruning.py
SPECS = quantizing_specs(built_here=False)

# the module class (or weight tensor class) that replaces nn.Linear for each backend
EXPECTED_LINEAR = {
    "bnb-int8": "Linear8bitLt",
    "bnb-nf4": "Linear4bit",
    "bnb-fp4": "Linear4bit",
    "quanto-int8": "QLinear",
    "quanto-int4": "QLinear",
    "quanto-int2": "QLinear",
}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    return {a: make_tiny_model(a, root / a, seed=0) for a in ARCHITECTURES}


@pytest.fixture(scope="session")
def base_runs(tiny_dir):
    """Full-precision log-probs of every tiny model on TEXT."""
    out = {}
    for arch, path in tiny_dir.items():
        lm = load_model(str(path), progress=False, device="cpu")
        ids = lm.tokenizer(TEXT, return_tensors="pt").input_ids
        with torch.no_grad():
            out[arch] = (lm, ids, lm.model(ids).logits.float().log_softmax(-1))
    return out


def _kl(lp, lq):
    # KL(P||Q) per position, via torch's own kl_div (argument order: input=log q, target=log p)
    return torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_base_model_properties(arch, tiny_dir, base_runs):
    lm, ids, lp = base_runs[arch]
    meta = json.loads((tiny_dir[arch] / "qfair_tiny.json").read_text())
    assert lm.model.config.model_type == arch
    assert lm.model.training is False
    assert lm.quant.name == "none" and lm.device == torch.device("cpu")
    assert lm.vocab_size == lp.shape[-1] == meta["vocab_size"]
    assert len(lm.tokenizer) == meta["tokenizer_size"] == 512
    if arch == "opt":  # OPT pads its embedding matrix beyond the tokenizer, like the real family
        assert lm.vocab_size > len(lm.tokenizer)
    # the tokenizer round-trips arbitrary text byte-exactly (byte-level BPE, no <unk>)
    enc = lm.tokenizer(TEXT)["input_ids"]
    assert lm.tokenizer.unk_token_id not in enc
    assert lm.tokenizer.decode(enc, skip_special_tokens=True) == TEXT
    bos = {"llama": 1, "mistral": 1, "bloom": None, "opt": 2}[arch]
    assert (enc[0] == bos) if bos is not None else (enc[0] not in (0, 1, 2, 3))
    # distributions are proper and far from uniform (so quantization is visible)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(lp.shape[:-1]), atol=1e-5)
    ent = -(lp.exp() * lp).sum(-1)
    assert float(ent.mean()) < math.log(lm.vocab_size) - 1.0


def test_tiny_model_is_deterministic_and_seeded(tmp_path, tiny_dir):
    from safetensors.torch import load_file

    a = load_file(str(make_tiny_model("llama", tmp_path / "a", seed=0) / "model.safetensors"))
    b = load_file(str(tiny_dir["llama"] / "model.safetensors"))
    c = load_file(str(make_tiny_model("llama", tmp_path / "c", seed=1) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].numel() > 1 and a[k].std() > 0)
    with pytest.raises(ValueError, match="expected one of llama, mistral, bloom, opt"):
        make_tiny_model("gpt2", tmp_path / "x")


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_spec_every_arch(arch, spec, tiny_dir, base_runs):
    ok, why = spec_availability(spec)
    if not ok:
        pytest.skip(why)
    _, ids, lp = base_runs[arch]
    lm = load_model(str(tiny_dir[arch]), quant=spec, progress=False, device="cpu")
    assert lm.quant == parse_quant_spec(spec)
    assert lm.model.training is False
    with torch.no_grad():
        logits = lm.model(ids).logits.float()
    assert logits.shape == (1, ids.shape[1], lm.vocab_size)
    assert torch.isfinite(logits).all()
    lq = logits.log_softmax(-1)
    kl = _kl(lp, lq)
    # quantized: different from the base model ...
    assert float(kl.mean()) > 1e-7
    # ... yet still the same model: 8-bit stays very close, 4-bit close, 2-bit merely finite
    bound = {"8": 0.1, "4": 2.0, "2": 20.0}[spec[-1] if spec[-1] in "842" else spec.split("int")[1][0]]
    assert float(kl.mean()) < bound, (spec, float(kl.mean()))
    # the linear layers really were replaced (output head kept in full precision by default)
    linear_types = {type(m).__name__ for n, m in lm.model.named_modules()
                    if n.endswith(("q_proj", "fc1", "query_key_value", "dense_h_to_4h"))}
    if spec in EXPECTED_LINEAR:
        assert linear_types == {EXPECTED_LINEAR[spec]}, linear_types
    else:  # torchao swaps the weight tensor, not the module
        w = next(m.weight for n, m in lm.model.named_modules()
                 if n.endswith(("q_proj", "fc1", "query_key_value")))
        assert type(w).__name__ != "Parameter" or type(w.data).__name__ != "Tensor"
    head = lm.model.get_output_embeddings()
    assert type(head).__name__ == "Linear"
    man = lm.manifest()
    assert json.loads(json.dumps(man)) == man
    assert man["quantization"]["spec"] == spec and man["quantization"]["config"]["quant_method"] in (
        "bitsandbytes", "quanto", "torchao")
    assert "lm_head" in man["quantization"]["modules_not_converted"]


def test_skip_modules_replaces_default_list(tiny_dir, base_runs):
    _, ids, lp = base_runs["llama"]
    lm = load_model(str(tiny_dir["llama"]), quant="bnb-nf4:skip_modules=down_proj", progress=False)
    assert type(lm.model.model.layers[0].mlp.down_proj).__name__ == "Linear"
    assert type(lm.model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    # the output head is quantized now, and the logit width is still reported correctly
    assert type(lm.model.lm_head).__name__ == "Linear4bit"
    assert lm.vocab_size == 512
    with torch.no_grad():
        assert lm.model(ids).logits.shape[-1] == lm.vocab_size


def test_bnb_threshold_option_changes_outputs(tiny_dir, base_runs):
    _, ids, lp = base_runs["opt"]
    outs = []
    for spec in ["bnb-int8", "bnb-int8:threshold=0.5"]:
        lm = load_model(str(tiny_dir["opt"]), quant=spec, progress=False)
        assert lm.model.config.quantization_config.llm_int8_threshold == lm.quant.options["threshold"]
        with torch.no_grad():
            outs.append(lm.model(ids).logits.float())
    assert not torch.equal(outs[0], outs[1])


def test_dtype_and_manifest_for_half_precision(tiny_dir):
    lm = load_model(str(tiny_dir["mistral"]), dtype="bfloat16", progress=False)
    assert lm.model.dtype == torch.bfloat16
    man = lm.manifest()
    assert man["dtype"] == "bfloat16" and man["requested_dtype"] == "bfloat16"
    assert man["model"]["source"] == "local" and man["model"]["path"] == str(tiny_dir["mistral"].resolve())
    assert man["tokenizer"]["vocab_size"] == 512 and man["tokenizer"]["adds_bos"] is True
    assert man["trust_remote_code"] is False and man["device_map_requested"] is None
    lm = load_model(str(tiny_dir["opt"]), device_map="auto", quant="bnb-nf4", progress=False)
    assert lm.device == next(lm.model.parameters()).device
    assert lm.manifest()["device_map_requested"] == "auto"
    with torch.no_grad():
        out = lm.model(torch.tensor([[2, 50, 60]], device=lm.device)).logits
    assert out.shape == (1, 3, lm.vocab_size) == (1, 3, 520)


def test_vocab_hash_is_an_independent_vocab_hash(tiny_dir, base_runs):
    import hashlib

    tok = base_runs["llama"][0].tokenizer
    fp = vocab_hash(tok)
    # oracle: the tokenizer.json vocabulary + added tokens, hashed the documented way
    data = json.loads((tiny_dir["llama"] / "tokenizer.json").read_text())
    vocab = dict(data["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in data["added_tokens"]})
    lines = "".join(f"{i}\t{t}\n" for t, i in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])))
    assert fp == {"vocab_size": 512, "sha256": hashlib.sha256(lines.encode()).hexdigest()}
    # same vocab in another architecture's tokenizer -> same fingerprint; a changed vocab -> different
    assert vocab_hash(base_runs["bloom"][0].tokenizer) == fp
    tok2 = base_runs["opt"][0].tokenizer.__class__.from_pretrained(str(tiny_dir["opt"]))
    tok2.add_tokens(["<extra_token>"])
    fp2 = vocab_hash(tok2)
    assert fp2["vocab_size"] == 513 and fp2["sha256"] != fp["sha256"]


def test_prequantized_checkpoint_is_loaded_as_is(tmp_path, tiny_dir, base_runs):
    _, ids, _ = base_runs["llama"]
    q = load_model(str(tiny_dir["llama"]), quant="bnb-nf4", progress=False)
    q.model.save_pretrained(tmp_path / "pre")
    q.tokenizer.save_pretrained(tmp_path / "pre")
    with torch.no_grad():
        ref = q.model(ids).logits
    for spec in ["none", "prequantized"]:
        lm = load_model(str(tmp_path / "pre"), quant=spec, progress=False)
        assert lm.quant.name == "prequantized" and lm.quant.options["method"] == "bitsandbytes"
        with torch.no_grad():
            assert torch.equal(lm.model(ids).logits, ref)
        man = lm.manifest()["quantization"]
        assert man["spec"] == "prequantized" and man["config"]["bnb_4bit_quant_type"] == "nf4"
    with pytest.raises(ModelError, match=r"already quantized \(bitsandbytes\).*use --quant none"):
        load_model(str(tmp_path / "pre"), quant="quanto-int8", progress=False)
    with pytest.raises(ModelError, match="no quantization_config"):
        load_model(str(tiny_dir["llama"]), quant="prequantized", progress=False)
