"""The report's generation section: drawn when the analysis directory holds
the generation tables (``gen_*``) of ``qfair analyze`` on generation dumps.

- the headline rows of ``gen_summary`` per model and task;
- KL(base ‖ quantized) by position along the base text, with bootstrap bands;
- the identical-prefix survival curve of the two free texts (Wilson bands);
- per-group bias rates with intervals, and the max - min gap per axis;
- language drift per prompt language;
- the prompts whose two texts differ most, side by side, the first differing
  token marked.

Generated text is untrusted input: every text goes through ``html.escape``
before it reaches the page (tests feed it markup).
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import polars as pl

from qfair.report.common import Section

__all__ = ["load_generation", "generation_figures", "generation_section", "has_generation", "side_by_side",
           "GEN_TABLES", "SECTIONS"]

GEN_TABLES = ("gen_summary", "gen_positions", "gen_survival", "gen_language", "gen_bias", "gen_texts")
# gen_summary rows shown in the section's headline table, in this order
HEADLINE_METRICS = ("ppl_ratio", "entropy_kl_spearman", "identical_rate", "identical_prefix_tokens",
                    "edit_distance", "chrf", "distinct_2", "rep_4", "lang_drift", "own_text_maxprob",
                    "gendered_rate", "negative_rate")
TOP_TEXTS = 8


def _e(s: Any) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def has_generation(path: str | Path) -> bool:
    d = Path(path)
    return any((d / f"{t}.parquet").is_file() or (d / f"{t}.csv").is_file() for t in GEN_TABLES)


_CACHE: dict[tuple[str, float], dict[str, pl.DataFrame]] = {}


def load_generation(path: str | Path) -> dict[str, pl.DataFrame]:
    """The generation tables of an analysis directory ({} when there are none)."""
    d = Path(path)
    if not has_generation(d):
        return {}
    key = (str(d.resolve()), max((d / f).stat().st_mtime for f in [p.name for p in d.iterdir()]))
    if key in _CACHE:
        return _CACHE[key]
    out = {}
    for t in GEN_TABLES:
        pq, csv = d / f"{t}.parquet", d / f"{t}.csv"
        try:
            if pq.is_file():
                out[t] = pl.read_parquet(pq)
            elif csv.is_file() and csv.stat().st_size:
                out[t] = pl.read_csv(csv, infer_schema_length=None)
        except (OSError, pl.exceptions.PolarsError) as e:
            from qfair.report.data import ReportError

            raise ReportError(f"{pq if pq.is_file() else csv}: cannot be read as the {t} table "
                              f"({type(e).__name__})") from None
    _CACHE.clear()
    _CACHE[key] = out
    return out


# ---------------------------------------------------------------------------
# figures

def generation_figures(data: Any) -> list[Any]:
    """KL-by-position and survival figures, one per task (all models on each)."""
    from qfair.report.common import Figure, _plt, _safe, model_colors

    g = load_generation(data.path)
    if not g:
        return []
    plt = _plt()
    models = list(data.models) or (g["gen_texts"]["model"].unique(maintain_order=True).to_list()
                                   if "gen_texts" in g else [])
    colors = model_colors(models)
    level = float(data.settings.get("confidence") or 0.95)
    figs = []
    pos = g.get("gen_positions")
    if pos is not None and pos.height and "kl_pq" in pos.columns:
        for task in pos["task"].unique(maintain_order=True).to_list():
            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
            for m in models:
                v = pos.filter((pl.col("model") == m) & (pl.col("task") == task)).sort("pos")
                if v.height == 0:
                    continue
                x = v["pos"].to_numpy()
                ax.plot(x, v["kl_pq"].to_numpy(), color=colors.get(m), lw=1.8, label=m)
                ax.fill_between(x, v["kl_pq_low"].to_numpy(), v["kl_pq_high"].to_numpy(), color=colors.get(m),
                                alpha=0.2, lw=0)
                if "top1_agree" in v.columns:
                    ax2.plot(x, 100 * v["top1_agree"].to_numpy(), color=colors.get(m), lw=1.8, label=m)
                    ax2.fill_between(x, 100 * v["top1_agree_low"].to_numpy(), 100 * v["top1_agree_high"].to_numpy(),
                                     color=colors.get(m), alpha=0.2, lw=0)
            ax.set_xlabel("position in the base model's continuation (tokens)")
            ax.set_ylabel("mean KL(base ‖ quantized) (nats)")
            ax.set_title(f"{task}: KL along the base text", fontsize=10)
            ax2.set_xlabel("position in the base model's continuation (tokens)")
            ax2.set_ylabel("same most likely next token (%)")
            ax2.set_title(f"{task}: top-1 agreement along the base text", fontsize=10)
            for a in (ax, ax2):
                a.grid(alpha=0.3)
                a.legend(fontsize=8)
            fig.tight_layout()
            figs.append(Figure(f"gen_kl_by_position_{_safe(task)}", fig, f"{task}: divergence by position",
                               f"Mean over prompts at each position of the base text (the quantized model "
                               f"teacher-forced on it); bands: {100 * level:g}% bootstrap over prompts. Later "
                               "positions average fewer prompts (see the n column of gen_positions).",
                               "generation"))
    surv = g.get("gen_survival")
    if surv is not None and surv.height:
        for task in surv["task"].unique(maintain_order=True).to_list():
            fig, ax = plt.subplots(figsize=(6.6, 4.2))
            for m in models:
                v = surv.filter((pl.col("model") == m) & (pl.col("task") == task)).sort("t")
                if v.height == 0:
                    continue
                x = v["t"].to_numpy()
                ax.step(x, 100 * v["share"].to_numpy(), where="post", color=colors.get(m), lw=1.8,
                        label=f"{m} (n = {int(v['n'][0])})")
                ax.fill_between(x, 100 * v["ci_low"].to_numpy(), 100 * v["ci_high"].to_numpy(), step="post",
                                color=colors.get(m), alpha=0.15, lw=0)
            ax.set_ylim(0, 102)
            ax.set_xlabel("t (generated tokens)")
            ax.set_ylabel("continuations still identical to the base (%)")
            ax.set_title(f"{task}: identical-prefix survival", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            figs.append(Figure(f"gen_survival_{_safe(task)}", fig, f"{task}: how long the texts stay identical",
                               f"Share of (prompt, sample) pairs whose quantized continuation equals the base "
                               f"continuation in its first t tokens; bands: {100 * level:g}% Wilson intervals.",
                               "generation"))
    return figs


# ---------------------------------------------------------------------------
# HTML

def side_by_side(r: dict[str, Any]) -> str:
    """One prompt's two texts as HTML cells: the shared prefix plain, the first
    differing token marked, the rest dimmed (every piece escaped)."""
    def cell(text: str | None, end: int | None) -> str:
        text = text or ""
        k = int(r.get("prefix_chars") or 0)
        e = len(text) if end is None else max(k, int(end))
        if r.get("identical"):
            return f"<td class='l gen'>{_e(text)}</td>"
        return (f"<td class='l gen'>{_e(text[:k])}<mark>{_e(text[k:e]) or '∅'}</mark>"
                f"<span class='rest'>{_e(text[e:])}</span></td>")

    fd = r.get("first_diff")
    return (f"<tr><td class='l'>{_e(r.get('model'))}</td><td class='l gen'>{_e(r.get('prompt'))}</td>"
            f"{cell(r.get('base_text'), r.get('base_diff_end'))}{cell(r.get('quant_text'), r.get('quant_diff_end'))}"
            f"<td>{'identical' if fd is None else _e(fd)}</td><td>{_fmt(r.get('edit_distance'))}</td>"
            f"<td>{_fmt(r.get('chrf'))}</td></tr>")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
    return _e(v)


def _texts(g: dict[str, pl.DataFrame]) -> str:
    tx = g.get("gen_texts")
    if tx is None or tx.height == 0:
        return ""
    out = ["<h3>Texts that differ most</h3><p class='meta'>Per model, the prompts whose quantized continuation is "
           "furthest from the base one (token edit distance); the shared prefix is plain, the first differing "
           "token is <mark>marked</mark>, the rest is dimmed. Generated text is shown escaped, as written.</p>",
           "<div class='scroll'><table><thead><tr><th class='l'>model</th><th class='l'>prompt</th>"
           "<th class='l'>base</th><th class='l'>quantized</th><th>first diff (token)</th><th>edit dist.</th>"
           "<th>chrF</th></tr></thead><tbody>"]
    for m in tx["model"].unique(maintain_order=True).to_list():
        sub = tx.filter(pl.col("model") == m).sort(["edit_distance", "example_id"], descending=[True, False],
                                                   nulls_last=True).head(TOP_TEXTS)
        out += [side_by_side(r) for r in sub.iter_rows(named=True)]
    out.append("</tbody></table></div>")
    return "".join(out)


def _headline(g: dict[str, pl.DataFrame]) -> str:
    from qfair.report.common import table_html

    s = g.get("gen_summary")
    if s is None or s.height == 0:
        return ""
    order = {m: i for i, m in enumerate(HEADLINE_METRICS)}
    view = (s.filter(pl.col("metric").is_in(list(HEADLINE_METRICS)))
            .with_columns(pl.col("metric").replace_strict(order, default=99).alias("_o"))
            .sort(["model", "task", "_o"]).drop("_o"))
    return ("<h3>Generation summary</h3>" +
            table_html(view, ["model", "task", "metric", "kind", "n", "base", "quant", "diff", "ci_low", "ci_high",
                              "p", "p_holm"], sig_col="p_holm") +
            "<p class='meta'>ppl_ratio: perplexity of the base text under the quantized model ÷ under the base "
            "(diff holds the ratio); entropy_kl_spearman: Spearman correlation between the base model's "
            "entropy and KL(base ‖ quantized) over positions of the base text; identical_rate, "
            "identical_prefix_tokens, edit_distance (token, normalised) and chrF compare the two free texts; the "
            "other rows compare each model's own text (base vs quantized, paired). Every row of the gen_summary "
            "table (all metrics) is in gen_summary.parquet/.csv.</p>")


def _bias(g: dict[str, pl.DataFrame]) -> str:
    from qfair.report.common import table_html

    b = g.get("gen_bias")
    if b is None or b.height == 0:
        return ""
    return ("<h3>Bias in generated text, per group</h3>" +
            table_html(b.sort(["model", "task", "metric", "axis"], maintain_order=True),
                       ["model", "task", "axis", "group", "metric", "n", "base", "base_low", "base_high", "quant",
                        "quant_low", "quant_high", "diff", "ci_low", "ci_high", "p", "p_holm"], sig_col="p_holm") +
            "<p class='meta'>Rates per group: share of the continuation's words in the list (lexicons) or of "
            "continuations given the label (classifier); base_low/high and quant_low/high: bootstrap intervals "
            "of each rate; diff = quantized − base (paired over the group's prompts). Rows 'max-min gap': the "
            "disparity between the groups of one axis, base and quantized, and its change.</p>")


def _language(g: dict[str, pl.DataFrame]) -> str:
    from qfair.report.common import table_html

    t = g.get("gen_language")
    if t is None or t.height == 0:
        return ""
    return ("<details><summary>Language drift per prompt language (Wilson intervals)</summary>" +
            table_html(t) + "<p class='meta'>drifted: continuations whose detected language differs from the "
            "prompt's; undetected: no language could be decided (no letters, or too little text).</p></details>")


def generation_section(data: Any, figs: list[Any]) -> str:
    """The section's HTML ('' when the analysis holds no generation tables)."""
    g = load_generation(data.path)
    if not g:
        return ""
    from qfair.report.common import _figs

    parts = [_headline(g)]
    if any(f.section == "generation" for f in figs):
        parts.append(_figs(figs, "generation"))
    else:
        parts.append("<p class='note'>No position curve: the quantized dumps were not teacher-forced on the base "
                     "text (qfair dump --reference), so only the free texts are compared.</p>")
    parts += [_bias(g), _language(g), _texts(g)]
    return "".join(parts)



def _present(data: Any) -> bool:
    return has_generation(data.path)


# the generation dump kind's own section (qfair.generation.kind.GENERATION names it), right after the headline
SECTIONS = (Section("generation", "Generation: what the models wrote", "the generation dump kind", GEN_TABLES,
                    generation_section, (generation_figures,), present=_present),)
