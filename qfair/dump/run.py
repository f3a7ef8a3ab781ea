"""Orchestration of ``qfair dump``: tasks -> tokens -> scores -> files.

``run_dump`` takes an already loaded model and task objects (the library API);
``dump`` loads them from names first (what the CLI calls).

Order of work, chosen so that an interrupted run can be finished byte for byte:

1. every example is tokenised up front; the number of stored rows per example
   (its continuation tokens) is then known, and shards are planned at example
   boundaries (``plan_shards``);
2. ``examples.parquet`` and a ``partial`` manifest (with the plan) are written;
3. each example is scored on its own (so its numbers never depend on what else
   ran), its rows go to the background writer, and each completed shard comes
   with its table parts (``parts/NNNNN.{choices,tokens}.parquet``) and a
   manifest update;
4. the parts are concatenated into ``choices.parquet`` / ``tokens.parquet``,
   the manifest is marked ``complete`` and the parts are removed.

``--resume`` verifies the shards already listed (size + sha256), checks that the
options, tasks, tokenizer and plan are unchanged, and continues at the first
missing shard.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.dump.writer import ShardPlan, ShardWriter, plan_shards

# Options that may differ between an interrupted run and its --resume.
_RESUME_FREE = ("resume", "overwrite", "progress", "out", "cache_dir")

DEFAULT_SHARD_ROWS = 4096
DEFAULT_BATCH_SIZE = 32


@dataclass
class DumpSummary:
    path: Path
    status: str
    n_examples: int
    n_choices: int
    n_rows: int
    n_shards: int
    store: str
    store_dtype: str
    seconds: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    nonfinite_rows: int = 0
    resumed_from_shard: int | None = None
    already_complete: bool = False

    def text(self) -> str:
        """A one-paragraph account of the dump."""
        parts = []
        for task, m in self.metrics.items():
            vals = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k != "n")
            parts.append(f"{task} (n={int(m['n'])}: {vals})")
        stored = (f"{self.n_rows} rows of {self.store_dtype} log-probs in {self.n_shards} shard(s)"
                  if self.store == "full" else f"{self.n_rows} scored tokens (distributions not stored)")
        head = "Dump already complete at" if self.already_complete else "Wrote"
        resumed = (f" Resumed at shard {self.resumed_from_shard}." if self.resumed_from_shard else "")
        nonfinite = (f" WARNING: {self.nonfinite_rows} row(s) held NaN/inf values (kept, flagged in tokens.parquet)."
                     if self.nonfinite_rows else "")
        return (f"{head} {self.path}: {self.n_examples} examples, {self.n_choices} choices, {stored}."
                f"{resumed} Accuracy by task: {'; '.join(parts) or 'none'}. "
                f"Took {self.seconds:.1f} s.{nonfinite}")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _examples_frame(docs: Sequence[Any]) -> Any:
    import polars as pl

    cols: dict[str, list] = {k: [] for k in mf.examples_schema()}
    for d in docs:
        cols["example_id"].append(d.example_id)
        cols["task"].append(d.task)
        cols["doc_index"].append(int(d.doc_index))
        cols["group"].append(d.group)
        cols["label"].append(int(d.gold))
        cols["n_choices"].append(len(d.choices))
        cols["context"].append(d.context)
        cols["choices"].append(list(d.choices))
        cols["labels"].append(None if d.labels is None else [int(x) for x in d.labels])
        extras = getattr(d, "extras", None) or {}
        cols["extras"].append(json.dumps(extras, sort_keys=True, ensure_ascii=False, default=str) if extras else None)
    return pl.DataFrame(cols, schema=mf.examples_schema())


def _check_doc(task: Any, d: Any) -> None:
    where = f"{task.name} example {getattr(d, 'example_id', '?')}"
    if not isinstance(d.choices, (list, tuple)) or not d.choices or not all(isinstance(c, str) for c in d.choices):
        raise DumpError(f"{where}: field 'choices' must be a non-empty list of strings")
    if not isinstance(d.context, str):
        raise DumpError(f"{where}: field 'context' must be a string")
    if not isinstance(d.gold, (int, np.integer)) or not 0 <= int(d.gold) < len(d.choices):
        raise DumpError(f"{where}: field 'gold' is {d.gold!r}, expected an index into {len(d.choices)} choices")
    if d.labels is not None and len(d.labels) != len(d.choices):
        raise DumpError(f"{where}: field 'labels' has {len(d.labels)} entries for {len(d.choices)} choices")


def _task_info(task: Any) -> dict[str, Any]:
    if hasattr(task, "info"):
        return dict(task.info())
    return {"name": task.name, "kind": task.kind, "prompt_format_version": task.prompt_format_version,
            "target_delimiter": task.target_delimiter, "source": task.source, "source_hash": task.source_hash}


def _model_manifest(loaded: Any) -> dict[str, Any]:
    m = loaded.manifest() if hasattr(loaded, "manifest") else {}
    return json.loads(json.dumps(m, default=str))  # JSON-safe copy


def _logits_width(loaded: Any) -> int:
    v = getattr(loaded, "vocab_size", None)
    if isinstance(v, int) and v > 0:
        return v
    emb = loaded.model.get_output_embeddings()
    return int(emb.weight.shape[0])


def _store_rows(rows: Any, dtype: str) -> np.ndarray:
    import torch

    if dtype == "f16":
        return rows.to(torch.float16).cpu().contiguous().numpy()
    if dtype == "f32":
        return rows.to(torch.float32).cpu().contiguous().numpy()
    if dtype == "bf16":
        return rows.to(torch.bfloat16).cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
    raise DumpError(f"--store-dtype is {dtype!r}, expected one of {mf.STORE_DTYPES}")


def task_metrics(examples: Any, choices: Any, kinds: dict[str, str]) -> dict[str, dict[str, float]]:
    """acc / acc_norm (and mc2 or pct_stereotype where the task has one) per task,
    by the rules of lm-evaluation-harness (see qfair.scoring)."""
    from qfair.scoring import acc, acc_norm, mc2

    ll_by_ex: dict[str, list[tuple[int, float]]] = {}
    for eid, c, ll in zip(choices["example_id"].to_list(), choices["choice"].to_list(), choices["loglik"].to_list()):
        ll_by_ex.setdefault(eid, []).append((c, ll))
    out: dict[str, dict[str, list[float]]] = {}
    for row in examples.iter_rows(named=True):
        got = ll_by_ex.get(row["example_id"])
        if got is None:
            continue
        lls = [ll for _, ll in sorted(got)]
        kind = kinds.get(row["task"], "multiple_choice")
        m = out.setdefault(row["task"], {})
        m.setdefault("acc", []).append(acc(lls, row["label"]))
        m.setdefault("acc_norm", []).append(acc_norm(lls, row["choices"], row["label"]))
        if kind == "mc2" and row["labels"] is not None:
            m.setdefault("mc2", []).append(mc2(lls, row["labels"]))
        if kind == "crows_pairs" and len(lls) == 2:
            m.setdefault("pct_stereotype", []).append(1.0 if lls[0] > lls[1] else 0.0)
    res: dict[str, dict[str, float]] = {}
    for task, m in out.items():
        res[task] = {"n": float(len(m["acc"]))}
        for k, v in m.items():
            res[task][k] = float(np.mean(v))
    return res


def _prepare_dir(out: Path, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Returns the existing manifest when resuming, else None (fresh directory)."""
    if resume and overwrite:
        raise DumpError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise DumpError(f"{out}: exists and is not a directory")
    if resume:
        if not (out / mf.MANIFEST).is_file():
            raise DumpError(f"{out / mf.MANIFEST}: missing, nothing to resume (run without --resume)")
        return mf.read_manifest(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DumpError(f"{out}: directory exists and is not empty (use --resume to finish it or --overwrite to replace it)")
        try:
            m = json.loads((out / mf.MANIFEST).read_text(encoding="utf-8"))
            is_dump = isinstance(m, dict) and m.get("format") == mf.FORMAT
        except (OSError, ValueError):
            is_dump = False
        if not is_dump:
            raise DumpError(f"{out}: not a qfair dump (no manifest.json with format {mf.FORMAT!r}); refusing to delete it")
        shutil.rmtree(out)
    return None


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}{k}"
            d = _first_difference(a[k], b[k], f"{path}{k}.")
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path.rstrip('.')} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}{i}.")
            if d is not None:
                return d
        return None
    return None if a == b else path.rstrip(".")


