"""The plan of a study: every dump and every analysis, where it goes and what is
left to do, decided from what is on disk.

Layout under the study's output directory::

    <out>/dumps/<model>/<group>/<spec>/       one dump per (model, task group, spec); the base is one spec
    <out>/analyses/<model>/<group>/<spec>/    base vs <spec>: tables and report/report.html
    <out>/jobs/<model>/<group>/<spec>.dump.json, .analysis.json
                                              what the study asked of each (compared on the next run)
    <out>/results.parquet|csv|md, <out>/figures/, <out>/report.html   the aggregate

A dump whose recorded job equals the study's is skipped when complete and
resumed when partial; a dump made with other settings is redone. An analysis
is redone when its options or either dump changed (the dumps' manifests are
fingerprinted).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qfair.dump.kinds import KINDS, get_kind, resolve
from qfair.study.config import ModelEntry, SpecEntry, Study, StudyError, TaskGroup

__all__ = ["DumpJob", "AnalysisJob", "Plan", "make_plan", "dump_action", "analysis_action", "expected_rows"]

# keys of a dump job that do not change what is written
_RUNTIME = ("out", "resume", "overwrite", "progress")


def _canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True, default=str, ensure_ascii=False)


@dataclass
class DumpJob:
    key: str                    # "<model>/<group>/<spec>"
    model: str
    group: str
    spec: str
    quant: str
    path: Path
    record: Path
    kwargs: dict[str, Any]      # qfair.dump.run.dump's keyword arguments (JSON-safe)
    depends: str | None = None  # the key of the dump this one needs first (generation: the base)
    action: str = "run"         # run | resume | redo | skip
    why: str = ""
    rows: int | None = None     # expected rows (dry run)
    rows_exact: bool = True
    rows_estimated: bool = False  # counted with a stand-in tokenizer (the model's own was not readable)
    row_bytes: int | None = None
    verify: bool = False        # the "complete" check hashes every file (else: sizes and presence)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "model": self.model, "group": self.group, "spec": self.spec, "quant": self.quant,
                "path": str(self.path), "record": str(self.record), "kwargs": self.kwargs, "depends": self.depends,
                "verify": self.verify}

    def fingerprint(self) -> dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k not in _RUNTIME}


@dataclass
class AnalysisJob:
    key: str
    model: str
    group: str
    spec: str
    base: Path
    quant: Path
    path: Path
    record: Path
    options: dict[str, Any]     # qfair.compare's keyword arguments
    formats: list[str]
    report: bool
    depends: tuple[str, str] = ("", "")
    action: str = "run"
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "model": self.model, "group": self.group, "spec": self.spec,
                "base": str(self.base), "quant": str(self.quant), "path": str(self.path), "record": str(self.record),
                "options": self.options, "formats": self.formats, "report": self.report,
                "depends": list(self.depends)}


@dataclass
class Plan:
    study: Study
    out: Path
    dumps: list[DumpJob] = field(default_factory=list)
    analyses: list[AnalysisJob] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what the dry run had to estimate, and how

    def dump(self, key: str) -> DumpJob:
        return next(d for d in self.dumps if d.key == key)

    def to_json(self) -> dict[str, Any]:
        return {"study": str(self.study.path), "name": self.study.name, "out": str(self.out),
                "models": [m.__dict__ for m in self.study.models],
                "dumps": [d.to_json() for d in self.dumps], "analyses": [a.to_json() for a in self.analyses]}


# ---------------------------------------------------------------------------
# jobs from the study
# ---------------------------------------------------------------------------

def _dump_kwargs(study: Study, model: ModelEntry, group: TaskGroup, spec: SpecEntry, out: Path,
                 reference: Path | None) -> dict[str, Any]:
    kind = get_kind(group.dump_kind)
    opts = study.dump_options(group)
    kw: dict[str, Any] = {"out": str(out), "model": model.id, "quant": spec.spec, "progress": False}
    for k in ("store", "store_dtype", "shard_rows", "batch_size", "seed", "threads"):
        if k in opts:
            kw[k] = opts[k]
    if kind.takes_tasks:
        kw["tasks"] = list(group.tasks)
        kw["data_files"] = dict(group.data_files)
        if study.data_dir is not None:
            kw["data_dir"] = study.data_dir
        kw["limit"] = opts.get("limit") or None
    options = dict(group.kind_options)
    if reference is not None:
        options[kind.base_option] = str(reference)
    kw["options"] = options
    kw["load_kwargs"] = dict(model.load)
    return kw


def job_kwargs_now(job: Any) -> Any:
    """A job record written before the dump kinds' options travelled as ``options``
    (``generation`` and ``load_kwargs["text"/"ctx"/"chunks"]``) in today's form, so
    that an earlier study's dumps are still recognised as made with the same settings."""
    if not isinstance(job, dict) or "options" in job:
        return job
    job = dict(job)
    load = dict(job.get("load_kwargs") or {})
    moved = {k: load.pop(k) for k in ("text", "ctx", "chunks") if k in load}
    job["options"] = {**moved, **(job.pop("generation", None) or {})}
    job["load_kwargs"] = load
    return job


