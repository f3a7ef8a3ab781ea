"""``qfair import llamacpp FILE.kld --out DIR``: a llama.cpp ``.kld`` file as a
``text`` dump.

The file that ``llama-perplexity --kl-divergence-base FILE`` writes holds the
token ids of the text and, for every scored token, the model's log-probability
row quantised to 16 bits (:mod:`qfair.llamacpp`). The import keeps both:

- the token ids become the chunks of a ``text`` dump (same chunking rules as
  ``qfair dump --text``, so an import and a dump of the same text align);
- every row is decoded exactly as llama.cpp decodes it
  (``scale * code + min_log_prob`` in float32) and stored as float32, so the
  analysis uses the very values llama.cpp uses: ``qfair analyze`` on two
  imports reproduces the summary of ``llama-perplexity --kl-divergence``
  (see docs/llamacpp.md);
- ``tokens.parquet`` holds the usual target-token scalars of the re-normalised
  rows (qfair's convention for its own token table);
- the manifest records the file's path, size, sha256 and header.

Memory stays bounded by one chunk of rows.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.dump.text import TASK, chunk_examples, chunk_token_records, text_metrics, text_task
from qfair.llamacpp import KldError, KldReader, decode_rows

__all__ = ["import_llamacpp", "load_tokenizer"]

DEFAULT_SHARD_ROWS = 4096


def load_tokenizer(model: str) -> Any:
    """The tokenizer of ``model`` (a name qfair.models resolves: the embedded
    model, a local checkpoint directory or a GGUF file), without loading weights."""
    from transformers import AutoTokenizer

    from qfair.models import ModelError, resolve_model

    src = resolve_model(model)
    try:
        if src.is_gguf:
            from qfair.models import cache

            hit = cache.lookup(cache.file_sha256(src.gguf_file))
            if hit is not None:
                return AutoTokenizer.from_pretrained(str(hit))
            g = Path(src.gguf_file)
            return AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
        return AutoTokenizer.from_pretrained(src.path or src.id, revision=src.revision)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load the tokenizer of {model}: {str(e).splitlines()[0] if str(e) else e}") from None


def _tokens_scalars(rows: np.ndarray, targets: np.ndarray, threads: int | None) -> dict[str, np.ndarray]:
    from qfair.core import distribution_stats

    r = distribution_stats(rows, targets=targets, threads=threads)
    with np.errstate(divide="ignore"):
        max_lp = np.log(r["maxprob"]).astype(np.float32)
    return {"logprob": r["logprob"].astype(np.float32), "entropy": r["entropy"].astype(np.float32),
            "max_logprob": max_lp, "argmax": r["argmax"], "rank": r["rank"]}


def import_llamacpp(path: str | os.PathLike, out: str | os.PathLike, *, tokenizer: str | None = None,
                    shard_rows: int = DEFAULT_SHARD_ROWS, overwrite: bool = False, threads: int | None = None,
                    progress: bool = True) -> Any:
    """Import one ``.kld`` (or ``.kld.xz``) file into a ``text`` dump at ``out``.

    ``tokenizer``: a model whose tokenizer the file was made with (e.g.
    ``smollm2-135m``); its fingerprint is recorded so that the import can be
    compared with ``qfair dump --text`` dumps of that model, and its
    vocabulary size must equal the file's. Returns the dump's summary.
    """
    from tqdm.auto import tqdm

    from qfair.dump.summary import summarize
    from qfair.dump.writer import DumpWriter
    from qfair.scoring import tokenizer_fingerprint

    t0 = time.perf_counter()
    p = Path(path)
    if not p.is_file():
        raise DumpError(f"{p}: no such file")
    tok = load_tokenizer(tokenizer) if tokenizer else None
    try:
        reader = KldReader(p, n_vocab=None if tok is None else len(tok))
    except KldError as e:
        raise DumpError(str(e)) from None
    h = reader.header
    chunks = [reader.chunk_tokens(k).tolist() for k in range(h.n_chunk)]
    if tok is not None:
        fp = tokenizer_fingerprint(tok, h.n_vocab)
        contexts = [tok.decode(c) for c in chunks]
    else:
        fp = {"class": "none (llama.cpp .kld imported without --tokenizer)", "model_vocab_size": h.n_vocab}
        contexts = None
    size = p.stat().st_size
    model = {"id": p.name, "source": "llama.cpp --kl-divergence-base", "path": str(p.resolve()),
             "file_bytes": size, "sha256": None, "tokenizer_from": tokenizer,
             "header": {"n_ctx": h.n_ctx, "n_vocab": h.n_vocab, "n_chunk": h.n_chunk}}
    try:
        writer = DumpWriter(
            out, kind="text", examples=chunk_examples(chunks, h.n_ctx, contexts), vocab_size=h.n_vocab,
            tokenizer=fp, tasks=[text_task(str(p), "", h.n_ctx, h.n_chunk)], model=model,
            rows_per_example=[h.rows_per_chunk] * h.n_chunk, store="full", store_dtype="f32",
            shard_rows=shard_rows, config={"import": "llamacpp", "file": str(p.resolve()), "tokenizer": tokenizer},
            info={"scoring": {"rules": "llama-perplexity chunks (from the .kld file)", "n_ctx": h.n_ctx,
                              "first_scored_position": h.first, "scored_per_chunk": h.rows_per_chunk,
                              "rows": "llama.cpp's decoded log-probs: float32(float32(scale*code) + min_log_prob)"}},
            overwrite=overwrite, max_queue=2, resumable=False,
            inputs={"FILE": p, "--tokenizer": tokenizer if tokenizer and Path(tokenizer).exists() else None})  # at most a few chunks in flight: memory bounded by a chunk
        bar = tqdm(total=h.n_chunk, unit="chunk", dynamic_ncols=True, desc="qfair import llamacpp",
                   disable=not progress)
        try:
            for k, raw in reader.chunks():
                rows = decode_rows(raw, h.n_vocab)
                targets = reader.chunk_targets(k)
                rec = chunk_token_records(k, h.n_ctx, targets, writer.next_row, _tokens_scalars(rows, targets, threads))
                writer.add({"tokens": rec}, rows)
                bar.update(1)
            writer.close()
        except BaseException:
            # an import is not resumable: a half-written dump would only be a silent partial result
            writer.abort()
            bar.close()
            shutil.rmtree(out, ignore_errors=True)
            raise
        bar.close()
    except KldError as e:
        raise DumpError(f"{e} (nothing written to {out})") from None
    finally:
        reader.close()
    m = writer.manifest
    m["model"]["sha256"] = reader.sha256
    for t in m["tasks"]:
        t["source_hash"] = reader.sha256
    mf.write_manifest(Path(out), m)
    s = summarize(Path(out), m, time.perf_counter() - t0)
    from qfair.dump.reader import open_dump

    s.metrics = {TASK: text_metrics(open_dump(out).tokens)}
    return s
