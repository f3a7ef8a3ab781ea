"""Pruning specs (prune-magnitude, prune-wanda, prune-layers, then=): masks against
numpy references written from the definitions, N:M group by group, Wanda
against norms captured by the test's own hooks, dropped blocks against a
transformers model rebuilt without them, measured sparsity against numpy
counts, and composition with bitsandbytes NF4."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qfair.models import ModelError, load_model, parse_quant_spec, quant_spec_names  # noqa: E402
from qfair.pruning import PruningError  # noqa: E402
from qfair.pruning.layers import drop_blocks, fraction_to_drop  # noqa: E402
from qfair.pruning.masks import Pattern, layer_mask, nm_mask, parse_pattern, row_mask  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------
# numpy references, written from the definitions in docs/pruning.md

def k_of(s: float, n: int) -> int:
    return int(np.floor(s * n + 1e-9))


def ref_layer_keep(scores: np.ndarray, s: float) -> np.ndarray:
    """Whole-layer comparison: the floor(s*n) lowest |W| pruned, ties to the lower flat index."""
    flat = scores.astype(np.float64).ravel()
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k_of(s, flat.size)]] = False
    return keep.reshape(scores.shape)


def ref_row_keep(scores: np.ndarray, s: float) -> np.ndarray:
    keep = np.ones(scores.shape, bool)
    k = k_of(s, scores.shape[1])
    for i, row in enumerate(scores.astype(np.float64)):
        keep[i, np.argsort(row, kind="stable")[:k]] = False
    return keep


def ref_nm_keep(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    keep = np.ones(scores.shape, bool)
    for i in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            grp = scores[i, g:g + m].astype(np.float64)
            keep[i, g + np.argsort(grp, kind="stable")[:m - n]] = False
    return keep


def matrices():
    rng = np.random.default_rng(7)
    yield "normal", rng.standard_normal((16, 24)).astype(np.float32)
    yield "ties", rng.choice([-2.0, -1.0, 0.5, 1.0, 2.0], size=(12, 16)).astype(np.float32)
    yield "all-equal", np.full((8, 8), 0.25, np.float32)
    yield "signs-tie", np.tile(np.array([1.0, -1.0], np.float32), (6, 8))
    yield "one-row", rng.standard_normal((1, 40)).astype(np.float32)


# ---------------------------------------------------------------------------
# masks

@pytest.mark.parametrize("s", [0.01, 0.1, 0.3, 0.5, 0.75, 0.99])
def test_magnitude_mask_equals_numpy_argsort(s):
    for name, w in matrices():
        got = layer_mask(torch.from_numpy(w).abs(), s).numpy()
        exp = ref_layer_keep(np.abs(w), s)
        assert np.array_equal(got, exp), (name, s)
        assert (~got).sum() == k_of(s, w.size)


def test_tie_rule_prunes_the_lower_index_first():
    w = np.full((4, 4), 3.0, np.float32)
    keep = layer_mask(torch.from_numpy(w), 0.5).numpy().ravel()
    assert keep.tolist() == [False] * 8 + [True] * 8
    keep = row_mask(torch.from_numpy(w), 0.5).numpy()
    assert (keep == np.array([False, False, True, True])).all()
    # |-1| and |1| tie: the earlier one goes
    keep = layer_mask(torch.tensor([[1.0, -1.0, 2.0, -1.0]]).abs(), 0.5).numpy()
    assert keep.tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("s", [0.01, 0.25, 0.5, 0.99])
def test_row_mask_equals_numpy_per_row(s):
    for name, w in matrices():
        assert np.array_equal(row_mask(torch.from_numpy(np.abs(w)), s).numpy(), ref_row_keep(np.abs(w), s)), name


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_nm_mask_group_by_group(n, m):
    for name, w in matrices():
        if w.shape[1] % m:
            continue
        scores = np.abs(w)
        keep = nm_mask(torch.from_numpy(scores), Pattern(n, m)).numpy()
        assert np.array_equal(keep, ref_nm_keep(scores, n, m)), name
        for i in range(w.shape[0]):
            for g in range(0, w.shape[1], m):
                k = keep[i, g:g + m]
                assert k.sum() == n  # exactly N kept in every group
                kept, gone = scores[i, g:g + m][k], scores[i, g:g + m][~k]
                assert kept.min() >= gone.max()  # the N largest survive


def test_nm_refuses_widths_not_divisible():
    with pytest.raises(PruningError, match="multiple of 4, got 10"):
        nm_mask(torch.ones(3, 10), Pattern(2, 4))


def test_patterns_parse():
    assert parse_pattern("2:4") == Pattern(2, 4) and Pattern(2, 4).sparsity == 0.5
    assert parse_pattern(" Unstructured ") == Pattern() and str(Pattern()) == "unstructured"
    assert Pattern(1, 4).sparsity == 0.75
    for bad in ("4:4", "0:4", "5:4", "2-4", "x"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_fraction_to_drop():
    assert fraction_to_drop(0.25, 8) == [5, 6]
    assert fraction_to_drop(0.5, 4) == [1, 2]
    assert fraction_to_drop(0.1, 5) == [3]  # 0.5 blocks round half up to 1
    with pytest.raises(PruningError, match="drops none"):
        fraction_to_drop(0.05, 4)
    with pytest.raises(PruningError, match="drops every block"):
        fraction_to_drop(0.9, 4)


# ---------------------------------------------------------------------------
# specs

def test_specs_are_listed_and_round_trip():
    names = quant_spec_names()
    assert {"prune-magnitude", "prune-wanda", "prune-layers"} <= set(names)
    for text in ["prune-magnitude:sparsity=0.5", "prune-magnitude:pattern=2:4",
                 "prune-wanda:sparsity=0.3,samples=8,seqlen=32", "prune-layers:drop=1+3",
                 "prune-layers:fraction=0.25", "prune-magnitude:ignore=lm_head+down_proj,sparsity=0.5",
                 "prune-wanda:pattern=4:8,then=bnb-nf4:compute_dtype=bfloat16;double_quant=true"]:
        s = parse_quant_spec(text)
        assert parse_quant_spec(str(s)) == s
    assert str(parse_quant_spec("prune-layers:drop=3+1+3")) == "prune-layers:drop=1+3"


@pytest.mark.parametrize("bad, fragment", [
    ("prune-magnitude", "needs sparsity=S"),
    ("prune-magnitude:sparsity=0", "strictly between 0 and 1"),
    ("prune-magnitude:sparsity=1", "strictly between 0 and 1"),
    ("prune-magnitude:sparsity=-0.2", "strictly between 0 and 1"),
    ("prune-wanda:sparsity=1.5", "strictly between 0 and 1"),
    ("prune-magnitude:sparsity=0.3,pattern=2:4", "disagrees with pattern=2:4"),
    ("prune-magnitude:pattern=3:2", "1 <= N < M"),
    ("prune-layers", "exactly one of drop"),
    ("prune-layers:drop=1,fraction=0.2", "exactly one of drop"),
    ("prune-layers:drop=-1", "count from 0"),
    ("prune-layers:drop=1;2", "joined by '+'"),
    ("prune-layers:fraction=1", "strictly between 0 and 1"),
    ("prune-magnitude:sparsity=0.5,then=gptq", "then= takes a spec"),
    ("prune-magnitude:sparsity=0.5,then=prune-layers:drop=1", "then= takes a spec"),
    ("prune-magnitude:sparsity=0.5,then=bnb-nf5", "unknown quantization spec 'bnb-nf5'"),
])
def test_bad_specs_one_line(bad, fragment):
    with pytest.raises(ModelError) as ei:
        parse_quant_spec(bad)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)


# ---------------------------------------------------------------------------
# models

def _load(path, spec, cache):
    return load_model(str(path), quant=spec, cache_dir=str(cache), progress=False, device="cpu")


def _float_linears(path):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return m, {n: mod for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)}


def test_magnitude_model_masks_and_measured_sparsity(tiny_model, tmp_path):
    path = tiny_model("llama")
    lm = _load(path, "prune-magnitude:sparsity=0.4", tmp_path)
    _, ref = _float_linears(path)
    got = dict(lm.model.named_modules())
    man = lm.manifest()
    sp = man["sparsity"]
    zeros = total = 0
    for n, lin in ref.items():
        w0 = lin.weight.detach().numpy()
        w1 = got[n].weight.detach().numpy()
        if n == "lm_head":  # ignored by default
            assert np.array_equal(w0, w1)
        else:
            keep = ref_layer_keep(np.abs(w0), 0.4)
            assert np.array_equal(w1 != 0, keep) and np.array_equal(w1[keep], w0[keep])
            zeros += int(np.count_nonzero(w1 == 0))
            total += w1.size
        assert sp["layers"][n]["zeros"] == int(np.count_nonzero(w1 == 0))
        assert sp["layers"][n]["weights"] == w1.size
    assert sp["zeros"] == zeros and sp["weights"] == total and sp["overall"] == zeros / total
    assert man["size"]["stored_bytes"] > 0
    assert man["quantization"]["spec"] == "prune-magnitude:sparsity=0.4"
    assert man["model"]["id"] == str(path)
    assert man["quantization"]["details"]["pruning"]["comparison"] == "whole layer"
    # the float model's manifest records its (zero) sparsity too
    assert _load(path, "none", tmp_path).manifest()["sparsity"]["zeros"] == 0


def test_two_four_pattern_on_the_model(tiny_model, tmp_path):
    path = tiny_model("mistral")
    lm = _load(path, "prune-magnitude:pattern=2:4", tmp_path)
    _, ref = _float_linears(path)
    for n, mod in lm.model.named_modules():
        if isinstance(mod, torch.nn.Linear) and n != "lm_head":
            w0 = ref[n].weight.detach().numpy()
            w1 = mod.weight.detach().numpy()
            assert np.array_equal(w1 != 0, ref_nm_keep(np.abs(w0), 2, 4)), n
            assert ((w1 != 0).reshape(w1.shape[0], -1, 4).sum(-1) == 2).all()
    assert lm.manifest()["sparsity"]["overall"] == 0.5


def _capture_norms(model, tok, texts, seqlen):
    """The test's own capture: forward hooks keep every linear's whole input; norms in numpy."""
    seen: dict[str, list[np.ndarray]] = {}
    hooks = []
    for n, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            def h(_m, inp, _out, n=n):
                seen.setdefault(n, []).append(inp[0].detach().reshape(-1, inp[0].shape[-1]).numpy().copy())
            hooks.append(mod.register_forward_hook(h))
    with torch.no_grad():
        for t in texts:
            ids = tok(t, truncation=True, max_length=seqlen)["input_ids"]
            model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return {n: np.sqrt((np.concatenate(v).astype(np.float64) ** 2).sum(0)) for n, v in seen.items()}


@pytest.mark.parametrize("pattern", ["sparsity=0.5", "sparsity=0.01", "pattern=4:8"])
def test_wanda_mask_equals_its_formula(tiny_model, tmp_path, pattern):
    from transformers import AutoTokenizer

    path = tiny_model("llama")
    lm = _load(path, f"prune-wanda:{pattern},samples=6,seqlen=24", tmp_path)
    entry = Path(lm.manifest()["quantization"]["details"]["cache_entry"])
    texts = [json.loads(x)["text"] for x in (entry / "calibration.jsonl").read_text().splitlines()]
    from qfair.sensitivity.calibration import calibration_set

    assert list(calibration_set("generic", 6).texts) == texts  # the scan side of the default split
    model, ref = _float_linears(path)
    norms = _capture_norms(model, AutoTokenizer.from_pretrained(str(path)), texts, 24)
    got = dict(lm.model.named_modules())
    for n, lin in ref.items():
        if n == "lm_head":
            continue
        w0 = lin.weight.detach().numpy()
        scores = np.abs(w0.astype(np.float64)) * norms[n][None, :]
        exp = ref_nm_keep(scores, 4, 8) if "4:8" in pattern else ref_row_keep(scores, float(pattern.split("=")[1]))
        assert np.array_equal(got[n].weight.detach().numpy() != 0, exp), n
    # Wanda differs from plain magnitude here (the norms matter)
    mag = ref_row_keep(np.abs(ref["model.layers.0.mlp.down_proj"].weight.detach().numpy()), 0.5)
    if pattern == "sparsity=0.5":
        assert not np.array_equal(got["model.layers.0.mlp.down_proj"].weight.detach().numpy() != 0, mag)


def _make_model(tmp_path, arch="llama", **over):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from qfair.models.tiny import make_tiny_model

    src = make_tiny_model(arch, tmp_path / f"src-{arch}", seed=3, layers=over.pop("layers", 2))
    if not over:
        return src
    cfg = AutoConfig.from_pretrained(str(src))
    for k, v in over.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg)
    out = tmp_path / f"odd-{arch}"
    m.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    return out


def test_bad_model_input_is_one_line_before_any_write(tmp_path):
    odd = _make_model(tmp_path, intermediate_size=250)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as ei:
        _load(odd, "prune-magnitude:pattern=2:4", cache)
    msg = str(ei.value)
    assert "down_proj" in msg and "250" in msg and "multiples of 4" in msg and "\n" not in msg
    assert not list((cache / "pruned-v1").glob("[!.]*"))  # nothing cached
    # ignoring the odd layer makes it work
    lm = _load(odd, "prune-magnitude:pattern=2:4,ignore=lm_head+down_proj", cache)
    assert lm.manifest()["sparsity"]["layers"]["model.layers.0.mlp.down_proj"]["zeros"] == 0
    # unstructured pruning does not care about widths
    _load(odd, "prune-magnitude:sparsity=0.5", cache)


@pytest.mark.parametrize("spec, fragment", [
    ("prune-layers:drop=0+1", "removes every one of the 2 blocks"),
    ("prune-layers:drop=2", "block 2 is out of range (the model has blocks 0..1)"),
    ("prune-layers:fraction=0.1", "drops none"),
    ("prune-layers:fraction=0.8", "drops every block"),
])
def test_bad_layer_drops(tiny_model, tmp_path, spec, fragment):
    with pytest.raises(ModelError) as ei:
        _load(tiny_model("llama"), spec, tmp_path)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)


def test_tied_head_is_refused(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="shares its weight with the input embeddings"):
        _load(tiny_model("bloom"), "prune-magnitude:sparsity=0.5,ignore=query_key_value", tmp_path)


def _rebuilt_without(path, kept, prefix):
    """A transformers model built from the config with len(kept) layers, the kept blocks' weights copied in."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(path))
    cfg.num_hidden_layers = len(kept)
    new = AutoModelForCausalLM.from_config(cfg).eval()
    sd = load_file(str(Path(path) / "model.safetensors"))
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            i, _, rest = k[len(prefix):].partition(".")
            if int(i) in kept:
                out[f"{prefix}{kept.index(int(i))}.{rest}"] = v
        else:
            out[k] = v
    missing, unexpected = new.load_state_dict(out, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    if missing:
        new.tie_weights()
    return new


def _logits_and_greedy(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
        gen = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, use_cache=True,
                             pad_token_id=0)
    return logits, gen


def test_dropped_layers_equal_a_rebuilt_model(tmp_path):
    path = _make_model(tmp_path, layers=5)
    lm = _load(path, "prune-layers:drop=1+3", tmp_path / "cache")
    assert lm.model.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in lm.model.model.layers] == [0, 1, 2]
    ref = _rebuilt_without(path, [0, 2, 4], "model.layers.")
    ids = lm.tokenizer("The river keeps its own calendar")["input_ids"]
    la, ga = _logits_and_greedy(lm.model, ids)
    lb, gb = _logits_and_greedy(ref, ids)
    assert torch.equal(la, lb) and torch.equal(ga, gb)
    d = lm.manifest()["quantization"]["details"]["pruning"]
    assert d["dropped"] == [1, 3] and d["kept"] == [0, 2, 4] and d["blocks_before"] == 5
    assert lm.manifest()["size"]["stored_bytes"] < _load(path, "none", tmp_path / "cache").manifest()["size"][
        "stored_bytes"]


