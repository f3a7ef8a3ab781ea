"""The quantization-backend registry.

Each backend is one module here defining a :class:`~qfair.models.backends.base.QuantBackend`
subclass decorated with :func:`register_backend`; :data:`BACKEND_MODULES`
lists the modules (one line per backend). Specs are looked up by name with
:func:`spec_backend`. See docs/extending.md, "A quantization backend".
"""
from __future__ import annotations

import importlib
from typing import Any

from qfair.errors import QfairError
from qfair.plugins import load_plugins

# one line per backend, in the order `qfair quant-specs` lists them
BACKEND_MODULES = (
    "qfair.models.backends.none",
    "qfair.models.backends.bitsandbytes",
    "qfair.models.backends.quanto",
    "qfair.models.backends.torchao",
    "qfair.models.backends.weight_quant",
    "qfair.models.backends.mixed",
    "qfair.models.backends.pruning",
)

_BACKENDS: dict[str, Any] = {}
_SPECS: dict[str, Any] = {}  # spec name -> backend instance
_loaded = False


def register_backend(cls: type) -> type:
    """Class decorator: register one instance of a QuantBackend subclass."""
    inst = cls()
    if inst.name in _BACKENDS:
        raise ValueError(f"quantization backend {inst.name!r} is registered twice")
    clash = [d.name for d in inst.specs if d.name in _SPECS]
    if clash:
        raise ValueError(f"backend {inst.name!r}: spec name(s) {clash} already registered")
    _BACKENDS[inst.name] = inst
    for d in inst.specs:
        _SPECS[d.name] = inst
    return cls


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for m in BACKEND_MODULES:
            importlib.import_module(m)
        load_plugins("qfair.backends", QfairError)  # other packages' backends (entry points)


def backends() -> list[Any]:
    _load()
    return list(_BACKENDS.values())


def spec_names() -> list[str]:
    """Every spec name, in listing order (prequantized last)."""
    _load()
    names = list(_SPECS)
    if "prequantized" in names:
        names.remove("prequantized")
        names.append("prequantized")
    return names


def spec_backend(name: str) -> Any | None:
    _load()
    return _SPECS.get(name)


def backend_named(name: str) -> Any | None:
    _load()
    return _BACKENDS.get(name)


def all_loggers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(lg for b in backends() for lg in b.loggers))
