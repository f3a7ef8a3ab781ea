"""An analysis directory describes exactly one run of ``qfair analyze``.

:func:`write_analysis` writes every table into a temporary sibling directory,
records a fresh run id (in ``settings.json``, and in each Parquet file's
key-value metadata as ``qfair_run_id``) and the size and sha256 of every file
it wrote (``settings.json`` field ``files``), then puts the directory in place
in one step: an existing analysis directory is swapped out atomically
(``renameat2(RENAME_EXCHANGE)`` where the OS has it, else two renames) and
removed, so no table of an earlier run survives beside the new ones. A
non-empty directory that is not an analysis is refused, never deleted. The
parent directory holds a lock (``.<name>.qfair.lock``) for the duration, so two
analyses into one ``--out`` cannot interleave.

``qfair report`` reads ``settings.json`` and refuses any table that is not one
of the files of its run (:func:`check_run_files`).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qfair.dump import DumpError

__all__ = ["write_analysis", "lock_analysis_dir", "is_analysis_dir", "check_run_files", "SETTINGS", "RUN_ID_KEY"]

SETTINGS = "settings.json"
RUN_ID_KEY = "qfair_run_id"  # Parquet key-value metadata of every table


def is_analysis_dir(d: Path) -> bool:
    """True when ``d`` holds a ``settings.json`` written by qfair analyze."""
    try:
        raw = json.loads((d / SETTINGS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("settings"), dict)


def _dir_mode() -> int:
    from qfair.fsutil import _FILE_MODE

    return _FILE_MODE | ((_FILE_MODE & 0o444) >> 2)  # x wherever r


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux renameat2); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_dir(tmp: Path, out: Path, tag: str) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):  # out is the new directory now, tmp the old one
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.with_name(f".{out.name}.old-{tag}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _norm(out: str | os.PathLike) -> Path:
    from qfair.fsutil import PathError, resolved

    out = Path(out)
    try:
        return resolved(out, "--out") if out.name in ("", ".", "..") else out
    except PathError as e:
        raise DumpError(str(e)) from None


def lock_analysis_dir(out: str | os.PathLike, inputs: dict[str, Any] | None = None) -> Any:
    """Lock ``out`` for one analysis (a second process stops at once) after
    checking that it may be replaced: absent, empty, or an analysis directory,
    and (``inputs``: option -> path) neither one of the analysis' inputs nor a
    directory holding one. Returns the held :class:`qfair.lock.DirLock`
    (re-entrant; release it)."""
    from qfair.fsutil import PathError, check_not_input
    from qfair.lock import DirLock

    try:
        check_not_input(out, dict(inputs or {}))
    except PathError as e:
        raise DumpError(str(e)) from None
    out = _norm(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DumpError(f"{out.parent}: cannot create the directory ({e.strerror or e})") from None
    lock = DirLock(out.parent / f".{out.name}.qfair.lock", "analysis directory", out).acquire()
    try:
        if out.is_symlink():
            raise DumpError(f"{out}: is a symbolic link; give the directory it points to")
        if out.exists():
            if not out.is_dir():
                raise DumpError(f"{out}: exists and is not a directory")
            if any(out.iterdir()) and not is_analysis_dir(out):
                raise DumpError(f"{out}: exists, is not empty and is not a qfair analysis directory (no "
                                f"{SETTINGS} written by qfair analyze); refusing to replace it")
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise DumpError(f"{out.parent}: not writable (the analysis is written beside {out.name} first)")
    except BaseException:
        lock.release()
        raise
    return lock


def write_analysis(cmp: Any, out: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    """Write ``cmp`` (a Comparison) as the analysis directory ``out`` (module doc); the files written."""
    from qfair.analyze.provenance import write_provenance
    from qfair.analyze.tables import write_tables
    from qfair.fsutil import sha256_file

    out = _norm(out)
    parent = out.parent
    lock = lock_analysis_dir(out)
    try:
        import glob

        for stale in (*parent.glob(f".{glob.escape(out.name)}.*.tmp"),
                      *parent.glob(f".{glob.escape(out.name)}.old-*")):  # left by a killed run (we hold the lock)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        run_id = uuid.uuid4().hex
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        try:
            os.chmod(tmp, _dir_mode())
            written = write_tables(cmp, tmp, formats, run_id=run_id)
            written.append(write_provenance(tmp))  # the dumps' manifests: the directory alone makes a report
            sp = tmp / SETTINGS
            raw = json.loads(sp.read_text(encoding="utf-8"))
            raw["format"] = "qfair-analysis"
            raw["run_id"] = run_id
            raw["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                            for p in written if p.name != SETTINGS}
            sp.write_text(json.dumps(raw, indent=1, default=str) + "\n", encoding="utf-8")
            _replace_dir(tmp, out, run_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        lock.release()
    return [out / p.name for p in written]


def check_run_files(d: Path, raw: dict[str, Any], used: Sequence[Path]) -> str | None:
    """Why the table files ``used`` are not all files of the run ``settings.json``
    (``raw``) describes: each must be listed under ``files`` with its size and
    sha256, and a Parquet file must carry the same run id. None when they are.
    A directory written before run ids (no ``run_id``) has nothing to check
    against unless a table carries one."""
    from qfair.fsutil import sha256_file

    run_id = raw.get("run_id")
    files = raw.get("files")
    for p in used:
        meta_id = _parquet_run_id(p) if p.suffix == ".parquet" else None
        if run_id is None:
            if meta_id is not None:
                return (f"{p}: written by analysis run {meta_id}, but {d / SETTINGS} names no run; "
                        "the directory mixes runs (re-run qfair analyze)")
            continue
        if meta_id is not None and meta_id != run_id:
            return (f"{p}: written by analysis run {meta_id}, {d / SETTINGS} describes run {run_id}; "
                    "the directory mixes runs (re-run qfair analyze)")
        entry = files.get(p.name) if isinstance(files, dict) else None
        if not isinstance(entry, dict):
            return (f"{p}: not among the files of analysis run {run_id} ({d / SETTINGS} field 'files'); "
                    "left from another run? (re-run qfair analyze)")
        if p.stat().st_size != entry.get("bytes") or sha256_file(p) != entry.get("sha256"):
            return (f"{p}: differs from the file analysis run {run_id} wrote ({d / SETTINGS} field "
                    f"'files.{p.name}'); re-run qfair analyze")
    return None


def _parquet_run_id(p: Path) -> str | None:
    import polars as pl

    try:
        return pl.read_parquet_metadata(p).get(RUN_ID_KEY)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - an unreadable file is reported by the table reader
        return None
