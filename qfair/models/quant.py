"""Quantization specs: the ``--quant SPEC`` grammar and the config objects it builds.

Grammar::

    SPEC    := NAME [ ":" OPTION ( "," OPTION )* ]
    OPTION  := KEY "=" VALUE
    VALUE   := bool (true|false|yes|no|on|off|1|0) | number | word
               | module list: names joined by "+"   (e.g. skip_modules=lm_head+gate_proj)

Names are case-insensitive; each option may appear once; an unknown name or
option, or a malformed value, raises :class:`ModelError` listing what is valid.

==================  =============================================  ==========================================
spec                what it does                                   options (default)
==================  =============================================  ==========================================
``none``            full precision: the base model                 —
``bnb-int8``        bitsandbytes LLM.int8 (8-bit weights, fp16     ``threshold`` outlier threshold (6.0),
                    outlier decomposition)                         ``skip_modules`` (lm_head, auto)
``bnb-nf4``         bitsandbytes 4-bit NormalFloat weights         ``double_quant`` (false),
                                                                   ``compute_dtype`` float32|bfloat16|float16
                                                                   (float32), ``skip_modules`` (auto)
``bnb-fp4``         bitsandbytes 4-bit float weights               as ``bnb-nf4``
``quanto-int8``     optimum-quanto int8 weights                    ``skip_modules`` (auto)
``quanto-int4``     optimum-quanto int4 weights (group size 128)   ``skip_modules`` (auto)
``quanto-int2``     optimum-quanto int2 weights                    ``skip_modules`` (auto)
``torchao-int8wo``  torchao int8 weight-only, per-row scales       ``skip_modules`` (auto)
``torchao-int4wo``  torchao int4 weight-only (CUDA, bfloat16)      ``group_size`` 32|64|128|256 (128),
                                                                   ``skip_modules`` (auto)
``prequantized``    a checkpoint that is already quantized (GPTQ,  —
                    AWQ, compressed-tensors, … in its config) is
                    loaded as is; detected automatically with
                    ``none``, so this spec only *asserts* it
==================  =============================================  ==========================================

"auto" skip_modules means transformers' own choice (the output head stays in
full precision); a given list *replaces* that choice, so write
``skip_modules=lm_head+down_proj`` to keep the head too.  Examples::

    bnb-nf4:double_quant=true,compute_dtype=bfloat16
    bnb-int8:threshold=4.0
    quanto-int4:skip_modules=lm_head+down_proj

Parsing never imports torch or transformers; :meth:`QuantSpec.to_config`
builds the transformers config object (``BitsAndBytesConfig``,
``QuantoConfig``, ``TorchAoConfig``) and :meth:`QuantSpec.to_manifest`
records it exactly (``config.to_dict()``, made JSON-safe).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ModelError(ValueError):
    """A model could not be resolved or loaded, or a quantization spec is invalid.

    The message is one line meant for the user (names the model / spec / field
    and what was expected).
    """


# ---------------------------------------------------------------------------
# option value parsers

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16",
                  "f16": "float16", "half": "float16", "float": "float32"}


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError("expected true or false")


def _float(v: str) -> float:
    x = float(v)
    if not (x == x) or x in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return x


def _positive_float(v: str) -> float:
    x = _float(v)
    if x <= 0:
        raise ValueError("expected a positive number")
    return x


def _dtype(v: str) -> str:
    s = _DTYPE_ALIASES.get(v.strip().lower(), v.strip().lower())
    if s not in _DTYPES:
        raise ValueError(f"expected one of {', '.join(_DTYPES)}")
    return s


def _modules(v: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in v.split("+"))
    if not names or any(not n for n in names):
        raise ValueError("expected module names joined by '+', e.g. lm_head+down_proj")
    for n in names:
        if not all(c.isalnum() or c in "._-*" for c in n):
            raise ValueError(f"bad module name {n!r}")
    return names


def _group_size(v: str) -> int:
    try:
        g = int(v)
    except ValueError:
        raise ValueError("expected one of 32, 64, 128, 256") from None
    if g not in (32, 64, 128, 256):
        raise ValueError("expected one of 32, 64, 128, 256")
    return g


@dataclass(frozen=True)
class _Option:
    parse: Callable[[str], Any]
    default: Any
    help: str


@dataclass(frozen=True)
class _SpecDef:
    name: str
    backend: str  # "none" | "bitsandbytes" | "quanto" | "torchao" | "prequantized"
    description: str
    options: dict[str, _Option] = field(default_factory=dict)


_SKIP = _Option(_modules, None, "modules kept in full precision, joined by '+'; replaces the default "
                                "(transformers' choice: the output head), so include lm_head to keep it")
_BNB4 = {
    "double_quant": _Option(_bool, False, "quantize the quantization constants too (true|false)"),
    "compute_dtype": _Option(_dtype, "float32", "dtype of the matmul: float32|bfloat16|float16"),
    "skip_modules": _SKIP,
}

_SPECS: dict[str, _SpecDef] = {
    s.name: s
    for s in [
        _SpecDef("none", "none", "full precision (the base model)"),
        _SpecDef("bnb-int8", "bitsandbytes", "bitsandbytes LLM.int8: int8 weights with outlier features in fp16",
                 {"threshold": _Option(_positive_float, 6.0, "outlier threshold on activation magnitude"),
                  "skip_modules": _SKIP}),
        _SpecDef("bnb-nf4", "bitsandbytes", "bitsandbytes 4-bit NormalFloat (NF4) weights", dict(_BNB4)),
        _SpecDef("bnb-fp4", "bitsandbytes", "bitsandbytes 4-bit float (FP4) weights", dict(_BNB4)),
        _SpecDef("quanto-int8", "quanto", "optimum-quanto int8 weights", {"skip_modules": _SKIP}),
        _SpecDef("quanto-int4", "quanto", "optimum-quanto int4 weights (group size 128)", {"skip_modules": _SKIP}),
        _SpecDef("quanto-int2", "quanto", "optimum-quanto int2 weights", {"skip_modules": _SKIP}),
        _SpecDef("torchao-int8wo", "torchao", "torchao int8 weight-only (per-row scales)", {"skip_modules": _SKIP}),
        _SpecDef("torchao-int4wo", "torchao", "torchao int4 weight-only (tinygemm layout; CUDA, bfloat16)",
                 {"group_size": _Option(_group_size, 128, "weights per scale: 32|64|128|256"),
                  "skip_modules": _SKIP}),
        _SpecDef("prequantized", "prequantized",
                 "an already-quantized checkpoint (GPTQ/AWQ/compressed-tensors/...) loaded as is; "
                 "auto-detected with 'none'"),
    ]
}

SPEC_NAMES: tuple[str, ...] = tuple(_SPECS)


def quant_spec_names() -> list[str]:
    """The spec names, in documentation order (no imports; fit for option help text)."""
    return list(SPEC_NAMES)


def _valid_list() -> str:
    return ", ".join(SPEC_NAMES)


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "+".join(v)
    return str(v)


@dataclass(frozen=True)
class QuantSpec:
    """A parsed quantization spec: ``name`` and all its ``options`` (defaults filled in).

    ``str(spec)`` is the canonical spec string (non-default options only, sorted);
    ``parse_quant_spec(str(spec)) == spec``.  For a checkpoint found to be
    pre-quantized, ``name == "prequantized"`` and ``options`` holds
    ``method`` and ``config`` (the checkpoint's ``quantization_config``).
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return _SPECS[self.name].backend

    @property
    def is_quantized(self) -> bool:
        return self.name != "none"

    def __str__(self) -> str:
        d = _SPECS.get(self.name)
        if d is None or self.name == "prequantized":
            return self.name
        extra = [f"{k}={_format_value(v)}" for k, v in sorted(self.options.items())
                 if k in d.options and v != d.options[k].default]
        return self.name + (":" + ",".join(extra) if extra else "")

    def __hash__(self) -> int:
        return hash(str(self))

    # -- transformers config --------------------------------------------------
    def to_config(self) -> Any:
        """The transformers quantization config object for this spec (None for
        ``none``; the checkpoint's own config dict for ``prequantized``)."""
        o = self.options
        skip = list(o["skip_modules"]) if o.get("skip_modules") else None
        if self.name == "none":
            return None
        if self.name == "prequantized":
            return o.get("config")
        if self.backend == "bitsandbytes":
            from transformers import BitsAndBytesConfig

            if self.name == "bnb-int8":
                return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(o["threshold"]),
                                          llm_int8_skip_modules=skip)
            import torch

            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.name.split("-")[1],
                bnb_4bit_use_double_quant=bool(o["double_quant"]),
                bnb_4bit_compute_dtype=getattr(torch, o["compute_dtype"]),
                llm_int8_skip_modules=skip,
            )
        if self.backend == "quanto":
            from transformers import QuantoConfig

            return QuantoConfig(weights=self.name.split("-")[1], modules_to_not_convert=skip)
        if self.backend == "torchao":
            with quiet_imports():
                from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
                from transformers import TorchAoConfig
            if self.name == "torchao-int8wo":
                base = Int8WeightOnlyConfig()
            else:
                base = Int4WeightOnlyConfig(group_size=int(o["group_size"]),
                                            int4_packing_format="tile_packed_to_4d")
            return TorchAoConfig(base, modules_to_not_convert=skip)
        raise ModelError(f"quantization spec {self.name!r} has no config builder")  # pragma: no cover

    def to_manifest(self) -> dict[str, Any]:
        """JSON-serialisable record: spec string, name, backend, options and the
        exact config object used (``config.to_dict()``)."""
        cfg = self.to_config()
        if cfg is not None and hasattr(cfg, "to_dict"):
            cfg_d: Any = cfg.to_dict()
            cfg_cls: str | None = type(cfg).__name__
        else:
            cfg_d, cfg_cls = cfg, None
        opts = {k: v for k, v in self.options.items() if k != "config"}
        return {
            "spec": str(self),
            "name": self.name,
            "backend": self.backend,
            "options": json_safe(opts),
            "config_class": cfg_cls,
            "config": json_safe(cfg_d),
        }


