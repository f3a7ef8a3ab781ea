"""Compact views of the summary table: the terminal block ``qfair demo`` prints
and the headline table of the HTML report.

Each task headlines its own metrics, as its task kind says
(:class:`qfair.metrics.task_kinds.TaskKind.headline`): accuracy for a
multiple-choice task, mc2 for TruthfulQA MC2, pct_stereotype and
likelihood_diff for CrowS-Pairs. The "reading" of a change follows the
metric's direction (higher or lower is better) or its neutral value
(CrowS-Pairs: 50 %), and says "n.s." unless the row's interval excludes 0.
Flips and calibration appear only for kinds with gold answers.
"""
from __future__ import annotations

import math
from typing import Any

import polars as pl

__all__ = ["compact_rows", "compact_summary", "model_headlines", "headline_rows", "reading", "ALPHA_DEFAULT"]

ALPHA_DEFAULT = 0.05


def _lookup(s: pl.DataFrame) -> dict[tuple[str, str, str], dict[str, Any]]:
    if s.height == 0:
        return {}
    return {(r["model"], r["task"], r["metric"]): r for r in s.iter_rows(named=True)}


def _num(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def _kind_of(s: pl.DataFrame, task: str) -> Any:
    from qfair.metrics.task_kinds import get_task_kind

    name = None
    if "task_kind" in s.columns:
        k = s.filter(pl.col("task") == task)["task_kind"]
        name = k[0] if k.len() else None
    return get_task_kind(name)


def reading(row: dict[str, Any] | None, direction: int, *, neutral: float | None = None,
            neutral_row: dict[str, Any] | None = None, alpha: float = ALPHA_DEFAULT) -> str:
    """A word for the change a row reports.

    "better"/"worse" follow ``direction`` (+1: higher is better, -1: lower is better);
    a metric with a ``neutral`` value reads "toward/away from" it, decided by its
    ``*_from_neutral`` row; "up"/"down" for a metric with neither. The word needs
    the interval to exclude 0 (p < alpha). It then names the row's family
    (:mod:`qfair.analyze.multiple_testing`): a primary row (or a row of a table without
    families) that also passes Holm reads as the bare word, a secondary row that
    also passes Benjamini-Hochberg within its metric class gets ", secondary",
    and a row that passes only before adjustment gets ", raw". Otherwise "n.s.".
    """
    src = neutral_row if neutral is not None else row
    if src is None:
        return ""
    secondary = src.get("family") == "secondary"
    p, ph, d = _num(src.get("p")), _num(src.get("p_bh" if secondary else "p_holm")), _num(src.get("diff"))
    if p is None or d is None:
        return ""
    if not p < alpha or d == 0:
        return "n.s."
    if neutral is not None:
        word = f"away from {neutral:.0%}" if d > 0 else f"toward {neutral:.0%}"
    elif direction == 0:
        word = "up" if d > 0 else "down"
    else:
        word = "better" if d * direction > 0 else "worse"
    if ph is None or not ph < alpha:
        return f"{word}, raw"
    return f"{word}, secondary" if secondary else word


def headline_rows(summary: pl.DataFrame, models: list[str] | None = None,
                  alpha: float = ALPHA_DEFAULT) -> list[dict[str, Any]]:
    """One row per (model, task, headline metric) in model, task, metric order.

    Keys: model, task, task_kind, metric, n, base, quant, diff, ci_low, ci_high, p,
    p_holm, family and p_adj (of the row the reading tests), reading, first (the task's first line), and on the first line of a task:
    d_ece, ece_base, ece_quant, kl, c2i, i2c, p_mcnemar (None where the kind has no
    gold answers or the analysis no tokens).
    """
    if summary.height == 0:
        return []
    look = _lookup(summary)
    models = models or summary["model"].unique(maintain_order=True).to_list()
    tasks = summary["task"].unique(maintain_order=True).to_list()
    out = []
    for m in models:
        for t in tasks:
            tk = _kind_of(summary, t)
            names = [x for x in tk.headline if (m, t, x) in look] or [x for x in ("acc",) if (m, t, x) in look]
            for i, name in enumerate(names):
                r = look[(m, t, name)]
                em = tk.metric(name)
                neutral = em.neutral if em is not None else None
                tested = look.get((m, t, f"{name}_from_neutral")) if neutral is not None else r
                row = {"model": m, "task": t, "task_kind": tk.name, "metric": name, "n": int(r["n"]),
                       "base": _num(r["base"]), "quant": _num(r["quant"]), "diff": _num(r["diff"]),
                       "ci_low": _num(r["ci_low"]), "ci_high": _num(r["ci_high"]), "p": _num(r["p"]),
                       "p_holm": _num(r.get("p_holm")), "neutral": neutral,
                       "family": (tested or {}).get("family"), "p_adj": _adjusted(tested),
                       "reading": reading(r, em.direction if em is not None else 0, neutral=neutral,
                                          neutral_row=look.get((m, t, f"{name}_from_neutral")), alpha=alpha),
                       "first": i == 0}
                extra = dict.fromkeys(("d_ece", "ece_base", "ece_quant", "kl", "c2i", "i2c", "p_mcnemar"))
                if i == 0:
                    kl = look.get((m, t, "kl_pq"))
                    extra["kl"] = None if kl is None else _num(kl["diff"])
                    if tk.correctness:
                        ece = look.get((m, t, "ece"))
                        if ece is not None:
                            extra.update(d_ece=_num(ece["diff"]), ece_base=_num(ece["base"]),
                                         ece_quant=_num(ece["quant"]))
                        fl = look.get((m, t, "flips"))
                        c2i, i2c = look.get((m, t, "flips_c2i")), look.get((m, t, "flips_i2c"))
                        if fl is not None and c2i is not None and i2c is not None:
                            nn = int(fl["n"])
                            extra.update(c2i=int(round(c2i["diff"] * nn)), i2c=int(round(i2c["diff"] * nn)),
                                         p_mcnemar=_num(fl.get("p_mcnemar")))
                row.update(extra)
                out.append(row)
    return out


def _adjusted(row: dict[str, Any] | None) -> float | None:
    """The adjusted p a row's reading uses: BH for a secondary row, Holm otherwise."""
    if row is None:
        return None
    return _num(row.get("p_bh" if row.get("family") == "secondary" else "p_holm"))


def compact_rows(summary: pl.DataFrame, models: list[str] | None = None) -> list[dict[str, Any]]:
    """The first headline line of every (model, task) -- kept for callers of the old view."""
    return [r for r in headline_rows(summary, models) if r["first"]]


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _val(v: float | None) -> str:
    if v is None:
        return "–"
    a = abs(v)
    return f"{v:.3f}" if a < 10 else (f"{v:.2f}" if a < 100 else f"{v:.4g}")


def _signed(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    a = abs(v)
    d = digits if a < 10 else max(1, digits - 1)
    return f"{v:+.{d}f}"


def _p(v: float | None) -> str:
    if v is None:
        return "–"
    return "<1e-4" if v < 1e-4 else f"{v:.3f}" if v >= 0.001 else f"{v:.0e}"


def compact_summary(summary: pl.DataFrame, models: list[str] | None = None, task_width: int = 16,
                    confidence: float = 0.95) -> str:
    """A terminal table (≤ 110 columns): per quantized model a block of tasks, each
    with its own headline metric(s)."""
    rows = headline_rows(summary, models, alpha=1 - confidence)
    if not rows:
        return "(empty summary)\n"
    pct = f"{100 * confidence:g}%"
    head = (f"{'task':<{task_width}} {'n':>3}  {'metric':<15} {'base→quant':>11}  {'Δ [' + pct + ' CI]':<20} "
            f"{'p_adj':>6}  {'reading':<16} {'KL nats':>7} {'flips':>5}")
    lines: list[str] = []
    current = None
    for r in rows:
        if r["model"] != current:
            current = r["model"]
            if lines:
                lines.append("")
            lines.append(f"base vs {current}")
            lines.append(head)
            lines.append("-" * len(head))
        if r["first"]:
            task = r["task"] if len(r["task"]) <= task_width else r["task"][: task_width - 1] + "…"
            left = f"{task:<{task_width}} {r['n']:>3}"
            kl = _f(r["kl"], ".4f")
            flips = "–" if r["c2i"] is None else f"{r['c2i']}/{r['i2c']}"
        else:
            left, kl, flips = " " * (task_width + 4), "", ""
        vals = f"{_val(r['base'])}→{_val(r['quant'])}"
        ci = f"{_signed(r['diff'])} [{_signed(r['ci_low'], 2)},{_signed(r['ci_high'], 2)}]"
        lines.append(f"{left}  {r['metric'][:15]:<15} {vals:>11}  {ci:<20} {_p(r['p_adj']):>6}  "
                     f"{r['reading'][:16]:<16} {kl:>7} {flips:>5}")
    lines += ["", f"Δ = quantized − base with its paired bootstrap {pct} interval (p inverts it).",
              "p_adj: each task's first metric is in the primary family (Holm over the primary rows of all",
              "tasks and models); the other metrics are secondary (Benjamini-Hochberg within their metric",
              "class), reading \"…, secondary\". reading: by the metric's direction, for CrowS-Pairs by the",
              "distance from 50 %; n.s. = the interval includes 0; raw = not after the family's adjustment.",
              "KL nats: mean per-token KL(base ‖ quantized); flips: correct→incorrect / incorrect→correct."]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def model_headlines(summary: pl.DataFrame, examples: pl.DataFrame | None = None,
                    tokens: pl.DataFrame | None = None, models: list[str] | None = None) -> list[str]:
    """One sentence per quantized model: mean token KL and top-1 agreement over all
    tasks, flips and accuracy over the tasks with gold answers."""
    from qfair.metrics.task_kinds import get_task_kind

    models = models or (summary["model"].unique(maintain_order=True).to_list() if summary.height else [])
    out = []
    for m in models:
        parts = [m + ":"]
        if tokens is not None and tokens.height and "kl_pq" in tokens.columns:
            tk = tokens.filter(pl.col("model") == m)
            kl = tk["kl_pq"].drop_nans().drop_nulls()
            if kl.len():
                parts.append(f"mean token KL {kl.mean():.4f} nats over {kl.len():,} tokens")
            if "top1_agree" in tk.columns and tk.height:
                parts.append(f"same top token {100 * tk['top1_agree'].drop_nans().mean():.1f}%")
        if examples is not None and examples.height and "flip_c2i" in examples.columns:
            e = examples.filter(pl.col("model") == m)
            if "kind" in e.columns:
                gold = [k for k in e["kind"].unique().to_list() if get_task_kind(k).correctness]
                e = e.filter(pl.col("kind").is_in(gold))
            if e.height:
                c2i, i2c = int(e["flip_c2i"].sum()), int(e["flip_i2c"].sum())
                n_tasks = e["task"].n_unique()
                parts.append(f"{c2i + i2c} of {e.height} answers on {n_tasks} task(s) with gold answers flipped "
                             f"correctness ({c2i} correct→incorrect, {i2c} incorrect→correct)")
                acc_b, acc_q = e["base_correct"].mean(), e["quant_correct"].mean()
                if acc_b is not None and acc_q is not None:
                    parts.append(f"accuracy {acc_b:.3f}→{acc_q:.3f}")
        out.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
    return out
