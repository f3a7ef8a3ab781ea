"""``qfair dump`` from names: resolve tasks and model, then hand them to the
producer of the run's dump kind (:mod:`qfair.dump.kinds` declares each kind's
options, ``prepare`` and producer; nothing here names a kind).

``dump(...)`` is what the CLI calls; ``run_dump(loaded, tasks, ...)`` takes an
already loaded model and task objects (the library API).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.dump.kinds import DumpKind, all_kinds, get_kind, option_owner, resolve, select_kind
from qfair.dump.multiple_choice import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_ROWS, run_dump
from qfair.dump.summary import DumpSummary, task_metrics

__all__ = ["dump", "run_dump", "default_tasks", "kind_options", "DumpSummary", "task_metrics",
           "DEFAULT_SHARD_ROWS", "DEFAULT_BATCH_SIZE"]


# ---------------------------------------------------------------------------
# from names (the CLI's entry point)
# ---------------------------------------------------------------------------

def default_tasks() -> list[str]:
    """The built-in samples of the seed benchmarks plus crows_pairs_english."""
    import qfair.tasks as T

    wanted = ["piqa", "boolq", "openbookqa", "arc_easy", "hellaswag", "truthfulqa_mc2", "xstorycloze_en",
              "crows_pairs_english"]  # the same set as qfair.demo.DEMO_TASKS
    return [n for n in wanted if n in T.names() and T.has_builtin_sample(n)]


def dump(out: str | os.PathLike, *, model: str | None = None, quant: str = "none",
         tasks: str | Iterable[str] | None = None, data_files: Iterable[str] | dict | None = None,
         data_dir: str | os.PathLike | None = None, limit: int | None = None, store: str = "full",
         store_dtype: str = "f16",
         shard_rows: int = DEFAULT_SHARD_ROWS, batch_size: int = DEFAULT_BATCH_SIZE,
         resume: bool = False, overwrite: bool = False, seed: int = 0, progress: bool = True,
         load_kwargs: dict[str, Any] | None = None, threads: int | None = None,
         generation: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> DumpSummary:
    """Load the tasks (or the text) and the model by name, then hand them to the
    producer of their dump kind (:mod:`qfair.dump.kinds`): the kind an option of
    which selects it (``options={"text": FILE, "ctx": N}``), else the kind of the
    tasks (multiple choice, :func:`run_dump`; generation, with ``options``
    max_new_tokens, temperature, top_p, samples, reference).

    ``options``: the dump kind's own options, as ``qfair dump``'s flags name them
    (``generation=`` and ``load_kwargs["text"/"ctx"/"chunks"]`` are older
    spellings of the same, still accepted). ``load_kwargs``: how the model loads.
    ``threads``: torch's compute threads for this dump (default: the CPUs this
    process may use), restored afterwards. Everything a user can get wrong
    (tasks, data files, the output directory: locked, so known to be writable)
    is checked before the (slow) model load. ``data_dir``: a directory written
    by ``qfair data fetch``; every task it holds is read from there (checked
    against its sha256), ``data_files`` winning for their tasks.

    Started by ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1), each
    process writes its range of the planned shards and rank 0 merges them
    (:mod:`qfair.dump.distributed`); every rank returns the merged dump's summary.
    """
    from qfair.dump.distributed import context

    ctx = context()
    n_threads = _run_threads(threads, ctx)
    load_kwargs, options = kind_options(load_kwargs, generation, options)
    kind = select_kind(options, tasks_given=bool(tasks or data_files or data_dir or limit is not None))
    check_out(out, model=model, load_kwargs=load_kwargs, data_files=data_files, options=options)
    common = dict(store=store, store_dtype=store_dtype, shard_rows=shard_rows, batch_size=batch_size,
                  resume=resume, overwrite=overwrite, seed=seed, progress=progress)
    job = _Job(model, quant, kind, tasks, data_files, limit, data_dir, load_kwargs, options, n_threads)
    if ctx is not None:
        try:
            return _parallel(ctx, out, job, common)
        finally:
            ctx.close()
    return _dump_kind(out, job, **common)


def _run_threads(threads: int | None, ctx: Any) -> int:
    """torch's compute threads for this dump (one rank's share of the node in a data-parallel run)."""
    from qfair.threads import resolve_threads

    try:
        if ctx is not None and threads is None:
            # The node's CPUs shared between its processes, unless QFAIR_THREADS says otherwise;
            # OMP_NUM_THREADS is not read here: torchrun sets it to 1 itself when it is unset.
            from qfair.threads import available_cpus, env_threads

            threads = env_threads(("QFAIR_THREADS",)) or max(1, available_cpus() // ctx.local_world_size)
        return resolve_threads(threads, "--threads")
    except ValueError as e:
        raise DumpError(str(e)) from None


def kind_options(load_kwargs: dict[str, Any] | None, generation: dict[str, Any] | None = None,
                 options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(how the model loads, the dump kind's options), each without None values.
    The older spellings (``generation=``, ``load_kwargs["text"]``) join the options
    with a DeprecationWarning."""
    import warnings

    load = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    moved = {k: load.pop(k) for k in [k for k in load if option_owner(k) is not None]}
    old = {k: v for k, v in (generation or {}).items() if v is not None}
    if moved or generation is not None:
        warnings.warn("qfair.dump.run.dump: pass a dump kind's options as options={...} (generation= and "
                      "load_kwargs['text'/'ctx'/'chunks'] are deprecated)", DeprecationWarning, stacklevel=3)
    return load, {**moved, **old, **opts}


