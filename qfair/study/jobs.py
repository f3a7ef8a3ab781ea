"""The two kinds of job a study runs, as plain functions of JSON-like dicts so
that any executor can run them: in this process, or pickled into a cluster job
by submitit. Each decides again, from the disk, what is left to do (a job that
is re-run after a preemption resumes instead of starting over)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["run_dump_job", "run_analysis_job"]


def _write_record(path: Path, job: dict[str, Any]) -> None:
    from qfair.fsutil import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps({"job": job}, indent=1, sort_keys=True, default=str) + "\n").encode())


def run_dump_job(job: dict[str, Any]) -> dict[str, Any]:
    """Write (or resume, or skip) one dump of a study; returns what happened."""
    import gc

    from qfair.dump.run import dump
    from qfair.study.plan import DumpJob, dump_action

    d = DumpJob(job["key"], job["model"], job["group"], job["spec"], job["quant"], Path(job["path"]),
                Path(job["record"]), dict(job["kwargs"]), job.get("depends"), verify=bool(job.get("verify")))
    action, why = dump_action(d)
    if action == "skip":
        return {"key": d.key, "action": "skip", "why": why, "seconds": 0.0}
    t0 = time.perf_counter()
    if action == "redo" and d.path.is_dir():
        from qfair.dump.manifest import is_dump_dir, write_marker

        if not is_dump_dir(d.path):  # planned as this study's own dump (its record): mark it for --overwrite
            write_marker(d.path)
    _write_record(d.record, d.fingerprint())
    kw = dict(d.kwargs)
    out = kw.pop("out")
    kw.pop("progress", None)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        s = dump(out, resume=action == "resume", overwrite=action == "redo", progress=False, **kw)
    finally:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
    return {"key": d.key, "action": action, "why": why, "seconds": time.perf_counter() - t0,
            "rows": int(getattr(s, "n_rows", 0) or 0), "summary": s.text()}


def run_analysis_job(job: dict[str, Any]) -> dict[str, Any]:
    """Compare one (base, quantized) pair of a study and write its tables and report."""
    from qfair.analyze import compare
    from qfair.study.plan import AnalysisJob, analysis_action, analysis_fingerprint

    a = AnalysisJob(job["key"], job["model"], job["group"], job["spec"], Path(job["base"]), Path(job["quant"]),
                    Path(job["path"]), Path(job["record"]), dict(job["options"]), list(job["formats"]),
                    bool(job["report"]))
    action, why = analysis_action(a)
    if action == "skip":
        return {"key": a.key, "action": "skip", "why": why, "seconds": 0.0}
    t0 = time.perf_counter()
    cmp = compare(a.base, a.quant, **a.options)
    a.path.parent.mkdir(parents=True, exist_ok=True)
    cmp.write(a.path, formats=tuple(a.formats))
    if a.report:
        from qfair.report import build_report

        build_report(a.path, title=f"{a.model}: {a.spec} vs {Path(a.base).name} ({a.group})")
    _write_record(a.record, analysis_fingerprint(a))
    return {"key": a.key, "action": "run", "why": why, "seconds": time.perf_counter() - t0,
            "notes": list(cmp.notes)}
