"""Parity of qfair's multiple-choice scoring with lm-evaluation-harness itself.

Runs lm-evaluation-harness (``pip install lm-eval``; not part of CI's install)
offline on a local model directory -- qfair's float cache of the embedded
SmolLM2-135M (safetensors + config + tokenizer) -- with task YAMLs that
``include`` lm-eval's own task files and only redirect the data to the local
JSONL samples that ship with qfair. Then scores the same documents with
``qfair.dump.run.run_dump`` and compares, document by document and choice by
choice:

- every per-choice log-likelihood within --tol nats (default 1e-4),
- is_greedy identical,
- acc and acc_norm identical per document; for truthfulqa_mc2 the mc2 formula
  applied to lm-eval's log-likelihoods gives lm-eval's value exactly, and on
  qfair's within tol / 2 (mc2 moves by at most half the largest loglik change).

Exit status 0 when everything agrees, 1 otherwise. Prints one JSON line with the
largest difference per task (``--json``) or a small table.

    .venv/bin/python bench/lmeval_parity.py --tasks piqa,arc_easy,hellaswag --limit 20
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_TASKS = ("piqa,boolq,openbookqa,arc_easy,arc_challenge,hellaswag,truthfulqa_mc1,truthfulqa_mc2,"
                 "xstorycloze_en,crows_pairs_english")

def _task_files() -> dict[str, str]:
    import qfair.tasks as T

    return T.LM_EVAL_TASK_FILES


def sample_file(task: str) -> Path:
    import qfair.tasks as T

    p = T.spec(task).sample_path()
    return Path(str(p))


def write_task_yamls(tasks: list[str], directory: Path) -> dict[str, str]:
    """One YAML per task: lm-eval's own task file, data redirected to the local sample."""
    import lm_eval

    base = Path(lm_eval.__file__).parent / "tasks"
    names = {}
    for t in tasks:
        if t not in _task_files():
            raise SystemExit(f"no lm-eval task file known for {t!r}; known: {', '.join(_task_files())}")
        name = f"qfair_parity_{t}"
        data = str(sample_file(t))
        text = "\n".join([
            f"include: {base / _task_files()[t]}",
            f"task: {name}",
            "tag: null",
            "dataset_path: json",
            "dataset_name: null",
            "dataset_kwargs:",
            "  data_files:",
            f"    validation: {json.dumps(data)}",
            f"    test: {json.dumps(data)}",
            f"    eval: {json.dumps(data)}",
            "training_split: null",
            "fewshot_split: null",
            "",
        ])
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
        names[t] = name
    return names


def make_lm(model_dir: str, batch_size: int, device: str = "cpu") -> Any:
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model_dir, dtype="float32", device=device, batch_size=batch_size)


