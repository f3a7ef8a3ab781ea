"""The GGUF → float conversion cache.

transformers de-quantizes a GGUF checkpoint to float on every load (≈15 s for
SmolLM2-135M on a 2-core CPU) and refuses ``save_pretrained`` on the result
("quantized with gguf and is not serializable").  This module writes the
converted model as an ordinary float32 checkpoint instead:

- ``model.safetensors``: the state dict (``lm_head.weight`` dropped when it is
  tied to the input embeddings, as transformers itself saves tied models);
- ``config.json``: the model config without its ``quantization_config`` entry;
- ``generation_config.json`` and the tokenizer files (``save_pretrained``);
- ``qfair-cache.json``: what was converted (GGUF sha256, size, path) and with
  which library versions.

Layout: ``<root>/gguf-float-v1/<sha256 of the GGUF file>/``, where ``<root>`` is
``cache_dir``, else ``$QFAIR_CACHE``, else ``~/.cache/qfair``.  Entries are
written into a temporary sibling directory, fsync'd and renamed into place, so a
killed process never leaves a half-written entry under the final name;
temporary directories of dead processes are removed on the next write.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qfair.fsutil import fsync_dir, sha256_file

CACHE_FORMAT = "qfair-gguf-float-cache"
CACHE_VERSION = 1
_SUBDIR = f"gguf-float-v{CACHE_VERSION}"
_MARKER = "qfair-cache.json"
_TMP_PREFIX = ".tmp-"



def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$QFAIR_CACHE``, else ``~/.cache/qfair``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("QFAIR_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "qfair"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (hex), remembered per (path, size, mtime) within the process."""
    return sha256_file(path, memo=True)


def entry_dir(sha256: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / _SUBDIR / sha256


def lookup(sha256: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The complete cache entry for a GGUF sha256, or None."""
    d = entry_dir(sha256, cache_dir)
    marker = d / _MARKER
    if not marker.is_file() or not (d / "model.safetensors").is_file() or not (d / "config.json").is_file():
        return None
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("gguf_sha256") != sha256:
        return None
    return d


def discard(path: Path) -> None:
    """Remove a (bad) cache entry: rename it aside first so that the final
    name disappears atomically, then delete."""
    if not path.exists():
        return
    trash = path.with_name(f"{_TMP_PREFIX}trash-{os.getpid()}-{path.name}-{time.time_ns()}")
    try:
        os.replace(path, trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(cache_dir: str | os.PathLike | None = None, subdir: str = _SUBDIR) -> list[Path]:
    """Remove temporary directories left by processes that no longer run (in
    ``subdir`` of the cache root: the GGUF float cache by default)."""
    base = cache_root(cache_dir) / subdir
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    for p in base.iterdir():
        if not p.name.startswith(_TMP_PREFIX):
            continue
        parts = p.name[len(_TMP_PREFIX):].split("-")
        pid = next((int(x) for x in parts if x.isdigit()), None)
        if pid is None or not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _fsync_tree(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(d)


def float_state_dict(model: Any) -> dict[str, Any]:
    """The model's tensors ready for safetensors: contiguous, float, unshared;
    ``lm_head.weight`` (the output embedding) dropped when it is tied to the
    input embeddings, which is how transformers itself saves tied models."""
    sd = model.state_dict()
    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    drop = set()
    if (out_emb is not None and in_emb is not None and getattr(out_emb, "weight", None) is not None
            and out_emb.weight.data_ptr() == in_emb.weight.data_ptr()):
        for name, mod in model.named_modules(remove_duplicate=False):
            if mod is out_emb:
                drop.add(f"{name}.weight")
    out: dict[str, Any] = {}
    seen_ptr: set[int] = set()
    for k, v in sd.items():
        if k in drop:
            continue
        t = v.detach().contiguous()
        if t.numel() > 0 and t.data_ptr() in seen_ptr:
            t = t.clone()  # safetensors refuses shared storage
        seen_ptr.add(t.data_ptr())
        out[k] = t
    return out


def write_entry(model: Any, tokenizer: Any, *, sha256: str, gguf_path: str,
                cache_dir: str | os.PathLike | None = None) -> Path:
    """Write a converted GGUF model into the cache atomically; return the entry dir.

    If another process finished the same entry first, its entry is kept and ours
    discarded.
    """
    import safetensors.torch

    final = entry_dir(sha256, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(cache_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=final.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        sd = float_state_dict(model)
        safetensors.torch.save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["dtype"] = "float32"
        cfg["_name_or_path"] = str(final)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps(_marker(sha256, gguf_path), indent=2) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        _fsync_tree(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if lookup(sha256, cache_dir) is None:
                # a broken entry sits at the final name: replace it
                discard(final)
                os.rename(tmp, final)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _marker(sha256: str, gguf_path: str) -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "transformers", "gguf", "safetensors", "tokenizers"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    p = Path(gguf_path)
    return {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "gguf_sha256": sha256,
        "gguf_file": str(p),
        "gguf_size": p.stat().st_size if p.exists() else None,
        "dtype": "float32",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "library_versions": versions,
        "python": sys.version.split()[0],
    }