class _Job:
    """What one dump is asked to write: its model, its kind and the kind's inputs."""

    def __init__(self, model: str | None, quant: str, kind: DumpKind, tasks: Any, data_files: Any,
                 limit: int | None, data_dir: str | os.PathLike | None, load_kwargs: dict[str, Any],
                 options: dict[str, Any], threads: int) -> None:
        self.model, self.quant, self.kind, self.tasks, self.data_files = model, quant, kind, tasks, data_files
        self.limit, self.data_dir, self.load_kwargs, self.options, self.threads = (limit, data_dir, load_kwargs,
                                                                                   options, threads)


def _parallel(ctx: Any, out: str | os.PathLike, job: _Job, common: dict[str, Any]) -> DumpSummary:
    """One rank of a data-parallel dump (:mod:`qfair.dump.distributed`)."""
    import copy
    import time

    from qfair.dump.distributed import parallel_dump
    from qfair.dump.summary import summarize

    t0 = time.perf_counter()
    lk = dict(job.load_kwargs)
    if lk.get("device_map") is None and str(lk.get("device") or "auto") in ("auto", "cuda"):
        from qfair.models.backends.base import cuda_available

        if cuda_available():  # one device per process
            lk["device"] = f"cuda:{ctx.local_rank}"
    part = (ctx.rank, ctx.world_size)

    def write_part(pd: Path, resume: bool) -> None:
        kw = dict(common, resume=resume, overwrite=False, progress=bool(common["progress"]) and ctx.rank == 0)
        one = copy.copy(job)
        one.load_kwargs = dict(lk)
        _dump_kind(pd, one, part=part, **kw)

    what = parallel_dump(ctx, out, resume=common["resume"], overwrite=common["overwrite"], write_part=write_part)
    m = mf.read_manifest(Path(out))
    s = summarize(Path(out), m, time.perf_counter() - t0, already_complete=what == "complete")
    kind = get_kind(m.get("kind"))
    if kind.metrics is not None:  # the kind's own metrics in place of the choices'
        s.metrics = resolve(kind.metrics)(out)
    return s


def check_out(out: str | os.PathLike, *, model: str | None = None, load_kwargs: dict[str, Any] | None = None,
              data_files: Any = None, generation: dict[str, Any] | None = None,
              options: dict[str, Any] | None = None) -> None:
    """Before anything is loaded, locked or deleted: --out must not resolve to one
    of the run's inputs (a path a dump kind's option names, such as the reference
    dump or the text; a data file; a local model) nor to a directory holding one,
    and must not be a file. ``generation``: an older spelling of ``options``."""
    from qfair.fsutil import PathError, check_not_input

    load_kwargs = load_kwargs or {}
    opts = {**(generation or {}), **{k: v for k, v in load_kwargs.items() if option_owner(k)}, **(options or {})}
    inputs: dict[str, Any] = {o.flag: opts.get(o.name) for k in all_kinds() for o in k.options if o.is_input}
    if isinstance(data_files, dict):
        inputs.update({f"--data-file {k}": v for k, v in data_files.items() if str(v) != "hf"})
    elif data_files:
        for spec in data_files:
            task, sep, path = str(spec).partition("=")
            if sep and path and path != "hf":
                inputs[f"--data-file {task}"] = path
    for key, opt in (("gguf_file", "--gguf-file"), ("offload_folder", "--offload-folder"),
                     ("cache_dir", "--cache-dir")):
        inputs[opt] = load_kwargs.get(key)
    if model is not None and Path(model).exists():
        inputs["--model"] = model
    try:
        o = check_not_input(out, inputs)
    except PathError as e:
        raise DumpError(str(e)) from None
    if o.exists() and not o.is_dir():
        raise DumpError(f"--out {os.fspath(out)!r}: exists and is not a directory")