def _verify_done_shards(out: Path, m: dict[str, Any]) -> int:
    """Check every shard listed in a partial manifest; returns how many are usable."""
    done = 0
    for entry in m["shards"]:
        files = []
        if entry.get("file"):
            files.append((entry["file"], entry["bytes"], entry["sha256"]))
        for part in (entry.get("parts") or {}).values():
            files.append((part["file"], part["bytes"], part["sha256"]))
        for rel, nbytes, sha in files:
            p = out / rel
            if not p.is_file():
                raise DumpError(f"{p}: listed in manifest.json shards[{entry['index']}] but missing; cannot resume (use --overwrite)")
            if p.stat().st_size != nbytes:
                raise DumpError(f"{p}: {p.stat().st_size} bytes, manifest.json says {nbytes}; cannot resume (use --overwrite)")
            if mf.sha256_file(p) != sha:
                raise DumpError(f"{p}: sha256 differs from manifest.json; cannot resume (use --overwrite)")
        done += 1
    return done


def _clean_strays(out: Path, m: dict[str, Any]) -> None:
    """Remove temp files and shard files not listed in the manifest."""
    listed = {out / e["file"] for e in m["shards"] if e.get("file")}
    for e in m["shards"]:
        listed.update(out / p["file"] for p in (e.get("parts") or {}).values())
    for sub in (mf.LOGITS_DIR, mf.PARTS_DIR):
        d = out / sub
        if d.is_dir():
            for p in d.iterdir():
                if p not in listed:
                    p.unlink()
    for p in out.glob(".*.tmp"):
        p.unlink()


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

