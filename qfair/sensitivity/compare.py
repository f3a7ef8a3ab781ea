"""Several quantization specs of one model on the held-out probes: each against
the base, and each later spec against the first, paired over examples.

Used to compare calibration sets (``gptq:calib=generic`` against
``gptq:calib=bias-balanced``): both draw calibration text from the scan side
of the split only, so the held-out side is a fair test of both.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def compare_specs(specs: Sequence[str], *, model: str | None = None, tasks: Any = None,
                  data_files: dict[str, Any] | None = None, limit: int | None = None, split: str = "0.5:0",
                  side: str = "heldout", resamples: int = 10_000, seed: int = 0, progress: bool = True,
                  load_kwargs: dict[str, Any] | None = None, data_dir: Any = None) -> Any:
    """A polars table: rows ``(spec, comparison, set, group, metric, n, base,
    value, delta, ci_low, ci_high, p)`` with comparison ``vs_base`` (every
    metric and bias type, as in a scan) or ``vs_<first spec>`` (paired
    differences of the headline metrics)."""
    import polars as pl

    from qfair.models import load_model
    from qfair.sensitivity.measure import compare, paired_rows, score_probes
    from qfair.sensitivity.probes import Split, build_probes, load_tasks
    from qfair.sensitivity.scan import _quiet_torch

    kw = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    task_objs = load_tasks(tasks, data_files, limit, data_dir)
    base_lm = load_model(model, quant="none", progress=progress, **kw)
    probes = build_probes(task_objs, base_lm.tokenizer, Split.parse(split), side)
    rows: list[dict[str, Any]] = []
    scored: dict[str, Any] = {}
    with _quiet_torch():
        base = score_probes(base_lm.model, base_lm.tokenizer, probes, keep_rows=True)
        for spec in specs:
            lm = load_model(model, quant=spec, progress=progress, **kw)
            scored[spec] = score_probes(lm.model, lm.tokenizer, probes, base=base)
            for r in compare(probes, base, scored[spec], resamples=resamples, seed=seed):
                rows.append({"spec": spec, "comparison": "vs_base", **r})
            del lm
    first = specs[0]
    for spec in specs[1:]:
        for r in paired_rows(probes, scored[spec].values, scored[first].values, resamples=resamples, seed=seed):
            rows.append({"spec": spec, "comparison": f"vs {first}", **r})
    schema = {"spec": pl.Utf8, "comparison": pl.Utf8, "set": pl.Utf8, "group": pl.Utf8, "metric": pl.Utf8,
              "n": pl.Int64, "base": pl.Float64, "value": pl.Float64, "delta": pl.Float64, "ci_low": pl.Float64,
              "ci_high": pl.Float64, "p": pl.Float64}
    return pl.DataFrame(rows, schema=schema), len(probes)