def run_lmeval(lm: Any, tasks: list[str], limit: int | None, yaml_dir: Path) -> tuple[dict[str, list[dict]], float]:
    """lm-eval's per-document samples for each task, and the wall time of the evaluation."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = write_task_yamls(tasks, yaml_dir)
    tm = TaskManager(include_path=str(yaml_dir))
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=list(names.values()), task_manager=tm, limit=limit,
                                  log_samples=True, num_fewshot=0, bootstrap_iters=0)
    dt = time.perf_counter() - t0
    out = {t: sorted(res["samples"][n], key=lambda s: s["doc_id"]) for t, n in names.items()}
    return out, dt


def run_qfair(loaded: Any, tasks: list[str], limit: int | None, out: Path, store: str = "full",
              batch_size: int = 32) -> tuple[Any, float]:
    import qfair.tasks as T
    from qfair.dump import open_dump
    from qfair.dump.run import run_dump

    objs = [T.get(t, limit=limit) for t in tasks]
    t0 = time.perf_counter()
    run_dump(out, loaded, objs, store=store, overwrite=True, progress=False, batch_size=batch_size)
    dt = time.perf_counter() - t0
    return open_dump(out), dt


def _mc2_formula(logliks: list[float], labels: list[int]) -> float:
    """qfair's mc2 (its metric registry) on one example's log-likelihoods."""
    import numpy as np

    from qfair.metrics.example_metrics import ChoiceArrays
    from qfair.metrics.task_kinds import get_task_kind

    n = len(logliks)
    a = ChoiceArrays.build(np.asarray(logliks, dtype=np.float64), np.ones(n), np.array([n]), np.array([0]),
                           [labels], np.array(["mc2"], dtype=object))
    return float(get_task_kind("mc2").metric("mc2").compute(a)[0])


def compare(dump: Any, samples: dict[str, list[dict]], tol: float) -> dict[str, Any]:
    from qfair.metrics.examples import example_stats, task_kinds

    stats = example_stats(dump.examples, dump.choices, task_kinds(dump.manifest))
    ours = {r["example_id"]: r for r in stats.iter_rows(named=True)}
    ch = dump.choices
    ex = dump.examples
    report: dict[str, Any] = {}
    ok = True
    for task, rows in samples.items():
        worst = 0.0
        n_choices = 0
        problems: list[str] = []
        tex = ex.filter(ex["task"] == task).sort("doc_index")
        for s in rows:
            doc_index = int(s["doc_id"])
            erow = tex.filter(tex["doc_index"] == doc_index).row(0, named=True)
            c = ch.filter(ch["example_id"] == erow["example_id"]).sort("choice")
            theirs = [(float(r[0]), bool(r[1])) for r in s["filtered_resps"]]
            ours_ll = c["loglik"].to_list()
            ours_greedy = c["is_greedy"].to_list()
            if len(theirs) != len(ours_ll):
                problems.append(f"doc {doc_index}: {len(theirs)} choices in lm-eval, {len(ours_ll)} in qfair")
                continue
            for i, ((ll, g), ll2, g2) in enumerate(zip(theirs, ours_ll, ours_greedy)):
                d = abs(ll - ll2)
                worst = max(worst, d)
                n_choices += 1
                if d > tol:
                    problems.append(f"doc {doc_index} choice {i}: loglik {ll2:.6f} vs lm-eval {ll:.6f}")
                if g != g2:
                    problems.append(f"doc {doc_index} choice {i}: is_greedy {g2} vs lm-eval {g}")
            if task == "truthfulqa_mc2":
                # the formula, on lm-eval's own log-likelihoods: identical
                on_theirs = _mc2_formula([ll for ll, _ in theirs], erow["labels"])
                if abs(on_theirs - float(s["acc"])) > 1e-12:
                    problems.append(f"doc {doc_index}: mc2 formula {on_theirs!r} vs lm-eval {float(s['acc'])!r}")
                # on ours: moves by at most half the largest log-likelihood difference
                mine = ours[erow["example_id"]]["mc2"]
                if abs(mine - float(s["acc"])) > tol / 2:
                    problems.append(f"doc {doc_index}: mc2 {mine:.6f} vs lm-eval {float(s['acc']):.6f}")
            elif task.startswith("crows_pairs"):
                pct = ours[erow["example_id"]]["stereotype"]
                if pct != float(s["pct_stereotype"]):
                    problems.append(f"doc {doc_index}: pct_stereotype {pct} vs lm-eval {s['pct_stereotype']}")
            else:
                a = ours[erow["example_id"]]["correct"]
                if a != float(s["acc"]):
                    problems.append(f"doc {doc_index}: acc {a} vs lm-eval {s['acc']}")
                if "acc_norm" in s:
                    an = ours[erow["example_id"]]["correct_norm"]
                    if an != float(s["acc_norm"]):
                        problems.append(f"doc {doc_index}: acc_norm {an} vs lm-eval {s['acc_norm']}")
        ok &= not problems
        report[task] = {"docs": len(rows), "choices": n_choices, "max_abs_loglik_diff": worst,
                        "problems": problems[:10], "n_problems": len(problems)}
    report["_all"] = {"ok": ok, "max_abs_loglik_diff": max((v["max_abs_loglik_diff"] for k, v in report.items()
                                                           if not k.startswith("_")), default=0.0)}
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--limit", type=int, default=None, help="documents per task (default: whole sample)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--lmeval-batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from qfair.models import load_model

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    loaded = load_model(progress=False)  # embedded SmolLM2-135M, float32, from qfair's float cache
    model_dir = loaded.checkpoint_path
    if not model_dir or not Path(model_dir, "config.json").is_file():
        raise SystemExit("qfair's float cache of SmolLM2 is not a model directory here; cannot run lm-eval on it")
    lm = make_lm(model_dir, args.lmeval_batch_size)
    with tempfile.TemporaryDirectory(prefix="qfair-parity-") as tmp:
        tmp = Path(tmp)
        (tmp / "yaml").mkdir()
        samples, t_lm = run_lmeval(lm, tasks, args.limit, tmp / "yaml")
        dump, t_q = run_qfair(loaded, tasks, args.limit, tmp / "dump")
        report = compare(dump, samples, args.tol)
    report["_all"].update({"model_dir": model_dir, "tasks": tasks, "limit": args.limit, "tol": args.tol,
                           "lm_eval_seconds": round(t_lm, 2), "qfair_dump_seconds": round(t_q, 2),
                           "torch_threads": torch.get_num_threads()})
    if args.json:
        print(json.dumps(report))
    else:
        for task, r in report.items():
            if task.startswith("_"):
                continue
            print(f"{task:16s} docs {r['docs']:4d} choices {r['choices']:5d}  max |Δloglik| {r['max_abs_loglik_diff']:.2e}"
                  f"  problems {r['n_problems']}")
            for p in r["problems"]:
                print("    " + p)
        a = report["_all"]
        print(f"ALL: {'OK' if a['ok'] else 'MISMATCH'}; largest |Δloglik| {a['max_abs_loglik_diff']:.2e} nats "
              f"(tol {a['tol']}); lm-eval {a['lm_eval_seconds']} s, qfair dump {a['qfair_dump_seconds']} s")
    return 0 if report["_all"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