def json_safe(x: Any) -> Any:
    """Recursively convert a config dict into plain JSON types (dtypes, enums,
    tuples, sets and unknown objects become strings / lists)."""
    import enum

    if x is None or isinstance(x, (bool, int, str)):
        if isinstance(x, enum.Enum):
            return x.value if isinstance(x.value, (str, int)) else str(x)
        return x
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else str(x)
    if isinstance(x, enum.Enum):
        return json_safe(x.value)
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        items = sorted(x, key=str) if isinstance(x, (set, frozenset)) else x
        return [json_safe(v) for v in items]
    if hasattr(x, "to_dict"):
        return json_safe(x.to_dict())
    return str(x)


def parse_quant_spec(spec: str | QuantSpec | None) -> QuantSpec:
    """Parse ``NAME[:key=value,...]`` into a :class:`QuantSpec` (see module doc).

    ``None`` and ``""`` mean ``none``.  Raises :class:`ModelError` naming the
    bad part and listing what is valid.
    """
    if isinstance(spec, QuantSpec):
        return spec
    if spec is None:
        spec = "none"
    if not isinstance(spec, str):
        raise ModelError(f"quantization spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        text = "none"
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    d = _SPECS.get(name)
    if d is None:
        raise ModelError(f"unknown quantization spec {name!r} in {spec!r}; valid specs: {_valid_list()}")
    options = {k: o.default for k, o in d.options.items()}
    if rest.strip():
        if not d.options:
            raise ModelError(f"quantization spec {name!r} takes no options (got {rest!r})")
        seen: set[str] = set()
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq or not key or not value.strip():
                raise ModelError(f"bad option {item.strip()!r} in quantization spec {spec!r}; expected key=value")
            if key not in d.options:
                raise ModelError(f"unknown option {key!r} for quantization spec {name!r}; "
                                 f"valid options: {', '.join(d.options)}")
            if key in seen:
                raise ModelError(f"option {key!r} given twice in quantization spec {spec!r}")
            seen.add(key)
            try:
                options[key] = d.options[key].parse(value.strip())
            except ValueError as e:
                raise ModelError(f"bad value {value.strip()!r} for option {key!r} of quantization spec "
                                 f"{name!r}: {e}") from None
    return QuantSpec(name, options)


def prequantized_spec(quantization_config: Any) -> QuantSpec:
    """The spec recorded for a checkpoint that carries its own quantization config."""
    cfg = quantization_config.to_dict() if hasattr(quantization_config, "to_dict") else dict(quantization_config)
    method = cfg.get("quant_method", "unknown")
    return QuantSpec("prequantized", {"method": json_safe(method), "config": json_safe(cfg)})


# ---------------------------------------------------------------------------
# availability

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _vtuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        num = "".join(c for c in part if c.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch missing or broken
        return False


def spec_availability(name: str, *, cuda: bool | None = None) -> tuple[bool, str]:
    """(available_here, reason) for one spec name, from installed package
    versions and whether CUDA is present (no backend is imported)."""
    d = _SPECS.get(name)
    if d is None:
        raise ModelError(f"unknown quantization spec {name!r}; valid specs: {_valid_list()}")
    if cuda is None:
        cuda = _cuda_available()
    if d.backend in ("none", "prequantized"):
        return True, d.description
    if d.backend == "bitsandbytes":
        v = _version("bitsandbytes")
        if v is None:
            return False, "needs bitsandbytes: pip install 'bitsandbytes>=0.46'"
        if not cuda and _vtuple(v) < (0, 46):
            return False, f"bitsandbytes {v} needs CUDA; CPU support needs bitsandbytes>=0.46"
        return True, f"{d.description} [bitsandbytes {v}, {'cuda' if cuda else 'cpu'}]"
    if d.backend == "quanto":
        v = _version("optimum-quanto")
        if v is None:
            return False, "needs optimum-quanto: pip install optimum-quanto"
        return True, f"{d.description} [optimum-quanto {v}]"
    if d.backend == "torchao":
        v = _version("torchao")
        if v is None:
            return False, "needs torchao: pip install torchao"
        if name == "torchao-int4wo" and not cuda:
            return False, f"torchao {v} int4 weight-only kernels need CUDA (no CPU layout works here)"
        return True, f"{d.description} [torchao {v}]"
    return False, "unknown backend"  # pragma: no cover


def available_quant_specs() -> list[tuple[str, bool, str]]:
    """Every spec as ``(name, available_here, reason_or_description)``."""
    cuda = _cuda_available()
    return [(n, *spec_availability(n, cuda=cuda)) for n in SPEC_NAMES]


def spec_options_help(name: str) -> list[tuple[str, str, str]]:
    """``(option, default, help)`` for a spec (for ``qfair quant-specs``)."""
    d = _SPECS[name]
    return [(k, "auto" if o.default is None else _format_value(o.default), o.help) for k, o in d.options.items()]


# ---------------------------------------------------------------------------
# quiet optional backends

_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "optimum.quanto", "bitsandbytes")


@contextlib.contextmanager
def quiet_imports():
    """Silence import-time noise of optional backends (torchao prints
    'Failed to load …so' and torch pytree deprecation lines): raises those
    loggers to ERROR and swallows stdout/stderr and warnings for the duration."""
    saved = [(lg, lg.level) for lg in (logging.getLogger(n) for n in _NOISY_LOGGERS)]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def import_quietly(module: str) -> Any:
    """Import ``module`` under :func:`quiet_imports` (a no-op if already imported)."""
    if module in sys.modules:
        return sys.modules[module]
    with quiet_imports():
        return importlib.import_module(module)
