"""Produce lm-evaluation-harness ``--log_samples`` logs on the embedded model, offline.

lm-eval's own command line (``python -m lm_eval run``) runs on qfair's float
cache of the embedded SmolLM2-135M (a plain Hugging Face checkpoint directory),
with task YAMLs that include lm-eval's own task files and only point the data at
the samples that ship with qfair. Used by tests/test_lm_eval_import.py (the live
test) and, run as a script, to regenerate the committed logs in
tests/data/lm_eval/:

    .venv/bin/python tests/lm_eval_logs.py tests/data/lm_eval
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TASKS = ("piqa", "arc_easy", "crows_pairs_english")
# a tiny generation task (for the refusal test): lm-eval's generate_until output type
GEN_YAML = """\
task: qfair_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: "{{{{sol1}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""


def float_checkpoint() -> Path:
    """The embedded model's float cache (created on first use by qfair.models.load_model)."""
    from qfair.models import cache, embedded_gguf_path

    sha = cache.file_sha256(embedded_gguf_path())
    hit = cache.lookup(sha)
    if hit is None:
        from qfair.models import load_model

        load_model(progress=False)
        hit = cache.lookup(sha)
    return Path(hit)


def write_yamls(directory: Path, version: str | None = None) -> None:
    """qfair_<task>.yaml per task: lm-eval's task file, data redirected to qfair's sample."""
    import lm_eval

    import qfair.tasks as T

    base = Path(lm_eval.__file__).parent / "tasks"
    directory.mkdir(parents=True, exist_ok=True)
    for t in TASKS:
        data = json.dumps(str(T.spec(t).sample_path()))
        lines = [f"include: {base / T.LM_EVAL_TASK_FILES[t]}", f"task: qfair_{t}", "tag: null",
                 "dataset_path: json", "dataset_name: null", "dataset_kwargs:", "  data_files:",
                 f"    validation: {data}", f"    test: {data}", "training_split: null", "fewshot_split: null"]
        if version is not None:
            lines += ["metadata:", f"  version: {version}"]
        (directory / f"qfair_{t}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "qfair_gen.yaml").write_text(GEN_YAML.format(data=json.dumps(str(T.spec("piqa").sample_path()))),
                                              encoding="utf-8")


def nf4_checkpoint(directory: Path) -> Path:
    """The embedded model quantized to bitsandbytes NF4 by qfair, saved as a checkpoint that
    lm-eval loads as it is (transformers 5 no longer takes load_in_4bit=True from lm-eval's
    --model_args; a saved bitsandbytes checkpoint carries its quantization config)."""
    from qfair.models import load_model

    if not (directory / "config.json").is_file():
        lm = load_model(quant="bnb-nf4:compute_dtype=float32", progress=False)
        lm.model.save_pretrained(directory)
        lm.tokenizer.save_pretrained(directory)
    return directory


def run(out: Path, tasks: list[str], *, pretrained: Path | None = None, limit: int | None = None,
        version: str | None = None, threads: int = 1) -> Path:
    """One lm_eval run writing its logs under ``out`` (flattened: results_*.json and samples_*.jsonl
    directly in ``out``). Returns ``out``."""
    work = out.parent / f".{out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    write_yamls(work / "yaml", version)
    args = f"pretrained={pretrained or float_checkpoint()},dtype=float32"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", args,
           "--tasks", ",".join(f"qfair_{t}" for t in tasks), "--include_path", str(work / "yaml"),
           "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path", str(work / "out")]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=3600)
    out.mkdir(parents=True, exist_ok=True)
    for f in (work / "out").rglob("*.json*"):
        shutil.move(str(f), out / f.name)
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(dest: str, only: str | None = None) -> None:
    d = Path(dest)
    if only == "rest":  # everything but the fp32 run
        with tempfile.TemporaryDirectory() as tmp:
            run(d / "nf4", list(TASKS), pretrained=nf4_checkpoint(Path(tmp) / "smollm2-135m-nf4"))
        run(d / "gen", ["gen"], limit=2)
        run(d / "piqa_v2", ["piqa"], limit=5, version="2.0")
        return
    run(d / "fp32", list(TASKS))
    with tempfile.TemporaryDirectory() as tmp:
        run(d / "nf4", list(TASKS), pretrained=nf4_checkpoint(Path(tmp) / "smollm2-135m-nf4"))
    run(d / "gen", ["gen"], limit=2)
    run(d / "piqa_v2", ["piqa"], limit=5, version="2.0")


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:3])
