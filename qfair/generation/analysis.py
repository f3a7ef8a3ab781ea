"""What ``qfair analyze`` adds for generation dumps (the kind's own tables).

Called by :func:`qfair.compare` once per quantized dump, after the token
table (KL, JS, top-1 agreement along the base text, per prompt) when the
quantized dump was teacher-forced on the base text. Every interval is a
bootstrap over prompts (the examples of a generation dump) with the
analysis' resamples, seed and confidence; a statistic that is not a mean
difference (a correlation, a ratio of pooled perplexities, the gap between
groups) is recomputed on the same resamples from their exact multiplicities
(:func:`qfair.stats.bootstrap_counts`), with percentile intervals and the
same two-sided p as the core's bootstrap. ``p_holm`` / ``p_bh`` adjust over
the rows of one table for one quantized model.

Tables (columns in docs/analyze.md):

- ``gen_summary``: per task, base vs quantized: perplexity of the base text
  and its ratio, the entropy-KL Spearman correlation, the free texts'
  identity, identical prefix, edit distance, chrF, length, EOS rate,
  distinct-1/2, repetition, language drift, lexicon and classifier rates,
  the confidence of each model along its own text;
- ``gen_positions``: per task and position, KL, JS, top-1 agreement and
  Δconfidence along the base text with bootstrap bands;
- ``gen_survival``: per task and t, the share of prompts whose two greedy
  texts are still identical after t tokens (Wilson intervals);
- ``gen_language``: per task, prompt language and model, the language-drift
  rate (Wilson) and the share of texts whose language is undecided;
- ``gen_bias``: per task, axis and group, each lexicon / classifier rate
  base vs quantized (paired), and per axis the max - min gap between groups;
- ``gen_texts``: one row per (prompt, sample): both texts and every
  text-level measure (the report's side-by-side view reads it).
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from qfair import stats
from qfair.dump import DumpError
from qfair.generation import textmetrics as tm

__all__ = ["generation_tables", "weighted_spearman", "bootstrap_weights", "boot_p", "GEN_TABLES"]

GEN_TABLES = ("gen_summary", "gen_positions", "gen_survival", "gen_language", "gen_bias", "gen_texts")
POSITION_METRICS = ("kl_pq", "js", "top1_agree", "d_maxprob", "d_entropy", "entropy_p")
_ROW_BUDGET = 1_000_000  # float64 cells per block of resamples (bounds memory)


# ---------------------------------------------------------------------------
# bootstrap over prompts for statistics that are not mean differences

def bootstrap_weights(n: int, cfg: Any, cells_per_row: int = 1) -> Iterator[np.ndarray]:
    """Blocks ``[b, n]`` of the multiplicities of every resample, in resample
    order: the same draws as :func:`qfair.stats.paired_bootstrap`."""
    block = max(1, _ROW_BUDGET // max(1, n * cells_per_row))
    for b0 in range(0, cfg.resamples, block):
        yield np.stack([stats.bootstrap_counts(n, cfg.seed, b).astype(np.float64)
                        for b in range(b0, min(cfg.resamples, b0 + block))])


def boot_p(dist: np.ndarray, null: float = 0.0) -> float:
    """Two-sided bootstrap p of ``null``, as the core computes it:
    min(1, 2 min(1 + #{θ* <= null}, 1 + #{θ* >= null}) / (B + 1)) over finite θ*."""
    d = dist[np.isfinite(dist)]
    if d.size == 0:
        return float("nan")
    le, ge = int((d <= null).sum()), int((d >= null).sum())
    return min(1.0, 2.0 * min(le + 1, ge + 1) / (d.size + 1))


def _pct(dist: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    d = dist[np.isfinite(dist)]
    if d.size == 0:
        return None, None
    a = (1 - confidence) / 2
    lo, hi = np.percentile(d, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def _groups_sorted(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, group starts in sorted order, group id of each element) for ties in ``v``."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    new = np.ones(sv.size, dtype=bool)
    new[1:] = sv[1:] != sv[:-1]
    starts = np.flatnonzero(new)
    gid_sorted = np.cumsum(new) - 1
    gid = np.empty(v.size, dtype=np.int64)
    gid[order] = gid_sorted
    return order, starts, gid


def _midranks(W: np.ndarray, order: np.ndarray, starts: np.ndarray, gid: np.ndarray) -> np.ndarray:
    G = np.add.reduceat(W[:, order], starts, axis=1)
    mid = np.cumsum(G, axis=1) - G + (G + 1.0) / 2.0
    return mid[:, gid]


def weighted_spearman(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Spearman's rho of the data in which element i appears ``W[b, i]`` times,
    for every row b of ``W`` (mid-ranks for ties, as scipy.stats.spearmanr)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    W = np.atleast_2d(np.asarray(W, dtype=np.float64))
    rx = _midranks(W, *_groups_sorted(x))
    ry = _midranks(W, *_groups_sorted(y))
    sw = W.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (W * rx).sum(1, keepdims=True) / sw
        my = (W * ry).sum(1, keepdims=True) / sw
        dx, dy = rx - mx, ry - my
        cov = (W * dx * dy).sum(1)
        return cov / np.sqrt((W * dx * dx).sum(1) * (W * dy * dy).sum(1))


# ---------------------------------------------------------------------------
# inputs

def _meta(b: Any) -> pl.DataFrame:
    """One row per prompt: example_id, task, group, prompt, axis, lang, template_id."""
    ex = b.examples
    extras = [json.loads(e) if e else {} for e in ex["extras"].to_list()]
    return pl.DataFrame({
        "example_id": ex["example_id"], "task": ex["task"], "group": ex["group"], "prompt": ex["context"],
        "axis": [e.get("axis") for e in extras], "lang": [e.get("lang") for e in extras],
        "template_id": [e.get("template_id") for e in extras],
    }, schema={"example_id": pl.Utf8, "task": pl.Utf8, "group": pl.Utf8, "prompt": pl.Utf8, "axis": pl.Utf8,
               "lang": pl.Utf8, "template_id": pl.Utf8})


def _free(d: Any) -> pl.DataFrame:
    return d.table("generations").filter(pl.col("source") == "free").select(
        "example_id", "sample", "token_ids", "char_ends", "text", "n_tokens", "stop")


def _check_settings(b: Any, q: Any) -> dict[str, Any]:
    sb = (b.manifest.get("generation") or {}).get("settings") or {}
    sq = (q.manifest.get("generation") or {}).get("settings") or {}
    for k in ("max_new_tokens", "temperature", "top_p", "samples", "seed"):
        if sb.get(k) != sq.get(k):
            raise DumpError(f"{b.path} vs {q.path}: decoding setting {k!r} is {sb.get(k)!r} vs {sq.get(k)!r}; "
                            "their texts are not comparable (dump both with the same settings)")
    return sb


# ---------------------------------------------------------------------------
# the kind's analysis

def generation_tables(base: Any, quant: Any, label: str, cfg: Any, token_table: pl.DataFrame | None, *,
                      lexicons: Mapping[str, Any] | None = None, scorer: Any = None,
                      detect_language: bool = True) -> dict[str, pl.DataFrame]:
    """The generation tables of one (base, quantized) pair; see the module docstring.

    ``lexicons``: {name: Lexicon} (default: the built-in lists);
    ``scorer``: a :class:`qfair.generation.scorer.TextScorer` or None.
    """
    from qfair.generation.lexicon import builtin_lexicons

    settings = _check_settings(base, quant)
    lexicons = dict(lexicons) if lexicons is not None else builtin_lexicons()
    meta = _meta(base)
    texts = _text_table(base, quant, meta, lexicons, scorer, detect_language)
    prompts = _per_prompt(texts, meta)
    out: dict[str, pl.DataFrame] = {}
    summary_rows: list[dict[str, Any]] = []
    positions, survival_rows, lang_rows, bias_rows = [], [], [], []
    t_max = int(settings.get("max_new_tokens") or int(texts["base_n"].max() or 0))
    for task in meta["task"].unique(maintain_order=True).to_list():
        pt = prompts.filter(pl.col("task") == task)
        tx = texts.filter(pl.col("task") == task)
        where = {"model": label, "task": task, "task_kind": "generation"}
        summary_rows += [dict(r, **where) for r in _text_rows(pt, cfg, lexicons, scorer)]
        if token_table is not None and token_table.height:
            tt = token_table.filter(pl.col("task") == task)
            ids = pt["example_id"].to_list()
            summary_rows += [dict(r, **where) for r in _aligned_rows(tt, ids, cfg)]
            pos = _position_curves(tt, ids, cfg)
            if pos.height:
                positions.append(pos.with_columns(pl.lit(label).alias("model"), pl.lit(task).alias("task")))
        survival_rows.append(_survival(tx, t_max, cfg).with_columns(pl.lit(label).alias("model"),
                                                                     pl.lit(task).alias("task")))
        lang_rows.append(_language(tx, cfg).with_columns(pl.lit(label).alias("model"), pl.lit(task).alias("task")))
        bias = _bias_rows(pt, cfg, lexicons, scorer)
        bias_rows += [dict(r, **where) for r in bias]
    from qfair.analyze.compare import adjust
    from qfair.analyze.summary import SUMMARY_SCHEMA

    lead = {"model": pl.Utf8, "task": pl.Utf8, "task_kind": pl.Utf8}
    sschema = {**lead, **SUMMARY_SCHEMA}
    out["gen_summary"] = adjust(_frame(summary_rows, sschema))
    bschema = {**lead, "axis": pl.Utf8, "group": pl.Utf8, **SUMMARY_SCHEMA,
               "base_low": pl.Float64, "base_high": pl.Float64, "quant_low": pl.Float64, "quant_high": pl.Float64}
    out["gen_bias"] = adjust(_frame(bias_rows, bschema))
    out["gen_positions"] = _front(pl.concat(positions, how="diagonal_relaxed") if positions else pl.DataFrame(),
                                  ["model", "task", "pos"])
    out["gen_survival"] = _front(pl.concat(survival_rows, how="diagonal_relaxed"), ["model", "task", "t"])
    out["gen_language"] = _front(pl.concat(lang_rows, how="diagonal_relaxed"), ["model", "task", "lang", "role"])
    out["gen_texts"] = texts.with_columns(pl.lit(label).alias("model")).select("model", *texts.columns)
    return out


def _frame(rows: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema, orient="row")


def _front(df: pl.DataFrame, lead: Sequence[str]) -> pl.DataFrame:
    if df.height == 0:
        return df
    return df.select(*[c for c in lead if c in df.columns], *[c for c in df.columns if c not in lead])


# ---------------------------------------------------------------------------
# per continuation pair

def _text_table(b: Any, q: Any, meta: pl.DataFrame, lexicons: Mapping[str, Any], scorer: Any,
                detect_language: bool) -> pl.DataFrame:
    """One row per (prompt, sample): the two free continuations side by side, how
    they differ, their languages and content rates, each model's confidence."""
    j = _paired_continuations(b, q, meta)
    cols = _text_differences(j)
    extra = _language_and_content(j, lexicons, scorer, detect_language)
    out = j.select(
        "task", "example_id", "sample", "group", "axis", "lang", "template_id", "prompt",
        pl.col("text").alias("base_text"), pl.col("text_q").alias("quant_text"),
        pl.col("n_tokens").alias("base_n"), pl.col("n_tokens_q").alias("quant_n"),
    ).with_columns(
        pl.Series("identical", cols["identical"], dtype=pl.Boolean),
        pl.Series("first_diff", cols["first_diff"], dtype=pl.Int64),
        *[pl.Series(k, cols[k], dtype=pl.Int64) for k in ("identical_prefix", "prefix_chars", "base_diff_end",
                                                          "quant_diff_end")],
        *[pl.Series(k, cols[k], dtype=pl.Float64) for k in cols if k not in (
            "identical", "first_diff", "identical_prefix", "prefix_chars", "base_diff_end", "quant_diff_end")],
        *[pl.Series(k, v, dtype=pl.Utf8 if k.endswith("_lang") else pl.Float64) for k, v in extra.items()],
    )
    for g in _own_confidence(b, q):
        out = out.join(g, on=["example_id", "sample"], how="left")
    return out


def _paired_continuations(b: Any, q: Any, meta: pl.DataFrame) -> pl.DataFrame:
    """The free continuations of both dumps joined per (prompt, sample), prompts in
    the base dump's order; DumpError when one dump lacks a continuation."""
    gb, gq = _free(b), _free(q)
    j = gb.join(gq, on=["example_id", "sample"], how="full", suffix="_q", coalesce=True)
    missing = j.filter(pl.col("text").is_null() | pl.col("text_q").is_null())
    if missing.height:
        r = missing.row(0, named=True)
        who = q.path if r["text_q"] is None else b.path
        raise DumpError(f"{who}: generations.parquet has no free continuation for {r['example_id']!r} sample "
                        f"{r['sample']}; the dumps hold different prompts or samples")
    # prompts in the base dump's order, samples in order
    return meta.with_row_index("_i").join(j, on="example_id", how="inner").sort(["_i", "sample"]).drop("_i")


def _text_differences(j: pl.DataFrame) -> dict[str, list]:
    """Per pair: identical or where they first differ, the identical prefix (tokens
    and characters), edit distance, chrF, and each text's distinct-n and repetition."""
    ids_b, ids_q = j["token_ids"].to_list(), j["token_ids_q"].to_list()
    tb_, tq_ = j["text"].to_list(), j["text_q"].to_list()
    ce_b, ce_q = j["char_ends"].to_list(), j["char_ends_q"].to_list()
    cols: dict[str, list] = {k: [] for k in (
        "identical", "first_diff", "identical_prefix", "prefix_chars", "base_diff_end", "quant_diff_end",
        "edit_distance", "chrf", "base_distinct_1", "quant_distinct_1", "base_distinct_2", "quant_distinct_2",
        "base_rep_4", "quant_rep_4")}
    for i in range(j.height):
        a, c = ids_b[i], ids_q[i]
        fd = tm.first_divergence(a, c)
        k = tm.identical_prefix(a, c)
        cols["identical"].append(fd is None)
        cols["first_diff"].append(fd)
        cols["identical_prefix"].append(k)
        pre = ce_b[i][k - 1] if k > 0 else 0
        cols["prefix_chars"].append(pre)
        cols["base_diff_end"].append(ce_b[i][k] if k < len(a) else len(tb_[i]))
        cols["quant_diff_end"].append(ce_q[i][k] if k < len(c) else len(tq_[i]))
        cols["edit_distance"].append(tm.edit_distance_norm(a, c))
        cols["chrf"].append(tm.chrf(tq_[i], tb_[i]))
        for role, ids in (("base", a), ("quant", c)):
            cols[f"{role}_distinct_1"].append(tm.distinct_n(ids, 1))
            cols[f"{role}_distinct_2"].append(tm.distinct_n(ids, 2))
            cols[f"{role}_rep_4"].append(tm.repetition_rate(ids, 4))
    return cols


def _language_and_content(j: pl.DataFrame, lexicons: Mapping[str, Any], scorer: Any,
                          detect_language: bool) -> dict[str, Any]:
    """Per pair: the prompt's and each text's language (drift, undetected), EOS, the
    lexicons' rates and the classifier's indicators."""
    from qfair.generation.language import detect_many

    tb_, tq_ = j["text"].to_list(), j["text_q"].to_list()
    n = j.height
    prompt_lang = j["lang"].to_list()
    if detect_language:
        need = [i for i, lang in enumerate(prompt_lang) if not lang]
        if need:
            found = detect_many([j["prompt"][i] for i in need])
            for i, lang in zip(need, found):
                prompt_lang[i] = lang
        lb, lq = detect_many(tb_), detect_many(tq_)
    else:
        lb = lq = [None] * n
    extra: dict[str, Any] = {
        "prompt_lang": prompt_lang, "base_lang": lb, "quant_lang": lq,
        "base_drift": [_drift(p, x) for p, x in zip(prompt_lang, lb)],
        "quant_drift": [_drift(p, x) for p, x in zip(prompt_lang, lq)],
        "base_undetected": [float(x is None) for x in lb], "quant_undetected": [float(x is None) for x in lq],
        "base_eos": [float(s == "eos") for s in j["stop"].to_list()],
        "quant_eos": [float(s == "eos") for s in j["stop_q"].to_list()],
    }
    for name, lex in lexicons.items():
        extra[f"base_{name}_rate"] = [lex.rate(t, lang) for t, lang in zip(tb_, prompt_lang)]
        extra[f"quant_{name}_rate"] = [lex.rate(t, lang) for t, lang in zip(tq_, prompt_lang)]
    if scorer is not None:
        ib, iq = scorer.indicators(tb_), scorer.indicators(tq_)
        for k, lab in enumerate(scorer.labels):
            extra[f"base_clf_{_safe(lab)}"] = ib[:, k].tolist()
            extra[f"quant_clf_{_safe(lab)}"] = iq[:, k].tolist()
    return extra


def _own_confidence(b: Any, q: Any) -> list[pl.DataFrame]:
    """Each model's confidence along the text it wrote itself (gen_tokens), per (prompt, sample)."""
    conf = []
    for role, d in (("base", b), ("quant", q)):
        g = d.table("gen_tokens").group_by(["example_id", "sample"]).agg(
            pl.col("max_logprob").cast(pl.Float64).exp().mean().alias(f"{role}_own_maxprob"),
            pl.col("entropy").cast(pl.Float64).mean().alias(f"{role}_own_entropy"))
        conf.append(g)
    return conf


def _safe(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_]+", "_", label).strip("_").lower() or "label"


def _drift(prompt_lang: str | None, lang: str | None) -> float:
    if prompt_lang is None:
        return float("nan")
    return float(lang is not None and lang != prompt_lang)


# ---------------------------------------------------------------------------
# per prompt (mean over samples), then rows

# (summary metric, column stem, kind): paired rows compare base_<stem> with quant_<stem>
PAIRED_TEXT = (("length_tokens", "n", "text"), ("eos_rate", "eos", "text"),
               ("distinct_1", "distinct_1", "diversity"), ("distinct_2", "distinct_2", "diversity"),
               ("rep_4", "rep_4", "diversity"), ("lang_drift", "drift", "language"),
               ("lang_undetected", "undetected", "language"),
               ("own_text_maxprob", "own_maxprob", "confidence"), ("own_text_entropy", "own_entropy", "confidence"))
# unpaired rows: one value per pair of texts
UNPAIRED_TEXT = (("identical_rate", "identical", "text"), ("identical_prefix_tokens", "identical_prefix", "text"),
                 ("edit_distance", "edit_distance", "text"), ("chrf", "chrf", "text"))


def _per_prompt(texts: pl.DataFrame, meta: pl.DataFrame) -> pl.DataFrame:
    num = [c for c, t in texts.schema.items() if (t.is_numeric() or t == pl.Boolean)
           and c not in ("sample", "first_diff", "prefix_chars", "base_diff_end", "quant_diff_end")]
    agg = texts.group_by("example_id", maintain_order=True).agg(
        [pl.col(c).cast(pl.Float64).fill_nan(None).mean().alias(c) for c in num])
    return meta.join(agg, on="example_id", how="left")


def _paired_rows(df: pl.DataFrame, cfg: Any, paired: Sequence[tuple[str, str, str]],
                 unpaired: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Summary rows through the analysis' own metric_rows (paired bootstrap, BCa, p, p_perm)."""
    from qfair.analyze.summary import metric_rows

    cols = {}
    tp, tu, kinds = [], [], {}
    for metric, stem, kind in paired:
        if f"base_{stem}" in df.columns and f"quant_{stem}" in df.columns:
            cols[f"tok_b_{stem}"] = df[f"base_{stem}"].cast(pl.Float64).fill_null(np.nan)
            cols[f"tok_q_{stem}"] = df[f"quant_{stem}"].cast(pl.Float64).fill_null(np.nan)
            tp.append((metric, f"b_{stem}", f"q_{stem}"))
            kinds[metric] = kind
    for metric, col, kind in unpaired:
        if col in df.columns:
            cols[f"tok_{metric}"] = df[col].cast(pl.Float64).fill_null(np.nan)
            tu.append(metric)
            kinds[metric] = kind
    if not cols:
        return []
    # one metric at a time: each has its own finite prompts (a one-token text has no bigram)
    j = pl.DataFrame(cols)
    rows = []
    for p in tp:
        rows += metric_rows(j, cfg, [p], [])
    for m in tu:
        rows += metric_rows(j, cfg, [], [m])
    for r in rows:
        r["kind"] = kinds.get(r["metric"], r["kind"])
    return rows


def _text_rows(pt: pl.DataFrame, cfg: Any, lexicons: Mapping[str, Any], scorer: Any) -> list[dict[str, Any]]:
    paired = list(PAIRED_TEXT) + [(f"{n}_rate", f"{n}_rate", "lexicon") for n in lexicons]
    if scorer is not None:
        paired += [(f"clf_{_safe(lab)}", f"clf_{_safe(lab)}", "classifier") for lab in scorer.labels]
    return _paired_rows(pt, cfg, paired, UNPAIRED_TEXT)


# ---------------------------------------------------------------------------
# along the base text (teacher-forced rows)

def _prompt_matrix(tt: pl.DataFrame, ids: Sequence[str], col: str) -> tuple[np.ndarray, np.ndarray]:
    """[prompts, positions] mean over samples of ``col`` (NaN where absent) and the presence mask."""
    g = tt.group_by(["example_id", "pos"]).agg(pl.col(col).cast(pl.Float64).fill_nan(None).mean().alias("v"))
    index = {e: i for i, e in enumerate(ids)}
    T = int(tt["pos"].max()) + 1 if tt.height else 0
    V = np.full((len(ids), T), np.nan)
    for e, p, v in g.iter_rows():
        if e in index and v is not None:
            V[index[e], p] = v
    return V, np.isfinite(V)


def _with_deltas(tt: pl.DataFrame) -> pl.DataFrame:
    return tt.with_columns((pl.col("maxprob_q") - pl.col("maxprob_p")).alias("d_maxprob"),
                           (pl.col("entropy_q") - pl.col("entropy_p")).alias("d_entropy"))


def _position_curves(tt: pl.DataFrame, ids: Sequence[str], cfg: Any) -> pl.DataFrame:
    tt = _with_deltas(tt)
    cols: dict[str, Any] = {}
    n_t = None
    for m in POSITION_METRICS:
        if m not in tt.columns:
            continue
        V, M = _prompt_matrix(tt, ids, m)
        if n_t is None:
            n_t = M.sum(0)
            cols["pos"] = np.arange(V.shape[1])
            cols["n"] = n_t
        with np.errstate(invalid="ignore"):
            cols[m] = np.where(M.sum(0) > 0, np.nansum(V, 0) / np.maximum(M.sum(0), 1), np.nan)
        Vz, Mf = np.where(M, V, 0.0), M.astype(np.float64)
        dists = []
        for W in bootstrap_weights(len(ids), cfg, V.shape[1]):
            with np.errstate(invalid="ignore", divide="ignore"):
                dists.append((W @ Vz) / (W @ Mf))
        D = np.concatenate(dists, 0) if dists else np.zeros((0, V.shape[1]))
        a = (1 - cfg.confidence) / 2
        with np.errstate(invalid="ignore"), _quiet():
            lo = np.nanpercentile(D, 100 * a, axis=0) if D.size else np.full(V.shape[1], np.nan)
            hi = np.nanpercentile(D, 100 * (1 - a), axis=0) if D.size else np.full(V.shape[1], np.nan)
        cols[f"{m}_low"], cols[f"{m}_high"] = lo, hi
    if not cols:
        return pl.DataFrame()
    return pl.DataFrame(cols).with_columns(pl.col("pos").cast(pl.Int64), pl.col("n").cast(pl.Int64))


class _quiet:
    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a: Any) -> None:
        self._w.__exit__(*a)


def _row(metric: str, kind: str, n: int, test: str) -> dict[str, Any]:
    from qfair.analyze.summary import SUMMARY_SCHEMA

    r = {k: None for k in SUMMARY_SCHEMA}
    r.update(metric=metric, kind=kind, n=n, test=test, ci_method="percentile")
    return r


def _aligned_rows(tt: pl.DataFrame, ids: Sequence[str], cfg: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    index = {e: i for i, e in enumerate(ids)}
    P = len(ids)
    # perplexity of the base text under each model, and their ratio
    per = tt.group_by("example_id").agg((-pl.col("logprob_p").cast(pl.Float64)).sum().alias("sp"),
                                        (-pl.col("logprob_q").cast(pl.Float64)).sum().alias("sq"),
                                        pl.len().alias("n"))
    sp, sq, nn = np.zeros(P), np.zeros(P), np.zeros(P)
    for e, a, c, k in per.iter_rows():
        if e in index:
            sp[index[e]], sq[index[e]], nn[index[e]] = a, c, k
    ok = np.isfinite(sp) & np.isfinite(sq)
    if nn[ok].sum() > 0:
        sp, sq, nn = np.where(ok, sp, 0), np.where(ok, sq, 0), np.where(ok, nn, 0)
        r = _row("ppl_ratio", "perplexity", int((nn > 0).sum()), "prompt bootstrap of the pooled ratio")
        r["base"] = float(np.exp(sp.sum() / nn.sum()))
        r["quant"] = float(np.exp(sq.sum() / nn.sum()))
        r["diff"] = r["quant"] / r["base"]
        logs = []
        for W in bootstrap_weights(P, cfg):
            with np.errstate(invalid="ignore", divide="ignore"):
                logs.append((W @ (sq - sp)) / (W @ nn))
        L = np.concatenate(logs) if logs else np.zeros(0)
        lo, hi = _pct(L, cfg.confidence)
        r["ci_low"], r["ci_high"] = (None if lo is None else float(np.exp(lo))), (None if hi is None else float(np.exp(hi)))
        r["pct_low"], r["pct_high"] = r["ci_low"], r["ci_high"]
        r["p"] = boot_p(L, 0.0)
        rows.append(r)
    # does the base model's uncertainty predict where quantization diverges?
    if "kl_pq" in tt.columns:
        t = tt.select("example_id", pl.col("entropy_p").cast(pl.Float64), pl.col("kl_pq").cast(pl.Float64)).filter(
            pl.col("entropy_p").is_finite() & pl.col("kl_pq").is_finite())
        if t.height >= 3:
            x, y = t["entropy_p"].to_numpy(), t["kl_pq"].to_numpy()
            cl = np.array([index.get(e, -1) for e in t["example_id"].to_list()])
            keep = cl >= 0
            x, y, cl = x[keep], y[keep], cl[keep]
            r = _row("entropy_kl_spearman", "correlation", int(x.size),
                     "spearman over positions, prompt bootstrap")
            r["diff"] = float(weighted_spearman(x, y, np.ones((1, x.size)))[0])
            dists = [weighted_spearman(x, y, W[:, cl]) for W in bootstrap_weights(P, cfg, max(1, x.size // P))]
            D = np.concatenate(dists) if dists else np.zeros(0)
            r["ci_low"], r["ci_high"] = _pct(D, cfg.confidence)
            r["pct_low"], r["pct_high"] = r["ci_low"], r["ci_high"]
            r["p"] = boot_p(D, 0.0)
            rows.append(r)
    return rows


# ---------------------------------------------------------------------------
# survival, language, bias

def _survival(tx: pl.DataFrame, t_max: int, cfg: Any) -> pl.DataFrame:
    k, n = tm.survival(tx["first_diff"].to_list(), t_max)
    lo, hi = stats.wilson(k, n, cfg.confidence)
    return pl.DataFrame({"t": np.arange(k.size, dtype=np.int64), "n": n, "identical": k,
                         "share": k / np.maximum(n, 1), "ci_low": lo, "ci_high": hi})


def _language(tx: pl.DataFrame, cfg: Any) -> pl.DataFrame:
    rows = []
    for lang in sorted({x for x in tx["prompt_lang"].to_list() if x is not None}):
        sub = tx.filter(pl.col("prompt_lang") == lang)
        for role in ("base", "quant"):
            d = sub[f"{role}_drift"].to_numpy()
            u = sub[f"{role}_undetected"].to_numpy()
            n, k = int(np.isfinite(d).sum()), int(np.nansum(d))
            lo, hi = stats.wilson([k], [max(n, 1)], cfg.confidence)
            top = sub[f"{role}_lang"].drop_nulls().value_counts(sort=True)
            rows.append({"lang": lang, "role": role, "n": n, "drifted": k, "rate": k / n if n else None,
                         "ci_low": float(lo[0]) if n else None, "ci_high": float(hi[0]) if n else None,
                         "undetected": int(u.sum()),
                         "detected": ", ".join(f"{a}:{c}" for a, c in top.iter_rows()) if top.height else ""})
    schema = {"lang": pl.Utf8, "role": pl.Utf8, "n": pl.Int64, "drifted": pl.Int64, "rate": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "undetected": pl.Int64, "detected": pl.Utf8}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _bias_metrics(pt: pl.DataFrame, lexicons: Mapping[str, Any], scorer: Any) -> list[tuple[str, str]]:
    """(metric, column stem) of every per-group rate present."""
    out = [(f"{n}_rate", f"{n}_rate") for n in lexicons]
    if scorer is not None:
        out += [(f"clf_{_safe(lab)}", f"clf_{_safe(lab)}") for lab in scorer.labels]
    return [(m, s) for m, s in out if f"base_{s}" in pt.columns]


def _bias_rows(pt: pl.DataFrame, cfg: Any, lexicons: Mapping[str, Any], scorer: Any) -> list[dict[str, Any]]:
    """Per axis and group: base vs quantized rates (paired); per axis the max - min gap."""
    rows: list[dict[str, Any]] = []
    if pt["group"].drop_nulls().n_unique() < 2:
        return rows
    pt = pt.with_columns(pl.col("axis").fill_null("group"))
    metrics = _bias_metrics(pt, lexicons, scorer)
    for axis in pt["axis"].unique(maintain_order=True).to_list():
        pa = pt.filter((pl.col("axis") == axis) & pl.col("group").is_not_null())
        groups = pa["group"].unique(maintain_order=True).to_list()
        if len(groups) < 2:
            continue
        for metric, stem in metrics:
            xb = pa[f"base_{stem}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            xq = pa[f"quant_{stem}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            g = np.array(pa["group"].to_list(), dtype=object)
            ok = np.isfinite(xb) & np.isfinite(xq)
            if ok.sum() == 0:
                continue
            for grp in groups:
                m = ok & (g == grp)
                if not m.any():
                    continue
                r = _group_row(metric, xb[m], xq[m], cfg)
                r.update(axis=axis, group=grp)
                rows.append(r)
            gap = _gap_row(metric, xb[ok], xq[ok], g[ok], groups, cfg)
            if gap is not None:
                gap.update(axis=axis, group="max-min gap")
                rows.append(gap)
    return rows


def _group_row(metric: str, xb: np.ndarray, xq: np.ndarray, cfg: Any) -> dict[str, Any]:
    r = _row(metric, "bias", int(xb.size), "paired bootstrap")
    r["base"], r["quant"] = float(xb.mean()), float(xq.mean())
    res = stats.paired_bootstrap([stats.MeanDiff(xq, xb), stats.MeanDiff(xb), stats.MeanDiff(xq)],
                                 resamples=cfg.resamples, seed=cfg.seed, confidence=cfg.confidence,
                                 threads=cfg.threads)
    d = res[0]
    r["diff"] = d.estimate
    r["pct_low"], r["pct_high"] = d.pct_lo, d.pct_hi
    if np.isfinite(d.bca_lo) and np.isfinite(d.bca_hi):
        r["ci_low"], r["ci_high"], r["ci_method"] = d.bca_lo, d.bca_hi, "bca"
    else:
        r["ci_low"], r["ci_high"] = d.pct_lo, d.pct_hi
    r["p"] = d.p if xb.size > 1 else None
    r["base_low"], r["base_high"] = res[1].pct_lo, res[1].pct_hi
    r["quant_low"], r["quant_high"] = res[2].pct_lo, res[2].pct_hi
    return r


def _gaps(W: np.ndarray, x: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.stack([(W[:, m] @ x[m]) / W[:, m].sum(1) for m in masks], axis=1)
    with _quiet():
        return np.nanmax(means, 1) - np.nanmin(means, 1)


def _gap_row(metric: str, xb: np.ndarray, xq: np.ndarray, g: np.ndarray, groups: Sequence[str],
             cfg: Any) -> dict[str, Any] | None:
    masks = [g == grp for grp in groups if (g == grp).any()]
    if len(masks) < 2:
        return None
    one = np.ones((1, xb.size))
    r = _row(metric, "disparity", int(xb.size), "prompt bootstrap of max - min over groups")
    r["base"], r["quant"] = float(_gaps(one, xb, masks)[0]), float(_gaps(one, xq, masks)[0])
    r["diff"] = r["quant"] - r["base"]
    db, dq = [], []
    for W in bootstrap_weights(xb.size, cfg, len(masks)):
        db.append(_gaps(W, xb, masks))
        dq.append(_gaps(W, xq, masks))
    Db, Dq = np.concatenate(db), np.concatenate(dq)
    r["ci_low"], r["ci_high"] = _pct(Dq - Db, cfg.confidence)
    r["pct_low"], r["pct_high"] = r["ci_low"], r["ci_high"]
    r["p"] = boot_p(Dq - Db, 0.0)
    r["base_low"], r["base_high"] = _pct(Db, cfg.confidence)
    r["quant_low"], r["quant_high"] = _pct(Dq, cfg.confidence)
    return r


# ---------------------------------------------------------------------------
# a few lines for a terminal (qfair demo)

def demo_lines(cmp: Any, width: int = 70) -> list[str]:
    """Per quantized model one sentence on its free texts and the base text's
    divergence, then the first prompt's continuations side by side."""
    gs, gt = cmp.extra.get("gen_summary"), cmp.extra.get("gen_texts")
    if gs is None or gt is None or gt.height == 0:
        return []
    out = []

    def val(m: str, metric: str, col: str) -> float | None:
        r = gs.filter((pl.col("model") == m) & (pl.col("metric") == metric))
        if r.height == 0 or r[col][0] is None:
            return None
        return float(r[col][0])

    tok = cmp.tokens
    for m in gt["model"].unique(maintain_order=True).to_list():
        t = gt.filter(pl.col("model") == m)
        parts = [f"generation, base vs {m}: {int(t['identical'].sum())}/{t.height} continuations identical to "
                 f"the base's"]
        pre = val(m, "identical_prefix_tokens", "diff")
        if pre is not None:
            parts.append(f"identical prefix {pre:.1f} tokens on average")
        if tok.height and "kl_pq" in tok.columns:
            kl = tok.filter(pl.col("model") == m)["kl_pq"].drop_nans().drop_nulls()
            if kl.len():
                parts.append(f"KL along the base text {kl.mean():.4f} nats/token")
        ratio = val(m, "ppl_ratio", "diff")
        if ratio is not None:
            parts.append(f"perplexity of the base text x{ratio:.3f}")
        out.append("; ".join(parts))

    def short(s: str) -> str:
        s = " ".join((s or "").split())
        return s if len(s) <= width else s[:width - 1] + "…"

    first = gt.row(0, named=True)
    out.append(f"prompt {first['prompt']!r} -> base: {short(first['base_text'])!r}")
    for m in gt["model"].unique(maintain_order=True).to_list():
        r = gt.filter((pl.col("model") == m) & (pl.col("example_id") == first["example_id"])).row(0, named=True)
        out.append(f"  {m}: {short(r['quant_text'])!r}")
    return out
