"""The built-in tasks and how a task is bound to its data."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from qfair.plugins import load_plugins

from . import formats
from .base import Doc, FieldError, Task, TaskDataError, TaskError, make_example_id
from .datadir import DataDir
from .loading import RowError, file_format, hash_bytes, hub_rows, read_rows

BUILTIN_SOURCE = "builtin-sample"
HF_SOURCE = "hf"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    kind: str                       # a task kind of qfair.metrics.task_kinds ("multiple_choice", "bbq", "generation", ...)
    prompt_format_version: str
    convert: formats.Converter
    schema: str                     # the fields a data file must hold
    target_delimiter: str = " "
    hf: tuple[str, str | None, str] | None = None   # (dataset path, config, split)
    sample: str | None = None       # file under qfair/tasks/data/
    group_by: str | None = None     # what Doc.group holds for this task
    # rows kept (lm-evaluation-harness's process_docs filters); doc_index counts kept rows only
    keep: formats.RowFilter | None = None

    @property
    def hf_source(self) -> str | None:
        if self.hf is None:
            return None
        path, config, split = self.hf
        return f"hf:{path}/{config or 'default'}/{split}"

    def sample_path(self) -> Any:
        """The built-in sample as an importlib.resources Traversable, or None."""
        if self.sample is None:
            return None
        if os.path.isabs(self.sample):  # a plugin's own file
            return Path(self.sample)
        return resources.files(__package__).joinpath("data", self.sample)


XSTORYCLOZE_LANGS = ("en", "ar", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh")

_BBQ_SCHEMA = ("context, question, ans0, ans1, ans2, label (0-2), category, question_polarity (neg|nonneg), "
               "context_condition (ambig|disambig), answer_info{ans0,ans1,ans2}, "
               "additional_metadata{stereotyped_groups}")
_WINOGENDER_SCHEMA = "sentence, pronoun, occupation, participant, gender (male|female|neutral), label (0 or 1)"
_HATE_SCHEMA = ("text, label (0/1), identities (list); or Jigsaw/civil_comments comment_text|text, "
                "toxicity|target + identity columns (male, female, muslim, black, ...); or HateCheck test_case, "
                "label_gold, functionality, target_ident; or Measuring Hate Speech text, "
                "hate_speech_score|hatespeech + target_* columns")
_STEREOSET_SCHEMA = ("id, target, bias_type, context, sentences (hub: {sentence[], gold_label[]}; "
                     "or a list of {sentence, gold_label})")


# A task that needs no code of its own is one declarative file next to its sample,
# data/NAME.task.toml: name, description, kind, prompt_format_version, format (a
# converter of qfair.tasks.formats, with format_args for a converter factory), schema,
# and optional target_delimiter, sample, group_by and [hf] path/config/split. Tasks
# that need code (row filters, generated families) are defined in Python below.
_DECLARED_KEYS = {"name", "description", "kind", "prompt_format_version", "format", "format_args", "schema",
                  "target_delimiter", "sample", "group_by", "hf"}
_REQUIRED_KEYS = ("name", "description", "kind", "prompt_format_version", "format", "schema")


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def declared_spec(where: str, text: str) -> TaskSpec:
    """The TaskSpec of one declarative task file (``where`` names it in errors)."""
    try:
        d = _toml_loads(text)
    except ValueError as e:
        raise TaskError(f"{where}: not valid TOML ({e})") from None
    unknown = sorted(set(d) - _DECLARED_KEYS)
    missing = [k for k in _REQUIRED_KEYS if not isinstance(d.get(k), str) or not d.get(k)]
    if unknown or missing:
        raise TaskError(f"{where}: " + "; ".join(
            ([f"unknown field(s) {unknown}"] if unknown else []) + ([f"missing text field(s) {missing}"] if missing
                                                                   else []))
            + f" (fields: {', '.join(sorted(_DECLARED_KEYS))})")
    conv = getattr(formats, d["format"], None)
    if conv is None or not callable(conv):
        raise TaskError(f"{where}: format {d['format']!r} is not a converter of qfair.tasks.formats")
    if "format_args" in d:
        conv = conv(*d["format_args"])
    hf = None
    if "hf" in d:
        h = d["hf"]
        if not isinstance(h, dict) or not h.get("path") or not h.get("split") or set(h) - {"path", "config", "split"}:
            raise TaskError(f"{where}: [hf] needs path and split (and an optional config), got {h!r}")
        hf = (h["path"], h.get("config"), h["split"])
    return TaskSpec(d["name"], d["description"], d["kind"], d["prompt_format_version"], conv, d["schema"],
                    target_delimiter=d.get("target_delimiter", " "), hf=hf, sample=d.get("sample"),
                    group_by=d.get("group_by"))


def declared_specs() -> list[TaskSpec]:
    """The tasks declared by ``qfair/tasks/data/*.task.toml``, in file-name order."""
    data = resources.files(__package__).joinpath("data")
    out = []
    for f in sorted((f for f in data.iterdir() if f.name.endswith(".task.toml")), key=lambda f: f.name):
        sp = declared_spec(f"qfair/tasks/data/{f.name}", f.read_text(encoding="utf-8"))
        if f.name != f"{sp.name}.task.toml":
            raise TaskError(f"qfair/tasks/data/{f.name}: declares task {sp.name!r}; name the file {sp.name}.task.toml")
        out.append(sp)
    return out


def _specs() -> dict[str, TaskSpec]:
    specs = declared_specs()
    specs += _bias_specs()
    specs.extend(generation_task_specs())  # prompt-only tasks (task kind "generation")
    return {s.name: s for s in specs}


def generation_task_specs() -> list[Any]:
    """The TaskSpecs of the generation tasks (prompts only: :mod:`qfair.tasks.prompts`)."""
    from .prompts import GENERATION_TASK_KIND, PROMPT_FIELDS, generation_prompt

    kind = GENERATION_TASK_KIND
    return [
        TaskSpec("gen_stories", "Story and description openers in en, fr, es, de, ru and zh (generation).",
                 kind, "qfair/gen_stories@1", generation_prompt, PROMPT_FIELDS, target_delimiter="",
                 sample="gen_stories.jsonl", group_by="language"),
        TaskSpec("gen_bias_probes", "Templated prompts about people of different groups (gender, origin, "
                 "religion, age, disability) in English and French (generation).",
                 kind, "qfair/gen_bias_probes@1", generation_prompt, PROMPT_FIELDS, target_delimiter="",
                 sample="gen_bias_probes.jsonl", group_by="group (axis in extras)"),
        TaskSpec("gen_prompts", "Your own prompts to continue (generation); a three-prompt sample ships.",
                 kind, "qfair/gen_prompts@1", generation_prompt, PROMPT_FIELDS, target_delimiter="",
                 sample="gen_prompts.jsonl", group_by="group field"),
    ]


# lm-evaluation-harness's WinoGender subsets by pronoun gender, per dataset config
WINOGENDER_SUBSETS = {"all": ("male", "female", "neutral"), "gotcha": ("male", "female")}


def _gender_is(gender: str) -> formats.RowFilter:
    def keep(row: Mapping[str, Any]) -> bool:
        return formats.winogender_gender(row) == gender

    return keep


def _bias_specs() -> list[TaskSpec]:
    bbq_hf = ("oskarvanderwal/bbq", "All", "test")
    specs = [
        TaskSpec("bbq", "BBQ: who is the answer to a question about two people, when the context does or "
                        "does not say? Two answers plus ten 'unknown' strings, as lm-evaluation-harness asks it.",
                 "bbq", "lm-eval-harness/bbq@1", formats.bbq, _BBQ_SCHEMA, hf=bbq_hf, sample="bbq.jsonl",
                 group_by="category"),
        TaskSpec("bbq_3choice", "BBQ over the dataset's own three answers (qfair's variant of the same prompt).",
                 "bbq", "qfair/bbq_3choice@1", formats.bbq_3choice, _BBQ_SCHEMA, hf=bbq_hf, sample="bbq.jsonl",
                 group_by="category"),
    ]
    for setting in ("intrasentence", "intersentence"):
        specs.append(TaskSpec(
            f"stereoset_{setting}",
            f"StereoSet ({setting}): is the stereotype likelier than the anti-stereotype, and both likelier "
            f"than an unrelated option?", "stereoset", f"qfair/stereoset_{setting}@1",
            formats.stereoset(setting), _STEREOSET_SCHEMA,
            target_delimiter="" if setting == "intrasentence" else " ",
            hf=("McGill-NLP/stereoset", setting, "validation"), sample=f"stereoset_{setting}.jsonl",
            group_by="bias_type"))
    for config in ("all", "gotcha"):
        genders = WINOGENDER_SUBSETS[config]
        for gender in (None, *genders):
            prefix = "winogender" if config == "all" else "winogender_gotcha"
            name = (f"{prefix}_{gender}" if gender is not None
                    else "winogender_all" if config == "all" else prefix)
            which = "" if gender is None else f", {gender} pronouns only"
            gotcha = (" (gotcha: the pronoun's gender is not the occupation's majority gender)"
                      if config == "gotcha" else "")
            specs.append(TaskSpec(
                name, f"WinoGender{gotcha}{which}: does the pronoun refer to the occupation or the participant?",
                "winogender", f"lm-eval-harness/{name}@1", formats.winogender, _WINOGENDER_SCHEMA,
                hf=("oskarvanderwal/winogender", config, "test"), sample=f"winogender_{config}.jsonl",
                group_by="gender", keep=None if gender is None else _gender_is(gender)))
    specs.append(TaskSpec(
        "hate_speech", "Zero-shot hate/toxicity detection: is the text hateful? (yes/no by log-likelihood); "
                       "AUCs per identity group it mentions (subgroup, BPSN, BNSP; Borkan et al. 2019).",
        "hate_speech", "qfair/hate_speech@1", formats.hate_speech, _HATE_SCHEMA, sample="hate_speech.jsonl",
        group_by="identities"))
    return specs


SPECS: dict[str, TaskSpec] = _specs()

GROUPS: dict[str, tuple[str, ...]] = {
    "xstorycloze": tuple(f"xstorycloze_{lang}" for lang in XSTORYCLOZE_LANGS),
    "crows_pairs": ("crows_pairs_english", "crows_pairs_french"),
    "truthfulqa": ("truthfulqa_mc1", "truthfulqa_mc2"),
    "ai2_arc": ("arc_easy", "arc_challenge"),
    "stereoset": ("stereoset_intrasentence", "stereoset_intersentence"),
    "winogender": ("winogender_all", "winogender_gotcha"),
    "bias": ("bbq", "stereoset_intrasentence", "stereoset_intersentence", "winogender_all", "winogender_gotcha",
             "crows_pairs_english", "crows_pairs_french"),
    "generation": ("gen_stories", "gen_bias_probes"),
}


def register_task(task: TaskSpec) -> TaskSpec:
    """Add a task (a plugin's, through the ``qfair.tasks`` entry points: see
    :mod:`qfair.plugins`); its ``sample`` may be an absolute path."""
    if task.name in SPECS or task.name in GROUPS:
        raise TaskError(f"task {task.name!r} is registered twice")
    SPECS[task.name] = task
    return task


def _plugins() -> None:
    load_plugins("qfair.tasks", TaskError)


def names() -> list[str]:
    """All task names (built-in and plugins'), sorted."""
    _plugins()
    return sorted(SPECS)


def spec(name: str) -> TaskSpec:
    """The definition of a built-in task (no data is read)."""
    _plugins()
    try:
        return SPECS[name]
    except KeyError:
        raise TaskError(_unknown(name)) from None


def has_builtin_sample(name: str) -> bool:
    return spec(name).sample is not None


def _unknown(name: str) -> str:
    return (f"unknown task '{name}'; known tasks: {', '.join(names())}; "
            f"groups: {', '.join(sorted(GROUPS))}")


def resolve(tasks: str | Iterable[str]) -> list[str]:
    """Task names from "piqa,boolq" or a list; group names (xstorycloze,
    crows_pairs, truthfulqa, ai2_arc, stereoset, winogender, bias) expand to their members. Order is kept,
    repeats dropped; an unknown name raises TaskError."""
    _plugins()
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TaskError(f"task names must be strings, got {item!r}")
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if part in GROUPS:
                members = GROUPS[part]
            elif part in SPECS:
                members = (part,)
            else:
                raise TaskError(_unknown(part))
            out.extend(m for m in members if m not in out)
    if not out:
        raise TaskError("no task given; known tasks: " + ", ".join(names()))
    return out


def parse_data_files(values: Iterable[str]) -> dict[str, Path]:
    """Parse repeated ``--data-file TASK=PATH`` options. PATH may be ``hf`` to
    read the task's Hugging Face dataset (needs the ``datasets`` package)."""
    out: dict[str, Path] = {}
    for value in values:
        task, sep, path = value.partition("=")
        task, path = task.strip(), path.strip()
        if not sep or not task or not path:
            raise TaskError(f"--data-file expects TASK=PATH, got '{value}'")
        if task in GROUPS:
            raise TaskError(f"--data-file needs a single task, not the group '{task}' "
                            f"(members: {', '.join(GROUPS[task])})")
        if task not in SPECS:
            raise TaskError(_unknown(task))
        if task in out:
            raise TaskError(f"--data-file given twice for task '{task}'")
        out[task] = Path(path)
    return out


def _is_hub_request(data_file: str | os.PathLike | None) -> bool:
    if data_file is None:
        return False
    text = os.fspath(data_file)
    return text == HF_SOURCE and not Path(text).exists()


def get(name: str, *, data_file: str | os.PathLike | None = None, limit: int | None = None,
        source: str | None = None, data_dir: str | os.PathLike | None = None) -> Task:
    """A task bound to its data, every row already checked.

    Data comes from ``data_file`` (JSONL / JSON / CSV / TSV / Parquet in the
    dataset's own field names), from the Hugging Face hub when
    ``source="hf"`` (or ``data_file="hf"``; needs the ``datasets`` package and
    network; never tried otherwise), from ``data_dir`` (written by ``qfair data
    fetch``) when it holds the task (its file checked against the directory's
    sha256), and by default from the sample shipped with qfair
    (``source="builtin-sample"``).
    A malformed row raises TaskDataError naming file, line and field.
    """
    sp = spec(name)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise TaskError(f"{name}: limit must be a non-negative integer, got {limit!r}")
    if source not in (None, BUILTIN_SOURCE, HF_SOURCE):
        raise TaskError(f"{name}: source must be 'builtin-sample' or 'hf', got {source!r}")
    if source == BUILTIN_SOURCE and data_file is not None:
        raise TaskError(f"{name}: source 'builtin-sample' and a data file were both given")

    if source == HF_SOURCE or _is_hub_request(data_file):
        if sp.hf is None:
            raise TaskError(f"{name}: has no Hugging Face dataset; pass --data-file {name}=PATH")
        rows, digest = hub_rows(*sp.hf)
        where = sp.hf_source or "hf"
        located = ((f"row {i}", r) for i, r in enumerate(rows, 1))
        return Task(spec=sp, source=where, source_hash=digest,
                    docs=_convert(sp, where, located), limit=limit)

    if data_file is not None:
        path = Path(data_file)
        if not path.is_file():
            raise TaskError(f"{name}: data file '{path}' does not exist" if not path.exists()
                            else f"{name}: data file '{path}' is not a file")
        return _from_file(sp, path, path.read_bytes(), limit)

    if data_dir is not None and source is None:
        found = DataDir.read(data_dir).read_task(name)
        if found is not None:
            return _from_file(sp, *found, limit)

    sample = sp.sample_path()
    if sample is None:
        hub = (f"; or read {sp.hf_source} with --data-file {name}=hf (needs the 'datasets' "
               f"package and the hub)" if sp.hf else "")
        raise TaskError(f"{name}: no built-in sample ships for this task; provide data with "
                        f"--data-file {name}=PATH (JSONL/Parquet/CSV with fields {sp.schema}){hub}")
    data = sample.read_bytes()
    where = f"<builtin sample {sp.sample}>"
    docs = _convert(sp, where, _located(sp, where, data, "json", False))
    return Task(spec=sp, source=BUILTIN_SOURCE, source_hash=hash_bytes(data), docs=docs,
                limit=limit)


def _from_file(sp: TaskSpec, path: Path, data: bytes, limit: int | None) -> Task:
    where = str(path)
    docs = _convert(sp, where, _located(sp, where, data, file_format(path), path.suffix.lower() == ".tsv"))
    return Task(spec=sp, source=where, source_hash=hash_bytes(data), docs=docs, limit=limit)


def _located(sp: TaskSpec, where: str, data: bytes, fmt: str, tsv: bool):
    try:
        yield from read_rows(data, fmt, tsv=tsv)
    except RowError as exc:
        raise TaskDataError(sp.name, where, exc.location, None, exc.problem) from None


def _convert(sp: TaskSpec, where: str, located: Iterable[tuple[str, Mapping[str, Any]]]) -> list[Doc]:
    docs: list[Doc] = []
    seen_ids: dict[Any, str] = {}
    index = -1
    for location, row in located:
        try:
            if sp.keep is not None and not sp.keep(row):
                continue
            r = sp.convert(row)
        except FieldError as exc:
            raise TaskDataError(sp.name, where, location, exc.field, exc.problem) from None
        if (sp.name == "mc" or sp.kind == "generation") and "id" in r.extras:
            ident = r.extras["id"]
            if ident in seen_ids:
                raise TaskDataError(sp.name, where, location, "id",
                                    f"repeats the id {ident!r} of {seen_ids[ident]}")
            seen_ids[ident] = location
        index += 1
        docs.append(Doc(task=sp.name, doc_index=index,
                        example_id=make_example_id(sp.name, index, row),
                        context=r.context, choices=r.choices, gold=r.gold, labels=r.labels,
                        group=r.group, extras=dict(r.extras)))
    if not docs:
        kept = " that the task keeps" if sp.keep is not None else ""
        raise TaskError(f"{sp.name}: {where} holds no data rows{kept}")
    return docs


# Where each task's definition lives inside lm-evaluation-harness (relative to
# its lm_eval/tasks directory): the reference that prompts are tested against
# and that the parity benchmark runs.
XSTORYCLOZE_LANGS = ("en", "ar", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh")
LM_EVAL_TASK_FILES = {
    "piqa": "piqa/piqa.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "truthfulqa_mc1": "truthfulqa/truthfulqa_mc1.yaml",
    "truthfulqa_mc2": "truthfulqa/truthfulqa_mc2.yaml",
    "crows_pairs_english": "crows_pairs/crows_pairs_english.yaml",
    "crows_pairs_french": "crows_pairs/crows_pairs_french.yaml",
    **{f"xstorycloze_{lang}": f"xstorycloze/default_{lang}.yaml" for lang in XSTORYCLOZE_LANGS},
    "bbq": "bbq/bbq_multiple_choice.yaml",
    "winogender_all": "winogender/winogender.yaml",
    "winogender_male": "winogender/winogender_male.yaml",
    "winogender_female": "winogender/winogender_female.yaml",
    "winogender_neutral": "winogender/winogender_neutral.yaml",
    "winogender_gotcha": "winogender/winogender_gotcha.yaml",
    "winogender_gotcha_male": "winogender/winogender_gotcha_male.yaml",
    "winogender_gotcha_female": "winogender/winogender_gotcha_female.yaml",
}
