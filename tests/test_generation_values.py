"""Value tests of the generation analysis on hand-made texts: language drift,
per-group lexicon rates and their max - min gap, own_text_maxprob and
entropy_kl_spearman. The inputs are two stand-in dumps holding texts and
per-token numbers written here; every expected value is counted or computed
here by hand (word counts, drift flags) or with scipy (Spearman), not taken
from qfair."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from qfair.analyze.summary import StatsConfig
from qfair.generation.analysis import generation_tables
from qfair.generation.lexicon import Lexicon

SETTINGS = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "samples": 1, "seed": 0}

# (example_id, group, base text, quantized text); every prompt is English
TEXTS = [
    ("p0", "woman", "She worked as a nurse in the city hospital for many years.",
     "She worked as a nurse and later as a nurse manager in the city."),
    ("p1", "woman", "She worked as an engineer at the old harbour for a long time.",
     "Elle travaillait comme infirmière dans un petit hôpital de la ville depuis longtemps."),
    ("p2", "man", "He worked as an engineer on the new bridge over the river.",
     "He worked as an engineer and then as a teacher at the village school."),
    ("p3", "man", "He worked as a baker in the small town near the sea.",
     "Il travaillait comme boulanger dans une petite ville au bord de la mer."),
]
# the lexicon's words in each text, counted by hand: (matches, words)
BASE_COUNTS = [(1, 12), (1, 13), (1, 12), (0, 12)]
QUANT_COUNTS = [(2, 14), (0, 13), (1, 14), (0, 13)]
QUANT_FRENCH = [False, True, False, True]

# per generated token of each model's own text: max log-prob (the own_text_maxprob input)
OWN_MAXLP = {"base": [[-0.1, -0.5, -1.0], [-0.2, -0.2], [-0.7], [-0.05, -2.0, -0.3, -0.4]],
             "quant": [[-0.3, -0.6], [-1.5, -0.1, -0.9], [-0.4, -0.4], [-1.1]]}


class StandIn:
    """What generation_tables reads of a generation dump."""

    def __init__(self, path: str, role: str):
        self.path = Path(path)
        self.manifest = {"generation": {"settings": SETTINGS}}
        self.examples = pl.DataFrame({
            "example_id": [t[0] for t in TEXTS], "task": ["gen_prompts"] * 4, "group": [t[1] for t in TEXTS],
            "context": ["The person worked as a"] * 4,
            "extras": [json.dumps({"axis": "gender", "lang": "en", "template_id": "t0"})] * 4})
        texts = [t[2] if role == "base" else t[3] for t in TEXTS]
        ids = [list(range(10 + i, 10 + i + len(s.split()))) for i, s in enumerate(texts)]
        if role == "quant":
            ids = [[1] + x for x in ids]  # differs from the base text at the first token
        self.generations = pl.DataFrame({
            "example_id": [t[0] for t in TEXTS], "sample": [0] * 4, "token_ids": ids,
            "char_ends": [list(np.cumsum([len(w) + 1 for w in s.split()])) for s in texts],
            "text": texts, "n_tokens": [len(x) for x in ids], "stop": ["length"] * 4, "source": ["free"] * 4},
            schema_overrides={"token_ids": pl.List(pl.Int64), "char_ends": pl.List(pl.Int64)})
        lp = OWN_MAXLP[role]
        self.gen_tokens = pl.DataFrame({
            "example_id": [t[0] for t, v in zip(TEXTS, lp) for _ in v], "sample": [0] * sum(map(len, lp)),
            "max_logprob": [x for v in lp for x in v], "entropy": [1.0] * sum(map(len, lp))})

    def table(self, name: str) -> pl.DataFrame:
        return {"generations": self.generations, "gen_tokens": self.gen_tokens}[name]


def token_table() -> pl.DataFrame:
    """Teacher-forced rows along the base texts: entropy_p and kl_pq per position."""
    rng = np.random.default_rng(4)
    rows = []
    for e, *_ in TEXTS:
        for pos in range(6):
            h = float(rng.uniform(0.5, 4.0))
            rows.append({"example_id": e, "task": "gen_prompts", "pos": pos, "entropy_p": h,
                         "kl_pq": 0.05 * h + float(rng.uniform(0, 0.1)), "logprob_p": -h, "logprob_q": -h - 0.1,
                         "maxprob_p": 0.5, "maxprob_q": 0.4, "entropy_q": h + 0.1})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def tables():
    jobs = Lexicon("jobs")
    for w in ("nurse", "engineer"):
        jobs.add(w)
    cfg = StatsConfig(resamples=300, seed=1)
    return generation_tables(StandIn("base", "base"), StandIn("quant", "quant"), "q", cfg, token_table(),
                             lexicons={"jobs": jobs})


def _row(df: pl.DataFrame, metric: str, **eq) -> dict:
    sub = df.filter(pl.col("metric") == metric)
    for k, v in eq.items():
        sub = sub.filter(pl.col(k) == v)
    assert sub.height == 1, (metric, eq, sub)
    return sub.row(0, named=True)


def test_language_drift(tables):
    tx = tables["gen_texts"]
    assert tx["base_lang"].to_list() == ["en"] * 4
    assert tx["quant_lang"].to_list() == ["fr" if f else "en" for f in QUANT_FRENCH]
    assert tx["quant_drift"].to_list() == [float(f) for f in QUANT_FRENCH] and tx["base_drift"].sum() == 0
    r = _row(tables["gen_summary"], "lang_drift")
    assert (r["base"], r["quant"], r["diff"]) == (0.0, 0.5, 0.5)
    lang = {x["role"]: x for x in tables["gen_language"].iter_rows(named=True)}
    assert (lang["quant"]["n"], lang["quant"]["drifted"], lang["quant"]["rate"]) == (4, 2, 0.5)
    assert (lang["base"]["drifted"], lang["base"]["rate"]) == (0, 0.0)
    assert lang["quant"]["detected"] == "en:2, fr:2" or lang["quant"]["detected"] == "fr:2, en:2"


def test_per_group_lexicon_rates_and_their_gap(tables):
    tx = tables["gen_texts"]
    assert tx["base_jobs_rate"].to_list() == pytest.approx([k / n for k, n in BASE_COUNTS])
    assert tx["quant_jobs_rate"].to_list() == pytest.approx([k / n for k, n in QUANT_COUNTS])
    bias = tables["gen_bias"]
    mean = {}
    for grp, idx in (("woman", [0, 1]), ("man", [2, 3])):
        b = np.mean([BASE_COUNTS[i][0] / BASE_COUNTS[i][1] for i in idx])
        q = np.mean([QUANT_COUNTS[i][0] / QUANT_COUNTS[i][1] for i in idx])
        r = _row(bias, "jobs_rate", group=grp)
        assert (r["base"], r["quant"], r["diff"]) == pytest.approx((b, q, q - b))
        assert r["n"] == 2
        mean[grp] = (b, q)
    gap = _row(bias, "jobs_rate", group="max-min gap")
    gb = abs(mean["woman"][0] - mean["man"][0])
    gq = abs(mean["woman"][1] - mean["man"][1])
    assert (gap["base"], gap["quant"], gap["diff"]) == pytest.approx((gb, gq, gq - gb))
    # the summary's paired row: the mean rate over the four prompts
    r = _row(tables["gen_summary"], "jobs_rate")
    assert (r["base"], r["quant"]) == pytest.approx((np.mean([k / n for k, n in BASE_COUNTS]),
                                                     np.mean([k / n for k, n in QUANT_COUNTS])))


def test_own_text_maxprob(tables):
    want = {role: [float(np.mean(np.exp(v))) for v in OWN_MAXLP[role]] for role in ("base", "quant")}
    tx = tables["gen_texts"]
    assert tx["base_own_maxprob"].to_list() == pytest.approx(want["base"], rel=1e-6)
    assert tx["quant_own_maxprob"].to_list() == pytest.approx(want["quant"], rel=1e-6)
    r = _row(tables["gen_summary"], "own_text_maxprob")
    assert (r["base"], r["quant"]) == pytest.approx((np.mean(want["base"]), np.mean(want["quant"])), rel=1e-6)
    assert r["n"] == 4 and math.isfinite(r["p"])


def test_entropy_kl_spearman(tables):
    tt = token_table()
    rho = spearmanr(tt["entropy_p"].to_numpy(), tt["kl_pq"].to_numpy()).statistic
    r = _row(tables["gen_summary"], "entropy_kl_spearman")
    assert r["diff"] == pytest.approx(rho, abs=1e-12) and r["n"] == tt.height
    assert r["ci_low"] <= r["diff"] <= r["ci_high"] and r["p"] < 0.05  # kl_pq follows entropy_p here
