"""The study file: a TOML file (read with the standard library's ``tomllib``)
naming the grid of a study — models x quantization specs x task groups — and
the options of its dumps, analyses and cluster jobs. docs/study.md documents
every field; :func:`load_study` checks them all and stops at the first problem
with one line naming the file and the field.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qfair.errors import QfairError

__all__ = ["StudyError", "Study", "ModelEntry", "SpecEntry", "TaskGroup", "load_study", "parse_size", "label_of"]


class StudyError(QfairError):
    """A study file or a study run cannot go on; the message names the file and field."""


# ---------------------------------------------------------------------------
# entries
# ---------------------------------------------------------------------------

#: load options a model entry may carry (those of qfair dump)
LOAD_KEYS = ("dtype", "device", "device_map", "max_memory", "offload_folder", "revision", "gguf_file",
             "trust_remote_code", "cache_dir")
#: options of every dump ([dump]) that a task group may override
DUMP_KEYS = ("limit", "store", "store_dtype", "shard_rows", "batch_size", "seed", "threads")
ANALYSIS_KEYS = ("bootstrap", "seed", "bins", "binning", "topk", "confidence", "strata", "n_strata", "threads",
                 "chunk_rows", "skip_hash", "formats", "metrics", "report")
SLURM_KEYS = ("partition", "gpus_per_job", "cpus_per_job", "mem_gb", "time_min", "array_parallelism",
              "analysis_partition", "analysis_cpus", "analysis_mem_gb", "analysis_time_min", "account", "qos",
              "constraint", "extra")


@dataclass(frozen=True)
class ModelEntry:
    id: str                      # as qfair dump --model takes it (a path made absolute)
    label: str
    family: str | None
    size: float | None           # parameters, when the study file gives it (else measured)
    load: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SpecEntry:
    spec: str
    label: str


@dataclass(frozen=True)
class TaskGroup:
    name: str
    # "tasks": tasks of the default dump kind (multiple choice and other scored tasks); else the name of the
    # dump kind its tasks (or its selecting option) make: "generation", "text", a plugin's kind
    kind: str
    tasks: tuple[str, ...] = ()
    data_files: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)   # dump options overriding [dump]
    kind_options: dict[str, Any] = field(default_factory=dict)  # the dump kind's own options (qfair dump's flags)

    @property
    def dump_kind(self) -> str:
        from qfair.dump.kinds import DEFAULT_KIND

        return DEFAULT_KIND if self.kind == "tasks" else self.kind

    @property
    def generation(self) -> dict[str, Any]:
        """Deprecated: ``kind_options`` of a generation group."""
        return dict(self.kind_options) if self.kind == "generation" else {}

    @property
    def text(self) -> dict[str, Any]:
        """Deprecated: ``kind_options`` of a text group."""
        return dict(self.kind_options) if self.kind == "text" else {}


@dataclass
class Study:
    path: Path
    name: str
    models: list[ModelEntry]
    base: SpecEntry
    specs: list[SpecEntry]
    groups: list[TaskGroup]
    dump: dict[str, Any]
    analysis: dict[str, Any]
    slurm: dict[str, Any]
    out: Path | None
    raw: dict[str, Any]
    data_dir: str | None = None  # a `qfair data fetch` directory every task dump reads (need not exist yet)

    def dump_options(self, group: TaskGroup) -> dict[str, Any]:
        return {**self.dump, **group.options}


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

class _C:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, fld: str, msg: str) -> StudyError:
        return StudyError(f"{self.path}: field '{fld}' {msg}")

    def table(self, v: Any, fld: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(fld, f"is {type(v).__name__}, expected a table")
        if allowed is not None:
            for k in v:
                if k not in allowed:
                    raise self.fail(f"{fld}.{k}" if fld else k, f"is not a known field (known: {', '.join(allowed)})")
        return v

    def str_(self, v: Any, fld: str) -> str:
        if not isinstance(v, str) or not v.strip():
            raise self.fail(fld, f"is {v!r}, expected a non-empty string")
        return v.strip()

    def int_(self, v: Any, fld: str, lo: int = 0, hi: int = 2**31 - 1) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise self.fail(fld, f"is {v!r}, expected an integer in {lo}..{hi}")
        return v

    def num(self, v: Any, fld: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(fld, f"is {v!r}, expected a number")
        return float(v)

    def choice(self, v: Any, fld: str, options: tuple[str, ...]) -> str:
        if v not in options:
            raise self.fail(fld, f"is {v!r}, expected " + " or ".join(repr(o) for o in options))
        return v

    def flag(self, v: Any, fld: str) -> bool:
        if not isinstance(v, bool):
            raise self.fail(fld, f"is {v!r}, expected true or false")
        return v

    def label(self, v: Any, fld: str) -> str:
        """A name that becomes a directory (model and spec labels, group names)."""
        raw = self.str_(v, fld)
        try:
            return label_of(raw)
        except ValueError:
            raise self.fail(fld, f"is {raw!r}, which cannot name a directory inside the study's output "
                            "('.', '..' and names starting with '.' are not allowed)") from None

    def strs(self, v: Any, fld: str) -> list[str]:
        if isinstance(v, str):
            v = [x for x in (s.strip() for s in v.split(",")) if x]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
            raise self.fail(fld, f"is {v!r}, expected a list of names")
        return [x.strip() for x in v]


def label_of(s: str) -> str:
    """A directory name (and an analysis label) for a model or spec: runs of
    characters other than letters, digits and ``_.+-`` (separators, NUL, spaces)
    become ``_``. ValueError when the result is still no plain directory name
    ('.', '..', a hidden name): :func:`qfair.fsutil.path_component`."""
    from qfair.fsutil import path_component

    return path_component(re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_") or "x", "the name")


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbBtT]?)\s*$")


def parse_size(v: Any) -> float:
    """``560M``, ``7B``, ``1.3b``, ``125e6`` or a number -> parameters; ValueError otherwise."""
    if isinstance(v, bool):
        raise ValueError("expected a number of parameters")
    if isinstance(v, (int, float)):
        if not math.isfinite(v) or v <= 0:
            raise ValueError("expected a positive number of parameters")
        return float(v)
    if isinstance(v, str):
        try:
            x = float(v)
            if x > 0 and math.isfinite(x):
                return x
        except ValueError:
            pass
        m = _SIZE.match(v)
        if m:
            scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
            x = float(m.group(1)) * scale
            if x > 0:
                return x
    raise ValueError("expected a number of parameters such as 560M, 7B or 1.3e9")


def _resolve_path(v: str, root: Path, c: _C | None = None, fld: str = "") -> str:
    if "\x00" in v:  # no file system takes it (os calls raise ValueError)
        msg = f"is {v!r}, which contains a NUL character; expected a path"
        raise c.fail(fld, msg) if c is not None else StudyError(f"{fld} {msg}")
    from qfair.fsutil import expand_user

    p = expand_user(v)
    if not p.is_absolute() and (root / p).exists():
        return str((root / p).resolve())
    return str(p.resolve()) if p.exists() else v


def _model(c: _C, v: Any, i: int, root: Path) -> ModelEntry:
    fld = f"models[{i}]"
    if isinstance(v, str):
        v = {"id": v}
    t = c.table(v, fld, ("id", "path", "label", "family", "size", *LOAD_KEYS))
    if ("id" in t) == ("path" in t):
        raise c.fail(fld, "needs exactly one of id (a hub id, a local path or smollm2-135m) and path")
    raw = c.str_(t.get("id", t.get("path")), f"{fld}.{'id' if 'id' in t else 'path'}")
    mid = _resolve_path(raw, root, c, f"{fld}.{'id' if 'id' in t else 'path'}")
    if "label" in t:
        label = c.label(t["label"], f"{fld}.label")
    else:
        try:
            label = label_of(Path(raw).name or raw)
        except ValueError:
            raise c.fail(f"{fld}.label", f"is missing and {raw!r} gives no usable directory name; set label = ...") \
                from None
    family = c.str_(t["family"], f"{fld}.family") if "family" in t else None
    size = None
    if "size" in t:
        try:
            size = parse_size(t["size"])
        except ValueError as e:
            raise c.fail(f"{fld}.size", f"is {t['size']!r}: {e}") from None
    load: dict[str, Any] = {}
    for k in LOAD_KEYS:
        if k not in t:
            continue
        val = t[k]
        if k == "trust_remote_code":
            c.flag(val, f"{fld}.{k}")
        elif k == "max_memory":
            if isinstance(val, dict):
                val = ",".join(f"{dk}={dv}" for dk, dv in val.items())
            from qfair.models.loading import parse_max_memory
            from qfair.models.quant import ModelError

            try:
                parse_max_memory(c.str_(val, f"{fld}.{k}"))
            except ModelError as e:
                raise c.fail(f"{fld}.{k}", str(e)) from None
        else:
            val = c.str_(val, f"{fld}.{k}")
            if k in ("gguf_file", "offload_folder", "cache_dir"):
                val = _resolve_path(val, root, c, f"{fld}.{k}")
        load[k] = val
    return ModelEntry(mid, label, family, size, load)


def _spec(c: _C, v: Any, fld: str) -> SpecEntry:
    from qfair.models import ModelError, parse_quant_spec

    if isinstance(v, dict):
        t = c.table(v, fld, ("spec", "label"))
        s = c.str_(t.get("spec"), f"{fld}.spec")
        label = c.label(t["label"], f"{fld}.label") if "label" in t else c.label(s, f"{fld}.spec")
    else:
        s = c.str_(v, fld)
        label = c.label(s, fld)
    try:
        parse_quant_spec(s)
    except ModelError as e:
        raise c.fail(fld, str(e)) from None
    return SpecEntry(s, label)


def _dump_options(c: _C, t: dict[str, Any], fld: str) -> dict[str, Any]:
    from qfair.dump import DumpError
    from qfair.dump.manifest import STORE_DTYPES, parse_store

    out: dict[str, Any] = {}
    for k in DUMP_KEYS:
        if k not in t:
            continue
        v = t[k]
        if k == "store":
            try:
                parse_store(c.str_(v, f"{fld}.{k}"))
            except DumpError as e:
                raise c.fail(f"{fld}.{k}", str(e).removeprefix("--store ")) from None
        elif k == "store_dtype":
            if v not in STORE_DTYPES:
                raise c.fail(f"{fld}.{k}", f"is {v!r}, expected one of {', '.join(STORE_DTYPES)}")
        elif k == "seed":
            v = c.int_(v, f"{fld}.{k}", 0, 2**63 - 1)
        elif k == "threads":
            v = _threads(c, v, f"{fld}.{k}")
        else:
            v = c.int_(v, f"{fld}.{k}", 0 if k == "limit" else 1)
        out[k] = v
    return out


def _threads(c: _C, v: Any, fld: str) -> int:
    from qfair.threads import MAX_THREADS

    return c.int_(v, fld, 1, MAX_THREADS)


def _group(c: _C, v: Any, i: int, root: Path) -> TaskGroup:
    """One ``[[tasks]]`` entry: tasks (their dump kind decides which kind options it may set), or the
    option that selects a kind of its own (``text = FILE``)."""
    from qfair.dump.kinds import all_kinds

    fld = f"tasks[{i}]"
    kopts = {o.name: (k, o) for k in all_kinds() for o in k.options if o.study}
    t = c.table(v, fld, ("name", "tasks", "data_files", *DUMP_KEYS, *kopts))
    name = c.label(t.get("name"), f"{fld}.name")
    opts = _dump_options(c, t, fld)
    given = {k: _kind_value(c, o, t[k], f"{fld}.{k}", root) for k, (_, o) in kopts.items() if k in t}
    selecting = next((kopts[k][0] for k in given if kopts[k][0].selected_by == k), None)
    if selecting is not None:
        return _selected_group(c, t, fld, name, opts, given, selecting)
    for k in given:
        owner = kopts[k][0]
        if owner.selected_by is not None:
            raise c.fail(f"{fld}.{k}", f"goes with {owner.selected_by} = ... (a {owner.name} group)")
    names = c.strs(t.get("tasks"), f"{fld}.tasks")
    resolved = _resolve_tasks(c, names, f"{fld}.tasks")
    files: dict[str, str] = {}
    if "data_files" in t:
        df = c.table(t["data_files"], f"{fld}.data_files")
        for k, p in df.items():
            if k not in resolved:
                raise c.fail(f"{fld}.data_files.{k}", f"names a task that is not among tasks ({', '.join(resolved)})")
            pth = c.str_(p, f"{fld}.data_files.{k}")
            files[k] = pth if pth == "hf" else _resolve_path(pth, root, c, f"{fld}.data_files.{k}")
            if pth != "hf" and not Path(files[k]).is_file():
                raise c.fail(f"{fld}.data_files.{k}", f"is {pth!r}: no such file")
    by_kind = _by_dump_kind(resolved)
    if len(by_kind) > 1:
        raise c.fail(f"{fld}.tasks", f"mixes {' with '.join(_what(k) for k, _ in by_kind.values())}; put them in separate groups")
    kind = next(iter(by_kind.values()))[0]
    for k in given:
        owner = kopts[k][0]
        if owner is not kind:
            raise c.fail(f"{fld}.{k}", f"is a {owner.name} option, but the group's tasks are not {owner.name} tasks")
    if kind.options and kind.prepare is not None:
        _check_kind_options(c, fld, kind, given)
    return TaskGroup(name, _group_kind(kind), tuple(resolved), files, opts, given)


def _selected_group(c: _C, t: dict[str, Any], fld: str, name: str, opts: dict[str, Any], given: dict[str, Any],
                    kind: Any) -> TaskGroup:
    """A group whose kind one of its options selects (``text = FILE``): no tasks."""
    sel = kind.selected_by
    if "tasks" in t or "data_files" in t:
        raise c.fail(fld, f"scores either tasks or a {kind.name} ({sel} = ...), not both")
    for k in given:
        if not any(o.name == k for o in kind.options):
            raise c.fail(f"{fld}.{k}", f"is an option of another dump kind; this group is a {kind.name} group")
    for o in kind.options:
        for need in o.requires:
            if o.name in given and need not in given:
                raise c.fail(fld, f"a {kind.name} group needs {need} ({kind.option(need).help_short})")
    return TaskGroup(name, _group_kind(kind), (), {}, opts, given)


def _kind_value(c: _C, o: Any, v: Any, fld: str, root: Path) -> Any:
    """A dump kind option's value from the study file, checked as its declaration says."""
    if o.type == "int":
        lo = 0 if o.min is None else int(o.min)
        return c.int_(v, fld, lo) if o.max is None else c.int_(v, fld, lo, int(o.max))
    if o.type == "float":
        return c.num(v, fld)
    p = Path(_resolve_path(c.str_(v, fld), root, c, fld))
    if o.type == "file" and not p.is_file():
        raise c.fail(fld, f"is {str(v)!r}: no such file")
    return str(p)