def make_plan(study: Study, out: str | os.PathLike, *, verify: bool = False) -> Plan:
    """Every dump and analysis of the study, with what is left to do for each
    (``verify``: a complete dump is skipped only when every file it lists has
    its recorded digest; otherwise its recorded size)."""
    from qfair.fsutil import PathError, resolved

    try:
        out = resolved(out, "--out")
    except PathError as e:
        raise StudyError(str(e)) from None
    plan = Plan(study, out)

    def under(*names: str) -> Path:  # every label becomes a path component inside out, checked
        return _under(study, out, *names)

    a = study.analysis
    formats = list(a.get("formats", ["parquet", "csv", "md"]))
    compare_opts = {k: a[k] for k in ("bootstrap", "seed", "bins", "binning", "topk", "confidence", "strata",
                                      "n_strata", "threads", "chunk_rows") if k in a}
    if a.get("skip_hash"):
        compare_opts["verify_hash"] = False
    for m in study.models:
        for g in study.groups:
            base_key = f"{m.label}/{g.name}/{study.base.label}"
            base_path = under("dumps", m.label, g.name, study.base.label)
            for spec in (study.base, *study.specs):
                path = under("dumps", m.label, g.name, spec.label)
                is_base = spec is study.base
                ref = base_path if (get_kind(g.dump_kind).base_option and not is_base) else None
                job = DumpJob(f"{m.label}/{g.name}/{spec.label}", m.label, g.name, spec.label, spec.spec, path,
                              under("jobs", m.label, g.name, f"{spec.label}.dump.json"),
                              _dump_kwargs(study, m, g, spec, path, ref),
                              depends=base_key if ref is not None else None, verify=verify)
                job.action, job.why = dump_action(job)
                plan.dumps.append(job)
                if not is_base:
                    aj = AnalysisJob(f"{m.label}/{g.name}/{spec.label}", m.label, g.name, spec.label, base_path,
                                     path, under("analyses", m.label, g.name, spec.label),
                                     under("jobs", m.label, g.name, f"{spec.label}.analysis.json"),
                                     dict(compare_opts), formats, bool(a.get("report", True)),
                                     (base_key, job.key))
                    plan.analyses.append(aj)
    by_key = {d.key: d for d in plan.dumps}
    for d in plan.dumps:
        if d.depends is not None and by_key[d.depends].action != "skip" and d.action == "skip":
            d.action, d.why = "redo", "its reference (the base dump) will be written"
    for aj in plan.analyses:
        if any(by_key[k].action != "skip" for k in aj.depends):
            aj.action, aj.why = "run", "a dump it compares will be written"
        else:
            aj.action, aj.why = analysis_action(aj)
    return plan


