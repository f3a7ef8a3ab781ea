"""The generation producer: prompts -> continuations (+ teacher forcing on a
reference) -> a dump of kind ``generation`` through :class:`qfair.dump.DumpWriter`.

Order of work:

1. every prompt is checked and tokenised; with ``reference=`` the reference
   dump is opened and refused (one line naming the difference) unless its
   prompts, tokenizer and decoding settings are this run's;
2. the (prompt, sample) pairs are cut into batches of ``batch_size`` from the
   first pair on; each batch is generated (and teacher-forced on the
   reference's continuations); a prompt is handed to the writer as soon as all
   its samples are done;
3. shards are cut on the fly (rows are unknown before generating), or planned
   when a reference fixes them.

``resume=True`` regenerates from the batch that holds the first unfinished
prompt: batches are fixed by the pair order and ``batch_size`` (checked on
resume), greedy tokens and seeded samples do not depend on the batch, so the
resumed dump holds the same texts.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump.manifest import parse_store, stores_rows
from qfair.dump.summary import DumpSummary, _store_label, stored_text
from qfair.dump.writer import DumpWriter, check_unique_ids, writing
from qfair.generation import GENERATION_TASK_KIND
from qfair.generation.decode import DecodeSettings

__all__ = ["run_generation_dump", "prepare_settings", "GenerationSummary", "char_ends", "check_reference", "Reference",
           "DEFAULT_GEN_BATCH_SIZE"]

DEFAULT_GEN_BATCH_SIZE = 32
# the decoding settings a reference must share with the run
REFERENCE_SETTINGS = ("max_new_tokens", "temperature", "top_p", "samples", "seed")


@dataclass
class GenerationSummary(DumpSummary):
    """The account printed after a generation dump."""

    n_samples: int = 1
    n_generated: int = 0
    n_eos: int = 0
    n_continuations: int = 0
    reference: str | None = None
    settings: dict[str, Any] | None = None

    def text(self) -> str:
        head = "Dump already complete at" if self.already_complete else "Wrote"
        st = self.settings or {}
        mode = ("greedy" if st.get("mode") == "greedy" else
                f"sampled (temperature {st.get('temperature')}, top-p {st.get('top_p')}, seed {st.get('seed')})")
        mean = self.n_generated / self.n_continuations if self.n_continuations else 0.0
        stored = stored_text(self.store, self.store_dtype, self.n_rows, self.n_shards)
        ref = (f" Rows teacher-forced on the continuations of {self.reference}; free continuations kept "
               "alongside." if self.reference else "")
        resumed = f" Resumed at shard {self.resumed_from_shard}." if self.resumed_from_shard else ""
        nonfinite = (f" WARNING: {self.nonfinite_rows} row(s) held NaN/inf values (kept, flagged)."
                     if self.nonfinite_rows else "")
        return (f"{head} {self.path}: {self.n_examples} prompts x {self.n_samples} sample(s), {mode}, "
                f"{self.n_generated} generated tokens ({mean:.1f} per continuation, {self.n_eos} of "
                f"{self.n_continuations} stopped at EOS), {stored}.{ref}{resumed} "
                f"Took {self.seconds:.1f} s.{nonfinite}")


def char_ends(tokenizer: Any, ids: Sequence[int], text: str) -> list[int]:
    """For each token, how many characters of ``text`` the tokens up to it
    cover (non-decreasing; a token that ends inside a character covers 0 more)."""
    ends: list[int] = []
    prev = 0
    for i in range(1, len(ids) + 1):
        t = tokenizer.decode(list(ids[:i]), skip_special_tokens=True)
        k = len(os.path.commonprefix([t, text]))
        prev = max(prev, k)
        ends.append(prev)
    return ends


def _examples_columns(docs: Sequence[Any], samples: int) -> dict[str, list]:
    """The examples table of a generation dump: no choices; n_choices holds the samples per prompt."""
    from qfair.dump.tables import examples_columns

    return examples_columns(docs, lambda d: (-1, int(samples), [], None))


@dataclass
class Reference:
    """The base dump a quantized run is teacher-forced on."""

    path: Path
    conts: dict[tuple[str, int], list[int]]   # (example_id, sample) -> token ids of its free continuation
    record: dict[str, Any]                     # what the manifest records about it


def check_reference(path: str | os.PathLike, docs: Sequence[Any], tokenizer_fp: Mapping[str, Any] | None,
                    settings: DecodeSettings) -> Reference:
    """Open ``path`` as the reference of this run; DumpError naming the first
    difference in prompts, tokenizer (skipped when ``tokenizer_fp`` is None) or
    decoding settings."""
    import polars as pl

    from qfair.dump.reader import open_dump

    where = f"--reference {path}"
    try:
        ref = open_dump(path)
    except DumpError as e:
        raise DumpError(f"{where}: {e}") from None
    if ref.kind.name != "generation":
        raise DumpError(f"{where}: a {ref.kind.name!r} dump; the reference must be a generation dump")
    if not ref.is_complete:
        raise DumpError(f"{where}: status {ref.status!r}; finish it first (qfair dump --resume)")
    gen = ref.manifest.get("generation") or {}
    if gen.get("reference"):
        raise DumpError(f"{where}: was itself teacher-forced on {gen['reference'].get('path')}; "
                        "use the dump that generated the text (the base dump)")
    ours = settings.to_json()
    theirs = gen.get("settings") or {}
    for k in REFERENCE_SETTINGS:
        if theirs.get(k) != ours.get(k):
            raise DumpError(f"{where}: decoding setting {k!r} is {theirs.get(k)!r} there and {ours.get(k)!r} "
                            "here; use the reference's settings")
    from qfair.scoring import fingerprint_difference

    a, b = dict(ref.tokenizer_fingerprint), dict(tokenizer_fp or {})
    k = fingerprint_difference(a, b) if tokenizer_fp is not None else None
    if k is not None:
        raise DumpError(f"{where}: tokenizer fingerprint field {k!r} is {a.get(k)!r} there and "
                        f"{b.get(k)!r} here; teacher forcing needs the same tokenizer")
    ex = ref.examples
    if ex.height != len(docs):
        raise DumpError(f"{where}: {ex.height} prompts there, {len(docs)} here (same --tasks, --limit and "
                        "--data-file needed)")
    ids, ctx = ex["example_id"].to_list(), ex["context"].to_list()
    for i, d in enumerate(docs):
        if ids[i] != d.example_id or ctx[i] != d.context:
            raise DumpError(f"{where}: prompt {i} differs ({ids[i]!r}: {ctx[i][:40]!r} there, {d.example_id!r}: "
                            f"{d.context[:40]!r} here)")
    g = ref.table("generations").filter(pl.col("source") == "free")
    conts = {(e, int(s)): list(t) for e, s, t in zip(g["example_id"].to_list(), g["sample"].to_list(),
                                                       g["token_ids"].to_list())}
    for d in docs:
        for s in range(settings.samples):
            if (d.example_id, s) not in conts:
                raise DumpError(f"{where}: generations.parquet has no free continuation for "
                                f"{d.example_id!r} sample {s}")
    model = (ref.manifest.get("model") or {})
    record = {"path": str(path), "tokens_sha256": ((ref.manifest.get("tables") or {}).get("tokens") or {}).get("sha256"),
              "examples_sha256": ((ref.manifest.get("tables") or {}).get("examples") or {}).get("sha256"),
              "model": (model.get("model") or {}).get("id") if isinstance(model.get("model"), dict) else model.get("model"),
              "quantization": (model.get("quantization") or {}).get("spec")}
    return Reference(Path(path), conts, record)


def _prepare(tasks: Sequence[Any], tokenizer: Any) -> tuple[list[Any], list[list[int]], list[dict[str, Any]]]:
    from qfair.dump.multiple_choice import task_info
    from qfair.generation.decode import encode_prompt

    docs, prompts, infos = [], [], []
    for task in tasks:
        if task.kind != GENERATION_TASK_KIND:
            raise DumpError(f"{task.name}: a {task.kind!r} task, not a generation task")
        n = 0
        for d in task.docs():
            if not isinstance(d.context, str) or not d.context:
                raise DumpError(f"{task.name} example {d.example_id}: field 'prompt' must be a non-empty string")
            docs.append(d)
            try:
                prompts.append(encode_prompt(tokenizer, d.context))
            except ValueError as e:
                raise DumpError(f"{task.name} example {d.example_id}: {e}") from None
            n += 1
        info = task_info(task)
        info["n_examples"] = n
        infos.append(info)
    if not docs:
        raise DumpError("the selected tasks hold no prompts (check --limit and --data-file)")
    check_unique_ids(docs)
    return docs, prompts, infos


def _check_lengths(model: Any, docs: Sequence[Any], prompts: Sequence[list[int]], max_new: int) -> None:
    cfg = getattr(model, "config", None)
    limit = next((v for a in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
                  if isinstance(v := getattr(cfg, a, None), int) and v > 0), None)
    if limit is None:
        return
    for d, p in zip(docs, prompts):
        if len(p) + max_new > limit:
            raise DumpError(f"{d.task} example {d.example_id}: {len(p)} prompt tokens + --max-new-tokens {max_new} "
                            f"exceed the model's {limit} positions")


def prepare_settings(task_objs: Sequence[Any], gen_opts: Mapping[str, Any], seed: int) -> DecodeSettings:
    """The decoding settings of a generation dump from its options, and the
    reference dump checked against the prompts and settings, before the model
    loads (the generation kind's ``prepare``, called by ``qfair dump``)."""
    try:
        settings = DecodeSettings(**{k: v for k, v in gen_opts.items() if k != "reference"}, seed=seed)
    except ValueError as e:
        raise DumpError(str(e)) from None
    if gen_opts.get("reference") is not None:
        check_reference(gen_opts["reference"], [d for t in task_objs for d in t.docs()], None, settings)
    return settings


def produce(out: str | os.PathLike, loaded: Any, tasks: Sequence[Any], *, settings: DecodeSettings,
            options: Mapping[str, Any] | None = None, threads: int | None = None, part: Any = None,
            seed: int = 0, **common: Any) -> GenerationSummary:
    """The generation kind's producer as ``qfair dump`` calls every kind's (the
    seed is part of ``settings``; generation dumps are never split up front)."""
    return run_generation_dump(out, loaded, tasks, settings=settings, reference=(options or {}).get("reference"),
                               **common)


def run_generation_dump(out: str | os.PathLike, loaded: Any, tasks: Sequence[Any], *,
                        settings: DecodeSettings | None = None, reference: str | os.PathLike | None = None,
                        store: str = "full", store_dtype: str = "f16", shard_rows: int = 4096,
                        batch_size: int = DEFAULT_GEN_BATCH_SIZE, resume: bool = False, overwrite: bool = False,
                        progress: bool = True, config: dict[str, Any] | None = None) -> GenerationSummary:
    """Generate a continuation of every prompt of ``tasks`` with ``loaded`` (a
    LoadedModel: .model, .tokenizer, .device, .manifest()) and write a
    generation dump at ``out`` (see the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    from qfair.dump.multiple_choice import logits_width, model_record
    from qfair.generation.decode import Decoder, LanguageModel, row_seed
    from qfair.generation.teacher import teacher_force
    from qfair.scoring import tokenizer_fingerprint

    t0 = time.perf_counter()
    settings = settings or DecodeSettings()
    if batch_size < 1:
        raise DumpError(f"--batch-size must be >= 1, got {batch_size}")
    if not tasks:
        raise DumpError("no tasks to dump")
    torch.manual_seed(settings.seed)
    tok = loaded.tokenizer
    vocab = logits_width(loaded)
    docs, prompts, infos = _prepare(tasks, tok)
    _check_lengths(loaded.model, docs, prompts, settings.max_new_tokens)
    fp = tokenizer_fingerprint(tok, vocab)
    ref = check_reference(reference, docs, fp, settings) if reference is not None else None
    S = settings.samples
    rows_per_example = None
    if ref is not None:
        rows_per_example = [sum(len(ref.conts[(d.example_id, s)]) for s in range(S)) for d in docs]
    gen_info = {"settings": settings.to_json(), "reference": ref.record if ref is not None else None,
                "prompt_encoding": "tokenizer default special tokens (tokenizer.encode(prompt))",
                "rows": "teacher-forced on the reference continuation" if ref is not None else
                        "the model's own continuation (rows recorded while generating)",
                "stop": "EOS (tokenizer and generation config) or max_new_tokens; the EOS token is kept"}
    writer = DumpWriter(
        out, kind="generation", examples=_examples_columns(docs, S), vocab_size=vocab, tokenizer=fp, tasks=infos,
        model=model_record(loaded), rows_per_example=rows_per_example, store=store, store_dtype=store_dtype,
        shard_rows=shard_rows, config={**(config or {}), **settings.to_json(), "batch_size": batch_size,
                                       "reference": str(reference) if reference is not None else None},
        info={"generation": gen_info}, seed=settings.seed, counts={"continuations": len(docs) * S},
        resume=resume, overwrite=overwrite, inputs={"--reference": reference})
    if not writer.already_complete:
        lm = LanguageModel(loaded.model, tok, getattr(loaded, "device", None))
        keep = stores_rows(store)
        # top-K records are made by the writer from float32 rows
        row_dtype = store_dtype if parse_store(store)[0] == "full" else "f32"
        decoder = Decoder(lm, settings, keep_rows=keep and ref is None, store_dtype=row_dtype)
        items = [(i, s) for i in range(len(docs)) for s in range(S)]
        seeds = {(i, s): row_seed(settings.seed, docs[i].example_id, s) for i, s in items}
        first = (writer.start * S // batch_size) * batch_size
        bar = tqdm(total=len(items), initial=writer.start * S, unit="text", dynamic_ncols=True,
                   desc="qfair dump (generation)", disable=not progress)
        pending: dict[int, dict[int, tuple[Any, Any]]] = {}
        nxt = writer.start
        with writing(writer, bar):
            for b0 in range(first, len(items), batch_size):
                batch = items[b0:b0 + batch_size]
                bp = [prompts[i] for i, _ in batch]
                free = decoder.generate(bp, [seeds[it] for it in batch])
                forced = (teacher_force(lm, bp, [ref.conts[(docs[i].example_id, s)] for i, s in batch],
                                        keep_rows=keep, store_dtype=row_dtype)
                          if ref is not None else [None] * len(batch))
                for (i, s), f, r in zip(batch, free, forced):
                    if i >= writer.start:
                        pending.setdefault(i, {})[s] = (f, r)
                while nxt in pending and len(pending[nxt]) == S:
                    _add_example(writer, docs[nxt], len(prompts[nxt]), pending.pop(nxt), seeds, nxt, tok, store)
                    bar.update(S)
                    nxt += 1
    return _summary(Path(out), writer, time.perf_counter() - t0, settings, reference)


def _extend_positions(t: dict[str, list], d: Any, sample_col: str, s: int, c: Any) -> None:
    """One continuation's positions appended to a per-token table (tokens or gen_tokens)."""
    t["task"].extend([d.task] * c.n)
    t["example_id"].extend([d.example_id] * c.n)
    t[sample_col].extend([s] * c.n)
    t["pos"].extend(range(c.n))
    t["target"].extend(c.ids)
    for k in ("logprob", "entropy", "max_logprob", "argmax", "rank"):
        t[k].extend(c.scalars[k].tolist())


def _add_example(writer: DumpWriter, d: Any, n_prompt: int, res: dict[int, tuple[Any, Any]],
                 seeds: dict[tuple[int, int], int], index: int, tok: Any, store: str) -> None:
    gen: dict[str, list] = {k: [] for k in ("task", "example_id", "doc_index", "sample", "source", "seed",
                                            "n_prompt_tokens", "token_ids", "char_ends", "text", "n_tokens",
                                            "stop", "loglik", "first_row", "n_rows")}
    tk: dict[str, list] = {k: [] for k in ("row", "task", "example_id", "choice", "pos", "target", "logprob",
                                           "entropy", "max_logprob", "argmax", "rank")}
    gt: dict[str, list] = {k: [] for k in ("task", "example_id", "sample", "pos", "target", "logprob", "entropy",
                                           "max_logprob", "argmax", "rank")}
    full = stores_rows(store)
    row = writer.next_row
    blocks: list[np.ndarray] = []
    nonfinite = 0

    def add_gen(s: int, source: str, c: Any, aligned: bool) -> None:
        text = tok.decode(c.ids, skip_special_tokens=True)
        gen["task"].append(d.task)
        gen["example_id"].append(d.example_id)
        gen["doc_index"].append(int(d.doc_index))
        gen["sample"].append(s)
        gen["source"].append(source)
        gen["seed"].append(int(seeds[(index, s)]))
        gen["n_prompt_tokens"].append(int(n_prompt))
        gen["token_ids"].append([int(x) for x in c.ids])
        gen["char_ends"].append(char_ends(tok, c.ids, text))
        gen["text"].append(text)
        gen["n_tokens"].append(c.n)
        gen["stop"].append(c.stop)
        gen["loglik"].append(c.loglik)
        gen["first_row"].append(row if (aligned and full) else -1)
        gen["n_rows"].append(c.n if (aligned and full) else 0)

    for s in sorted(res):
        free, forced = res[s]
        aligned = forced if forced is not None else free
        add_gen(s, "free", free, forced is None)
        if forced is not None:
            add_gen(s, "reference", forced, True)
        n = aligned.n
        tk["row"].extend(range(row, row + n) if full else [-1] * n)
        _extend_positions(tk, d, "choice", s, aligned)
        _extend_positions(gt, d, "sample", s, free)
        nonfinite += aligned.nonfinite
        if full and n:
            blocks.append(aligned.rows)
        row += n
    rows = (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)) if blocks else None
    writer.add({"generations": gen, "tokens": tk, "gen_tokens": gt}, rows, counts={"nonfinite_rows": nonfinite})


def _summary(path: Path, writer: DumpWriter, seconds: float, settings: DecodeSettings,
             reference: Any) -> GenerationSummary:
    import polars as pl

    from qfair.dump.reader import open_dump

    m = writer.manifest
    d = open_dump(path)
    g = d.table("generations").filter(pl.col("source") == "free")
    st = m["storage"]
    return GenerationSummary(
        path, m["status"], d.examples.height, 0, int(st.get("n_tokens") or 0),
        len(m["shards"]) if st["mode"] != "none" else 0, _store_label(st), st["dtype"], seconds, {},
        int(m.get("counts", {}).get("nonfinite_rows", 0)), resumed_from_shard=writer.resumed_from_shard or None,
        already_complete=writer.already_complete, n_samples=settings.samples, n_generated=int(g["n_tokens"].sum()),
        n_eos=int((g["stop"] == "eos").sum()), n_continuations=g.height,
        reference=None if reference is None else str(reference),
        settings=(m.get("generation") or {}).get("settings"))