def _check_kind_options(c: _C, fld: str, kind: Any, given: dict[str, Any]) -> None:
    """The checks qfair dump applies to the kind's options (its ``prepare``), now rather than at run time."""
    from qfair.dump import DumpError
    from qfair.dump.kinds import resolve

    try:
        resolve(kind.prepare)([], given, 0)
    except DumpError as e:
        opt = str(e).split()[0].lstrip("-").replace("-", "_")
        raise c.fail(f"{fld}.{opt}" if any(o.name == opt for o in kind.options) else fld, str(e)) from None


def _group_kind(kind: Any) -> str:
    from qfair.dump.kinds import DEFAULT_KIND

    return "tasks" if kind.name == DEFAULT_KIND else kind.name


def _what(kind: Any) -> str:
    from qfair.dump.kinds import DEFAULT_KIND

    return "scored tasks" if kind.name == DEFAULT_KIND else f"{kind.name} tasks"


def _resolve_tasks(c: _C, names: list[str], fld: str) -> list[str]:
    import qfair.tasks as T

    try:
        return T.resolve(names)
    except Exception as e:  # noqa: BLE001 - TaskError: an unknown task or group
        raise c.fail(fld, str(e)) from None


def _by_dump_kind(names: list[str]) -> dict[str, tuple[Any, list[str]]]:
    """The tasks by the dump kind that writes them, the default kind's last (their groups' order)."""
    import qfair.tasks as T
    from qfair.dump.kinds import DEFAULT_KIND, kind_of_tasks

    out: dict[str, tuple[Any, list[str]]] = {}
    for n in names:
        k = kind_of_tasks({n: T.spec(n).kind})
        out.setdefault(k.name, (k, []))[1].append(n)
    return dict(sorted(out.items(), key=lambda kv: kv[0] == DEFAULT_KIND))


