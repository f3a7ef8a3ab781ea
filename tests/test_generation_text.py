"""Text-level measures of generated text against hand-computed cases; the lexicon
matcher and the language detector on known sentences in English and French;
the bootstrap helpers against scipy and the core; escaping of generated text
in the report; the built-in prompt sets."""
from __future__ import annotations

import json
import math
import unicodedata
from importlib import resources

import numpy as np
import pytest

from qfair.generation import textmetrics as tm
from qfair.generation.lexicon import LexiconError, builtin_lexicons, lexicons_from_options, load_lexicon, words

# ---------------------------------------------------------------------------
# text metrics, hand-computed


def test_first_divergence_and_identical_prefix():
    assert tm.first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert tm.first_divergence([5, 2], [1, 2]) == 0
    assert tm.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert tm.first_divergence([1, 2], [1, 2, 3]) == 2          # one ends earlier: differs at 2
    assert tm.first_divergence([], []) is None
    assert tm.identical_prefix([1, 2, 3], [1, 2, 3]) == 3
    assert tm.identical_prefix([1, 9, 3], [1, 2, 3]) == 1


def test_survival_counts():
    # first divergences: identical, at 0, at 2 -> S(0)=3, S(1)=2, S(2)=2, S(3)=1
    k, n = tm.survival([None, 0, 2], 3)
    assert k.tolist() == [3, 2, 2, 1]
    assert n.tolist() == [3, 3, 3, 3]


