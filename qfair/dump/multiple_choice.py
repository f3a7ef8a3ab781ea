"""The multiple-choice producer: tasks -> tokens -> scores -> a dump (kind
``multiple_choice``), written through :class:`qfair.dump.DumpWriter`.

Order of work, chosen so that an interrupted run can be finished byte for byte:

1. every example is tokenised up front, so the rows each example will store
   (its continuation tokens) are known and the writer plans the shards;
2. each example is scored on its own (its numbers never depend on what else
   ran) and handed to the writer with its choices / tokens records and rows;
3. the writer finishes the tables and marks the dump complete.

``resume=True`` continues at the first example of the first unfinished shard,
after the writer has checked that the options, tasks, tokenizer and plan are
unchanged and that every finished file is intact.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump.manifest import stores_rows
from qfair.dump.summary import DumpSummary, summarize
from qfair.dump.writer import DumpWriter, check_unique_ids, writing

DEFAULT_SHARD_ROWS = 4096
DEFAULT_BATCH_SIZE = 32

SCORING_RULES = {"rules": "lm-evaluation-harness 0.4 loglikelihood",
                 "special_tokens": "tokenizer default (lm-eval tok_encode)",
                 "empty_context": "bos, else eos", "logsoftmax_dtype": "float32",
                 "acc_norm_length": "unicode code points", "shared_context_kv_cache": True}


@dataclass
class Documents:
    """Every example of the selected tasks, validated and tokenised."""

    docs: list[Any]
    encoded: list[Any]
    task_infos: list[dict[str, Any]]

    @property
    def rows_per_example(self) -> list[int]:
        return [e.n_rows for e in self.encoded]


def check_doc(task: Any, d: Any) -> None:
    """DumpError naming the task, example and field of a malformed document."""
    where = f"{task.name} example {getattr(d, 'example_id', '?')}"
    if not isinstance(d.choices, (list, tuple)) or not d.choices or not all(isinstance(c, str) for c in d.choices):
        raise DumpError(f"{where}: field 'choices' must be a non-empty list of strings")
    if not isinstance(d.context, str):
        raise DumpError(f"{where}: field 'context' must be a string")
    if not isinstance(d.gold, (int, np.integer)) or not 0 <= int(d.gold) < len(d.choices):
        raise DumpError(f"{where}: field 'gold' is {d.gold!r}, expected an index into {len(d.choices)} choices")
    if d.labels is not None and len(d.labels) != len(d.choices):
        raise DumpError(f"{where}: field 'labels' has {len(d.labels)} entries for {len(d.choices)} choices")


def task_info(task: Any) -> dict[str, Any]:
    """What the manifest records about a task."""
    if hasattr(task, "info"):
        return dict(task.info())
    return {"name": task.name, "kind": task.kind, "prompt_format_version": task.prompt_format_version,
            "target_delimiter": task.target_delimiter, "source": task.source, "source_hash": task.source_hash}


def examples_columns(docs: Sequence[Any]) -> dict[str, list]:
    """The examples table of a multiple-choice dump, as columns."""
    from qfair.dump.tables import examples_columns as columns

    return columns(docs, lambda d: (int(d.gold), len(d.choices), list(d.choices),
                                    None if d.labels is None else [int(x) for x in d.labels]))


def prepare_documents(tasks: Sequence[Any], tokenizer: Any) -> Documents:
    """Validate and tokenise every document (a bad row stops the run before any scoring)."""
    from qfair.scoring import encode_example

    docs, encoded, infos = [], [], []
    for task in tasks:
        n = 0
        for d in task.docs():
            check_doc(task, d)
            docs.append(d)
            encoded.append(encode_example(tokenizer, d.context, d.choices, task.target_delimiter))
            n += 1
        info = task_info(task)
        info["n_examples"] = n
        infos.append(info)
    if not docs:
        raise DumpError("the selected tasks hold no examples (check --limit and --data-file)")
    check_unique_ids(docs)
    return Documents(docs, encoded, infos)


def logits_width(loaded: Any) -> int:
    """Width of the model's logits rows (may exceed the tokenizer's size)."""
    v = getattr(loaded, "vocab_size", None)
    if isinstance(v, int) and v > 0:
        return v
    return int(loaded.model.get_output_embeddings().weight.shape[0])


def model_record(loaded: Any) -> dict[str, Any]:
    m = loaded.manifest() if hasattr(loaded, "manifest") else {}
    return json.loads(json.dumps(m, default=str))  # JSON-safe copy


def example_records(d: Any, scores: Sequence[Any], first_row: int, store: str) -> tuple[dict, dict, list, int]:
    """One example's choices and tokens records, its rows and its count of non-finite rows."""
    ch: dict[str, list] = {k: [] for k in ("task", "example_id", "doc_index", "choice", "loglik", "n_tokens",
                                           "n_chars", "n_bytes", "is_greedy", "first_row", "n_rows")}
    tk: dict[str, list] = {k: [] for k in ("row", "task", "example_id", "choice", "pos", "target", "logprob",
                                           "entropy", "max_logprob", "argmax", "rank")}
    row = first_row
    blocks = []
    nonfinite = 0
    full = stores_rows(store)
    for ci, s in enumerate(scores):
        n = s.n_tokens
        text = d.choices[ci]
        ch["task"].append(d.task)
        ch["example_id"].append(d.example_id)
        ch["doc_index"].append(int(d.doc_index))
        ch["choice"].append(ci)
        ch["loglik"].append(s.loglik)
        ch["n_tokens"].append(n)
        ch["n_chars"].append(len(text))
        ch["n_bytes"].append(len(text.encode("utf-8")))
        ch["is_greedy"].append(s.is_greedy)
        ch["first_row"].append(row if full else -1)
        ch["n_rows"].append(n if full else 0)
        tk["row"].extend(range(row, row + n) if full else [-1] * n)
        tk["task"].extend([d.task] * n)
        tk["example_id"].extend([d.example_id] * n)
        tk["choice"].extend([ci] * n)
        tk["pos"].extend(range(n))
        tk["target"].extend(s.targets.tolist())
        tk["logprob"].extend(s.logprob.tolist())
        tk["entropy"].extend(s.entropy.tolist())
        tk["max_logprob"].extend(s.max_logprob.tolist())
        tk["argmax"].extend(s.argmax.tolist())
        tk["rank"].extend(s.rank.tolist())
        nonfinite += int((~np.isfinite(s.entropy) | ~np.isfinite(s.max_logprob)).sum())
        if full and n:
            blocks.append(s.rows)
        row += n
    return ch, tk, blocks, nonfinite


