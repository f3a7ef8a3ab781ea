"""The ``text`` dump kind: a plain text scored the way ``llama-perplexity`` scores it.

``qfair dump --text FILE --ctx N [--chunks K]`` (:func:`run_text_dump`) and
``qfair import llamacpp`` (:mod:`qfair.importers.llamacpp`) both write it, so
that a dump of qfair's own and a llama.cpp ``.kld`` file line up token by token.

The rules, those of llama.cpp's ``tools/perplexity/perplexity.cpp``:

- the file is read as UTF-8 and exactly one trailing newline is dropped (as
  ``llama-perplexity -f`` reads it); the whole text is tokenised at once, with
  a BOS in front only when the tokenizer adds one by default, and special-token
  text in the file stays plain text;
- the tokens are cut into consecutive, non-overlapping chunks of N tokens (the
  remainder is dropped); at least 2 N tokens are needed;
- each chunk is evaluated on its own from position 0; when the tokenizer adds a
  BOS, the chunk's first token is *replaced* by BOS for the forward pass (the
  stored token list keeps the original);
- only the second half is scored: the rows at positions N//2 .. N-2 predict
  tokens N//2+1 .. N-1, so every scored token has at least N/2 tokens of context.

Tables: ``examples`` (one row per chunk, ``extras`` = JSON with ``n_ctx``,
``first`` and the chunk's ``tokens``) and ``tokens`` (one row per scored
token: ``example_id`` = the chunk, ``choice`` = 0, ``pos`` = the target's
position in the chunk). Two text dumps align when they hold the same chunks of
the same tokens (:func:`check_same_text`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump.kinds import DumpKind, KindOption, register_kind

__all__ = ["TEXT", "TASK", "TEXT_VERSION", "chunk_id", "chunk_examples", "chunk_token_records",
           "check_same_text", "read_text", "tokenize_text", "run_text_dump", "text_metrics"]

TASK = "text"
#: the rules above; a dump and an import of the same text carry the same version
TEXT_VERSION = "llama-perplexity-chunks/1"

TEXT = register_kind(DumpKind(
    "text", ("tokens",), stores_rows=True, align_table="tokens",
    align_keys=("example_id", "choice", "pos", "target"), example_keys=("example_id", "doc_index"),
    analysis="qfair.analyze.text:text_tables", align_check="qfair.dump.text:check_same_text",
    doc="a plain text cut into chunks and scored like llama-perplexity: one row per scored token",
    options=(
        KindOption("text", "file", "Score a plain text file instead of tasks, the way llama-perplexity does (needs "
                   "--ctx): chunks of --ctx tokens, the second half of each scored (a 'text' dump).",
                   metavar="FILE", requires=("ctx",), is_input=True),
        KindOption("ctx", "int", "With --text: tokens per chunk (llama-perplexity -c).", metavar="N", min=4),
        KindOption("chunks", "int", "With --text: at most K chunks (default: all whole chunks of the text).",
                   metavar="K", min=1),
    ),
    selected_by="text", prepare="qfair.dump.text:prepare", producer="qfair.dump.text:produce",
    estimate="qfair.dump.text:estimate_rows", metrics="qfair.dump.text:dump_metrics",
    report="qfair.report.corpus:SECTIONS", report_hides_empty=True))


def chunk_id(k: int) -> str:
    return f"chunk-{k:05d}"


def chunk_examples(chunks: Sequence[Sequence[int]], n_ctx: int, contexts: Sequence[str] | None = None) -> dict:
    """The examples table of a text dump: one row per chunk of ``n_ctx`` token ids."""
    n = len(chunks)
    return {
        "example_id": [chunk_id(k) for k in range(n)], "task": [TASK] * n, "doc_index": list(range(n)),
        "group": [None] * n, "label": [0] * n, "n_choices": [0] * n,
        "context": list(contexts) if contexts is not None else [""] * n,
        "choices": [[] for _ in range(n)], "labels": [None] * n,
        "extras": [json.dumps({"first": n_ctx // 2, "n_ctx": n_ctx, "tokens": [int(t) for t in c]},
                              sort_keys=True) for c in chunks],
    }


def chunk_token_records(k: int, n_ctx: int, targets: np.ndarray, first_row: int, scalars: dict[str, Any],
                        store: str = "full") -> dict[str, list]:
    """The tokens-table records of chunk ``k`` (``scalars``: logprob, entropy,
    max_logprob, argmax, rank, one per scored token)."""
    n = len(targets)
    first = n_ctx // 2
    return {
        "row": list(range(first_row, first_row + n)) if store != "none" else [-1] * n,
        "task": [TASK] * n, "example_id": [chunk_id(k)] * n, "choice": [0] * n,
        "pos": list(range(first + 1, first + 1 + n)), "target": [int(t) for t in targets],
        **{c: np.asarray(scalars[c]).tolist() for c in ("logprob", "entropy", "max_logprob", "argmax", "rank")},
    }


def text_task(source: str, source_hash: str, n_ctx: int, n_chunks: int, **more: Any) -> dict[str, Any]:
    return {"name": TASK, "kind": TASK, "prompt_format_version": TEXT_VERSION, "source": source,
            "source_hash": source_hash, "n_ctx": n_ctx, "n_chunks": n_chunks, "n_examples": n_chunks, **more}


def _chunks_of(d: Any) -> list[dict[str, Any]]:
    out = []
    for i, e in enumerate(d.examples["extras"].to_list()):
        try:
            out.append(json.loads(e))
        except (TypeError, ValueError):
            raise DumpError(f"{d.path}: examples.parquet row {i} field 'extras' is not the JSON of a text "
                            "chunk") from None
    return out


def check_same_text(a: Any, b: Any, pair: str) -> None:
    """DumpError unless two text dumps hold the same chunks of the same tokens
    (and comparable vocabularies)."""
    if a.vocab_size != b.vocab_size:
        raise DumpError(f"{pair}: vocabularies of {a.vocab_size} vs {b.vocab_size} tokens; not comparable")
    ha = "vocab_sha256" in a.tokenizer_fingerprint
    if ha != ("vocab_sha256" in b.tokenizer_fingerprint):
        bare = b if ha else a
        raise DumpError(f"{pair}: {bare.path} was imported without a tokenizer; import it with --tokenizer MODEL "
                        "to compare it with a dump of that model")
    ca, cb = _chunks_of(a), _chunks_of(b)
    na = ca[0].get("n_ctx") if ca else None
    nb = cb[0].get("n_ctx") if cb else None
    if na != nb:
        raise DumpError(f"{pair}: chunks of {na} vs {nb} tokens (llama-perplexity -c / qfair dump --ctx); "
                        "not comparable")
    if len(ca) != len(cb):
        raise DumpError(f"{pair}: {len(ca)} vs {len(cb)} chunks of the text; not aligned "
                        "(use the same --chunks)")
    for k, (x, y) in enumerate(zip(ca, cb)):
        tx, ty = x.get("tokens") or [], y.get("tokens") or []
        if tx != ty:
            i = next((i for i, (s, t) in enumerate(zip(tx, ty)) if s != t), min(len(tx), len(ty)))
            sx = tx[i] if i < len(tx) else None
            sy = ty[i] if i < len(ty) else None
            raise DumpError(f"{pair}: chunk {k} token {i} differs (id {sx} vs {sy}): the dumps hold different "
                            "texts (or tokenisations); not aligned")


# ---------------------------------------------------------------------------
# qfair dump --text
# ---------------------------------------------------------------------------

def read_text(path: str | os.PathLike) -> tuple[str, str]:
    """The text as llama-perplexity -f reads it (one trailing newline dropped), and the file's sha256."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DumpError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DumpError(f"{p}: not UTF-8 text (byte {e.start})") from None
    if text.endswith("\n"):
        text = text[:-1]
    return text, hashlib.sha256(data).hexdigest()


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS in front by default (llama.cpp: the vocabulary's add_bos)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos


def tokenize_text(tokenizer: Any, text: str) -> list[int]:
    """The whole text's token ids, as llama.cpp's common_tokenize(add_special=true,
    parse_special=false) gives them: BOS in front when the tokenizer adds one,
    never an EOS, special-token strings in the text not parsed as special."""
    try:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    except TypeError:  # a tokenizer without split_special_tokens
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [int(t) for t in ids]
    return ([int(tokenizer.bos_token_id)] + ids) if adds_bos(tokenizer) else ids


def plan_chunks(n_tokens: int, ctx: int, chunks: int | None, where: str) -> int:
    if ctx < 4:
        raise DumpError(f"--ctx must be at least 4, got {ctx}")
    if n_tokens < 2 * ctx:
        raise DumpError(f"{where}: {n_tokens} tokens, fewer than 2 x --ctx = {2 * ctx} (as llama-perplexity needs)")
    n_max = n_tokens // ctx
    if chunks is not None and chunks < 1:
        raise DumpError(f"--chunks must be >= 1, got {chunks}")
    return n_max if chunks is None else min(chunks, n_max)


def _logits_to_keep_kw(model: Any) -> str | None:
    import inspect

    params = inspect.signature(model.forward).parameters
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


def text_metrics(tokens: Any) -> dict[str, float]:
    """Perplexity of a text dump's scored tokens (exp of the mean negative log-likelihood)."""
    lp = tokens["logprob"].cast(float).to_numpy() if tokens.height else np.zeros(0)
    lp = lp[np.isfinite(lp)]
    return {"n": float(tokens["example_id"].n_unique()) if tokens.height else 0.0,
            "ppl": float(np.exp(-lp.mean())) if lp.size else float("nan")}


def run_text_dump(out: str | os.PathLike, loaded: Any, text_file: str | os.PathLike, *, ctx: int,
                  chunks: int | None = None, store: str = "full", store_dtype: str = "f16",
                  shard_rows: int = 4096, batch_size: int = 1, resume: bool = False, overwrite: bool = False,
                  seed: int = 0, progress: bool = True, config: dict[str, Any] | None = None,
                  part: tuple[int, int] | None = None) -> Any:
    """Score ``text_file`` with ``loaded`` (a LoadedModel) in chunks of ``ctx``
    tokens and write a ``text`` dump at ``out`` (see the module doc).
    ``batch_size``: at most this many chunks per forward pass, fewer when their
    kept logits would exceed 2^26 floats (256 MB)."""
    import torch
    from tqdm.auto import tqdm

    from qfair.dump.multiple_choice import logits_width, model_record
    from qfair.dump.summary import summarize
    from qfair.dump.writer import DumpWriter, writing
    from qfair.scoring import token_scalars, tokenizer_fingerprint

    t0 = time.perf_counter()
    if batch_size < 1:
        raise DumpError(f"--batch-size must be >= 1, got {batch_size}")
    torch.manual_seed(seed)
    tok = loaded.tokenizer
    text, sha = read_text(text_file)
    ids = tokenize_text(tok, text)
    n_chunks = plan_chunks(len(ids), ctx, chunks, str(text_file))
    limit = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < ctx:
        raise DumpError(f"--ctx {ctx} exceeds the model's context of {limit} positions")
    bos = adds_bos(tok)
    first = ctx // 2
    per_chunk = ctx - 1 - first
    chunk_ids = [ids[k * ctx:(k + 1) * ctx] for k in range(n_chunks)]
    vocab = logits_width(loaded)
    writer = DumpWriter(
        out, kind="text", examples=chunk_examples(chunk_ids, ctx, [tok.decode(c) for c in chunk_ids]),
        vocab_size=vocab, tokenizer=tokenizer_fingerprint(tok, vocab),
        tasks=[text_task(str(text_file), sha, ctx, n_chunks, n_tokens=len(ids))], model=model_record(loaded),
        rows_per_example=[per_chunk] * n_chunks, store=store, store_dtype=store_dtype, shard_rows=shard_rows,
        config={**(config or {}), "text": str(text_file), "ctx": ctx, "chunks": chunks, "batch_size": batch_size},
        info={"scoring": {"rules": TEXT_VERSION, "n_ctx": ctx, "first_scored_position": first,
                          "scored_per_chunk": per_chunk, "bos_replaces_first_token": bos,
                          "trailing_newline": "one dropped", "logsoftmax_dtype": "float32"}},
        seed=seed, resume=resume, overwrite=overwrite, threads=torch.get_num_threads(), part=part)
    if not writer.already_complete:
        model = loaded.model
        device = getattr(loaded, "device", None) or next(model.parameters()).device
        keep_kw = _logits_to_keep_kw(model)
        per_pass = max(1, min(batch_size, (1 << 26) // ((ctx - first) * vocab)))
        bar = tqdm(total=writer.stop - writer.first_example, initial=writer.start - writer.first_example,
                   unit="chunk", dynamic_ncols=True, desc="qfair dump --text", disable=not progress)
        with writing(writer, bar):
            k = writer.start
            while k < writer.stop:
                batch = list(range(k, min(k + per_pass, writer.stop)))
                inp = torch.tensor([chunk_ids[j] for j in batch], dtype=torch.long)
                if bos:
                    inp[:, 0] = int(tok.bos_token_id)
                kwargs = {keep_kw: ctx - first} if keep_kw else {}
                with torch.no_grad():
                    logits = model(inp.to(device), use_cache=False, **kwargs).logits
                logits = logits[:, -(ctx - first):-1] if keep_kw else logits[:, first:ctx - 1]
                for r, j in enumerate(batch):
                    lp = torch.log_softmax(logits[r].float(), dim=-1)
                    targets = torch.tensor(chunk_ids[j][first + 1:], dtype=torch.long, device=lp.device)
                    sc = {c: v.cpu().numpy() for c, v in token_scalars(lp, targets).items()}
                    nonfinite = int((~np.isfinite(sc["entropy"]) | ~np.isfinite(sc["max_logprob"])).sum())
                    rec = chunk_token_records(j, ctx, targets.cpu().numpy(), writer.next_row, sc, store)
                    writer.add({"tokens": rec}, lp, counts={"nonfinite_rows": nonfinite})
                    bar.update(1)
                k = batch[-1] + 1
    if part is not None:  # a part: the merged dump is summarised once every rank is done
        return None
    s = summarize(Path(out), writer.manifest, time.perf_counter() - t0,
                  resumed_from_shard=writer.resumed_from_shard or None, already_complete=writer.already_complete)
    from qfair.dump.reader import open_dump

    s.metrics = {TASK: text_metrics(open_dump(out).tokens)}
    return s


# ---------------------------------------------------------------------------
# what the text dump kind declares (TEXT above)
# ---------------------------------------------------------------------------

def prepare(tasks: Sequence[Any], options: dict[str, Any], seed: int) -> dict[str, Any]:
    """--text, --ctx, --chunks checked before the model loads: the file readable as
    UTF-8, the chunk sizes possible."""
    ctx, chunks = int(options["ctx"]), options.get("chunks")
    read_text(options["text"])  # an unreadable file stops the run before the (slow) model load
    if ctx < 4 or (chunks is not None and chunks < 1):
        plan_chunks(0, ctx, chunks, str(options["text"]))
    return {"text": options["text"], "ctx": ctx, "chunks": chunks}


def produce(out: str | os.PathLike, loaded: Any, tasks: Sequence[Any], *, settings: dict[str, Any],
            options: dict[str, Any] | None = None, threads: int | None = None, **common: Any) -> Any:
    """The kind's producer as ``qfair dump`` calls every kind's."""
    return run_text_dump(out, loaded, settings["text"], ctx=settings["ctx"], chunks=settings["chunks"], **common)


def estimate_rows(tasks: Sequence[Any], options: dict[str, Any], tokenizer: Any) -> tuple[int, bool]:
    """The scored tokens of a text dump (exact): the second half of each chunk but its last position."""
    text, _ = read_text(options["text"])
    ctx = int(options["ctx"])
    n = plan_chunks(len(tokenize_text(tokenizer, text)), ctx, options.get("chunks"), options["text"])
    return n * (ctx - 1 - ctx // 2), True


def dump_metrics(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A finished text dump's perplexity, for its summary."""
    from qfair.dump.reader import open_dump

    return {TASK: text_metrics(open_dump(path).tokens)}
