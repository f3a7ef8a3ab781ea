"""Shared helpers for the dump tests (imported by tests/test_dump*.py).

A tiny random-weight Llama (qfair.models.tiny) stands in for a real model, and
a generic multiple-choice file (task ``mc``) with original, generated items
stands in for a benchmark.
"""
from __future__ import annotations

import json
import random
import types
from pathlib import Path

WORDS = ("the a cat dog sat on mat river bank flows quickly slowly under bridge green lamp "
         "café naïve über 東京 🙂 ok yes no maybe , . ? ! 12 345").split()


def write_mc_file(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
            ctx += rng.choice(["", " ", "\n", ":", "\nAnswer:"])
            k = rng.randint(2, 5)
            choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(k)]
            row = {"id": f"q{i}", "context": ctx, "choices": choices, "label": rng.randrange(k),
                   "group": rng.choice(["g1", "g2", None])}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def load_tiny(path: Path):
    """A LoadedModel stand-in (same attributes the dump uses)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return types.SimpleNamespace(
        model=model, tokenizer=tok, device=torch.device("cpu"), vocab_size=int(model.config.vocab_size),
        manifest=lambda: {"model": str(path), "quant": {"name": "none"}, "dtype": "float32", "device": "cpu"},
    )


def data_files(dump_dir: Path) -> dict[str, bytes]:
    """Every data file of a dump (not the manifest), by relative path."""
    out = {}
    for p in sorted(Path(dump_dir).rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            out[str(p.relative_to(dump_dir))] = p.read_bytes()
    return out


def stable_manifest(dump_dir: Path) -> dict:
    """The manifest without the fields that record wall-clock times."""
    m = json.loads((Path(dump_dir) / "manifest.json").read_text())
    run = dict(m["run"])
    for k in ("start_time", "end_time", "resumed_at", "resumed_threads"):
        run.pop(k, None)
    m["run"] = run
    return m


def resign(dump_dir: Path) -> dict:
    """Record every listed file's current size and digests (sha256; xxh3_128
    where the entry has one) in the manifest, as a producer would have: a test that edits a table or shard on purpose makes
    the dump consistent again, so what it exercises is the analysis of that
    content, not the integrity check (which refuses an edited file)."""
    import hashlib

    import xxhash

    dump_dir = Path(dump_dir)
    mp = dump_dir / "manifest.json"
    m = json.loads(mp.read_text())

    def sign(entry: dict) -> None:
        if entry.get("file"):
            data = (dump_dir / entry["file"]).read_bytes()
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            if "xxh3_128" in entry:
                entry["xxh3_128"] = xxhash.xxh3_128_hexdigest(data)

    for e in (m.get("tables") or {}).values():
        sign(e)
    for s in m["shards"]:
        sign(s)
        for p in (s.get("parts") or {}).values():
            sign(p)
    mp.write_text(json.dumps(m, indent=1))
    return m


def stored_kl_oracle(base: Path, quant: Path):
    """Per stored row, KL(P||Q) in float64 from the rows as written (scipy's logsumexp),
    NaN for a row that is not a distribution on either side (NaN, +inf, or no finite
    entry); and the numbers of such rows on the base / quant side."""
    import numpy as np
    from scipy.special import logsumexp

    from qfair.dump import open_dump

    def rows(d):
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in open_dump(d).logit_blocks()])

    def valid(a):
        return ~np.isnan(a).any(1) & ~np.isposinf(a).any(1) & np.isfinite(a).any(1)

    a, b = rows(base), rows(quant)
    ok = valid(a) & valid(b)
    kl = np.full(a.shape[0], np.nan)
    with np.errstate(all="ignore"):
        lp = a[ok] - logsumexp(a[ok], axis=1, keepdims=True)
        lq = b[ok] - logsumexp(b[ok], axis=1, keepdims=True)
        # in log space: exp() of a log-prob below -745 underflows to 0 and rel_entr would say inf
        kl[ok] = np.where(np.exp(lp) == 0.0, 0.0, np.exp(lp) * (lp - lq)).sum(1)  # p = 0 adds 0
    return kl, int((~valid(a)).sum()), int((~valid(b)).sum())


def saved_tensor_bytes(model, directory: Path) -> int:
    """Bytes of every tensor ``save_pretrained`` writes for ``model`` (read back with safetensors)."""
    from safetensors import safe_open

    model.save_pretrained(directory)
    total = 0
    with safe_open(str(directory / "model.safetensors"), "pt") as fh:
        for k in fh.keys():
            t = fh.get_tensor(k)
            total += t.numel() * t.element_size()
    return total
