"""``qfair dump`` from names: resolve tasks and model, then hand them to the
producer of the tasks' dump kind (today: :mod:`qfair.dump.multiple_choice`).

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
from qfair.dump.multiple_choice import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_ROWS, run_dump
from qfair.dump.summary import DumpSummary, task_metrics

__all__ = ["dump", "run_dump", "default_tasks", "DumpSummary", "task_metrics", "DEFAULT_SHARD_ROWS",
           "DEFAULT_BATCH_SIZE"]


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
         generation: dict[str, Any] | None = None) -> DumpSummary:
    """Load the tasks (or the text) and the model by name, then hand them to the
    producer of their dump kind: multiple choice (:func:`run_dump`), generation
    (``generation``: max_new_tokens, temperature, top_p, samples, reference) or
    a text (``load_kwargs["text"]``).

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
    from qfair.threads import resolve_threads

    ctx = context()
    if ctx is not None and threads is None:  # the node's CPUs shared between its processes
        from qfair.threads import available_cpus

        threads = max(1, available_cpus() // ctx.local_world_size)
    try:
        n_threads = resolve_threads(threads, "--threads")
    except ValueError as e:
        raise DumpError(str(e)) from None
    load_kwargs = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    common = dict(store=store, store_dtype=store_dtype, shard_rows=shard_rows, batch_size=batch_size,
                  resume=resume, overwrite=overwrite, seed=seed, progress=progress)
    if ctx is not None:
        try:
            return _parallel(ctx, out, model, quant, tasks, data_files, limit, load_kwargs, n_threads, generation,
                             common, data_dir)
        finally:
            ctx.close()
    if "text" in load_kwargs:  # a plain text scored like llama-perplexity (qfair.dump.text)
        return _text_dump(out, model, quant, load_kwargs, n_threads, **common)
    return _task_dump(out, model, quant, tasks, data_files, limit, load_kwargs, n_threads, generation,
                      data_dir=data_dir, **common)


def _parallel(ctx: Any, out: str | os.PathLike, model: str | None, quant: str, tasks: Any, data_files: Any,
              limit: int | None, load_kwargs: dict[str, Any], threads: int, generation: dict[str, Any] | None,
              common: dict[str, Any], data_dir: str | os.PathLike | None = None) -> DumpSummary:
    """One rank of a data-parallel dump (:mod:`qfair.dump.distributed`)."""
    import time

    from qfair.dump.distributed import parallel_dump
    from qfair.dump.summary import summarize

    t0 = time.perf_counter()
    lk = dict(load_kwargs)
    if lk.get("device_map") is None and str(lk.get("device") or "auto") in ("auto", "cuda"):
        from qfair.models.backends.base import cuda_available

        if cuda_available():  # one device per process
            lk["device"] = f"cuda:{ctx.local_rank}"
    part = (ctx.rank, ctx.world_size)

    def write_part(pd: Path, resume: bool) -> None:
        kw = dict(common, resume=resume, overwrite=False, progress=bool(common["progress"]) and ctx.rank == 0)
        if "text" in lk:
            _text_dump(pd, model, quant, dict(lk), threads, part=part, **kw)
        else:
            _task_dump(pd, model, quant, tasks, data_files, limit, dict(lk), threads, generation, part=part,
                       data_dir=data_dir, **kw)

    what = parallel_dump(ctx, out, resume=common["resume"], overwrite=common["overwrite"], write_part=write_part)
    m = mf.read_manifest(Path(out))
    s = summarize(Path(out), m, time.perf_counter() - t0, already_complete=what == "complete")
    if m.get("kind") == "text":
        from qfair.dump.reader import open_dump
        from qfair.dump.text import TASK, text_metrics

        s.metrics = {TASK: text_metrics(open_dump(out).tokens)}
    return s


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
        raise DumpError(f"{out_p / mf.MANIFEST}: missing, nothing to resume (run without --resume)")
    lock = lock_dir(out_p, "dump")
    if not resume and not overwrite and any(p.name != LOCK_NAME for p in out_p.iterdir()):
        lock.release()
        raise DumpError(f"{out_p}: directory exists and is not empty (use --resume to finish it or "
                        "--overwrite to replace it)")
    return lock


def _task_dump(out: str | os.PathLike, model: str | None, quant: str, tasks: Any, data_files: Any,
               limit: int | None, load_kwargs: dict[str, Any], threads: int, generation: dict[str, Any] | None,
               part: tuple[int, int] | None = None, data_dir: str | os.PathLike | None = None,
               **kw: Any) -> DumpSummary:
    import qfair.tasks as T
    from qfair.models import load_model
    from qfair.threads import torch_threads

    names = T.resolve(tasks) if tasks else default_tasks()
    if isinstance(data_files, dict):
        files = {k: Path(v) for k, v in data_files.items()}
    else:
        files = T.parse_data_files(list(data_files or []))
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise DumpError(f"--data-file given for {', '.join(unknown)}, which is not among --tasks ({', '.join(names)})")
    # tasks first: a malformed row stops the run before the (slow) model load
    task_objs = [T.get(n, data_file=files.get(n), limit=limit, data_dir=data_dir) for n in names]
    gen_opts = {k: v for k, v in (generation or {}).items() if v is not None}
    settings = _generation_settings(task_objs, gen_opts, kw["seed"])  # None: multiple-choice tasks
    if settings is not None and part is not None:
        raise DumpError("generation dumps cut their shards while generating, so they cannot be split across "
                        "processes up front; run them in one process (data-parallel dumps: multiple-choice "
                        "tasks and --text)")
    config = _config(model, quant, load_kwargs, tasks=names,
                     data_files={k: str(v) for k, v in sorted(files.items())}, limit=limit,
                     **({"data_dir": str(data_dir)} if data_dir is not None else {}))
    lock = _locked_out(out, kw["resume"], kw["overwrite"])
    try:
        with torch_threads(threads):
            loaded = load_model(model, quant=quant, progress=kw["progress"], **load_kwargs)
            if settings is None:
                return run_dump(out, loaded, task_objs, config=config, threads=threads, part=part, **kw)
            from qfair.generation.producer import run_generation_dump

            kw.pop("seed")  # part of the decoding settings
            return run_generation_dump(out, loaded, task_objs, settings=settings,
                                       reference=gen_opts.get("reference"), config=config, **kw)
    finally:
        lock.release()


def _generation_settings(task_objs: list[Any], gen_opts: dict[str, Any], seed: int) -> Any:
    """The decoding settings of generation tasks (None for multiple-choice ones), and a
    reference dump checked against the prompts and settings before the model loads."""
    if not _generation_tasks(task_objs, gen_opts):
        return None
    from qfair.generation.decode import DecodeSettings
    from qfair.generation.producer import check_reference

    try:
        settings = DecodeSettings(**{k: v for k, v in gen_opts.items() if k != "reference"}, seed=seed)
    except ValueError as e:
        raise DumpError(str(e)) from None
    if gen_opts.get("reference") is not None:
        check_reference(gen_opts["reference"], [d for t in task_objs for d in t.docs()], None, settings)
    return settings


def _generation_tasks(tasks: list[Any], gen_opts: dict[str, Any]) -> bool:
    """True when every task is a generation task; DumpError when kinds are mixed
    or generation options are given for multiple-choice tasks."""
    gen = [t.name for t in tasks if t.kind == "generation"]
    other = [t.name for t in tasks if t.kind != "generation"]
    if gen and other:
        raise DumpError(f"--tasks mixes generation tasks ({', '.join(gen)}) with scored tasks ({', '.join(other)}); "
                        "dump them into separate directories")
    if other and gen_opts:
        opts = ", ".join("--" + k.replace("_", "-") for k in gen_opts)
        raise DumpError(f"{opts}: generation options, but --tasks ({', '.join(other)}) are not generation tasks")
    return bool(gen)


def _text_dump(out: str | os.PathLike, model: str | None, quant: str, load_kwargs: dict[str, Any], threads: int,
               part: tuple[int, int] | None = None, **kw: Any) -> DumpSummary:
    from qfair.dump.text import plan_chunks, read_text, run_text_dump
    from qfair.models import load_model
    from qfair.threads import torch_threads

    text, ctx, chunks = load_kwargs.pop("text"), int(load_kwargs.pop("ctx")), load_kwargs.pop("chunks", None)
    read_text(text)  # an unreadable file stops the run before the (slow) model load
    if ctx < 4 or (chunks is not None and chunks < 1):
        plan_chunks(0, ctx, chunks, str(text))
    config = _config(model, quant, load_kwargs)
    lock = _locked_out(out, kw["resume"], kw["overwrite"])
    try:
        with torch_threads(threads):
            loaded = load_model(model, quant=quant, progress=kw["progress"], **load_kwargs)
            return run_text_dump(out, loaded, text, ctx=ctx, chunks=chunks, config=config, part=part, **kw)
    finally:
        lock.release()
