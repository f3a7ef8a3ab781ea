"""The --quant SPEC grammar, the config objects it builds, availability, and the CLI listing."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qfair.models import ModelError, QuantSpec, available_quant_specs, parse_quant_spec, quant_spec_names
from qfair.models.quant import json_safe, spec_availability


def test_names_and_defaults():
    names = quant_spec_names()
    for n in ["none", "bnb-int8", "bnb-nf4", "bnb-fp4", "quanto-int8", "quanto-int4", "quanto-int2",
              "torchao-int8wo", "torchao-int4wo", "prequantized"]:
        assert n in names
    s = parse_quant_spec("bnb-nf4")
    assert s == QuantSpec("bnb-nf4", {"double_quant": False, "compute_dtype": "float32", "skip_modules": None})
    assert str(s) == "bnb-nf4"
    assert parse_quant_spec(None).name == "none" and parse_quant_spec("").name == "none"
    assert parse_quant_spec("  NONE ").name == "none"
    assert not parse_quant_spec("none").is_quantized and s.is_quantized


def test_options_parse_and_canonical_round_trip():
    s = parse_quant_spec("bnb-nf4:double_quant=yes, compute_dtype=BF16 ,skip_modules=lm_head+down_proj")
    assert s.options == {"double_quant": True, "compute_dtype": "bfloat16", "skip_modules": ("lm_head", "down_proj")}
    assert str(s) == "bnb-nf4:compute_dtype=bfloat16,double_quant=true,skip_modules=lm_head+down_proj"
    assert parse_quant_spec(str(s)) == s and hash(parse_quant_spec(str(s))) == hash(s)
    # a default given explicitly is the same spec
    assert parse_quant_spec("bnb-int8:threshold=6") == parse_quant_spec("bnb-int8")
    t = parse_quant_spec("bnb-int8:threshold=4.5")
    assert t.options["threshold"] == 4.5 and str(t) == "bnb-int8:threshold=4.5"
    assert parse_quant_spec("torchao-int4wo:group_size=64").options["group_size"] == 64
    assert parse_quant_spec(s) is s


@pytest.mark.parametrize("bad, fragment", [
    ("bnb-int4", "unknown quantization spec 'bnb-int4'"),
    ("hqq", "valid specs: none, bnb-int8"),
    ("bnb-nf4:double=true", "unknown option 'double' for quantization spec 'bnb-nf4'; valid options: double_quant"),
    ("bnb-nf4:double_quant=maybe", "bad value 'maybe' for option 'double_quant'"),
    ("bnb-nf4:compute_dtype=int8", "expected one of float32, bfloat16, float16"),
    ("bnb-int8:threshold=-1", "expected a positive number"),
    ("bnb-int8:threshold=nan", "finite"),
    ("bnb-int8:threshold", "expected key=value"),
    ("bnb-int8:threshold=1,threshold=2", "given twice"),
    ("bnb-nf4:skip_modules=lm_head++x", "module names joined by '+'"),
    ("quanto-int8:skip_modules=a;rm -rf", "bad module name"),
    ("none:x=1", "takes no options"),
    ("torchao-int4wo:group_size=100", "32, 64, 128, 256"),
])
def test_bad_specs_name_the_problem(bad, fragment):
    with pytest.raises(ModelError) as ei:
        parse_quant_spec(bad)
    assert fragment in str(ei.value)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_unknown_spec_lists_every_valid_spec():
    with pytest.raises(ModelError) as ei:
        parse_quant_spec("int3")
    for n in quant_spec_names():
        assert n in str(ei.value)


def test_to_config_matches_independently_built_objects():
    import torch
    from transformers import BitsAndBytesConfig, QuantoConfig

    cases = {
        "bnb-int8:threshold=4": BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=4.0),
        "bnb-nf4:double_quant=true,compute_dtype=float16": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float16),
        "bnb-fp4:skip_modules=lm_head+o_proj": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="fp4", llm_int8_skip_modules=["lm_head", "o_proj"],
            bnb_4bit_compute_dtype=torch.float32),
        "quanto-int4": QuantoConfig(weights="int4"),
        "quanto-int2:skip_modules=lm_head": QuantoConfig(weights="int2", modules_to_not_convert=["lm_head"]),
    }
    for text, expected in cases.items():
        spec = parse_quant_spec(text)
        got = spec.to_config()
        assert type(got) is type(expected)
        assert json_safe(got.to_dict()) == json_safe(expected.to_dict()), text
        man = spec.to_manifest()
        assert json.loads(json.dumps(man)) == man  # JSON round trip, nothing lost
        assert man["config"] == json_safe(expected.to_dict())
        assert man["config_class"] == type(expected).__name__ and man["spec"] == str(spec)
    assert parse_quant_spec("none").to_config() is None
    assert parse_quant_spec("none").to_manifest()["config"] is None


def test_torchao_manifest_is_json():
    spec = parse_quant_spec("torchao-int8wo")
    man = spec.to_manifest()
    assert man["config_class"] == "TorchAoConfig"
    assert json.loads(json.dumps(man)) == man
    assert "Int8WeightOnlyConfig" in json.dumps(man["config"])
    # int4 (CUDA-only to run) still builds and records its config anywhere
    man4 = parse_quant_spec("torchao-int4wo:group_size=64").to_manifest()
    assert json.loads(json.dumps(man4)) == man4
    text = json.dumps(man4["config"])
    assert "Int4WeightOnlyConfig" in text and '"group_size": 64' in text and "tile_packed_to_4d" in text


def test_json_safe_on_adversarial_values():
    import enum

    import torch

    class E(enum.Enum):
        A = "a"

    class S(str, enum.Enum):
        B = "b"

    got = json_safe({"d": torch.bfloat16, "e": E.A, "s": S.B, "t": (1, 2), "set": {3, 1},
                     "nan": float("nan"), "inf": float("inf"), 5: None, "obj": object})
    assert json.loads(json.dumps(got)) == got
    assert got["d"] == "torch.bfloat16" and got["e"] == "a" and got["s"] == "b"
    assert got["t"] == [1, 2] and got["set"] == [1, 3] and got["5"] is None
    assert got["nan"] == "nan" and got["inf"] == "inf"


def test_availability_rules(monkeypatch):
    rows = {name: (ok, why) for name, ok, why in available_quant_specs()}
    assert set(rows) == set(quant_spec_names())
    assert rows["none"][0] and rows["prequantized"][0]
    # torchao int4 needs CUDA; bitsandbytes below 0.46 needs CUDA
    ok, why = spec_availability("torchao-int4wo", cuda=False)
    assert not ok and "CUDA" in why
    import qfair.models.backends.base as q

    real = q.dist_version
    monkeypatch.setattr(q, "dist_version", lambda d: "0.43.1" if d == "bitsandbytes" else real(d))
    ok, why = spec_availability("bnb-nf4", cuda=False)
    assert not ok and "0.46" in why
    assert spec_availability("bnb-nf4", cuda=True)[0]
    monkeypatch.setattr(q, "dist_version", lambda d: None)
    for n in ["bnb-int8", "quanto-int8", "torchao-int8wo"]:
        ok, why = spec_availability(n, cuda=True)
        assert not ok and "pip install" in why


def test_parsing_imports_no_torch():
    code = ("import sys; from qfair.models import parse_quant_spec, quant_spec_names; "
            "parse_quant_spec('bnb-nf4:double_quant=true'); quant_spec_names(); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_cli_quant_specs_lists_and_explains():
    from click.testing import CliRunner

    from qfair.cli import main

    r = CliRunner().invoke(main, ["quant-specs", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["spec"] for x in rows] == quant_spec_names()
    by = {x["spec"]: x for x in rows}
    assert {o["name"] for o in by["bnb-nf4"]["options"]} == {"double_quant", "compute_dtype", "skip_modules"}
    assert all(isinstance(x["available"], bool) and x["reason"] for x in rows)
    r = CliRunner().invoke(main, ["quant-specs"])
    assert r.exit_code == 0 and "bnb-nf4" in r.output and "threshold=6.0" in r.output
    r = CliRunner().invoke(main, ["quant-specs", "--available", "--json"])
    assert all(x["available"] for x in json.loads(r.output))
