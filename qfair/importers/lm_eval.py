"""``qfair import lm-eval PATH --out DIR``: lm-evaluation-harness sample logs as a
``choices_only`` dump.

``lm_eval ... --log_samples --output_path OUT`` writes, per run,
``results_<date>.json`` and one ``samples_<task>_<date>.jsonl`` per task (one
JSON object per document: the document, the requests' arguments, the responses
and the per-document metrics). For multiple-choice tasks every response is the
pair ``[log-likelihood, is_greedy]`` of one choice. The import keeps, per
document: the context, the choices (the continuations without the task's target
delimiter), the gold label, every choice's log-likelihood, is_greedy and length,
and lm-eval's own per-document metrics (``extras``).

The import checks that qfair's definitions give back what lm-eval computed in
that run: per document, acc and acc_norm (and pct_stereotype / likelihood_diff
for CrowS-Pairs, mc2 for TruthfulQA MC2) from the logged log-likelihoods equal
the logged values, and their means equal ``results_<date>.json``. Anything else
is refused with one line naming the file and the problem: generation tasks, a
directory holding several runs, multiple gold answers, metrics that do not
follow from the log-likelihoods.

Two imports of the same tasks (a full-precision and a quantized model) then
analyze against each other with everything qfair computes for choices:
accuracy differences with CIs, flips with McNemar, calibration, strata and
groups. The task version (and number of shots) is recorded per task, and two
dumps of different versions are not compared.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError

__all__ = ["import_lm_eval", "find_run", "LmEvalRun", "TaskLog"]

_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")
_RESULTS = re.compile(r"^results_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.json$")
# CrowS-Pairs logs this metric; its docs carry the bias type, qfair's group for the task
_CROWS_METRIC = "pct_stereotype"


@dataclass
class TaskLog:
    task: str
    path: Path
    samples: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    version: Any = None
    n_shot: Any = None
    aggregate: dict[str, Any] = field(default_factory=dict)


@dataclass
class LmEvalRun:
    """The files of one lm-eval run: its results file (if found) and its tasks' samples."""

    date: str
    results_path: Path | None
    results: dict[str, Any]
    tasks: list[TaskLog]


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DumpError(f"{p}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    except json.JSONDecodeError as e:
        raise DumpError(f"{p}: not JSON (line {e.lineno}: {e.msg})") from None


def _read_jsonl(p: Path) -> list[dict[str, Any]]:
    out = []
    try:
        with open(p, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DumpError(f"{p}: line {i} is not JSON ({e.msg}); a truncated log?") from None
                if not isinstance(obj, dict):
                    raise DumpError(f"{p}: line {i} is not a JSON object")
                out.append(obj)
    except (OSError, UnicodeDecodeError) as e:
        raise DumpError(f"{p}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not out:
        raise DumpError(f"{p}: no samples (an empty log)")
    return out


def find_run(path: str | os.PathLike) -> LmEvalRun:
    """The samples files (and results file) of one run: ``path`` is a directory
    (searched recursively) or one samples file."""
    p = Path(path)
    if p.is_file():
        m = _SAMPLES.match(p.name)
        if not m:
            raise DumpError(f"{p}: not an lm-eval samples log (expected samples_<task>_<date>.jsonl)")
        files = [p]
        date = m["date"]
        search = p.parent
    elif p.is_dir():
        files = sorted(f for f in p.rglob("samples_*.jsonl") if _SAMPLES.match(f.name))
        if not files:
            raise DumpError(f"{p}: no samples_<task>_<date>.jsonl files (run lm_eval with --log_samples)")
        dates = sorted({_SAMPLES.match(f.name)["date"] for f in files})
        if len(dates) > 1:
            raise DumpError(f"{p}: holds the logs of {len(dates)} runs ({', '.join(dates)}); pass the directory "
                            "or the samples file of one run")
        date = dates[0]
        search = files[0].parent
    else:
        raise DumpError(f"{p}: no such file or directory")
    res_path = search / f"results_{date}.json"
    results = _read_json(res_path) if res_path.is_file() else {}
    if results and not isinstance(results, dict):
        raise DumpError(f"{res_path}: not an lm-eval results file")
    tasks = []
    for f in files:
        task = _SAMPLES.match(f.name)["task"]
        tasks.append(TaskLog(task, f, _read_jsonl(f), (results.get("configs") or {}).get(task) or {},
                             (results.get("versions") or {}).get(task), (results.get("n-shot") or {}).get(task),
                             (results.get("results") or {}).get(task) or {}))
    return LmEvalRun(date, res_path if results else None, results, tasks)


# ---------------------------------------------------------------------------
# one task's documents
# ---------------------------------------------------------------------------

def _output_type(t: TaskLog) -> str:
    ot = t.config.get("output_type")
    if ot:
        return str(ot)
    # no results file: tell from the responses (multiple choice: one [loglik, is_greedy] pair per choice)
    r = t.samples[0].get("filtered_resps")
    if isinstance(r, list) and r and all(isinstance(x, list) and len(x) == 2 for x in r) and len(r) > 1:
        return "multiple_choice"
    return "unknown (no results file, and the responses are not per-choice log-likelihoods)"


def _float(s: Any, where: str) -> float:
    try:
        x = float(s)
    except (TypeError, ValueError, OverflowError):
        raise DumpError(f"{where}: log-likelihood {s!r} is not a number") from None
    if not math.isfinite(x) or x > 0:
        # NaN / +inf / a positive log-likelihood is no probability; -inf (probability 0) would make
        # accuracy and the choice distributions disagree silently: refuse it, naming the document
        raise DumpError(f"{where}: log-likelihood {s!r} is not a finite log-probability (<= 0); "
                        "the log is damaged or the model produced non-finite scores")
    return x


def _bool(s: Any, where: str) -> bool:
    if isinstance(s, bool):
        return s
    if s in ("True", "False"):
        return s == "True"
    raise DumpError(f"{where}: is_greedy {s!r} is not True/False")


@dataclass
class _Doc:
    doc_id: int
    context: str
    choices: list[str]
    logliks: list[float]
    greedy: list[bool]
    label: int
    labels: list[int] | None
    group: str | None
    metrics: dict[str, float]
    hashes: dict[str, str]


def _task_kind(t: TaskLog) -> str:
    metrics = set(t.samples[0].get("metrics") or [])
    if _CROWS_METRIC in metrics:
        return "crows_pairs"
    if t.task.endswith("truthfulqa_mc2"):
        return "mc2"
    return "multiple_choice"


def _parse_doc(t: TaskLog, s: dict[str, Any], kind: str, delim: str, group_field: str | None) -> _Doc:
    where = f"{t.path}: doc {s.get('doc_id', '?')}"
    try:
        doc_id = int(s["doc_id"])
        args = s["arguments"]
        resps = s["filtered_resps"]
    except (KeyError, TypeError, ValueError):
        raise DumpError(f"{where}: missing doc_id / arguments / filtered_resps; not an lm-eval samples log") from None
    gen = [args[k] for k in sorted(args, key=lambda k: int(k.rsplit("_", 1)[-1]))] if isinstance(args, dict) \
        else list(args)
    if len(gen) != len(resps) or len(gen) < 2:
        raise DumpError(f"{where}: {len(gen)} requests and {len(resps)} responses; not a multiple-choice document")
    conts = [g["arg_1"] if isinstance(g, dict) else g[1] for g in gen]
    ctx = gen[0]["arg_0"] if isinstance(gen[0], dict) else gen[0][0]
    choices = [c[len(delim):] if delim and c.startswith(delim) else c for c in conts]
    lls, greedy = [], []
    for r in resps:
        if not (isinstance(r, list) and len(r) == 2):
            raise DumpError(f"{where}: response {r!r} is not a [log-likelihood, is_greedy] pair")
        lls.append(_float(r[0], f"{where}, choice {len(lls)}"))
        greedy.append(_bool(r[1], where))
    target = s.get("target")
    label = _label(target, choices, where)
    labels = None
    doc = s.get("doc") or {}
    if kind == "mc2":
        try:
            labels = [int(x) for x in doc["mc2_targets"]["labels"]]
        except (KeyError, TypeError, ValueError):
            raise DumpError(f"{where}: a TruthfulQA MC2 document without doc.mc2_targets.labels") from None
        if len(labels) != len(choices):
            raise DumpError(f"{where}: {len(labels)} mc2 labels for {len(choices)} choices")
    field_name = group_field or ("bias_type" if kind == "crows_pairs" else None)
    group = None
    if field_name is not None:
        g = doc.get(field_name)
        group = None if g is None else str(g)
    metrics = {m: float(s[m]) for m in (s.get("metrics") or []) if isinstance(s.get(m), (int, float))}
    hashes = {k: s[k] for k in ("doc_hash", "prompt_hash", "target_hash") if isinstance(s.get(k), str)}
    return _Doc(doc_id, ctx, choices, lls, greedy, label, labels, group, metrics, hashes)


def _label(target: Any, choices: list[str], where: str) -> int:
    t = str(target).strip()
    if re.fullmatch(r"-?\d+", t):
        i = int(t)
        if not 0 <= i < len(choices):
            raise DumpError(f"{where}: gold index {i} outside its {len(choices)} choices")
        return i
    if t.startswith("[") and t.endswith("]"):
        raise DumpError(f"{where}: several gold answers ({t}); qfair compares tasks with one gold choice")
    if t in choices:
        return choices.index(t)
    raise DumpError(f"{where}: gold answer {t[:60]!r} is neither an index nor one of the choices")


# ---------------------------------------------------------------------------
# checking that qfair's definitions give back lm-eval's numbers
# ---------------------------------------------------------------------------

def _check_metrics(t: TaskLog, docs: Sequence[_Doc], kind: str) -> dict[str, float]:
    """Per document, lm-eval's logged metrics against qfair's registry on the logged
    log-likelihoods; then the means against results_<date>.json. Returns the means."""
    from qfair.metrics.example_metrics import ChoiceArrays
    from qfair.metrics.task_kinds import example_metrics

    counts = np.array([len(d.choices) for d in docs])
    a = ChoiceArrays.build(np.array([x for d in docs for x in d.logliks], dtype=np.float64),
                           np.array([len(c) for d in docs for c in d.choices], dtype=np.float64), counts,
                           np.array([d.label for d in docs]), [d.labels for d in docs],
                           np.array([kind] * len(docs), dtype=object))
    ours = {m.name: np.asarray(m.compute(a), dtype=np.float64) for m in example_metrics([kind])}
    # lm-eval's metric name -> (qfair's metric, tolerance)
    pairs = {"acc": ("mc2", 1e-12) if kind == "mc2" else ("acc", 0.0), "acc_norm": ("acc_norm", 0.0),
             "pct_stereotype": ("pct_stereotype", 0.0), "likelihood_diff": ("likelihood_diff", 0.0)}
    logged = sorted({m for d in docs for m in d.metrics})
    unknown = [m for m in logged if m not in pairs]
    if not any(m in pairs for m in logged):
        raise DumpError(f"{t.path}: task {t.task} logs the metrics {', '.join(logged) or 'none'}; qfair can check "
                        "acc, acc_norm (and CrowS-Pairs, TruthfulQA MC2) against the log-likelihoods")
    means: dict[str, float] = {}
    for m in logged:
        if m in unknown:
            continue
        name, tol = pairs[m]
        mine = ours[name]
        for i, d in enumerate(docs):
            if m not in d.metrics:
                raise DumpError(f"{t.path}: doc {d.doc_id} lacks the metric {m} the other documents have")
            if not abs(mine[i] - d.metrics[m]) <= tol:
                raise DumpError(f"{t.path}: doc {d.doc_id}: lm-eval's {m} is {d.metrics[m]!r}, but its logged "
                                f"log-likelihoods give {mine[i]!r} under qfair's definition")
        means[m] = float(np.mean([d.metrics[m] for d in docs]))
        agg = t.aggregate.get(f"{m},none")
        if isinstance(agg, (int, float)) and not math.isclose(agg, means[m], rel_tol=1e-12, abs_tol=1e-12):
            raise DumpError(f"{t.path}: the documents' mean {m} is {means[m]!r}, results_*.json says {agg!r}; "
                            "the samples are not those of the run's results (filtered, or from another run?)")
        # and what qfair itself will report from the imported log-likelihoods (NaN counts as disagreement)
        mine_mean = float(np.mean(mine)) if len(mine) else math.nan
        if isinstance(agg, (int, float)) and not (abs(mine_mean - agg) <= max(tol, 1e-12) * max(1.0, abs(agg))):
            raise DumpError(f"{t.path}: the imported log-likelihoods give {m} = {mine_mean!r}, results_*.json says "
                            f"{agg!r}; refusing an import whose accuracy disagrees with lm-eval's")
    return means


# ---------------------------------------------------------------------------
# the import
# ---------------------------------------------------------------------------

def _file_sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def import_lm_eval(path: str | os.PathLike, out: str | os.PathLike, *, group_field: str | None = None,
                   overwrite: bool = False, progress: bool = True) -> Any:
    """Import one lm-eval run's sample logs of multiple-choice tasks into a
    ``choices_only`` dump at ``out``; returns the dump's summary (whose
    per-task acc / acc_norm are lm-eval's)."""
    from qfair.dump.summary import summarize
    from qfair.dump.writer import DumpWriter

    t0 = time.perf_counter()
    run = find_run(path)
    per_task = [_read_task(t, group_field) for t in run.tasks]
    w = DumpWriter(out, kind="choices_only", examples=_examples(per_task), vocab_size=1, tokenizer=None,
                   tasks=_task_records(run, per_task), model=_model_record(run, per_task),
                   store="none", config={"import": "lm-eval", "path": str(Path(path).resolve()),
                                         "group_field": group_field},
                   info={"scoring": {"rules": "lm-evaluation-harness (imported log-likelihoods)",
                                     "acc_norm_length": "unicode code points of the choice"}},
                   overwrite=overwrite, resumable=False, inputs={"PATH": path})
    try:
        _write_choices(w, per_task)
        w.close()
    except BaseException:
        w.abort()
        raise
    return summarize(Path(out), w.manifest, time.perf_counter() - t0)


def _read_task(t: TaskLog, group_field: str | None) -> tuple[TaskLog, str, list[_Doc]]:
    """One task's log: (the log, its task kind, its documents by doc id), checked
    (multiple choice, no mutual-information scoring, each doc once, lm-eval's
    metrics reproduced)."""
    ot = _output_type(t)
    if ot != "multiple_choice":
        raise DumpError(f"{t.path}: task {t.task} is a {ot} task; qfair imports multiple_choice tasks "
                        "(per-choice log-likelihoods) only")
    kind = _task_kind(t)
    if "acc_mutual_info" in (t.samples[0].get("metrics") or []):
        raise DumpError(f"{t.path}: task {t.task} scores with acc_mutual_info (unconditional requests beside "
                        "the choices); qfair imports plain multiple-choice log-likelihoods")
    delim = t.config.get("target_delimiter", " ")
    docs = sorted((_parse_doc(t, s, kind, delim, group_field) for s in t.samples), key=lambda d: d.doc_id)
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DumpError(f"{t.path}: doc {dup} occurs twice (repeats > 1, or two runs in one file)")
    _check_metrics(t, docs, kind)
    return t, kind, docs


def _examples(per_task: list[tuple[TaskLog, str, list[_Doc]]]) -> dict[str, list]:
    """The dump's examples table: one row per document of every task."""
    ex: dict[str, list] = {k: [] for k in ("example_id", "task", "doc_index", "group", "label", "n_choices",
                                          "context", "choices", "labels", "extras")}
    for t, _, docs in per_task:
        for d in docs:
            ex["example_id"].append(f"{t.task}/{d.doc_id}")
            ex["task"].append(t.task)
            ex["doc_index"].append(d.doc_id)
            ex["group"].append(d.group)
            ex["label"].append(d.label)
            ex["n_choices"].append(len(d.choices))
            ex["context"].append(d.context)
            ex["choices"].append(d.choices)
            ex["labels"].append(d.labels)
            ex["extras"].append(json.dumps({"lm_eval": d.metrics, **d.hashes}, sort_keys=True))
    return ex


def _task_records(run: Any, per_task: list[tuple[TaskLog, str, list[_Doc]]]) -> list[dict[str, Any]]:
    """The manifest's tasks: each with its lm-eval version, shots, hashes and aggregate results."""
    res = run.results
    lm_version = res.get("lm_eval_version")
    return [{"name": t.task, "kind": kind,
             "prompt_format_version": f"lm-eval {t.task} v{t.version} ({t.n_shot}-shot)",
             "source": "lm-evaluation-harness --log_samples", "lm_eval_version": lm_version,
             "version": t.version, "n_shot": t.n_shot, "target_delimiter": t.config.get("target_delimiter", " "),
             "task_hash": (res.get("task_hashes") or {}).get(t.task), "source_hash": _file_sha(t.path),
             "n_examples": len(docs), "lm_eval_results": {k: v for k, v in t.aggregate.items()
                                                           if isinstance(v, (int, float))}}
            for t, kind, docs in per_task]


def _model_record(run: Any, per_task: list[tuple[TaskLog, str, list[_Doc]]]) -> dict[str, Any]:
    """The manifest's model: what lm-eval's results file says of the run, and the files read."""
    res = run.results
    cfg = res.get("config") or {}
    return {"id": res.get("model_name") or cfg.get("model_args") or "unknown", "source": "lm-evaluation-harness log",
            "model": cfg.get("model"), "model_args": cfg.get("model_args"), "lm_eval_version": res.get("lm_eval_version"),
            "transformers_version": res.get("transformers_version"), "date": res.get("date"),
            "results_file": str(run.results_path) if run.results_path else None,
            "results_sha256": _file_sha(run.results_path) if run.results_path else None,
            "samples_files": [str(t.path) for t, _, _ in per_task]}


def _write_choices(w: Any, per_task: list[tuple[TaskLog, str, list[_Doc]]]) -> None:
    """Every document's per-choice log-likelihoods, in the examples' order."""
    for t, _, docs in per_task:
        for d in docs:
            n = len(d.choices)
            w.add({"choices": {"task": [t.task] * n, "example_id": [f"{t.task}/{d.doc_id}"] * n,
                               "doc_index": [d.doc_id] * n, "choice": list(range(n)), "loglik": d.logliks,
                               "n_tokens": [0] * n, "n_chars": [len(c) for c in d.choices],
                               "n_bytes": [len(c.encode("utf-8")) for c in d.choices], "is_greedy": d.greedy,
                               "first_row": [-1] * n, "n_rows": [0] * n}})
