"""Data-parallel dumps on ``torch.distributed``: ``torchrun --nproc-per-node N -m qfair dump ...``
(or ``accelerate launch -m qfair dump ...``).

Each process (rank) learns its place from the environment torchrun and
accelerate set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``)
and joins a ``gloo`` process group, used only to exchange small messages at
three points (no tensor ever travels through it):

1. rank 0 checks and locks the output directory (``--resume``,
   ``--overwrite``, or a fresh directory) and tells every rank what to do;
2. every rank loads the model (on ``cuda:LOCAL_RANK`` when CUDA is there),
   prepares every document exactly as a single process does, so that the shard
   plan is the same everywhere, and writes the contiguous range of whole
   planned shards :func:`qfair.dump.writer.split_plans` gives it, through its
   own :class:`~qfair.dump.writer.DumpWriter`, into
   ``<out>/ranks/rank-NNNNN/`` (a *part*: a resumable dump of that range);
3. once every rank is done, rank 0 merges: it checks that the parts agree
   (options, tasks, tokenizer, storage, plan, examples) and cover the plan,
   links their shard files and table parts into place, writes the merged
   manifest, removes ``ranks/`` and finishes the tables exactly as a single
   process does.

Every example is scored on its own, so the merged dump has the same tables
and the same rows, shard for shard, as a single-process dump with the same
options (byte-identical when the compute threads per process are the same:
CPU kernels may round differently with other thread counts). ``--resume``
continues each rank's part where it stopped (the world size must be the same);
a merge interrupted after the merged manifest was written is finished by the
next ``--resume``. Generation dumps cut their shards on the fly, so their
plan is not known up front: they are refused here (run them in one process).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from qfair.dump import DumpError
from qfair.dump import manifest as mf

__all__ = ["DistContext", "context", "parallel_dump", "merge_parts", "part_dir", "RANKS_DIR"]

RANKS_DIR = "ranks"
#: how long a rank waits for the others at a synchronisation point (a long dump on a slow rank)
SYNC_TIMEOUT = timedelta(days=7)


def part_dir(out: str | os.PathLike, rank: int) -> Path:
    return Path(out) / RANKS_DIR / f"rank-{rank:05d}"


@dataclass
class DistContext:
    """This process's place in a data-parallel run."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    owns_group: bool = False  # this module joined the process group (and leaves it in close())

    def close(self) -> None:
        """Leave the process group if :func:`context` joined it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def exchange(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (a small picklable value), in rank order."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sync(self, error: str | None) -> None:
        """Wait for every rank; DumpError on every rank when one of them failed."""
        errors = self.exchange(error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            r, e = failed[0]
            raise DumpError(e if r == self.rank else f"rank {r} failed: {e}")


def context() -> DistContext | None:
    """The data-parallel context from the environment (None in a single process);
    joins the ``gloo`` process group when it is not joined yet."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DumpError(f"WORLD_SIZE is {os.environ.get('WORLD_SIZE')!r}, expected an integer") from None
    if world <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError):
        raise DumpError("WORLD_SIZE > 1 but RANK / LOCAL_RANK are missing or not integers; start data-parallel "
                        "dumps with torchrun or accelerate launch") from None
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        try:
            dist.init_process_group("gloo", timeout=SYNC_TIMEOUT)
        except (RuntimeError, ValueError) as e:
            raise DumpError(f"cannot join the process group (torch.distributed, gloo): {str(e).splitlines()[0]}"
                            ) from None
    return DistContext(rank, world, local_rank, max(1, local_world), owns)


# ---------------------------------------------------------------------------
# rank 0: the output directory
# ---------------------------------------------------------------------------

