"""The report's token section: the distribution of KL(base ‖ quantized) over
scored tokens, and its statistics as llama.cpp prints them."""
from __future__ import annotations

import math

import numpy as np
import polars as pl

from qfair.report.common import Figure, Section, _figs, _plt, model_colors, table_html
from qfair.report.data import AnalysisData

__all__ = ["KL_PERCENTILES", "kl_percentiles", "fig_token_kl", "tokens_section", "SECTION"]

# llama.cpp's KL summary: max, 99.9, 99, 95, 90, median, 10, 5, 1, 0.1 percentiles, min
KL_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
KL_FLOOR = 1e-9  # zero KL values are drawn at this floor on the log axis
CDF_POINTS = 20_001  # larger token tables are drawn through this many quantiles


def kl_percentiles(kl: np.ndarray) -> dict[str, float]:
    """llama.cpp-style KL statistics: mean ± standard error, max, the KL_PERCENTILES
    (linear interpolation between order statistics), min."""
    x = np.asarray(kl, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    out = {"n": float(x.size), "mean": float(x.mean()),
           "stderr": float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan"),
           "max": float(x.max())}
    for p in KL_PERCENTILES:
        out[f"p{p:g}"] = float(np.percentile(x, p))
    out["min"] = float(x.min())
    return out


def fig_token_kl(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    tok = data.tokens
    if tok.height == 0 or "kl_pq" not in tok.columns:
        return []
    colors = model_colors(data.models)
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    drawn = 0
    floor_used = False
    pct_label_done = False
    for m in data.models:
        kl = tok.filter(pl.col("model") == m)["kl_pq"].cast(pl.Float64).to_numpy()
        kl = kl[np.isfinite(kl)]
        if kl.size == 0:
            continue
        st = kl_percentiles(kl)
        floor_used |= bool((kl < KL_FLOOR).any())
        if kl.size > CDF_POINTS:  # the curve at CDF_POINTS quantiles draws the same picture
            ys = np.linspace(0, 1, CDF_POINTS)
            xs = np.maximum(np.quantile(kl, ys), KL_FLOOR)
        else:
            xs = np.sort(np.maximum(kl, KL_FLOOR))
            ys = np.arange(1, xs.size + 1) / xs.size
        ax.step(xs, ys, where="post", color=colors[m], lw=1.8,
                label=f"{m}: mean {st['mean']:.4f} nats, median {st['p50']:.3g}, P99 {st['p99']:.3g} "
                      f"(n = {kl.size:,} tokens)")
        px = [max(st[f"p{p:g}"], KL_FLOOR) for p in KL_PERCENTILES] + [max(st["max"], KL_FLOOR)]
        py = [p / 100 for p in KL_PERCENTILES] + [1.0]
        ax.plot(px, py, ls="none", marker="D", ms=5, mfc="white", mec=colors[m], mew=1.4,
                label=None if pct_label_done else "percentiles 0.1, 1, 5, 10, 50, 90, 95, 99, 99.9 and max")
        pct_label_done = True
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("KL(base ‖ quantized) per token (nats, log scale)")
    ax.set_ylabel("cumulative share of scored tokens")
    ax.set_title(f"Vocabulary-wide token KL: base vs {', '.join(data.models)}\n"
                 "empirical CDF over every scored continuation token", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=7.5)
    fig.tight_layout()
    cap = ("Empirical CDF of KL(P‖Q) between the base (P) and quantized (Q) next-token distributions over the "
           "whole vocabulary, one value per scored continuation token, with llama.cpp's percentiles marked.")
    if floor_used:
        cap += f" KL values below {KL_FLOOR:g} nats are drawn at {KL_FLOOR:g}."
    return [Figure("token_kl_cdf", fig, "Token KL distribution", cap, "tokens")]


# ---------------------------------------------------------------------------
# uncertainty strata


# the shift the strata figure draws (defined for every task kind), and the example-level shifts of the tests


def _kl_table(data: AnalysisData) -> str:
    tok = data.tokens
    if tok.height == 0 or "kl_pq" not in tok.columns:
        return ""
    rows = []
    for m in data.models:
        t = tok.filter(pl.col("model") == m)
        st = kl_percentiles(t["kl_pq"].cast(pl.Float64).to_numpy())
        if not st:
            continue
        r = {"model": m, "tokens": int(st["n"]), "mean KL": st["mean"], "± stderr": st["stderr"],
             "max": st["max"]}
        for p in KL_PERCENTILES:
            r[f"{'median' if p == 50 else f'{p:g}%'}"] = st[f"p{p:g}"]
        r["min"] = st["min"]
        if "delta_p" in t.columns:
            dp = t["delta_p"].cast(pl.Float64).drop_nans().drop_nulls()
            r["RMS Δp"] = float((dp ** 2).mean() ** 0.5) if dp.len() else None
        if "top1_agree" in t.columns:
            r["same top p"] = float(t["top1_agree"].cast(pl.Float64).drop_nans().mean())
        rows.append(r)
    if not rows:
        return ""
    return ("<h3>KL statistics as llama.cpp prints them</h3>" + table_html(pl.DataFrame(rows)) +
            "<p class='meta'>KL(base ‖ quantized) in nats per scored token; percentiles by linear "
            "interpolation; Δp = p_quant(target) − p_base(target); same top p = share of tokens whose "
            "most likely next token is the same.</p>")


def tokens_section(data: AnalysisData, figs: list[Figure]) -> str:
    return _figs(figs, "tokens") + _kl_table(data)


SECTION = Section("tokens", "Token distributions: KL(base ‖ quantized)", "dump kinds with aligned token rows",
                  ("tokens",), tokens_section, (fig_token_kl,))