def test_edit_distance_hand_cases():
    assert tm.edit_distance_norm([1, 2, 3], [1, 3]) == pytest.approx(1 / 3)      # one deletion / 3
    assert tm.edit_distance_norm([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(4 / 4)
    assert tm.edit_distance_norm([7, 8], [7, 8]) == 0.0
    assert tm.edit_distance_norm([], []) == 0.0
    assert tm.edit_distance_norm([1], []) == 1.0
    # kitten -> sitting: 3 edits over 7
    assert tm.edit_distance_norm(list("kitten"), list("sitting")) == pytest.approx(3 / 7)


def test_chrf_hand_case():
    # hyp "abcd", ref "abce": char n-gram precision = recall per order:
    # 1: 3/4, 2: 2/3, 3: 1/2, 4: 0; orders 5-6 absent -> mean over 4 orders; F2 of equal P and R = P
    assert tm.chrf("abcd", "abce") == pytest.approx(100 * (3 / 4 + 2 / 3 + 1 / 2 + 0) / 4)
    assert tm.chrf("the cat", "the cat") == pytest.approx(100.0)
    assert tm.chrf("xyz", "abc") == 0.0
    # whitespace is not part of chrF's character n-grams
    assert tm.chrf("ab cd", "abcd") == pytest.approx(100.0)


def test_distinct_and_repetition_hand_cases():
    assert tm.distinct_n([1, 1, 2, 3], 1) == pytest.approx(3 / 4)
    assert tm.distinct_n([1, 1, 2, 3], 2) == pytest.approx(1.0)          # (1,1) (1,2) (2,3)
    assert tm.distinct_n([1, 2, 1, 2, 1, 2], 2) == pytest.approx(2 / 5)
    assert math.isnan(tm.distinct_n([1], 2))
    # 4-grams of 1 2 3 4 1 2 3 4: 1234 2341 3412 4123 1234 -> one repeat of five
    assert tm.repetition_rate([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(1 / 5)
    assert tm.repetition_rate([1, 2, 3, 4, 5], 4) == 0.0
    assert math.isnan(tm.repetition_rate([1, 2, 3], 4))


# ---------------------------------------------------------------------------
# lexicons


@pytest.fixture(scope="module")
def lex():
    return builtin_lexicons()


def test_lexicon_word_boundaries_and_case_english(lex):
    g = lex["gendered"]
    # "THE", "the" and "hello" contain "he" but are other words; "He" and "HER" match
    assert g.count("He said THE hello was for HER.", "en") == (2, 7)
    assert g.rate("He said THE hello was for HER.", "en") == pytest.approx(2 / 7)
    assert g.count("Their theory: the heat.", "en") == (0, 4)
    # English terms do not apply to French text and vice versa
    assert g.count("il", "en") == (0, 1)
    assert g.count("she", "fr") == (0, 1)
    assert math.isnan(g.rate("something", "de"))              # no list for German


def test_lexicon_accents_apostrophes_and_hyphens_french(lex):
    g = lex["gendered"]
    s = "La Mère et le père parlaient à l'homme."
    assert words(s) == ["la", "mère", "et", "le", "père", "parlaient", "à", "l", "homme"]
    assert g.count(s, "fr") == (3, 9)
    # accents are significant; upper case and decomposed accents are normalised
    assert g.count("mere", "fr") == (0, 1)
    assert g.count("MÈRE", "fr") == (1, 1)
    assert g.count(unicodedata.normalize("NFD", "mère"), "fr") == (1, 1)
    # a hyphenated term matches as a sequence of two words, once
    assert g.count("Sa grand-mère dort.", "fr") == (2, 4)
    assert g.count("un grand arbre", "fr") == (0, 3)
    # "elles" is its own term, "ellesmere" is not
    assert g.count("Elles partent ; Ellesmere reste.", "fr") == (1, 4)
    assert g.count("Les mères, les sœurs et les soeurs", "fr") == (3, 7)


def test_negative_lexicon(lex):
    n = lex["negative"]
    assert n.count("They were lazy and dangerous, not careless.", "en") == (2, 7)
    assert n.count("Ils étaient paresseux et dangereux.", "fr") == (2, 5)


def test_user_lexicons_plain_and_hurtlex_tsv(tmp_path, lex):
    plain = tmp_path / "colors.txt"
    plain.write_text("# a comment\nred\nlight blue\n\n", encoding="utf-8")
    tsv = tmp_path / "hurtlex_FR.tsv"
    tsv.write_text("id\tpos\tcategory\tstereotype\tlemma\tlevel\tlang\n"
                   "FR1\tn\tcds\tno\tcrétin\tconservative\tfr\n"
                   "EN1\tn\tcds\tno\tnitwit\tconservative\ten\n", encoding="utf-8")
    out = lexicons_from_options([f"colors={plain}", f"negative={tsv}"])
    assert set(out) == {"gendered", "negative", "colors"}
    assert out["colors"].count("A Red car and a light blue one", None) == (3, 8)   # any language
    assert out["colors"].count("A Red car", "fr") == (1, 3)
    assert out["negative"].count("Quel crétin, quel nitwit", "fr") == (1, 4)      # replaced: per-language terms
    assert out["negative"].count("lazy nitwit", "en") == (1, 2)                   # built-in "lazy" is gone
    assert out["gendered"].count("she", "en") == lex["gendered"].count("she", "en")


def test_lexicon_errors(tmp_path):
    with pytest.raises(LexiconError, match="NAME=FILE"):
        lexicons_from_options(["nofile"])
    with pytest.raises(LexiconError, match="does not exist"):
        load_lexicon("x", tmp_path / "missing.txt")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,category\n1,a\n", encoding="utf-8")
    with pytest.raises(LexiconError, match="lemma, term or word"):
        load_lexicon("x", bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(LexiconError, match="no term"):
        load_lexicon("x", empty)


# ---------------------------------------------------------------------------
# language identification


@pytest.mark.parametrize("text,lang", [
    ("Il était une fois un petit village de pêcheurs au bord de la mer.", "fr"),
    ("Once upon a time there was a small fishing village by the sea.", "en"),
    ("Había una vez un pequeño pueblo de pescadores junto al mar.", "es"),
    ("Es war einmal ein kleines Fischerdorf am Meer.", "de"),
    ("Жила-была маленькая рыбацкая деревня у моря.", "ru"),
    ("从前，海边有一个小渔村。", "zh"),
    ("LA FEMME TRAVAILLAIT COMME INFIRMIÈRE À L'HÔPITAL.", "fr"),
])
def test_language_detector_on_known_sentences(text, lang):
    from qfair.generation.language import detect, detect_many

    assert detect(text) == lang
    assert detect_many([text, "", "  "]) == [lang, None, None]


def test_language_detector_undecided():
    from qfair.generation.language import detect

    assert detect("") is None
    assert detect("12345 !!! ...") is None


# ---------------------------------------------------------------------------
# bootstrap helpers


def test_weighted_spearman_equals_scipy_on_repeated_data():
    from scipy.stats import spearmanr

    from qfair.generation.analysis import weighted_spearman

    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)          # many ties
    y = x + rng.normal(0, 2, 40)
    y[:6] = y[0]                                       # ties in y too
    W = rng.integers(0, 4, (5, 40)).astype(float)
    got = weighted_spearman(x, y, W)
    for b in range(5):
        c = W[b].astype(int)
        want = spearmanr(np.repeat(x, c), np.repeat(y, c)).statistic
        assert got[b] == pytest.approx(want, abs=1e-12)
    assert weighted_spearman(x, y, np.ones((1, 40)))[0] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_bootstrap_weights_are_the_cores_draws():
    from types import SimpleNamespace

    from qfair import stats
    from qfair.generation.analysis import boot_p, bootstrap_weights

    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1, 37)
    cfg = SimpleNamespace(resamples=500, seed=7, confidence=0.95)
    W = np.concatenate(list(bootstrap_weights(d.size, cfg)))
    assert W.shape == (500, 37) and (W.sum(1) == 37).all()
    mine = W @ d / 37
    core = stats.paired_bootstrap([stats.MeanDiff(d)], resamples=500, seed=7, keep_distribution=True)[0]
    np.testing.assert_allclose(np.sort(mine), np.sort(core.distribution), rtol=1e-12, atol=1e-12)
    assert boot_p(mine, 0.0) == pytest.approx(core.p)
    assert boot_p(np.array([1.0, 2.0, 3.0]), 0.0) == pytest.approx(2 * 1 / 4)


# ---------------------------------------------------------------------------
# the report shows generated text escaped


def test_side_by_side_escapes_markup():
    from qfair.report.generation import side_by_side

    base = "<b>Hi</b> & <script>alert(1)</script>"
    quant = "<b>Hi</b> <img src=x onerror=alert(2)>"
    r = {"model": "q<1>", "prompt": "<i>prompt</i>", "base_text": base, "quant_text": quant, "identical": False,
         "first_diff": 3, "prefix_chars": 9, "base_diff_end": 11, "quant_diff_end": 14, "edit_distance": 0.5,
         "chrf": 40.0}
    h = side_by_side(r)
    for raw in ("<b>", "<script>", "<img", "<i>", "q<1>"):
        assert raw not in h
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in h and " src=x onerror=alert(2)&gt;" in h
    # the shared prefix, then the first differing token marked
    assert h.count("<mark>") == 2
    assert "&lt;b&gt;Hi&lt;/b&gt;<mark> &amp;</mark>" in h
    assert "&lt;b&gt;Hi&lt;/b&gt;<mark> &lt;img</mark>" in h


# ---------------------------------------------------------------------------
# prompt sets


def test_bias_probes_file_is_the_rendered_templates():
    from qfair.generation.prompts import BIAS_AXES, bias_probe_rows

    shipped = resources.files("qfair.tasks").joinpath("data", "gen_bias_probes.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line) for line in shipped.splitlines()] == bias_probe_rows()
    rows = bias_probe_rows()
    assert {"gender", "origin", "religion", "age", "disability"} <= set(BIAS_AXES)
    assert {r["lang"] for r in rows} == {"en", "fr"}
    assert len({r["template_id"] for r in rows}) >= 3
    # groups of one axis are compared on identical templates
    for axis, groups in BIAS_AXES.items():
        sets = [{(r["lang"], r["template_id"]) for r in rows if r["axis"] == axis and r["group"] == g} for g in groups]
        assert all(s == sets[0] for s in sets), axis
    assert "The woman worked as a" in {r["prompt"] for r in rows}
    assert "L'homme travaillait comme" in {r["prompt"] for r in rows}


def test_story_set_languages_and_the_study_prompt():
    import qfair.tasks as T

    task = T.get("gen_stories")
    docs = list(task.docs())
    assert {d.extras["lang"] for d in docs} >= {"en", "fr", "es", "de", "ru", "zh"}
    assert "Il était une fois" in {d.context for d in docs}
    assert task.kind == "generation"
    # every language has the same templates
    by_lang: dict[str, set] = {}
    for d in docs:
        by_lang.setdefault(d.extras["lang"], set()).add(d.extras["template_id"])
    assert len({frozenset(v) for v in by_lang.values()}) == 1


def test_user_prompt_files(tmp_path):
    import qfair.tasks as T

    csv = tmp_path / "p.csv"
    csv.write_text("id,prompt,group,lang\na,Bonjour,fr,fr\nb,Hello,,en\n", encoding="utf-8")
    docs = list(T.get("gen_prompts", data_file=csv).docs())
    assert [d.context for d in docs] == ["Bonjour", "Hello"]
    assert docs[0].group == "fr" and docs[1].group is None
    assert docs[1].extras == {"lang": "en", "id": "b"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(T.TaskDataError, match=r"bad.jsonl line 2: field 'prompt' is missing"):
        T.get("gen_prompts", data_file=bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', encoding="utf-8")
    with pytest.raises(T.TaskDataError, match="field 'id' repeats"):
        T.get("gen_prompts", data_file=dup)


def test_summary_rows_with_metrics_of_different_sizes():
    """A one-token text has no bigram: metrics have their own finite prompts."""
    import polars as pl

    from qfair.analyze.summary import StatsConfig
    from qfair.generation.analysis import PAIRED_TEXT, UNPAIRED_TEXT, _paired_rows

    pt = pl.DataFrame({"base_distinct_2": [1.0, None, 0.5, 1.0], "quant_distinct_2": [0.5, 0.2, None, 1.0],
                       "base_n": [3.0, 1.0, 4.0, 2.0], "quant_n": [2.0, 1.0, 1.0, 2.0],
                       "edit_distance": [0.5, 0.0, 1.0, float("nan")]})
    cfg = StatsConfig(resamples=200, seed=0, confidence=0.95, threads=None, permutation=False)
    rows = {r["metric"]: r for r in _paired_rows(pt, cfg, PAIRED_TEXT, UNPAIRED_TEXT)}
    assert rows["distinct_2"]["n"] == 2 and rows["distinct_2"]["diff"] == pytest.approx((0.5 + 1.0) / 2 - 1.0)
    assert rows["length_tokens"]["n"] == 4 and rows["edit_distance"]["n"] == 3
    assert rows["distinct_2"]["kind"] == "diversity" and rows["edit_distance"]["kind"] == "text"


def test_markdown_cells_stay_on_one_line():
    import polars as pl

    from qfair.analyze.tables import to_markdown

    md = to_markdown(pl.DataFrame({"base_text": ["Il était\nune | fois\r"]}))
    assert md.splitlines()[2] == "| Il était\\nune \\| fois\\r |"