def _part_world(out: Path) -> int | None:
    p = part_dir(out, 0) / mf.MANIFEST
    if not p.is_file():
        return None
    try:
        return int(json.loads(p.read_text(encoding="utf-8"))["part"]["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DumpError(f"{p}: not the manifest of a data-parallel part (field 'part.world_size')") from None


def _is_dump_dir(p: Path) -> bool:
    try:
        m = json.loads((p / mf.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(m, dict) and m.get("format") == mf.FORMAT


def _decide(out: Path, world: int, resume: bool, overwrite: bool) -> str:
    """What this run does with ``out``: ``run`` (write the parts), ``finish`` (a merged,
    unfinished dump), ``complete`` (nothing left); DumpError for what cannot be done."""
    from qfair.lock import LOCK_NAME

    if resume and overwrite:
        raise DumpError("--resume and --overwrite exclude each other")
    ranks = out / RANKS_DIR
    if overwrite:
        if (out / mf.MANIFEST).exists() and not _is_dump_dir(out):
            raise DumpError(f"{out}: not a qfair dump (no manifest.json with format {mf.FORMAT!r}); refusing to "
                            "delete it")
        others = [p for p in out.iterdir() if p.name not in (LOCK_NAME, RANKS_DIR)]
        if others and not _is_dump_dir(out):
            raise DumpError(f"{out}: not a qfair dump; refusing to delete it")
        if ranks.is_dir() and not all(_is_dump_dir(p) for p in ranks.iterdir() if p.is_dir()):
            raise DumpError(f"{ranks}: holds something other than the parts of a data-parallel dump; refusing to "
                            "delete it")
        for p in out.iterdir():
            if p.name == LOCK_NAME:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return "run"
    if not resume:
        if any(p.name != LOCK_NAME for p in out.iterdir()):
            raise DumpError(f"{out}: directory exists and is not empty (use --resume to finish it or --overwrite "
                            "to replace it)")
        return "run"
    if (out / mf.MANIFEST).is_file():
        m = mf.read_manifest(out)
        if m["status"] == "complete":
            return "complete"
        merged = "distributed" in (m.get("run") or {}) and m.get("plan") is not None \
            and len(m["shards"]) == len(m["plan"])
        if merged:
            return "finish"
        raise DumpError(f"{out}: a dump written by a single process; resume it in one process (qfair dump "
                        "--resume without torchrun)")
    w = _part_world(out)
    if w is None:
        raise DumpError(f"{out / mf.MANIFEST}: missing, nothing to resume (run without --resume)")
    if w != world:
        raise DumpError(f"{out}: started with {w} processes, resumed with {world}; resume it with "
                        f"--nproc-per-node {w} (each rank finishes its own shards)")
    return "run"


# ---------------------------------------------------------------------------
# rank 0: the merge
# ---------------------------------------------------------------------------

_SAME = ("kind", "vocab_size", "tokenizer", "tasks", "plan")


def _place(src: Path, dst: Path) -> None:
    """``dst`` becomes the file ``src`` (a hard link; a copy where links are impossible)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def merge_parts(out: str | os.PathLike, world: int) -> dict[str, Any]:
    """Merge the ``world`` parts under ``<out>/ranks/`` into one complete dump at
    ``out`` (see the module doc); returns its manifest."""
    from qfair.dump.kinds import get_kind
    from qfair.dump.writer import _STORAGE_STATIC, finish_dump, first_difference
    from qfair.fsutil import fsync_dir

    out = Path(out)
    dirs = [part_dir(out, r) for r in range(world)]
    ms = [mf.read_manifest(d) for d in dirs]
    ref = ms[0]
    plan = ref.get("plan") or []
    nxt = 0
    for r, (d, m) in enumerate(zip(dirs, ms)):
        where = d / mf.MANIFEST
        part = m.get("part")
        if not part or part.get("rank") != r or part.get("world_size") != world:
            raise DumpError(f"{where}: field 'part' is {part!r}, expected rank {r} of {world}")
        if not part.get("done"):
            raise DumpError(f"{where}: rank {r} has not finished its shards {part['shards']} (resume the run)")
        a, b = part["shards"]
        if a != nxt or len(m["shards"]) != b - a:
            raise DumpError(f"{where}: rank {r} holds shards {a}..{a + len(m['shards'])}, expected {nxt}..{b}")
        nxt = b
        checks = [(k, ref.get(k), m.get(k)) for k in _SAME]
        checks += [("run.config", ref["run"].get("config"), m["run"].get("config")),
                   ("storage", {k: ref["storage"].get(k) for k in (*_STORAGE_STATIC, "k")},
                    {k: m["storage"].get(k) for k in (*_STORAGE_STATIC, "k")}),
                   ("tables.examples.sha256", ref["tables"]["examples"]["sha256"],
                    m["tables"]["examples"]["sha256"])]
        for key, x, y in checks:
            diff = first_difference(x, y)
            if diff is not None:
                raise DumpError(f"{where}: field '{key}{'.' + diff if diff else ''}' differs from rank 0's; the "
                                "parts were not made by one run")
    if nxt != len(plan):
        raise DumpError(f"{out / RANKS_DIR}: the parts cover shards 0..{nxt} of the {len(plan)} planned")
    kind = get_kind(ref.get("kind"))
    mode = ref["storage"]["mode"]
    shards: list[dict[str, Any]] = []
    ranks = []
    for d, m in zip(dirs, ms):
        for e in m["shards"]:
            if e.get("file"):
                _place(d / e["file"], out / e["file"])
            for p in (e.get("parts") or {}).values():
                _place(d / p["file"], out / p["file"])
            shards.append(e)
        run = m.get("run") or {}
        ranks.append({"rank": m["part"]["rank"], "shards": m["part"]["shards"], "host": m["part"].get("host"),
                      "threads": run.get("threads"), "start_time": run.get("start_time"),
                      "end_time": run.get("end_time"), "resumed_at": run.get("resumed_at")})
    _place(dirs[0] / mf.EXAMPLES, out / mf.EXAMPLES)
    for sub in (mf.LOGITS_DIR, mf.PARTS_DIR):
        if (out / sub).is_dir():
            fsync_dir(out / sub)
    merged = json.loads(json.dumps(ref))
    merged.pop("part", None)
    merged["shards"] = shards
    merged["status"] = "partial"
    run = merged["run"]
    run["start_time"] = min((x["start_time"] for x in ranks if x["start_time"]), default=run.get("start_time"))
    run.pop("resumed_at", None)
    run.pop("resumed_threads", None)
    run["distributed"] = {"world_size": world, "backend": "torch.distributed (gloo)",
                          "split": "contiguous ranges of whole planned shards, about equal rows per rank",
                          "ranks": ranks}
    mf.write_manifest(out, merged)  # from here on the dump is a single directory: --resume finishes it
    shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
    finish_dump(out, merged, kind, mode)
    return merged


def finish_merged(out: str | os.PathLike) -> dict[str, Any]:
    """Finish a merged dump whose tables were not written yet (an interrupted merge)."""
    from qfair.dump.kinds import get_kind
    from qfair.dump.writer import finish_dump

    out = Path(out)
    m = mf.read_manifest(out)
    for i, e in enumerate(m["shards"]):
        for p in [e.get("file"), *[x["file"] for x in (e.get("parts") or {}).values()]]:
            if p and not (out / p).is_file():
                raise DumpError(f"{out / p}: listed in manifest.json shards[{i}] but missing; cannot finish "
                                "(use --overwrite)")
    shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
    finish_dump(out, m, get_kind(m.get("kind")), m["storage"]["mode"])
    return m


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

def parallel_dump(ctx: DistContext, out: str | os.PathLike, *, resume: bool, overwrite: bool,
                  write_part: Callable[[Path, bool], Any]) -> str:
    """Run one rank of a data-parallel dump (module doc). ``write_part(part_dir,
    resume)`` writes this rank's part (loading the model itself); returns what
    happened: ``written``, ``finished`` or ``complete``. Every rank returns only
    when the merged dump is complete, or raises DumpError when any rank failed."""
    from qfair.lock import lock_dir

    out = Path(out)
    lock = None
    action, error = None, None
    if ctx.rank == 0:
        try:
            lock = lock_dir(out, "dump")
            action = _decide(out, ctx.world_size, resume, overwrite)
        except DumpError as e:
            error = str(e)
    try:
        got = ctx.exchange((action, error))
        action, error = got[0]
        if error is not None:
            raise DumpError(error if ctx.rank == 0 else f"rank 0 failed: {error}")
        if action == "run":
            err = None
            try:
                pd = part_dir(out, ctx.rank)
                write_part(pd, resume and (pd / mf.MANIFEST).is_file())
            except (DumpError, OSError) as e:
                err = str(e).splitlines()[0] if str(e) else type(e).__name__
            except Exception as e:  # noqa: BLE001 - model and task errors: one line, on every rank
                err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ctx.sync(err)
        if ctx.rank == 0 and action in ("run", "finish"):
            err = None
            try:
                merge_parts(out, ctx.world_size) if action == "run" else finish_merged(out)
            except (DumpError, OSError) as e:
                err = str(e).splitlines()[0] if str(e) else type(e).__name__
            ctx.sync(err)
        elif action in ("run", "finish"):
            ctx.sync(None)
    finally:
        if lock is not None:
            lock.release()
    return {"run": "written", "finish": "finished"}.get(action, "complete")


def host() -> str:
    return socket.gethostname()