def _under(study: Study, out: Path, *names: str) -> Path:
    """``out / names...``, each name a plain directory name and the result inside
    ``out`` (symlinks followed); StudyError otherwise."""
    from qfair.fsutil import PathError, child_path

    try:
        return child_path(out, *names, what="a study label")
    except PathError as e:
        raise StudyError(f"{study.path}: {e}") from None


# ---------------------------------------------------------------------------
# what is left to do, from the disk
# ---------------------------------------------------------------------------

def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def dump_action(job: DumpJob) -> tuple[str, str]:
    """(run | resume | redo | skip, why) for a dump job, from its directory and its record."""
    from qfair.dump import DumpError
    from qfair.dump.manifest import is_dump_dir

    man = _read_json(job.path / "manifest.json")
    if not isinstance(man, dict) or man.get("format") != "qfair-dump":
        if job.path.is_dir() and any(p.name != ".qfair.lock" for p in job.path.iterdir()):
            # a dump qfair began (the test --overwrite applies), or one this study began (its job record
            # is written before the dump starts): the job marks it so that its --overwrite cleans it
            if is_dump_dir(job.path) or job.record.is_file():
                return "redo", "its manifest.json is missing or unreadable"
            raise StudyError(f"{job.path}: exists, is not empty and holds no qfair dump; move it away")
        if job.path.exists() and not job.path.is_dir():
            raise StudyError(f"{job.path}: exists and is not a directory; move it away")
        return "run", "not written yet"
    rec = _read_json(job.record)
    same = rec is not None and _canon(job_kwargs_now(rec.get("job"))) == _canon(job.fingerprint())
    if not same:
        return "redo", "made with other settings" if rec is not None else "not made by this study"
    kind = get_kind(man.get("kind")) if man.get("kind") in KINDS else None
    if job.depends is not None and man.get("status") == "complete" and kind is not None \
            and kind.follows_base is not None:
        # made on the base dump (a generation dump teacher-forced on its texts): the base must still hold it
        base = _read_json(Path(job.kwargs["options"][kind.base_option]) / "manifest.json") or {}
        if not resolve(kind.follows_base)(man, base):
            return "redo", "its reference (the base dump) was rewritten"
    if man.get("status") == "complete":
        from qfair.dump.reader import open_dump

        try:  # every listed file present with its size (and digest with --verify)
            open_dump(job.path).verify(hash=job.verify)
        except DumpError as e:
            return "redo", f"complete, but {str(e).splitlines()[0]}"
        return "skip", "complete, same settings" + (" (files verified)" if job.verify else "")
    return "resume", "interrupted"


