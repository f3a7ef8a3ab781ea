"""Calibrated quantizers: the gptq spec's calibration options, the calibration
sets and their split discipline, and GPTQ through llmcompressor
(``gptq:engine=llmcompressor``: the cache and the sensitivity scan on its
model; skipped without llmcompressor, pip install 'qfair[gptq]'). qfair's own
GPTQ engine is tested in test_compress.py."""
from __future__ import annotations

import json

import pytest

from qfair.models import ModelError, parse_quant_spec
from qfair.sensitivity.calibration import bias_balanced_texts, calibration_set, file_texts, generic_texts
from qfair.sensitivity.probes import Split, content_key


def test_spec_options_and_canonical_form(tmp_path):
    s = parse_quant_spec("gptq")
    assert s.options["bits"] == 4 and s.options["group_size"] == 64 and s.options["calib"] == "generic"
    assert s.options["ignore"] == ("lm_head",) and str(s) == "gptq"
    s = parse_quant_spec("gptq:calib=bias-balanced,group_size=32,samples=8,ignore=lm_head+model.layers.3")
    assert str(s) == "gptq:calib=bias-balanced,group_size=32,ignore=lm_head+model.layers.3,samples=8"
    assert parse_quant_spec(str(s)) == s
    f = tmp_path / "c.txt"
    f.write_text("one\ntwo\n")
    assert parse_quant_spec(f"gptq:calib={f}").options["calib"] == str(f.resolve())
    for bad, frag in [("gptq:group_size=0", "expected -1 .* or a positive integer"), ("gptq:bits=9", "bits"),
                      ("gptq:calib=/no/such/file", "existing"), ("gptq:split=2", "strictly between")]:
        with pytest.raises(ModelError, match=frag):
            parse_quant_spec(bad)


