"""Running a study's jobs: in this process (``local``), or as cluster jobs through
submitit (``slurm``; ``submitit-local`` runs the same job arrays as processes
on this machine, to check a study before sending it to a cluster).

Order: the dumps that need nothing first (every base dump, and the quantized
dumps of scored tasks and texts), then the quantized generation dumps (they
are teacher-forced on their base dump's texts), then the analyses of every
pair whose two dumps exist. A failed job is reported and its dependants are
skipped; the others go on. No scheduler of qfair's own: submitit submits each
phase as a job array and waits for it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qfair.study.config import StudyError
from qfair.study.jobs import run_analysis_job, run_dump_job
from qfair.study.plan import Plan

__all__ = ["EXECUTORS", "ExecResult", "execute", "check_executor"]

EXECUTORS = ("local", "slurm", "submitit-local")


@dataclass
class ExecResult:
    dumps: dict[str, dict[str, Any]] = field(default_factory=dict)      # key -> what the job returned
    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)                # "dump <key>" / "analysis <key>" -> why
    seconds: float = 0.0


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [x for x in text.splitlines() if x.strip()]
    # a submitit failure carries the remote traceback: its last line is the error
    return (lines[-1] if lines else type(e).__name__)[:400]


def check_executor(executor: str) -> None:
    """Whether ``executor`` can run here, checked before any file is written:
    submitit importable, and for ``slurm`` a Slurm installation (``sbatch``)."""
    import shutil

    if executor not in EXECUTORS:
        raise StudyError(f"--executor {executor!r}: expected one of {', '.join(EXECUTORS)}")
    if executor == "local":
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise StudyError("--executor slurm / submitit-local need submitit: pip install 'qfair[cluster]' "
                         "(or pip install submitit)") from None
    if executor == "slurm" and shutil.which("sbatch") is None:
        raise StudyError("--executor slurm: no Slurm on this machine (sbatch is not on PATH); run the study on a "
                         "Slurm login node, or use --executor local / submitit-local here")


def _submitit(plan: Plan, cluster: str) -> Any:
    check_executor(cluster)
    import submitit

    folder = plan.out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    return submitit.AutoExecutor(folder=folder, cluster="slurm" if cluster == "slurm" else "local")


def _params(plan: Plan, kind: str, cluster: str) -> dict[str, Any]:
    s = plan.study.slurm
    dump = kind == "dump"
    gpus = s.get("gpus_per_job", 1 if cluster == "slurm" else 0) if dump else 0
    p: dict[str, Any] = {
        "name": f"qfair-{plan.study.name}-{kind}",
        "timeout_min": s.get("time_min", 240) if dump else s.get("analysis_time_min", 60),
        "gpus_per_node": gpus,
        "cpus_per_task": s.get("cpus_per_job", 8) if dump else s.get("analysis_cpus", 4),
        "nodes": 1, "tasks_per_node": 1,
    }
    mem = s.get("mem_gb") if dump else s.get("analysis_mem_gb", s.get("mem_gb"))
    if mem:
        p["mem_gb"] = mem
    part = s.get("partition") if dump else s.get("analysis_partition", s.get("partition"))
    if part:
        p["slurm_partition"] = part
    for k in ("account", "qos", "constraint"):
        if k in s:
            p[f"slurm_{k}"] = s[k]
    if "array_parallelism" in s:
        p["slurm_array_parallelism"] = s["array_parallelism"]
    if s.get("extra"):
        p["slurm_additional_parameters"] = dict(s["extra"])
    return p


def _run_phase(plan: Plan, executor: str, kind: str, jobs: list[dict[str, Any]], fn: Callable[..., Any],
               log: Callable[[str], None], res: ExecResult) -> None:
    store = res.dumps if kind == "dump" else res.analyses
    if not jobs:
        return
    if executor == "local":
        for i, j in enumerate(jobs):
            log(f"[{kind} {i + 1}/{len(jobs)}] {j['key']} ...")
            t0 = time.perf_counter()
            try:
                out = fn(j)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one failed job does not stop the others
                res.failed[f"{kind} {j['key']}"] = _one_line(e)
                log(f"    FAILED: {_one_line(e)}")
                continue
            store[j["key"]] = out
            log(f"    {out['action']} ({out.get('why', '')}) in {time.perf_counter() - t0:.1f} s")
        return
    ex = _submitit(plan, executor)
    ex.update_parameters(**_params(plan, kind, executor))
    with ex.batch():
        subs = [(j, ex.submit(fn, j)) for j in jobs]
    ids = ", ".join(sorted({str(s.job_id).split("_")[0] for _, s in subs}))
    log(f"[{kind}s] submitted {len(subs)} job(s) ({executor}: {ids}); waiting")
    for j, s in subs:
        try:
            out = s.result()
        except Exception as e:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError
            res.failed[f"{kind} {j['key']}"] = _one_line(e)
            log(f"    {j['key']}: FAILED: {_one_line(e)}")
            continue
        store[j["key"]] = out
        log(f"    {j['key']}: {out['action']} ({out.get('why', '')}) in {out.get('seconds', 0.0):.1f} s")


def execute(plan: Plan, executor: str = "local", log: Callable[[str], None] = print) -> ExecResult:
    """Run what the plan says is left to do (module doc)."""
    check_executor(executor)
    t0 = time.perf_counter()
    res = ExecResult()
    todo = [d for d in plan.dumps if d.action != "skip"]
    first = [d.to_json() for d in todo if d.depends is None]
    _run_phase(plan, executor, "dump", first, run_dump_job, log, res)
    failed_keys = {k.split(" ", 1)[1] for k in res.failed}
    second = []
    for d in todo:
        if d.depends is None:
            continue
        if d.depends in failed_keys:
            res.failed[f"dump {d.key}"] = f"skipped: its base dump {d.depends} failed"
            continue
        second.append(d.to_json())
    _run_phase(plan, executor, "dump", second, run_dump_job, log, res)
    failed_keys = {k.split(" ", 1)[1] for k in res.failed if k.startswith("dump ")}
    analyses = []
    for a in plan.analyses:
        bad = [k for k in a.depends if k in failed_keys]
        if bad:
            res.failed[f"analysis {a.key}"] = f"skipped: dump {bad[0]} failed"
            continue
        analyses.append(a.to_json())
    _run_phase(plan, executor, "analysis", analyses, run_analysis_job, log, res)
    res.seconds = time.perf_counter() - t0
    return res


def analysis_paths(plan: Plan) -> list[Path]:
    return [a.path for a in plan.analyses]