def context_overflow(prepared: Documents, max_length: int) -> int:
    """How many examples do not fit the model's context (their context is cut
    from the left when scored, as lm-evaluation-harness does); DumpError when
    a continuation alone does not fit (it cannot be scored at all)."""
    n = 0
    for d, enc in zip(prepared.docs, prepared.encoded):
        longest = max((len(c) for c in enc.conts), default=0)
        if longest > max_length:
            k = max(range(len(enc.conts)), key=lambda i: len(enc.conts[i]))
            raise DumpError(f"{d.task} example {d.example_id}: choice {k} is {longest} tokens long, more than "
                            f"the model's context of {max_length} tokens; it cannot be scored")
        # lm-eval feeds (context + continuation)[-(max_length + 1):][:-1]
        n += len(enc.context_enc) + longest > max_length + 1
    return n


def _concat_rows(blocks: list[Any]) -> Any:
    if not blocks:
        return None
    if len(blocks) == 1:
        return blocks[0]
    import torch

    return torch.cat(blocks, 0)


def run_dump(out: str | os.PathLike, loaded: Any, tasks: Sequence[Any], *, store: str = "full",
             store_dtype: str = "f16", shard_rows: int = DEFAULT_SHARD_ROWS,
             batch_size: int = DEFAULT_BATCH_SIZE, resume: bool = False, overwrite: bool = False,
             seed: int = 0, progress: bool = True, config: dict[str, Any] | None = None,
             threads: int | None = None, part: tuple[int, int] | None = None) -> DumpSummary:
    """Score every document of ``tasks`` with ``loaded`` (a LoadedModel: .model,
    .tokenizer, .device, .manifest()) and write a dump directory at ``out``.

    ``threads``: torch's compute threads for the run (restored afterwards;
    None leaves torch's setting alone); recorded in the manifest either way.
    ``part``: (rank, world size) of a data-parallel dump: write only this rank's
    range of planned shards (:mod:`qfair.dump.distributed`)."""
    import torch
    from tqdm.auto import tqdm

    from qfair.scoring import Scorer, tokenizer_fingerprint

    t0 = time.perf_counter()
    if batch_size < 1:
        raise DumpError(f"--batch-size must be >= 1, got {batch_size}")
    if not tasks:
        raise DumpError("no tasks to dump")
    torch.manual_seed(seed)
    if threads is not None:
        from qfair.threads import torch_threads

        with torch_threads(threads):
            return run_dump(out, loaded, tasks, store=store, store_dtype=store_dtype, shard_rows=shard_rows,
                            batch_size=batch_size, resume=resume, overwrite=overwrite, seed=seed,
                            progress=progress, config=config, threads=None, part=part)
    vocab = logits_width(loaded)
    prepared = prepare_documents(tasks, loaded.tokenizer)
    scorer = Scorer(loaded.model, loaded.tokenizer, device=getattr(loaded, "device", None),
                    batch_size=batch_size, keep_rows=stores_rows(store))
    truncated = context_overflow(prepared, scorer.max_length)
    writer = DumpWriter(
        out, kind="multiple_choice", examples=examples_columns(prepared.docs), vocab_size=vocab,
        tokenizer=tokenizer_fingerprint(loaded.tokenizer, vocab), tasks=prepared.task_infos,
        model=model_record(loaded), rows_per_example=prepared.rows_per_example, store=store,
        store_dtype=store_dtype, shard_rows=shard_rows, config={**(config or {}), "batch_size": batch_size},
        info={"scoring": SCORING_RULES}, seed=seed,
        counts={"choices": sum(len(d.choices) for d in prepared.docs), "truncated_examples": truncated},
        resume=resume, overwrite=overwrite, threads=torch.get_num_threads(), part=part)
    if not writer.already_complete:
        first = writer.first_example
        rows_total = sum(prepared.rows_per_example[first:writer.stop])
        bar = tqdm(total=rows_total, initial=sum(prepared.rows_per_example[first:writer.start]), unit="row",
                   unit_scale=True, dynamic_ncols=True, desc="qfair dump", disable=not progress, smoothing=0.1)
        with writing(writer, bar):
            for i in range(writer.start, writer.stop):
                d, enc = prepared.docs[i], prepared.encoded[i]
                ch, tk, blocks, nonfinite = example_records(d, scorer.score(enc), writer.next_row, store)
                writer.add({"choices": ch, "tokens": tk}, _concat_rows(blocks), counts={"nonfinite_rows": nonfinite})
                bar.update(enc.n_rows)
    if part is not None:  # a part: the merged dump is summarised once every rank is done
        return None
    return summarize(Path(out), writer.manifest, time.perf_counter() - t0,
                     resumed_from_shard=writer.resumed_from_shard or None,
                     already_complete=writer.already_complete, context_length=scorer.max_length)


# ---------------------------------------------------------------------------
# what the multiple-choice dump kind declares (qfair.dump.kinds.MULTIPLE_CHOICE)
# ---------------------------------------------------------------------------

def estimate_rows(tasks: Sequence[Any], options: dict[str, Any], tokenizer: Any) -> tuple[int, bool]:
    """The rows a dump of ``tasks`` writes (exact: one per scored continuation token)."""
    return sum(prepare_documents(tasks, tokenizer).rows_per_example), True