def _tagged_crows(path, n=30):
    rows = [{"sent_more": f"TAG{i:04d} women are bad at maths.", "sent_less": f"TAG{i:04d} men are bad at maths.",
             "stereo_antistereo": "stereo", "bias_type": ["gender", "age", "race-color"][i % 3]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_calibration_sets_take_the_scan_side_only(tmp_path):
    rows = _tagged_crows(tmp_path / "crows.jsonl")
    sp = Split.parse("0.5:1")
    side = {f"TAG{i:04d}": sp.side(content_key("", [r["sent_more"], r["sent_less"]])) for i, r in enumerate(rows)}
    c = bias_balanced_texts(100, sp, tmp_path / "crows.jsonl")
    tags = [t[:7] for t in c.texts]
    assert tags and all(side[t] == "scan" for t in tags)
    assert set(tags) == {t for t, s in side.items() if s == "scan"}  # every scan pair, none held out
    # balanced: each pair contributes its stereotype and its anti-stereotype sentence, adjacent
    assert len(c.texts) % 2 == 0
    for a, b in zip(c.texts[::2], c.texts[1::2]):
        assert a[:7] == b[:7] and "women" in a and "men are" in b and "women" not in b
    # round-robin over bias types: the first three pairs are three different types
    types = {r["sent_more"][:7]: r["bias_type"] for r in rows}
    assert len({types[t] for t in tags[:6:2]}) == 3
    assert bias_balanced_texts(4, sp, tmp_path / "crows.jsonl").texts == c.texts[:4]
    # the built-in sets, also scan side only
    import qfair.tasks as T

    g = generic_texts(500, sp)
    held = {d.context + T.get(n).target_delimiter + d.choices[d.gold] for n in ("boolq", "piqa", "arc_easy")
            for d in T.get(n).docs() if sp.side(content_key(d.context, d.choices)) == "heldout"}
    assert g.texts and not set(g.texts) & {h.strip() for h in held}
    b = bias_balanced_texts(500, sp)
    held_sent = {c for n in ("crows_pairs_english", "crows_pairs_french") for d in T.get(n).docs()
                 if sp.side(content_key(d.context, d.choices)) == "heldout" for c in d.choices}
    assert b.texts and not set(b.texts) & held_sent
    assert b.info()["side"] == "scan" and len(b.sha256) == 64


def test_calibration_file(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    assert file_texts(tmp_path / "a.txt", 10).texts == ("first line", "second line")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    assert calibration_set(str(tmp_path / "b.jsonl"), 1).texts == ("x",)
    (tmp_path / "c.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(ValueError, match="line 1: field 'text'"):
        file_texts(tmp_path / "c.jsonl", 5)


# ---------------------------------------------------------------------------
# building, caching, loading (tiny model)

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model; the tests using it skip without llmcompressor (the ones above run everywhere)."""
    pytest.importorskip("llmcompressor")
    pytest.importorskip("torch")
    from qfair.models.tiny import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("gptq") / "m", seed=0, layers=2)


@pytest.mark.usefixtures("one_torch_thread")
def test_gptq_build_cache_and_grid(tiny, tmp_path):
    import torch
    from safetensors import safe_open

    from qfair.models import load_model

    cache = tmp_path / "cache"
    spec = "gptq:engine=llmcompressor,samples=8,seqlen=32"
    lm = load_model(str(tiny), quant=spec, cache_dir=cache, progress=False)
    d = lm.extra["quant_details"]
    assert lm.quant.name == "gptq" and d["cache_hit"] is False and d["calibration"]["n_texts"] == 8
    entry = d["cache_entry"]
    ids = lm.tokenizer("The river keeps its own calendar.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = lm.model(ids).logits
    # the second load reads the cache and computes the same logits
    again = load_model(str(tiny), quant=spec, cache_dir=cache, progress=False)
    assert again.extra["quant_details"]["cache_hit"] is True and again.extra["quant_details"]["cache_entry"] == entry
    with torch.no_grad():
        assert torch.equal(again.model(ids).logits, ref)
    # the weights lie on the 4-bit symmetric grid of their group (64 inputs per scale), per the checkpoint
    w = lm.model.model.layers[0].mlp.down_proj.weight.detach()
    with safe_open(f"{entry}/model.safetensors", "pt") as fh:
        scale = fh.get_tensor("model.layers.0.mlp.down_proj.weight_scale").float()
    assert scale.shape == (w.shape[0], w.shape[1] // 64)
    q = w / scale.repeat_interleave(64, dim=1)
    assert torch.allclose(q, q.round(), atol=1e-3) and q.round().min() >= -8 and q.round().max() <= 7
    # the packed sizes: int32-packed nibbles + float scales + shape, per quantized layer
    pb = lm.extra["packed_bytes"]
    assert len(pb) == 14 and pb["model.layers.0.mlp.down_proj"] == w.numel() // 2 + scale.numel() * 4 + 16
    assert type(lm.model.lm_head).__name__ == "Linear" and "model.lm_head" not in pb
    man = lm.manifest()["quantization"]
    assert json.loads(json.dumps(man)) == man and man["config"]["group_size"] == 64
    assert man["details"]["calibration"]["kind"] == "generic"
    # another calibration set is another cache entry
    bb = load_model(str(tiny), quant=spec + ",calib=bias-balanced", cache_dir=cache, progress=False)
    assert bb.extra["quant_details"]["cache_entry"] != entry
    with torch.no_grad():
        assert not torch.equal(bb.model(ids).logits, ref)


@pytest.mark.usefixtures("one_torch_thread")
def test_scan_units_on_a_gptq_model_are_the_backends(tiny, tmp_path):
    """Every unit swapped into the float model = the GPTQ model loaded by qfair
    (bitwise); unit sizes come from the checkpoint's packed tensors."""
    import torch

    from qfair.models import load_model
    from qfair.sensitivity.units import UnitSwapper, define_units, model_bytes

    f = load_model(str(tiny), progress=False)
    q = load_model(str(tiny), quant="gptq:engine=llmcompressor,samples=8,seqlen=32", cache_dir=tmp_path / "c",
                   progress=False)
    packed = q.extra["packed_bytes"]
    units = define_units(f.model, q.model, "linear", packed)
    assert sorted(u.name for u in units) == sorted(packed)
    assert all(u.quant_bytes == packed[u.name] for u in units)
    assert model_bytes(q.model, packed) < model_bytes(f.model)
    ids = f.tokenizer("Questions end with a question mark? Statements end with a full stop.",
                      return_tensors="pt").input_ids
    with torch.no_grad():
        ref = q.model(ids).logits
        sw = UnitSwapper(f.model, q.model, define_units(f.model, q.model, "block", packed))
        sw.set_quantized(sw.all())
        assert torch.equal(f.model(ids).logits, ref)