def run_dump(out: str | os.PathLike, loaded: Any, tasks: Sequence[Any], *, store: str = "full",
             store_dtype: str = "f16", shard_rows: int = DEFAULT_SHARD_ROWS,
             batch_size: int = DEFAULT_BATCH_SIZE, resume: bool = False, overwrite: bool = False,
             seed: int = 0, progress: bool = True, config: dict[str, Any] | None = None) -> DumpSummary:
    """Score every document of ``tasks`` with ``loaded`` (a LoadedModel: .model,
    .tokenizer, .device, .manifest()) and write a dump directory at ``out``."""
    import torch
    from tqdm.auto import tqdm

    from qfair.scoring import Scorer, encode_example, tokenizer_fingerprint

    t0 = time.perf_counter()
    out = Path(out)
    if store not in mf.STORE_MODES:
        raise DumpError(f"--store is {store!r}, expected one of {', '.join(mf.STORE_MODES)}")
    if store_dtype not in mf.STORE_DTYPES:
        raise DumpError(f"--store-dtype is {store_dtype!r}, expected one of {', '.join(mf.STORE_DTYPES)}")
    if shard_rows < 1:
        raise DumpError(f"--shard-rows must be >= 1, got {shard_rows}")
    if batch_size < 1:
        raise DumpError(f"--batch-size must be >= 1, got {batch_size}")
    if not tasks:
        raise DumpError("no tasks to dump")

    old = _prepare_dir(out, resume, overwrite)
    if old is not None and old["status"] == "complete":
        ex = __import__("polars").read_parquet(out / mf.EXAMPLES)
        ch = __import__("polars").read_parquet(out / mf.CHOICES)
        kinds = {t["name"]: t.get("kind", "multiple_choice") for t in old.get("tasks", [])}
        return DumpSummary(out, "complete", ex.height, ch.height, int(old["storage"].get("n_rows", 0)),
                           len(old["shards"]), old["storage"]["mode"], old["storage"]["dtype"],
                           time.perf_counter() - t0, task_metrics(ex, ch, kinds),
                           int(old.get("counts", {}).get("nonfinite_rows", 0)), already_complete=True)

    torch.manual_seed(seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    vocab = _logits_width(loaded)

    # 1. documents and their tokens
    docs: list[Any] = []
    encoded = []
    task_infos = []
    for task in tasks:
        n = 0
        for d in task.docs():
            _check_doc(task, d)
            docs.append(d)
            encoded.append(encode_example(tokenizer, d.context, d.choices, task.target_delimiter))
            n += 1
        info = _task_info(task)
        info["n_examples"] = n
        task_infos.append(info)
    if not docs:
        raise DumpError("the selected tasks hold no examples (check --limit and --data-file)")
    seen: set[str] = set()
    for d in docs:
        if d.example_id in seen:
            raise DumpError(f"{d.task}: field 'example_id' {d.example_id!r} occurs twice")
        seen.add(d.example_id)
    rows_per_example = [e.n_rows for e in encoded]
    plans = plan_shards(rows_per_example, shard_rows)
    total_rows = sum(rows_per_example)

    run_config = dict(config or {})
    for k in _RESUME_FREE:
        run_config.pop(k, None)
    run_config.update({"store": store, "store_dtype": store_dtype, "shard_rows": shard_rows,
                       "batch_size": batch_size, "seed": seed})
    fingerprint = tokenizer_fingerprint(tokenizer, vocab)
    storage = {"mode": store, "dtype": store_dtype, "values": "log_softmax",
               "npy_dtype": mf.NPY_DTYPES[store_dtype] if store == "full" else None,
               "shard_rows": shard_rows, "n_rows": total_rows if store == "full" else 0,
               "n_tokens": total_rows, "n_shards": len(plans)}
    examples_df = _examples_frame(docs)

    # 2. directory, examples, manifest
    start_shard = 0
    if old is not None:
        for key, new_val in (("run.config", run_config), ("tokenizer", fingerprint), ("tasks", task_infos),
                             ("storage", storage), ("plan", [p.to_json() for p in plans])):
            sect, _, sub = key.partition(".")
            old_val = old.get(sect, {}).get(sub) if sub else old.get(sect)
            diff = _first_difference(old_val, new_val)
            if diff is not None:
                raise DumpError(f"{out / mf.MANIFEST}: field '{key}{'.' + diff if diff else ''}' differs from "
                                f"this run's; --resume needs the same model, tasks and options")
        import io

        buf = io.BytesIO()
        examples_df.write_parquet(buf, compression="zstd", statistics=False)
        ex_entry = old.get("tables", {}).get("examples", {})
        if not (out / mf.EXAMPLES).is_file() or mf.sha256_file(out / mf.EXAMPLES) != ex_entry.get("sha256") \
                or __import__("hashlib").sha256(buf.getvalue()).hexdigest() != ex_entry.get("sha256"):
            raise DumpError(f"{out / mf.EXAMPLES}: differs from this run's examples; cannot resume (use --overwrite)")
        start_shard = _verify_done_shards(out, old)
        _clean_strays(out, old)
        manifest = old
        manifest["status"] = "partial"
        manifest.setdefault("run", {}).setdefault("resumed_at", []).append(mf.now_iso())
    else:
        out.mkdir(parents=True, exist_ok=True)
        ex_bytes, ex_sha = mf.atomic_write_parquet(out / mf.EXAMPLES, examples_df)
        manifest = {
            "format": mf.FORMAT,
            "format_version": mf.FORMAT_VERSION,
            "status": "partial",
            "created_by": f"qfair {mf.library_versions().get('qfair')}",
            "model": _model_manifest(loaded),
            "tokenizer": fingerprint,
            "vocab_size": vocab,
            "tasks": task_infos,
            "scoring": {"rules": "lm-evaluation-harness 0.4 loglikelihood",
                        "special_tokens": "tokenizer default (lm-eval tok_encode)",
                        "empty_context": "bos, else eos", "logsoftmax_dtype": "float32",
                        "acc_norm_length": "unicode code points", "shared_context_kv_cache": True},
            "storage": storage,
            "plan": [p.to_json() for p in plans],
            "shards": [],
            "tables": {"examples": {"file": mf.EXAMPLES, "rows": examples_df.height, "bytes": ex_bytes,
                                    "sha256": ex_sha}},
            "counts": {"examples": len(docs), "choices": sum(len(d.choices) for d in docs),
                       "tokens": total_rows, "nonfinite_rows": 0},
            "run": {"config": run_config, "seed": seed, "start_time": mf.now_iso(), "end_time": None},
            "libraries": mf.library_versions(),
        }
    (out / mf.PARTS_DIR).mkdir(exist_ok=True)
    if store == "full":
        (out / mf.LOGITS_DIR).mkdir(exist_ok=True)
    mf.write_manifest(out, manifest)

    # 3. score and write
    scorer = Scorer(model, tokenizer, device=getattr(loaded, "device", None), batch_size=batch_size,
                    keep_rows=store == "full")
    writer = ShardWriter(out, manifest, store=store, dtype=store_dtype, vocab=vocab).start()
    done_rows = plans[start_shard].first_row if start_shard < len(plans) else total_rows
    bar = tqdm(total=total_rows, initial=done_rows, unit="row", unit_scale=True, dynamic_ncols=True,
               desc="qfair dump", disable=not progress, smoothing=0.1)
    try:
        for plan in plans[start_shard:]:
            _score_shard(plan, docs, encoded, scorer, writer, store, store_dtype, bar)
        writer.close()
    except BaseException:
        writer.abort()
        bar.close()
        raise
    bar.close()

    # 4. tables, complete
    summary = _finish(out, manifest, examples_df, task_infos)
    summary.seconds = time.perf_counter() - t0
    summary.resumed_from_shard = start_shard if old is not None else None
    return summary


def _score_shard(plan: ShardPlan, docs: Sequence[Any], encoded: Sequence[Any], scorer: Any,
                 writer: ShardWriter, store: str, store_dtype: str, bar: Any) -> None:
    import torch

    writer.begin(plan)
    ch: dict[str, list] = {k: [] for k in mf.choices_schema()}
    tk: dict[str, list] = {k: [] for k in mf.tokens_schema()}
    row = plan.first_row
    nonfinite = 0
    for ei in range(plan.ex_start, plan.ex_end):
        d, enc = docs[ei], encoded[ei]
        scores = scorer.score(enc)
        blocks = []
        for ci, s in enumerate(scores):
            n = s.n_tokens
            choice_text = d.choices[ci]
            ch["task"].append(d.task)
            ch["example_id"].append(d.example_id)
            ch["doc_index"].append(int(d.doc_index))
            ch["choice"].append(ci)
            ch["loglik"].append(s.loglik)
            ch["n_tokens"].append(n)
            ch["n_chars"].append(len(choice_text))
            ch["n_bytes"].append(len(choice_text.encode("utf-8")))
            ch["is_greedy"].append(s.is_greedy)
            ch["first_row"].append(row if store == "full" else -1)
            ch["n_rows"].append(n if store == "full" else 0)
            tk["row"].extend(range(row, row + n) if store == "full" else [-1] * n)
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
            if store == "full" and n:
                blocks.append(s.rows)
            row += n
        if blocks:
            writer.rows(_store_rows(torch.cat(blocks, 0) if len(blocks) > 1 else blocks[0], store_dtype))
        bar.update(enc.n_rows)
    writer.end(ch, tk, {"nonfinite_rows": nonfinite})


def _finish(out: Path, manifest: dict[str, Any], examples_df: Any, task_infos: list[dict[str, Any]]) -> DumpSummary:
    import polars as pl

    ch_parts, tk_parts = [], []
    for e in manifest["shards"]:
        ch_parts.append(pl.read_parquet(out / e["parts"]["choices"]["file"]))
        tk_parts.append(pl.read_parquet(out / e["parts"]["tokens"]["file"]))
    choices = pl.concat(ch_parts, how="vertical") if ch_parts else pl.DataFrame(schema=mf.choices_schema())
    tokens = pl.concat(tk_parts, how="vertical") if tk_parts else pl.DataFrame(schema=mf.tokens_schema())
    ch_bytes, ch_sha = mf.atomic_write_parquet(out / mf.CHOICES, choices)
    tk_bytes, tk_sha = mf.atomic_write_parquet(out / mf.TOKENS, tokens)
    nonfinite = sum(int(e.get("nonfinite_rows", 0)) for e in manifest["shards"])
    for e in manifest["shards"]:
        e.pop("parts", None)
    manifest["tables"]["choices"] = {"file": mf.CHOICES, "rows": choices.height, "bytes": ch_bytes, "sha256": ch_sha}
    manifest["tables"]["tokens"] = {"file": mf.TOKENS, "rows": tokens.height, "bytes": tk_bytes, "sha256": tk_sha}
    manifest["counts"]["nonfinite_rows"] = nonfinite
    manifest["status"] = "complete"
    manifest["run"]["end_time"] = mf.now_iso()
    mf.write_manifest(out, manifest)
    shutil.rmtree(out / mf.PARTS_DIR, ignore_errors=True)
    kinds = {t["name"]: t.get("kind", "multiple_choice") for t in task_infos}
    st = manifest["storage"]
    return DumpSummary(out, "complete", examples_df.height, choices.height, int(st["n_tokens"]),
                       len(manifest["shards"]) if st["mode"] == "full" else 0, st["mode"], st["dtype"], 0.0,
                       task_metrics(examples_df, choices, kinds), nonfinite)


# ---------------------------------------------------------------------------
# from names (the CLI's entry point)
# ---------------------------------------------------------------------------

def default_tasks() -> list[str]:
    """The built-in samples of the seed benchmarks plus crows_pairs_english."""
    import qfair.tasks as T

    wanted = ["piqa", "boolq", "openbookqa", "arc_easy", "hellaswag", "truthfulqa_mc2", "xstorycloze_en",
              "crows_pairs_english"]  # the same set as qfair.demo.DEMO_TASKS
    return [n for n in wanted if n in T.names() and T.has_builtin_sample(n)]


def dump(out: str | os.PathLike, *, model: str | None = None, quant: str = "none",
         tasks: str | Iterable[str] | None = None, data_files: Iterable[str] | dict | None = None,
         limit: int | None = None, store: str = "full", store_dtype: str = "f16",
         shard_rows: int = DEFAULT_SHARD_ROWS, batch_size: int = DEFAULT_BATCH_SIZE,
         resume: bool = False, overwrite: bool = False, seed: int = 0, progress: bool = True,
         load_kwargs: dict[str, Any] | None = None) -> DumpSummary:
    """Load the model and tasks by name, then ``run_dump``."""
    import qfair.tasks as T
    from qfair.models import load_model

    load_kwargs = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    names = T.resolve(tasks) if tasks else default_tasks()
    if isinstance(data_files, dict):
        files = {k: Path(v) for k, v in data_files.items()}
    else:
        files = T.parse_data_files(list(data_files or []))
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise DumpError(f"--data-file given for {', '.join(unknown)}, which is not among --tasks ({', '.join(names)})")
    # tasks first: a malformed row stops the run before the (slow) model load
    task_objs = [T.get(n, data_file=files.get(n), limit=limit) for n in names]
    config = {"model": model, "quant": quant, "tasks": names,
              "data_files": {k: str(v) for k, v in sorted(files.items())}, "limit": limit,
              **{k: (str(v) if not isinstance(v, (bool, int, float, type(None))) else v)
                 for k, v in sorted(load_kwargs.items()) if k != "progress"}}
    # directory problems stop the run before the (slow) model load
    out_p = Path(out)
    if resume and overwrite:
        raise DumpError("--resume and --overwrite exclude each other")
    if resume and not (out_p / mf.MANIFEST).is_file():
        raise DumpError(f"{out_p / mf.MANIFEST}: missing, nothing to resume (run without --resume)")
    if not resume and not overwrite and out_p.is_dir() and any(out_p.iterdir()):
        raise DumpError(f"{out_p}: directory exists and is not empty (use --resume to finish it or --overwrite to replace it)")
    loaded = load_model(model, quant=quant, progress=progress, **load_kwargs)
    return run_dump(out, loaded, task_objs, store=store, store_dtype=store_dtype, shard_rows=shard_rows,
                    batch_size=batch_size, resume=resume, overwrite=overwrite, seed=seed,
                    progress=progress, config=config)
