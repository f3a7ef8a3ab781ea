"""Compact views of the summary table: the terminal block ``qfair demo`` prints
and the headline table of the HTML report."""
from __future__ import annotations

import math
from typing import Any

import polars as pl

__all__ = ["compact_rows", "compact_summary", "model_headlines"]


def _get(s: pl.DataFrame, model: str, task: str, metric: str, col: str) -> float | None:
    r = s.filter((pl.col("model") == model) & (pl.col("task") == task) & (pl.col("metric") == metric))
    if r.height == 0 or col not in r.columns:
        return None
    v = r[col][0]
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def compact_rows(summary: pl.DataFrame, models: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (model, task): n, acc base/quant, Δacc with CI and Holm p,
    ECE base/quant, mean token KL(base‖quant), flips by direction, McNemar Holm p."""
    if summary.height == 0:
        return []
    models = models or summary["model"].unique(maintain_order=True).to_list()
    tasks = summary["task"].unique(maintain_order=True).to_list()
    rows = []
    for m in models:
        for t in tasks:
            n = _get(summary, m, t, "acc", "n")
            if n is None:
                continue
            nn = int(n)
            c2i = _get(summary, m, t, "flips_c2i", "diff")
            i2c = _get(summary, m, t, "flips_i2c", "diff")
            rows.append({
                "model": m, "task": t, "n": nn,
                "acc_base": _get(summary, m, t, "acc", "base"), "acc_quant": _get(summary, m, t, "acc", "quant"),
                "d_acc": _get(summary, m, t, "acc", "diff"), "d_acc_low": _get(summary, m, t, "acc", "ci_low"),
                "d_acc_high": _get(summary, m, t, "acc", "ci_high"),
                "p_acc_holm": _get(summary, m, t, "acc", "p_holm"),
                "ece_base": _get(summary, m, t, "ece", "base"), "ece_quant": _get(summary, m, t, "ece", "quant"),
                "d_ece": _get(summary, m, t, "ece", "diff"),
                "d_conf": _get(summary, m, t, "confidence", "diff"),
                "kl": _get(summary, m, t, "kl_pq", "diff"),
                "c2i": None if c2i is None else int(round(c2i * nn)),
                "i2c": None if i2c is None else int(round(i2c * nn)),
                "p_flips_holm": _get(summary, m, t, "flips", "p_holm"),
            })
    return rows


def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _p(v: float | None) -> str:
    if v is None:
        return "–"
    return "<1e-4" if v < 1e-4 else f"{v:.3f}"


def compact_summary(summary: pl.DataFrame, models: list[str] | None = None, task_width: int = 19) -> str:
    """A terminal table (≤ 100 columns): per quantized model a block of tasks."""
    rows = compact_rows(summary, models)
    if not rows:
        return "(empty summary)\n"
    head = (f"{'task':<{task_width}} {'n':>4}  {'acc base→quant':>14}  {'Δacc [95% CI]':<21} {'p_holm':>6}  "
            f"{'ΔECE':>7}  {'KL nats':>7}  {'flips c→i/i→c':>13}")
    lines = []
    current = None
    for r in rows:
        if r["model"] != current:
            current = r["model"]
            if lines:
                lines.append("")
            lines.append(f"base vs {current}")
            lines.append(head)
            lines.append("-" * len(head))
        task = r["task"] if len(r["task"]) <= task_width else r["task"][: task_width - 1] + "…"
        acc = f"{_f(r['acc_base'], '.3f')}→{_f(r['acc_quant'], '.3f')}"
        ci = (f"{_f(r['d_acc'], '+.3f')} [{_f(r['d_acc_low'], '+.2f')},{_f(r['d_acc_high'], '+.2f')}]")
        flips = "–" if r["c2i"] is None else f"{r['c2i']}/{r['i2c']}"
        lines.append(f"{task:<{task_width}} {r['n']:>4}  {acc:>14}  {ci:<21} {_p(r['p_acc_holm']):>6}  "
                     f"{_f(r['d_ece'], '+.3f'):>7}  {_f(r['kl'], '.4f'):>7}  {flips:>13}")
    lines += ["", "Δ = quantized − base; CI: paired bootstrap; p_holm: Holm-adjusted p of Δacc over the whole "
              "summary table;", "KL nats: mean per-token KL(base ‖ quantized); flips: correct→incorrect / "
              "incorrect→correct."]
    return "\n".join(lines) + "\n"


def model_headlines(summary: pl.DataFrame, examples: pl.DataFrame | None = None,
                    tokens: pl.DataFrame | None = None, models: list[str] | None = None) -> list[str]:
    """One sentence per quantized model over all tasks: mean token KL, top-1
    agreement, flips by direction."""
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
            c2i, i2c = int(e["flip_c2i"].sum()), int(e["flip_i2c"].sum())
            parts.append(f"{c2i + i2c} of {e.height} answers flipped correctness ({c2i} correct→incorrect, "
                         f"{i2c} incorrect→correct)")
            acc_b = e["base_correct"].mean()
            acc_q = e["quant_correct"].mean()
            if acc_b is not None and acc_q is not None:
                parts.append(f"accuracy {acc_b:.3f}→{acc_q:.3f}")
        out.append(" ".join(parts[:1]) + " " + "; ".join(parts[1:]))
    return out
