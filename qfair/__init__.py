"""qfair: what quantization does to a language model's confidence and output
distributions, and who bears the cost.

Public API (imported lazily so that `import qfair` stays fast and never pulls in
torch):

- ``divergence(p, q, ...)``, ``distribution_stats(p, ...)``,
  ``stream_divergence(p_blocks, q_blocks, ...)``: the C++ distribution core.
- ``tasks``: the task registry (``qfair.tasks.get(name)``).
- ``load_model(model, quant=...)``: load (and quantize) a model for scoring.
- ``open_dump(path)``: read a dump written by ``qfair dump``.
- ``compare(base, quant, ...)``: token/example statistics and significance tests.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# OpenMP threads (torch's pool) sleep at barriers instead of spinning, unless the
# user chose otherwise: on a CPU shared with other busy processes, spinning threads
# made dumps up to 18x slower (bench/bench_load.py). Read when torch is first
# imported, so it takes effect when qfair is imported before torch (as the CLI is).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "divergence": ("qfair.core", "divergence"),
    "distribution_stats": ("qfair.core", "distribution_stats"),
    "stream_divergence": ("qfair.core", "stream_divergence"),
    "DivergenceResult": ("qfair.core", "DivergenceResult"),
    "tasks": ("qfair.tasks", None),
    "load_model": ("qfair.models", "load_model"),
    "open_dump": ("qfair.dump.reader", "open_dump"),
    "compare": ("qfair.analyze.compare", "compare"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'qfair' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
