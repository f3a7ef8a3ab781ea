"""``qfair study STUDY.toml``: a grid of models x quantization specs x task groups
in one command — every missing dump written (complete ones skipped,
interrupted ones resumed), every (base, quantized) pair of a model analysed,
and one cross-model table, figures and HTML page (docs/study.md).

::

    from qfair.study import load_study, run_study
    res = run_study("study.toml", out="runs/study")          # executor="local" | "slurm" | "submitit-local"
    res.table                                                  # polars: one row per model x spec x task x metric
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qfair.study.config import Study, StudyError, load_study
from qfair.study.plan import Plan, expected_rows, make_plan

__all__ = ["StudyError", "Study", "Plan", "StudyResult", "load_study", "make_plan", "run_study", "format_plan"]


@dataclass
class StudyResult:
    plan: Plan
    table: Any = None
    html: Path | None = None
    figures: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _out(study: Study, out: str | os.PathLike | None) -> Path:
    if out is not None:
        return Path(out).resolve()
    if study.out is not None:
        return study.out
    raise StudyError(f"{study.path}: no output directory: give --out DIR or out = \"DIR\" in the study file")


def _bytes(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


def format_plan(plan: Plan) -> str:
    """The dry run's account: every dump (what will happen, expected rows and disk)
    and every analysis, then the totals."""
    st = plan.study
    lines = [f"qfair study {st.name}: {len(st.models)} model(s) x {1 + len(st.specs)} spec(s) "
             f"({', '.join([st.base.label, *(s.label for s in st.specs)])}) x {len(st.groups)} task group(s) "
             f"({', '.join(g.name for g in st.groups)}) = {len(plan.dumps)} dumps, {len(plan.analyses)} analyses "
             f"-> {plan.out}", "", "dumps:"]
    w = max([len(d.key) for d in plan.dumps] + [4])
    lines.append(f"  {'dump':<{w}}  {'action':<7} {'rows':>12} {'disk (rows)':>12}  why")
    rows_todo = bytes_todo = 0
    approx = guessed = False
    for d in plan.dumps:
        rows = "?" if d.rows is None else (f"{d.rows:,}" if d.rows_exact else f"<= {d.rows:,}")
        rows = f"~{rows}" if d.rows_estimated and d.rows is not None else rows
        disk = "?" if d.rows is None or d.row_bytes is None else _bytes(d.rows * d.row_bytes)
        lines.append(f"  {d.key:<{w}}  {d.action:<7} {rows:>12} {disk:>12}  {d.why}")
        if d.action != "skip" and d.rows is not None:
            rows_todo += d.rows
            bytes_todo += d.rows * (d.row_bytes or 0)
            approx |= not d.rows_exact
            guessed |= d.rows_estimated
    lines += ["", "analyses (base vs spec):"]
    for a in plan.analyses:
        lines.append(f"  {a.key:<{w}}  {a.action:<7} {a.why}")
    n_run = sum(d.action != "skip" for d in plan.dumps)
    n_an = sum(a.action != "skip" for a in plan.analyses)
    lines += ["", f"to do: {n_run} of {len(plan.dumps)} dumps ({'at most ' if approx else ''}"
                  f"{'~' if guessed else ''}{rows_todo:,} rows, "
                  f"{_bytes(bytes_todo)} of stored rows, plus tables), {n_an} of {len(plan.analyses)} analyses, "
                  "then the aggregate (results.parquet, figures/, report.html)"]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def run_study(path: str | os.PathLike, out: str | os.PathLike | None = None, *, executor: str = "local",
              dry_run: bool = False, log: Callable[[str], None] = print) -> StudyResult:
    """Run a study file (module doc); ``dry_run`` only plans and counts rows."""
    import time

    from qfair.study.aggregate import aggregate
    from qfair.study.execute import EXECUTORS, execute

    if executor not in EXECUTORS:
        raise StudyError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    t0 = time.perf_counter()
    study = load_study(path)
    plan = make_plan(study, _out(study, out))
    if dry_run:
        expected_rows(plan)
        log(format_plan(plan))
        return StudyResult(plan)
    if executor == "local":
        _check_local(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    from qfair.fsutil import atomic_write_bytes
    from qfair.lock import lock_dir

    lock = lock_dir(plan.out, "study")
    try:
        atomic_write_bytes(plan.out / "study.toml", study.path.read_bytes())
        atomic_write_bytes(plan.out / "plan.json", (json.dumps(plan.to_json(), indent=1, default=str) + "\n").encode())
        todo = sum(d.action != "skip" for d in plan.dumps)
        log(f"qfair study {study.name}: {todo} of {len(plan.dumps)} dumps to write, {len(plan.analyses)} pair(s) "
            f"to analyse ({executor}) -> {plan.out}")
        res = execute(plan, executor, log)
        agg = aggregate(plan, {"dumps": res.dumps, "failed": res.failed})
    finally:
        lock.release()
    log(f"qfair study: {agg.table.height} result rows; report {agg.html}")
    return StudyResult(plan, agg.table, agg.html, agg.figures, res.failed, time.perf_counter() - t0, agg.notes)


def _check_local(plan: Plan) -> None:
    """Specs that cannot run on this machine stop a local run before any work."""
    from qfair.models import parse_quant_spec
    from qfair.models.quant import spec_availability

    for spec in plan.study.specs:
        s = parse_quant_spec(spec.spec)
        if s.name in ("none", "prequantized"):
            continue
        ok, why = spec_availability(s.name)
        if not ok and any(d.quant == spec.spec and d.action != "skip" for d in plan.dumps):
            raise StudyError(f"{plan.study.path}: quantization spec {spec.spec!r} cannot run here ({why}); "
                             "remove it or run the study on a machine that has it (--executor slurm)")