def _config(model: str | None, quant: str, load_kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The run options recorded in the manifest (and compared on --resume)."""
    return {"model": model, "quant": quant, **extra,
            **{k: (str(v) if not isinstance(v, (bool, int, float, type(None))) else v)
               for k, v in sorted(load_kwargs.items()) if k != "progress"}}


def _locked_out(out: str | os.PathLike, resume: bool, overwrite: bool) -> Any:
    """Check the output directory and lock it: a second process on it stops now,
    and an unwritable --out is found now, before the model loads."""
    from qfair.lock import LOCK_NAME, lock_dir

    out_p = Path(out)
    if resume and overwrite:
        raise DumpError("--resume and --overwrite exclude each other")
    if resume and not (out_p / mf.MANIFEST).is_file():
        hint = "--overwrite to start it over" if mf.is_dump_dir(out_p) else "run without --resume"
        raise DumpError(f"{out_p / mf.MANIFEST}: missing, nothing to resume ({hint})")
    lock = lock_dir(out_p, "dump")
    if not resume and not overwrite and any(p.name != LOCK_NAME for p in out_p.iterdir()):
        lock.release()
        raise DumpError(f"{out_p}: directory exists and is not empty (use --resume to finish it or "
                        "--overwrite to replace it)")
    return lock


def _dump_kind(out: str | os.PathLike, job: _Job, part: tuple[int, int] | None = None, **kw: Any) -> DumpSummary:
    """Check the kind's inputs and options, lock --out, load the model, and hand
    everything to the kind's producer."""
    from qfair.models import load_model
    from qfair.threads import torch_threads

    kind, task_objs, config = _inputs(job)
    settings = resolve(kind.prepare)(task_objs, job.options, kw["seed"]) if kind.prepare is not None else None
    if part is not None and kind.unsplittable is not None:
        splits = [k.name for k in all_kinds() if k.producer is not None and k.unsplittable is None]
        raise DumpError(f"{kind.unsplittable}; run them in one process (data-parallel dumps: {', '.join(splits)})")
    if kind.producer is None:
        raise DumpError(f"dump kind {kind.name!r} has no producer: qfair dump cannot write it")
    _storable(config, job.options)
    lock = _locked_out(out, kw["resume"], kw["overwrite"])
    try:
        with torch_threads(job.threads):
            loaded = load_model(job.model, quant=job.quant, progress=kw["progress"], **job.load_kwargs)
            own = {"settings": settings, "options": dict(job.options)} if kind.options else {}
            return resolve(kind.producer)(out, loaded, task_objs, config=config, threads=job.threads, part=part,
                                          **own, **kw)
    finally:
        lock.release()


def _inputs(job: _Job) -> tuple[DumpKind, list[Any], dict[str, Any]]:
    """(the kind, its task objects, the run options its manifest records): the
    tasks (when the kind takes tasks) read and checked before the model loads,
    and the kind chosen by their task kinds."""
    if not job.kind.takes_tasks:
        return job.kind, [], _config(job.model, job.quant, job.load_kwargs)
    import qfair.tasks as T

    names = T.resolve(job.tasks) if job.tasks else default_tasks()
    if isinstance(job.data_files, dict):
        files = {k: Path(v) for k, v in job.data_files.items()}
    else:
        files = T.parse_data_files(list(job.data_files or []))
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise DumpError(f"--data-file given for {', '.join(unknown)}, which is not among --tasks ({', '.join(names)})")
    # tasks first: a malformed row stops the run before the (slow) model load
    task_objs = [T.get(n, data_file=files.get(n), limit=job.limit, data_dir=job.data_dir) for n in names]
    kind = select_kind(job.options, task_kinds={t.name: t.kind for t in task_objs})
    config = _config(job.model, job.quant, job.load_kwargs, tasks=names,
                     data_files={k: str(v) for k, v in sorted(files.items())}, limit=job.limit,
                     **({"data_dir": str(job.data_dir)} if job.data_dir is not None else {}))
    return kind, task_objs, config


def _task_dump(out: str | os.PathLike, model: str | None, quant: str, tasks: Any, data_files: Any,
               limit: int | None, load_kwargs: dict[str, Any], threads: int, generation: dict[str, Any] | None,
               part: tuple[int, int] | None = None, data_dir: str | os.PathLike | None = None,
               **kw: Any) -> DumpSummary:
    """A dump of tasks (the former private entry point, kept for callers of it)."""
    opts = {k: v for k, v in (generation or {}).items() if v is not None}
    job = _Job(model, quant, select_kind(opts), tasks, data_files, limit, data_dir, dict(load_kwargs), opts,
               threads)
    return _dump_kind(out, job, part=part, **kw)


def _storable(config: dict[str, Any], options: dict[str, Any]) -> None:
    """Every option the manifest records must be one JSON can hold (checked before the model load)."""
    bad = mf.unstorable({**config, **options})
    if bad is not None:
        raise DumpError(f"--{bad.split('.')[0].split('[')[0].replace('_', '-')}: {bad} is not a finite number; "
                        "the dump's manifest (JSON) cannot record it")
