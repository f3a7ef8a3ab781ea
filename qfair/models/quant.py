"""Quantization specs: the ``--quant SPEC`` grammar.

Grammar::

    SPEC    := NAME [ ":" OPTION ( "," OPTION )* ]
    OPTION  := KEY "=" VALUE
    VALUE   := bool (true|false|yes|no|on|off|1|0) | number | word
               | module list: names joined by "+"   (e.g. skip_modules=lm_head+gate_proj)

Names are case-insensitive; each option may appear once; an unknown name or
option, or a malformed value, raises :class:`ModelError` listing what is valid.

The specs themselves, their options and defaults, and how each becomes a
transformers config object belong to the quantization backends
(:mod:`qfair.models.backends`, one module per library); ``qfair quant-specs``
lists them. Examples::

    bnb-nf4:double_quant=true,compute_dtype=bfloat16
    bnb-int8:threshold=4.0
    quanto-int4:skip_modules=lm_head+down_proj

"auto" skip_modules means transformers' own choice (the output head stays in
full precision); a given list *replaces* that choice.

Parsing never imports torch or transformers; :meth:`QuantSpec.to_config`
builds the config object and :meth:`QuantSpec.to_manifest` records it exactly
(``config.to_dict()``, made JSON-safe).
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
from dataclasses import dataclass, field
from typing import Any

from qfair.errors import QfairError


class ModelError(QfairError):
    """A model could not be resolved or loaded, or a quantization spec is invalid.

    The message is one line meant for the user (names the model / spec / field
    and what was expected).
    """


def _def(name: str):
    from qfair.models.backends import spec_backend

    b = spec_backend(name)
    return None if b is None else b.spec_def(name)


def _spec_names() -> tuple[str, ...]:
    from qfair.models.backends import spec_names

    return tuple(spec_names())


def quant_spec_names() -> list[str]:
    """The spec names, in listing order (no heavy imports; fit for option help text)."""
    return list(_spec_names())


def _valid_list() -> str:
    return ", ".join(_spec_names())


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
        from qfair.models.backends import spec_backend

        return spec_backend(self.name).name

    @property
    def is_quantized(self) -> bool:
        return self.name != "none"

    def __str__(self) -> str:
        d = _def(self.name)
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
        from qfair.models.backends import spec_backend

        return spec_backend(self.name).to_config(self)

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
    d = _def(name)
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
    out = QuantSpec(name, options)
    from qfair.models.backends import spec_backend

    try:
        spec_backend(name).check(out)
    except ValueError as e:
        raise ModelError(f"quantization spec {spec!r}: {e}") from None
    return out


def prequantized_spec(quantization_config: Any) -> QuantSpec:
    """The spec recorded for a checkpoint that carries its own quantization config."""
    cfg = quantization_config.to_dict() if hasattr(quantization_config, "to_dict") else dict(quantization_config)
    method = cfg.get("quant_method", "unknown")
    return QuantSpec("prequantized", {"method": json_safe(method), "config": json_safe(cfg)})


# ---------------------------------------------------------------------------
# availability

def spec_availability(name: str, *, cuda: bool | None = None) -> tuple[bool, str]:
    """(available_here, reason) for one spec name, from installed package
    versions and whether CUDA is present (no backend is imported)."""
    from qfair.models.backends import spec_backend
    from qfair.models.backends.base import cuda_available

    b = spec_backend(name)
    if b is None:
        raise ModelError(f"unknown quantization spec {name!r}; valid specs: {_valid_list()}")
    return b.availability(name, cuda_available() if cuda is None else cuda)


def available_quant_specs() -> list[tuple[str, bool, str]]:
    """Every spec as ``(name, available_here, reason_or_description)``."""
    from qfair.models.backends.base import cuda_available

    cuda = cuda_available()
    return [(n, *spec_availability(n, cuda=cuda)) for n in _spec_names()]


def spec_options_help(name: str) -> list[tuple[str, str, str]]:
    """``(option, default, help)`` for a spec (for ``qfair quant-specs``)."""
    d = _def(name)
    return [(k, "auto" if o.default is None else _format_value(o.default), o.help) for k, o in d.options.items()]


# ---------------------------------------------------------------------------
# quiet optional backends

@contextlib.contextmanager
def quiet_imports():
    """Silence import-time noise of optional backends (torchao prints
    'Failed to load …so' and torch pytree deprecation lines): raises the
    backends' loggers to ERROR and swallows stdout/stderr and warnings."""
    saved = [(lg, lg.level) for lg in (logging.getLogger(n) for n in _noisy_loggers())]
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


def _noisy_loggers() -> tuple[str, ...]:
    from qfair.models.backends import all_loggers

    return all_loggers()


@contextlib.contextmanager
def quiet_backend_loggers():
    """The backends' loggers at ERROR while loading, keeping stderr (progress bars) open."""
    saved = [(lg, lg.level) for lg in (logging.getLogger(n) for n in _noisy_loggers())]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
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
