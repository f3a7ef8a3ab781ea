"""The built-in tasks and how a task is bound to its data."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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
    kind: str                       # a task kind of qfair.analyze.task_kinds ("multiple_choice", "bbq", "generation", ...)
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
        return resources.files(__package__).joinpath("data", self.sample)


XSTORYCLOZE_LANGS = ("en", "ar", "es", "eu", "hi", "id", "my", "ru", "sw", "te", "zh")
XSTORYCLOZE_SAMPLES = ("en", "es", "ru", "zh")

_LANG_NAMES = {"en": "English", "ar": "Arabic", "es": "Spanish", "eu": "Basque",
               "hi": "Hindi", "id": "Indonesian", "my": "Burmese", "ru": "Russian",
               "sw": "Swahili", "te": "Telugu", "zh": "Chinese"}

_ARC_SCHEMA = "question, choices{text,label}, answerKey"
_TQA_SCHEMA_1 = "question, mc1_targets{choices,labels}"
_TQA_SCHEMA_2 = "question, mc2_targets{choices,labels}"
_XSC_SCHEMA = ("input_sentence_1..input_sentence_4, sentence_quiz1, sentence_quiz2, "
               "answer_right_ending (1 or 2)")
_CROWS_SCHEMA = "sent_more, sent_less, bias_type[, stereo_antistereo]"
_BBQ_SCHEMA = ("context, question, ans0, ans1, ans2, label (0-2), category, question_polarity (neg|nonneg), "
               "context_condition (ambig|disambig), answer_info{ans0,ans1,ans2}, "
               "additional_metadata{stereotyped_groups}")
_WINOGENDER_SCHEMA = "sentence, pronoun, occupation, participant, gender (male|female|neutral), label (0 or 1)"
_STEREOSET_SCHEMA = ("id, target, bias_type, context, sentences (hub: {sentence[], gold_label[]}; "
                     "or a list of {sentence, gold_label})")


def _specs() -> dict[str, TaskSpec]:
    specs = [
        TaskSpec("piqa", "Physical commonsense: pick the better of two solutions to a goal.",
                 "multiple_choice", "lm-eval-harness/piqa@1", formats.piqa,
                 "goal, sol1, sol2, label (0 or 1)",
                 hf=("baber/piqa", None, "validation"), sample="piqa.jsonl"),
        TaskSpec("boolq", "Yes/no questions about a short passage.",
                 "multiple_choice", "lm-eval-harness/boolq@2", formats.boolq,
                 "passage, question, label (0 = no, 1 = yes)",
                 hf=("aps/super_glue", "boolq", "validation"), sample="boolq.jsonl"),
        TaskSpec("openbookqa", "Elementary science questions, four choices, no passage.",
                 "multiple_choice", "lm-eval-harness/openbookqa@1", formats.openbookqa,
                 "question_stem, choices{text,label}, answerKey",
                 hf=("allenai/openbookqa", "main", "test"), sample="openbookqa.jsonl"),
        TaskSpec("arc_easy", "Grade-school science questions (ARC Easy set).",
                 "multiple_choice", "lm-eval-harness/arc_easy@1", formats.arc, _ARC_SCHEMA,
                 hf=("allenai/ai2_arc", "ARC-Easy", "test"), sample="arc_easy.jsonl"),
        TaskSpec("arc_challenge", "Grade-school science questions (ARC Challenge set).",
                 "multiple_choice", "lm-eval-harness/arc_challenge@1", formats.arc, _ARC_SCHEMA,
                 hf=("allenai/ai2_arc", "ARC-Challenge", "test"), sample="arc_challenge.jsonl"),
        TaskSpec("hellaswag", "Pick the most plausible continuation of an activity description.",
                 "multiple_choice", "lm-eval-harness/hellaswag@1", formats.hellaswag,
                 "activity_label, ctx_a, ctx_b, endings[4], label",
                 hf=("Rowan/hellaswag", None, "validation"), sample="hellaswag.jsonl"),
        TaskSpec("truthfulqa_mc1", "TruthfulQA, one true answer among several (MC1).",
                 "multiple_choice", "lm-eval-harness/truthfulqa_mc1@2", formats.truthfulqa_mc1,
                 _TQA_SCHEMA_1, hf=("truthfulqa/truthful_qa", "multiple_choice", "validation"),
                 sample="truthfulqa.jsonl"),
        TaskSpec("truthfulqa_mc2", "TruthfulQA, probability mass on the true answers (MC2).",
                 "mc2", "lm-eval-harness/truthfulqa_mc2@3", formats.truthfulqa_mc2,
                 _TQA_SCHEMA_2, hf=("truthfulqa/truthful_qa", "multiple_choice", "validation"),
                 sample="truthfulqa.jsonl"),
    ]
    for lang in XSTORYCLOZE_LANGS:
        specs.append(TaskSpec(
            f"xstorycloze_{lang}",
            f"Story cloze in {_LANG_NAMES[lang]}: pick the right ending of a four-sentence story.",
            "multiple_choice", f"lm-eval-harness/xstorycloze_{lang}@1", formats.xstorycloze(lang),
            _XSC_SCHEMA, hf=("juletxara/xstory_cloze", lang, "eval"),
            sample=f"xstorycloze_{lang}.jsonl" if lang in XSTORYCLOZE_SAMPLES else None,
            group_by="language"))
    for lang, config in (("en", "english"), ("fr", "french")):
        specs.append(TaskSpec(
            f"crows_pairs_{config}",
            f"CrowS-Pairs ({config.capitalize()}): is the more stereotyping sentence of a "
            f"minimal pair the likelier one?",
            "crows_pairs", f"lm-eval-harness/crows_pairs_{config}@1", formats.crows_pairs(lang),
            _CROWS_SCHEMA, target_delimiter="",
            hf=("jannalu/crows_pairs_multilingual", config, "test"),
            sample=f"crows_pairs_{config}.jsonl", group_by="bias_type"))
    specs += _bias_specs()
    specs.append(TaskSpec(
        "mc", "Generic multiple choice from your own rows; context and choices used verbatim.",
        "multiple_choice", "qfair/mc@1", formats.generic_mc,
        "context, choices (list), label (index), optional id and group",
        sample="mc.jsonl", group_by="group field"))
    from qfair.generation.prompts import generation_task_specs  # prompt-only tasks (task kind "generation")

    specs.extend(generation_task_specs())
    return {s.name: s for s in specs}


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


def names() -> list[str]:
    """All built-in task names, sorted."""
    return sorted(SPECS)


def spec(name: str) -> TaskSpec:
    """The definition of a built-in task (no data is read)."""
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
