"""The quantization-backend interface: one :class:`QuantBackend` subclass per
library (bitsandbytes, quanto, torchao, ...), declaring its specs and options,
a cheap availability check, how a spec becomes a transformers config object,
what to do after loading, and which loggers to silence.

Availability checks never import the backend (only package metadata and a
CUDA probe that does not import torch), so listing specs stays instant.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------
# option value parsers (each raises ValueError with a short reason)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16",
                  "f16": "float16", "half": "float16", "float": "float32"}


def parse_bool(v: str) -> bool:
    s = v.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError("expected true or false")


def parse_float(v: str) -> float:
    x = float(v)
    if not (x == x) or x in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return x


def parse_positive_float(v: str) -> float:
    x = parse_float(v)
    if x <= 0:
        raise ValueError("expected a positive number")
    return x


def parse_dtype(v: str) -> str:
    s = _DTYPE_ALIASES.get(v.strip().lower(), v.strip().lower())
    if s not in DTYPES:
        raise ValueError(f"expected one of {', '.join(DTYPES)}")
    return s


def parse_modules(v: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in v.split("+"))
    if not names or any(not n for n in names):
        raise ValueError("expected module names joined by '+', e.g. lm_head+down_proj")
    for n in names:
        if not all(c.isalnum() or c in "._-*" for c in n):
            raise ValueError(f"bad module name {n!r}")
    return names


def parse_choice(*allowed: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        try:
            g = int(v)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}") from None
        if g not in allowed:
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}")
        return g

    return parse


@dataclass(frozen=True)
class Option:
    parse: Callable[[str], Any]
    default: Any
    help: str


@dataclass(frozen=True)
class SpecDef:
    """One spec a backend provides: its name, a one-line description, its options."""

    name: str
    description: str
    options: dict[str, Option] = field(default_factory=dict)


SKIP_MODULES = Option(parse_modules, None,
                      "modules kept in full precision, joined by '+'; replaces the default "
                      "(transformers' choice: the output head), so include lm_head to keep it")


# ---------------------------------------------------------------------------
# cheap environment probes

def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:3]:
        num = "".join(c for c in part if c.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


def cuda_available() -> bool:
    """Whether CUDA can run here, without importing torch when it cannot: a
    CPU-only torch build or no NVIDIA driver answers at once; otherwise torch
    is asked."""
    v = dist_version("torch")
    if v is None or "+cpu" in v:
        return False
    if not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")):
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - a broken torch install
        return False


class QuantBackend:
    """Base class of a quantization backend (see the module doc).

    Subclasses set ``name``, ``specs`` and usually ``distribution`` (the pip
    distribution that must be installed), ``module`` (imported quietly before
    loading: some backends print at import time) and ``loggers``.
    """

    name: str = ""
    specs: tuple[SpecDef, ...] = ()
    distribution: str | None = None
    module: str | None = None
    loggers: tuple[str, ...] = ()
    install_hint: str = ""

    def availability(self, spec: str, cuda: bool) -> tuple[bool, str]:
        """(available here, reason or description) for one of this backend's specs."""
        d = self.spec_def(spec)
        if self.distribution is None:
            return True, d.description
        v = dist_version(self.distribution)  # (module global: tests patch it)
        if v is None:
            return False, f"needs {self.distribution}: {self.install_hint or 'pip install ' + self.distribution}"
        return True, f"{d.description} [{self.distribution} {v}{', cuda' if cuda else ', cpu'}]"

    def spec_def(self, spec: str) -> SpecDef:
        return next(d for d in self.specs if d.name == spec)

    def to_config(self, spec: Any) -> Any:
        """The transformers quantization config object for ``spec`` (None: no quantization)."""
        return None

    def check(self, spec: Any) -> None:
        """Refuse (ValueError, one line) options that are valid one by one but not together;
        called by ``parse_quant_spec``, so a bad combination stops before any work."""

    def post_load(self, model: Any, spec: Any, extra: dict[str, Any]) -> None:
        """Called after the model is loaded; may add notes to ``extra`` (recorded in the manifest)."""

    # A backend that makes the quantized model itself (from the float model, e.g.
    # calibrated GPTQ) sets ``builds_model = True`` and implements ``load``;
    # ``qfair.models.load_model`` then hands it the whole request.
    builds_model: bool = False

    def load(self, spec: Any, request: Any) -> Any:
        """The :class:`~qfair.models.loading.LoadedModel` for ``spec``; ``request``
        (a :class:`~qfair.models.loading.LoadRequest`) holds the caller's arguments
        and loads the float model with ``request.load("none")``."""
        raise NotImplementedError(f"backend {self.name!r} does not build models itself")
