"""Units of a model for a sensitivity scan, which modules a backend quantized,
their sizes, and the in-place swap of units between two loaded copies.

A *unit* is a named part of the model whose quantization is studied on its
own: a transformer block (``model.layers.7``) or one linear layer
(``model.layers.7.mlp.down_proj``). What quantizing a unit means is decided
by the backend, never re-implemented here: the float model and the model
loaded with the quantization spec are both held in memory, and a unit is
quantized by putting its quantized modules at their paths in the float model
(:class:`UnitSwapper`). With every unit in place, the float tree holds
exactly the backend's quantized modules, so it computes what the backend's
model computes.

Sizes are the bytes a module's state would take when saved: every tensor of
its state dict, tensor subclasses (torchao, quanto) counted by their inner
tensors, tensors shared between modules (tied embeddings) counted once. They
are measured as loaded, before the first forward pass (bitsandbytes repacks
its 4-bit constants for the CPU kernels on the first forward).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qfair.errors import QfairError
from qfair.models import size as _size

UNIT_KINDS = ("block", "linear")


class UnitError(QfairError):
    """The model's units cannot be defined (no decoder blocks, nothing quantized, ...)."""


@dataclass(frozen=True)
class Unit:
    """One unit: its name (a module path), kind, and the quantized leaf modules it covers."""

    name: str
    kind: str                 # "block" | "linear" | "other" (a quantized module outside every block)
    index: int                # position in scan order
    members: tuple[str, ...]  # module paths swapped when the unit is (de)quantized
    n_params: int             # parameters of the members in the float model
    float_bytes: int          # bytes of the members in the float model
    quant_bytes: int          # bytes of the members as the backend stores them


# ---------------------------------------------------------------------------
# bytes


def module_bytes(module: Any) -> int:
    """Bytes of a module's saved state (:func:`qfair.models.size.module_bytes`)."""
    try:
        return _size.module_bytes(module)
    except _size.SizeError as e:
        raise UnitError(str(e)) from None


def model_bytes(model: Any, packed: dict[str, int] | None = None) -> int:
    """Bytes of a whole model's saved state (:func:`qfair.models.size.model_bytes`)."""
    try:
        return _size.model_bytes(model, packed)
    except _size.SizeError as e:
        raise UnitError(str(e)) from None


def members_bytes(model: Any, names: Sequence[str], packed: dict[str, int] | None = None) -> int:
    total = 0
    for n in names:
        if packed and n in packed:
            total += packed[n]
        else:
            total += module_bytes(model.get_submodule(n))
    return total


# ---------------------------------------------------------------------------
# which modules the backend changed


def _differs(fm: Any, qm: Any) -> bool:
    """Whether the backend changed this module itself (class, tensor types or values)."""
    import torch

    if type(fm) is not type(qm):
        return True
    fp = dict(fm.named_parameters(recurse=False)) | dict(fm.named_buffers(recurse=False))
    qp = dict(qm.named_parameters(recurse=False)) | dict(qm.named_buffers(recurse=False))
    if fp.keys() != qp.keys():
        return True
    for k, a in fp.items():
        b = qp[k]
        da = a.data if isinstance(a, torch.nn.Parameter) else a
        db = b.data if isinstance(b, torch.nn.Parameter) else b
        if type(da) is not type(db) or da.dtype != db.dtype or da.shape != db.shape:
            return True
        if not torch.equal(da, db):
            return True
    return False


def quantized_modules(float_model: Any, quant_model: Any) -> list[str]:
    """Paths of the modules the backend replaced or changed, outermost first
    (the children of a changed module are not listed)."""
    out: list[str] = []
    fmods = dict(float_model.named_modules())
    for name, qm in quant_model.named_modules():
        if not name or any(name.startswith(p + ".") for p in out):
            continue
        fm = fmods.get(name)
        if fm is None:
            raise UnitError(f"module {name!r} of the quantized model has no counterpart in the float model")
        if _differs(fm, qm):
            out.append(name)
    if not out:
        raise UnitError("the quantized model equals the float model: the spec quantized nothing")
    return out