def _auto_groups(c: _C, names: list[str]) -> list[TaskGroup]:
    """``tasks = ["piqa", "gen_stories"]``: one group of scored tasks, one per other dump kind (generation)."""
    from qfair.dump.kinds import DEFAULT_KIND

    by_kind = _by_dump_kind(_resolve_tasks(c, names, "tasks"))
    scored = [TaskGroup("tasks", "tasks", tuple(ts)) for name, (_, ts) in by_kind.items() if name == DEFAULT_KIND]
    return scored + [TaskGroup(name, name, tuple(ts)) for name, (_, ts) in by_kind.items() if name != DEFAULT_KIND]


def _analysis(c: _C, v: Any) -> dict[str, Any]:
    t = c.table(v, "analysis", ANALYSIS_KEYS)
    out: dict[str, Any] = {}
    for k, val in t.items():
        fld = f"analysis.{k}"
        if k == "threads":
            out[k] = _threads(c, val, fld)
        elif k in ("bootstrap", "n_strata", "chunk_rows"):
            out[k] = c.int_(val, fld, 1)
        elif k == "seed":
            out[k] = c.int_(val, fld, 0)
        elif k == "confidence":
            x = c.num(val, fld)
            if not 0 < x < 1:
                raise c.fail(fld, f"is {val!r}, expected a number in (0, 1)")
            out[k] = x
        elif k == "topk":
            if not isinstance(val, list) or not val or not all(type(x) is int and 1 <= x < 2**31 for x in val):
                raise c.fail(fld, f"is {val!r}, expected a list of positive integers")
            out[k] = list(val)
        elif k == "bins":
            if not (type(val) is int and val >= 1) and not isinstance(val, (str, dict)):
                raise c.fail(fld, f"is {val!r}, expected an integer, 'K,METRIC=K' or a table")
            from qfair.analyze.summary import parse_bins

            try:  # the parser qfair analyze applies, now rather than after the dumps
                parse_bins(val)
            except (ValueError, TypeError, OverflowError) as e:
                raise c.fail(fld, f"is {val!r}: {e}") from None
            out[k] = val
        elif k == "binning":
            out[k] = c.choice(val, fld, ("width", "mass"))
        elif k == "strata":
            out[k] = c.choice(val, fld, ("confidence", "entropy"))
        elif k in ("skip_hash", "report"):
            out[k] = c.flag(val, fld)
        elif k == "formats":
            fm = c.strs(val, fld)
            bad = [f for f in fm if f not in ("parquet", "csv", "md", "latex")]
            if bad or "parquet" not in fm:
                raise c.fail(fld, f"is {val!r}, expected formats among parquet, csv, md, latex (parquet included)")
            out[k] = fm
        elif k == "metrics":
            out[k] = c.strs(val, fld)
    return out