@pytest.mark.parametrize("arch, prefix", [("llama", "model.layers."), ("mistral", "model.layers."),
                                          ("bloom", "transformer.h."), ("opt", "model.decoder.layers.")])
def test_drop_blocks_in_memory_every_architecture(tmp_path, arch, prefix):
    from transformers import AutoModelForCausalLM

    path = _make_model(tmp_path, arch, layers=3)
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    assert drop_blocks(m, [1]) == [0, 2]
    ref = _rebuilt_without(path, [0, 2], prefix)
    ids = [5, 17, 99, 23, 42, 7]
    la, ga = _logits_and_greedy(m, ids)
    lb, gb = _logits_and_greedy(ref, ids)
    assert torch.equal(la, lb) and torch.equal(ga, gb)


def test_prune_then_nf4_keeps_the_zeros(tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bf
    from safetensors.torch import load_file

    path = tiny_model("llama")
    lm = _load(path, "prune-magnitude:sparsity=0.5,then=bnb-nf4", tmp_path)
    man = lm.manifest()
    q = man["quantization"]
    assert q["details"]["then"]["spec"] == "bnb-nf4" and q["details"]["then"]["backend"] == "bitsandbytes"
    entry = Path(q["details"]["cache_entry"])
    stored = load_file(str(entry / "model.safetensors"))
    _, ref = _float_linears(path)
    mods = dict(lm.model.named_modules())
    for n, lin in ref.items():
        if n == "lm_head":
            continue
        keep = ref_layer_keep(np.abs(lin.weight.detach().numpy()), 0.5)
        # the pruned float checkpoint, before quantization, has exactly the magnitude mask's zeros
        assert np.array_equal(stored[n + ".weight"].numpy() != 0, keep), n
        w = mods[n].weight
        assert type(w).__name__ == "Params4bit"
        deq = bf.dequantize_4bit(w.data, w.quant_state).numpy()
        assert (deq[~keep] == 0).all()  # NF4 has an exact zero: pruned weights stay zero
        assert man["sparsity"]["layers"][n]["zeros"] == int(np.count_nonzero(deq == 0))
    # a 4-bit model is smaller than the float one it came from
    assert man["size"]["stored_bytes"] < _load(path, "prune-magnitude:sparsity=0.5", tmp_path).manifest()[
        "size"]["stored_bytes"]


def test_cache_is_reused_and_keyed_by_settings(tiny_model, tmp_path):
    path = tiny_model("llama")
    a = _load(path, "prune-magnitude:sparsity=0.5", tmp_path).manifest()["quantization"]["details"]
    b = _load(path, "prune-magnitude:sparsity=0.5", tmp_path).manifest()["quantization"]["details"]
    c = _load(path, "prune-magnitude:sparsity=0.25", tmp_path).manifest()["quantization"]["details"]
    assert not a["cache_hit"] and b["cache_hit"] and a["cache_entry"] == b["cache_entry"]
    assert c["cache_entry"] != a["cache_entry"]
    assert math.isclose(_load(path, "prune-magnitude:sparsity=0.25", tmp_path).manifest()["sparsity"]["overall"],
                        0.25, abs_tol=1e-3)


# ---------------------------------------------------------------------------
# SparseGPT

def ref_sparsegpt(w: np.ndarray, x: np.ndarray, s: float | None, nm: tuple[int, int] | None, block: int,
                  damp: float) -> np.ndarray:
    """SparseGPT written from the paper with explicit inverses: for column j the OBS
    quantities come from inv(H[j:, j:]) (the Hessian of the columns not yet visited);
    the mask of a block is chosen at its start from w²/[inv(H_F)]_jj."""
    w = w.astype(np.float64).copy()
    rows, cols = w.shape
    h = 2.0 * x.T @ x / x.shape[0]
    h += damp * np.mean(np.diag(h)) * np.eye(cols)
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        diag = np.array([np.linalg.inv(h[j:, j:])[0, 0] for j in range(b0, b1)])
        score = w[:, b0:b1] ** 2 / diag[None, :]
        prune = np.zeros((rows, b1 - b0), bool)
        if nm is None:
            prune.ravel()[np.argsort(score.ravel(), kind="stable")[:k_of(s, score.size)]] = True
        for j in range(b0, b1):
            if nm is not None and (j - b0) % nm[1] == 0:
                sc = w[:, j:j + nm[1]] ** 2 / np.array([np.linalg.inv(h[i:, i:])[0, 0]
                                                        for i in range(j, j + nm[1])])[None, :]
                for r in range(rows):
                    prune[r, j - b0 + np.argsort(sc[r], kind="stable")[:nm[1] - nm[0]]] = True
            finv = np.linalg.inv(h[j:, j:])
            q = np.where(prune[:, j - b0], 0.0, w[:, j])
            err = (w[:, j] - q) / finv[0, 0]
            w[:, j:] -= err[:, None] * finv[0, :][None, :]
            w[:, j] = q
    return w


def _correlated(seed, rows=24, cols=64, tokens=400):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((cols, cols)) * rng.uniform(0.1, 3.0, cols)[None, :]
    x = rng.standard_normal((tokens, cols)) @ a  # tokens × features, correlated and unevenly scaled
    return rng.standard_normal((rows, cols)).astype(np.float32), x


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("pat", ["0.5", "0.3", "2:4"])
def test_sparsegpt_equals_the_paper_reference_and_beats_magnitude(seed, pat):
    from qfair.pruning.sparsegpt import sparsegpt_weight

    w, x = _correlated(seed)
    nm = (2, 4) if ":" in pat else None
    s = None if nm else float(pat)
    got = sparsegpt_weight(torch.from_numpy(w).double(), torch.from_numpy(x.T @ x), x.shape[0], s,
                           Pattern(*nm) if nm else Pattern(), blocksize=32, dampening=0.01).numpy()
    exp = ref_sparsegpt(w, x, s, nm, 32, 0.01)
    np.testing.assert_allclose(got, exp, rtol=1e-8, atol=1e-10)
    # the same number of zeros as magnitude pruning at that sparsity (exact: 32 | 64 and 24·32·s integral or 2:4)
    mag_keep = ref_nm_keep(np.abs(w), 2, 4) if nm else ref_layer_keep(np.abs(w), s)
    assert np.count_nonzero(got == 0) == np.count_nonzero(~mag_keep)
    w64 = w.astype(np.float64)
    err_sgpt = np.sum(((w64 - got) @ x.T) ** 2)
    err_mag = np.sum(((w64 - np.where(mag_keep, w64, 0.0)) @ x.T) ** 2)
    assert err_sgpt <= err_mag, (err_sgpt, err_mag)
    if nm:
        assert ((got != 0).reshape(24, -1, 4).sum(-1) == 2).all()


def test_sparsegpt_spec_on_a_model(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from qfair.pruning.sparsegpt import sparsegpt_weight

    path = tiny_model("llama")
    lm = _load(path, "prune-sparsegpt:sparsity=0.5,samples=4,seqlen=16,blocksize=64", tmp_path)
    entry = Path(lm.manifest()["quantization"]["details"]["cache_entry"])
    texts = [json.loads(x)["text"] for x in (entry / "calibration.jsonl").read_text().splitlines()]
    model, ref = _float_linears(path)
    tok = AutoTokenizer.from_pretrained(str(path))
    seen: dict[str, list[np.ndarray]] = {}
    hooks = [mod.register_forward_hook(lambda _m, i, _o, n=n: seen.setdefault(n, []).append(
        i[0].detach().reshape(-1, i[0].shape[-1]).numpy().astype(np.float64))) for n, mod in ref.items()]
    with torch.no_grad():
        for t in texts:
            model(torch.tensor([tok(t, truncation=True, max_length=16)["input_ids"]]))
    for h in hooks:
        h.remove()
    got = dict(lm.model.named_modules())
    for n, lin in ref.items():
        if n == "lm_head":
            continue
        x = np.concatenate(seen[n])
        exp = sparsegpt_weight(lin.weight.detach(), torch.from_numpy(x.T @ x), x.shape[0], 0.5, Pattern(), 64,
                               0.01).numpy()
        np.testing.assert_allclose(got[n].weight.detach().numpy(), exp, rtol=1e-5, atol=1e-6)
        assert np.array_equal(got[n].weight.detach().numpy() == 0, exp == 0), n
    assert lm.manifest()["sparsity"]["overall"] == 0.5


def test_sensitivity_scan_refuses_removed_blocks(tiny_model):
    from qfair.sensitivity.scan import SensitivityError, load_pair

    with pytest.raises(SensitivityError, match="removed blocks cannot be swapped"):
        load_pair(str(tiny_model("llama")), "prune-layers:drop=1", {}, progress=False)


def test_study_accepts_pruning_specs(tmp_path):
    from qfair.study.config import StudyError, load_study

    cfg = tmp_path / "study.toml"
    body = '\n[[models]]\nid = "org/model"\n'
    cfg.write_text('quant = ["prune-wanda:sparsity=0.5,then=bnb-nf4", "prune-layers:drop=1"]\n'
                   'tasks = ["crows_pairs_english"]' + body)
    st = load_study(cfg)
    assert [s.spec for s in st.specs] == ["prune-wanda:sparsity=0.5,then=bnb-nf4", "prune-layers:drop=1"]
    cfg.write_text('quant = ["prune-magnitude:sparsity=2"]\ntasks = ["crows_pairs_english"]' + body)
    with pytest.raises(StudyError, match="strictly between 0 and 1"):
        load_study(cfg)


@pytest.mark.parametrize("then", ["quanto-int4", "quanto-int8", "torchao-int8wo", "bnb-int8"])
def test_measured_sparsity_after_other_quantizers(tiny_model, tmp_path, then):
    """The manifest counts the zeros of the de-quantized weights, whatever the grid does to them."""
    from qfair.models.quant import spec_availability

    if not spec_availability(then)[0]:
        pytest.skip(f"{then} is not available here")
    path = tiny_model("llama")
    lm = _load(path, f"prune-magnitude:sparsity=0.5,then={then}", tmp_path)
    sp = lm.manifest()["sparsity"]
    for n, mod in lm.model.named_modules():
        if isinstance(mod, torch.nn.Linear) and n != "lm_head":
            w = mod.weight.data
            deq = w.dequantize() if type(w) is not torch.Tensor else w
            if then == "bnb-int8":
                deq = w.float() * mod.weight.SCB[:, None] / 127  # LLM.int8 row-wise absmax codes
            assert sp["layers"][n]["zeros"] == int(np.count_nonzero(deq.float().numpy() == 0)), n
    if then == "quanto-int4":  # an affine grid with a float zero point: the zeros do not survive
        assert sp["overall"] < 0.5
    else:
        assert sp["overall"] == 0.5
