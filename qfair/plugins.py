"""Extensions from other packages, registered through Python entry points.

A package extends qfair by declaring entry points in one of these groups (in
its ``pyproject.toml``: ``[project.entry-points."qfair.tasks"]`` and so on):

=====================  ==========================================================
``qfair.backends``     quantization backends (``@register_backend`` classes)
``qfair.tasks``        tasks (:func:`qfair.tasks.registry.register_task`)
``qfair.metrics``      task kinds with their example metrics, bias kinds
                       (:func:`qfair.metrics.task_kinds.register_task_kind`,
                       :func:`qfair.metrics.bias.register_bias_kind`)
``qfair.dump_kinds``   dump kinds (:func:`qfair.dump.kinds.register_kind`)
=====================  ==========================================================

An entry point names a module, whose import registers what it defines, or a
callable, called once with no arguments to register. Each group is loaded
once per process, the first time its registry is asked, in the order of the
entry points' names. A plugin that fails to load is an error naming the
plugin, its group and the cause (the registries pass their own error type, so
the command line prints it in one line).

This module imports nothing of qfair: every registry, on any floor, may use it.
"""
from __future__ import annotations

from typing import Any

__all__ = ["GROUPS", "load_plugins", "plugin_names"]

GROUPS = ("qfair.backends", "qfair.tasks", "qfair.metrics", "qfair.dump_kinds")

_loaded: dict[str, list[str]] = {}


def _entry_points(group: str) -> list[Any]:
    from importlib.metadata import entry_points

    seen: dict[tuple[str, str], Any] = {}
    for ep in entry_points(group=group):
        seen.setdefault((ep.name, ep.value), ep)   # a distribution found twice on sys.path counts once
    return sorted(seen.values(), key=lambda ep: (ep.name, ep.value))


def load_plugins(group: str, error: type[Exception] = RuntimeError) -> list[str]:
    """Load every entry point of ``group`` (once per process); the names loaded.

    ``error``: the exception type raised, with one line, when a plugin fails.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; expected one of {', '.join(GROUPS)}")
    if group in _loaded:
        return list(_loaded[group])
    names: list[str] = []
    _loaded[group] = names          # set first: a plugin that asks its registry does not recurse
    for ep in _entry_points(group):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except Exception as e:  # noqa: BLE001 - any failure of third-party code becomes one line
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise error(f"plugin {ep.name!r} ({group} = {ep.value}) failed to load: {type(e).__name__}"
                        + (f": {detail}" if detail else "")) from e
        names.append(ep.name)
    return list(names)


def plugin_names(group: str) -> list[str]:
    """The plugins of ``group`` loaded so far."""
    return list(_loaded.get(group, []))
