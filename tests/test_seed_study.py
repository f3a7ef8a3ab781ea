"""examples/seed_study.toml: the seed study's grid validates and plans as the
issue asks, and `--dry-run` estimates models whose configuration is not
readable here from qfair's table of known models, saying so."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import qfair.tasks as T
from qfair.models import ModelError
from qfair.models.known import KNOWN_MODELS, known_model
from qfair.study import format_plan, load_study, make_plan
from qfair.study.plan import expected_rows

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed_study.toml"

MODELS = ["bigscience/bloom-560m", "bigscience/bloom-1b1", "bigscience/bloom-1b7", "bigscience/bloom-3b",
          "bigscience/bloom-7b1", "facebook/opt-125m", "facebook/opt-350m", "facebook/opt-1.3b", "facebook/opt-2.7b",
          "facebook/opt-6.7b", "meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1"]


def test_the_seed_study_validates_and_covers_the_grid(tmp_path):
    st = load_study(SEED)
    assert [m.id for m in st.models] == MODELS
    assert all(known_model(m) is not None for m in MODELS)   # the dry run can estimate every one offline
    assert [s.spec for s in st.specs] == ["bnb-int8", "bnb-nf4", "gptq:bits=4,group_size=128"] and st.base.spec == "none"
    groups = {g.name: g for g in st.groups}
    assert set(groups["benchmarks"].tasks) == {"truthfulqa_mc1", "truthfulqa_mc2", "piqa", "boolq", "openbookqa",
                                               "arc_easy", "arc_challenge", "hellaswag"}
    assert set(groups["xstorycloze"].tasks) == set(T.GROUPS["xstorycloze"])
    assert groups["crows_pairs"].tasks == ("crows_pairs_english", "crows_pairs_french")
    assert groups["stories"].kind == "generation" and groups["stories"].tasks == ("gen_stories",)
    prompts = [d.context for d in T.get("gen_stories").docs()]
    assert "Il était une fois" in prompts and "Once upon a time" in prompts
    assert st.data_dir == str((SEED.parent / ".." / "data" / "qfair").resolve())
    plan = make_plan(st, tmp_path / "out")
    assert len(plan.dumps) == 12 * 4 * 4 and len(plan.analyses) == 12 * 3 * 4
    scored = [d for d in plan.dumps if d.group != "stories"]
    assert all(d.kwargs["data_dir"] == st.data_dir for d in scored)   # the full splits, read offline
    json.dumps(plan.to_json())


def test_known_models_table_is_consistent():
    for mid, k in KNOWN_MODELS.items():
        assert k.vocab_size > 0 and k.hidden_size % 64 == 0 and k.layers > 0 and k.params > 1e8, mid
    assert known_model("BigScience/BLOOM-560m") is KNOWN_MODELS["bigscience/bloom-560m"]
    assert known_model("gpt2") is None


def test_dry_run_estimates_an_unreadable_known_model_and_says_so(tmp_path, tiny_model, monkeypatch):
    import qfair.models.loading as L

    tiny = tiny_model("llama", 0)
    real = L.load_tokenizer

    def offline(model=None, **kw):   # the hub ids are not readable here; the stand-in (the default model) is
        if model in (L.DEFAULT_MODEL, str(tiny)):
            return real(tiny)
        raise ModelError(f"could not load the tokenizer of {model}: offline")

    monkeypatch.setattr(L, "load_tokenizer", offline)
    fetched = tmp_path / "fetched"   # no data directory yet: rows on the built-in samples
    body = (f'data_dir = "{fetched}"\nquant = ["bnb-nf4"]\ntasks = ["piqa", "xstorycloze_ar"]\n'
            '[dump]\nstore = "full"\nstore_dtype = "f16"\n'
            '[[models]]\nid = "facebook/opt-125m"\n'
            f'[[models]]\nid = "{tiny}"\nlabel = "tiny"\n')
    p = tmp_path / "s.toml"
    p.write_text(body)
    plan = make_plan(load_study(p), tmp_path / "out")
    expected_rows(plan)
    opt = [d for d in plan.dumps if d.model == "opt-125m"]
    own = [d for d in plan.dumps if d.model == "tiny"]
    assert all(d.row_bytes == 50272 * 2 and d.rows_estimated for d in opt)   # the table's vocabulary, f16
    # the stand-in tokenizer is the tiny model's here, so the row counts equal the tiny model's own
    assert [d.rows for d in opt] == [d.rows for d in own] and opt[0].rows > 0
    text = format_plan(plan)
    assert "~" + f"{opt[0].rows:,}" in text
    assert "1 model(s) without a readable tokenizer or config here (opt-125m)" in text
    assert "vocabulary from qfair's table of known models" in text
    assert "no rows counted for xstorycloze_ar" in text and f"data_dir {fetched} is not there yet" in text


def test_an_unknown_unreadable_model_still_fails_in_one_line(tmp_path, monkeypatch):
    import qfair.models.loading as L

    monkeypatch.setattr(L, "load_tokenizer", lambda model=None, **kw: (_ for _ in ()).throw(
        ModelError(f"could not load the tokenizer of {model}: offline")))
    p = tmp_path / "s.toml"
    p.write_text('quant = ["bnb-nf4"]\ntasks = ["piqa"]\n[[models]]\nid = "someone/unknown-model"\n')
    plan = make_plan(load_study(p), tmp_path / "out")
    with pytest.raises(ModelError, match="someone/unknown-model"):
        expected_rows(plan)