def manifest_sha256(dump: Path) -> str | None:
    try:
        return hashlib.sha256((dump / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return None


def analysis_fingerprint(job: AnalysisJob) -> dict[str, Any]:
    return {"options": job.options, "formats": job.formats, "report": job.report,
            "base": manifest_sha256(job.base), "quant": manifest_sha256(job.quant)}


def analysis_action(job: AnalysisJob) -> tuple[str, str]:
    from qfair.analyze.outdir import is_analysis_dir

    if not is_analysis_dir(job.path):
        return "run", "not analysed yet"
    rec = _read_json(job.record)
    if rec is None or _canon(rec.get("job")) != _canon(analysis_fingerprint(job)):
        return "run", "its dumps or options changed"
    if job.report and not (job.path / "report" / "report.html").is_file():
        return "run", "its report is missing"
    return "skip", "up to date"


# ---------------------------------------------------------------------------
# expected rows (dry run)
# ---------------------------------------------------------------------------

def _row_bytes(store: str, dtype: str, vocab: int) -> int:
    from qfair.dump import manifest as mf

    mode, k = mf.parse_store(store)
    if mode == "none":
        return 0
    if mode == "topk":
        return int(mf.topk_record(dtype, k).itemsize)
    return vocab * int(mf.NPY_DTYPES[dtype][-1])


def _tokenizer(model: ModelEntry, stand_in: dict[str, Any]) -> tuple[Any, int, bool]:
    """(tokenizer, logits row width, estimated): the model's own; else, for a
    model in qfair.models.known's table, its vocabulary from the table and the
    embedded model's tokenizer as a stand-in for counting rows."""
    from qfair.models import ModelError
    from qfair.models.known import known_model
    from qfair.models.loading import DEFAULT_MODEL, load_tokenizer

    try:
        tok, vocab = load_tokenizer(model.id, **model.load)
        return tok, vocab, False
    except ModelError:
        known = known_model(model.id)
        if known is None:
            raise
    if "tok" not in stand_in:
        stand_in["tok"] = load_tokenizer(DEFAULT_MODEL)[0]
    return stand_in["tok"], known.vocab_size, True


def _data_dir_for_counting(study: Study, notes: list[str]) -> str | None:
    if study.data_dir is None or os.path.isdir(study.data_dir):
        return study.data_dir
    notes.append(f"data_dir {study.data_dir} is not there yet (qfair data fetch ... --out {study.data_dir}): rows (~) "
                 "counted on the built-in samples; the full splits hold many more")
    return None


def expected_rows(plan: Plan, progress: bool = False) -> None:
    """Fill each dump job's expected rows and row bytes: tokenizers and configs
    only (no weights); generation dumps give an upper bound (every continuation
    at --max-new-tokens). A model whose tokenizer and configuration cannot be
    read here (offline) but is in :mod:`qfair.models.known`'s table is
    estimated: the table's vocabulary, rows counted with the embedded model's
    tokenizer; ``plan.notes`` says so."""
    import qfair.tasks as T

    cache: dict[tuple[str, str], tuple[int | None, bool]] = {}
    toks: dict[str, tuple[Any, int, bool]] = {}
    stand_in: dict[str, Any] = {}
    study = plan.study
    data_dir = _data_dir_for_counting(study, plan.notes)
    uncounted: list[str] = []
    for d in plan.dumps:
        model = next(m for m in study.models if m.label == d.model)
        group = next(g for g in study.groups if g.name == d.group)
        if d.model not in toks:
            toks[d.model] = _tokenizer(model, stand_in)
        tok, vocab, estimated = toks[d.model]
        d.rows_estimated = estimated
        opts = study.dump_options(group)
        kind = get_kind(group.dump_kind)
        # a kind that stores no logits rows (choices only) writes none, whatever --store says
        d.row_bytes = _row_bytes(opts.get("store", "full"), opts.get("store_dtype", "f16"), vocab) \
            if kind.stores_rows else 0
        key = (d.model, d.group)
        if key not in cache:
            tasks = []
            if kind.takes_tasks:
                limit = opts.get("limit") or None
                for n in group.tasks:
                    if data_dir is None and study.data_dir is not None and not group.data_files.get(n) \
                            and not T.has_builtin_sample(n):
                        uncounted.append(n)  # only the missing data directory holds it
                        continue
                    tasks.append(T.get(n, data_file=group.data_files.get(n), limit=limit, data_dir=data_dir))
            # the kind's own count: exact, or an upper bound (generation: every continuation at max_new_tokens)
            cache[key] = resolve(kind.estimate)(tasks, dict(group.kind_options), tok) if kind.estimate else (None, False)
        d.rows, d.rows_exact = cache[key]
        # counted on built-in samples in place of the data directory's full splits
        d.rows_estimated |= data_dir != study.data_dir and any(
            T.spec(n).hf is not None and not group.data_files.get(n) for n in group.tasks)
    if uncounted:
        plan.notes.append(f"no rows counted for {', '.join(dict.fromkeys(uncounted))}: no built-in sample, and "
                          "data_dir is not there yet")
    guessed = sorted(label for label, (_, _, est) in toks.items() if est)
    if guessed:
        plan.notes.append(f"{len(guessed)} model(s) without a readable tokenizer or config here ({', '.join(guessed)}): "
                          "vocabulary from qfair's table of known models (qfair/models/known.py), rows (~) counted "
                          "with the embedded smollm2-135m tokenizer as a stand-in")