def decoder_blocks(model: Any) -> tuple[str, list[str]]:
    """(path of the ModuleList of transformer blocks, paths of the blocks): the
    ModuleList holding the most parameters."""
    import torch

    best, best_n = None, -1
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = name, n
    if best is None:
        raise UnitError("the model has no ModuleList of transformer blocks")
    blocks = [f"{best}.{k}" for k in model.get_submodule(best)._modules]
    return best, blocks


def define_units(float_model: Any, quant_model: Any, unit: str = "block",
                 packed: dict[str, int] | None = None) -> list[Unit]:
    """The scan's units: transformer blocks (``unit="block"``; a quantized module
    outside every block, e.g. a quantized output head, is a unit of its own) or
    every quantized module (``unit="linear"``). Units cover every module the
    backend quantized, so quantizing all of them gives the backend's model."""
    if unit not in UNIT_KINDS:
        raise UnitError(f"unknown unit kind {unit!r}; expected one of {', '.join(UNIT_KINDS)}")
    changed = quantized_modules(float_model, quant_model)
    groups: list[tuple[str, str, list[str]]] = []
    if unit == "linear":
        groups = [(n, "linear", [n]) for n in changed]
    else:
        _, blocks = decoder_blocks(float_model)
        taken: set[str] = set()
        for b in blocks:
            mem = [n for n in changed if n == b or n.startswith(b + ".")]
            if mem:
                groups.append((b, "block", mem))
                taken.update(mem)
        groups.extend((n, "other", [n]) for n in changed if n not in taken)
    units = []
    for i, (name, kind, mem) in enumerate(groups):
        n_params = sum(p.numel() for m in mem for p in float_model.get_submodule(m).parameters())
        units.append(Unit(name, kind, i, tuple(mem), int(n_params), members_bytes(float_model, mem),
                          members_bytes(quant_model, mem, packed)))
    return units


# ---------------------------------------------------------------------------
# swapping


def _set_module(root: Any, path: str, module: Any) -> None:
    parent, _, child = path.rpartition(".")
    p = root.get_submodule(parent) if parent else root
    if child not in p._modules:
        raise UnitError(f"module {path!r} not found")
    p._modules[child] = module


class UnitSwapper:
    """Quantize units of ``host`` (the float model) in place by putting the
    modules of ``donor`` (the same model loaded with the quantization spec)
    at their paths; ``extra`` names more donors (e.g. a higher-bit copy).

    ``assign({unit: source})`` puts every unit in the named source ("float",
    "quant" or a key of ``extra``; units not named go back to float);
    ``set_quantized(names)`` is the common case. Donors are not modified: a
    module placed in the host is shared by both trees.
    """

    def __init__(self, host: Any, donor: Any, units: Sequence[Unit], extra: dict[str, Any] | None = None):
        self.host = host
        self.units = {u.name: u for u in units}
        members = [m for u in units for m in u.members]
        trees = {"float": host, "quant": donor, **(extra or {})}
        self.sources = {k: {m: t.get_submodule(m) for m in members} for k, t in trees.items()}
        self.state: dict[str, str] = {u: "float" for u in self.units}

    @property
    def quantized(self) -> set[str]:
        return {u for u, s in self.state.items() if s != "float"}

    def assign(self, mapping: dict[str, str]) -> None:
        unknown = set(mapping) - set(self.units)
        if unknown:
            raise UnitError(f"unknown unit(s): {', '.join(sorted(unknown))}")
        bad = {s for s in mapping.values() if s not in self.sources}
        if bad:
            raise UnitError(f"unknown module source(s): {', '.join(sorted(bad))}")
        for name, unit in self.units.items():
            want = mapping.get(name, "float")
            if self.state[name] != want:
                for m in unit.members:
                    _set_module(self.host, m, self.sources[want][m])
                self.state[name] = want

    def set_quantized(self, names: Iterable[str], source: str = "quant") -> None:
        self.assign({n: source for n in names})

    def all(self) -> list[str]:
        return list(self.units)

    def restore(self) -> None:
        self.assign({})