def _slurm(c: _C, v: Any) -> dict[str, Any]:
    t = c.table(v, "slurm", SLURM_KEYS)
    out: dict[str, Any] = {}
    for k, val in t.items():
        fld = f"slurm.{k}"
        if k in ("partition", "analysis_partition", "account", "qos", "constraint"):
            out[k] = c.str_(val, fld)
        elif k == "extra":
            out[k] = dict(c.table(val, fld))
        elif k in ("gpus_per_job",):
            out[k] = c.int_(val, fld, 0)
        else:
            out[k] = c.int_(val, fld, 1)
    return out


def load_study(path: str | os.PathLike) -> Study:
    """Read and check a study file (module doc); StudyError names file and field."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise StudyError("reading a study file on Python 3.10 needs tomli: pip install tomli") from None
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise StudyError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise StudyError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyError(f"{p}: not valid TOML ({e})") from None
    c = _C(p)
    root = p.resolve().parent
    c.table(raw, "", ("name", "out", "data_dir", "models", "quant", "base", "tasks", "dump", "analysis", "slurm"))
    name = c.str_(raw.get("name", p.stem), "name")
    out = None
    if "out" in raw:
        from qfair.fsutil import PathError, expand_user, resolved

        try:
            out = resolved(root / expand_user(c.str_(raw["out"], "out")), "out")
        except PathError as e:
            raise c.fail("out", str(e)) from None
    data_dir = None
    if "data_dir" in raw:  # relative to the study file; fetched later is fine (a dump says so if it is missing)
        dd = Path(c.str_(raw["data_dir"], "data_dir")).expanduser()
        data_dir = str(dd if dd.is_absolute() else (root / dd).resolve())
        if Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise c.fail("data_dir", f"is {raw['data_dir']!r}: not a directory")
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise c.fail("models", "missing or empty: list the models ([[models]] id = ...)")
    models = [_model(c, m, i, root) for i, m in enumerate(models_raw)]
    labels = [m.label for m in models]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise c.fail("models", f"give clashing labels {dup}; set label = ... on each")
    base = _spec(c, raw.get("base", "none"), "base")
    q = raw.get("quant")
    if q is None:
        raise c.fail("quant", "missing: list the quantization specs to compare with the base (quant = [\"bnb-nf4\"])")
    if isinstance(q, str):
        q = [s for s in (x.strip() for x in q.split(",")) if s]
    if not isinstance(q, list) or not q:
        raise c.fail("quant", "expected a non-empty list of specs")
    specs = [_spec(c, s, f"quant[{i}]") for i, s in enumerate(q)]
    slabels = [base.label, *(s.label for s in specs)]
    dup = sorted({x for x in slabels if slabels.count(x) > 1})
    if dup:
        raise c.fail("quant", f"give clashing labels {dup} (the base is {base.label!r}); set label = ... on each")
    tasks_raw = raw.get("tasks")
    if tasks_raw is None or tasks_raw == []:
        raise c.fail("tasks", "missing: list task names (tasks = [\"piqa\"]) or task groups ([[tasks]])")
    if isinstance(tasks_raw, str) or (isinstance(tasks_raw, list) and all(isinstance(x, str) for x in tasks_raw)):
        groups = _auto_groups(c, c.strs(tasks_raw, "tasks"))
    elif isinstance(tasks_raw, list):
        groups = [_group(c, g, i, root) for i, g in enumerate(tasks_raw)]
    else:
        raise c.fail("tasks", "expected a list of task names or [[tasks]] tables")
    gnames = [g.name for g in groups]
    dup = sorted({x for x in gnames if gnames.count(x) > 1})
    if dup:
        raise c.fail("tasks", f"groups with the same name {dup}")
    dump = _dump_options(c, c.table(raw.get("dump", {}), "dump", DUMP_KEYS), "dump")
    analysis = _analysis(c, raw.get("analysis", {}))
    slurm = _slurm(c, raw.get("slurm", {}))
    return Study(p.resolve(), name, models, base, specs, groups, dump, analysis, slurm, out, raw, data_dir)
