"""`qfair import`: results of other tools as qfair dumps (llama.cpp .kld files,
lm-evaluation-harness sample logs)."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.errors import reported


def _run(fn, out: str):
    """Call an importer; every problem the user can fix is one line, exit 1."""
    with reported(out, interrupted=f"interrupted; {out} is incomplete (run again with --overwrite)"):
        return fn()


@main.group("import")
def import_group() -> None:
    """Turn another tool's results into a qfair dump, to analyze them with qfair.

    \b
    llama.cpp (llama-perplexity --kl-divergence-base files):
      qfair import llamacpp base.kld  --out runs/base
      qfair import llamacpp q4_0.kld  --out runs/q4_0
      qfair analyze runs/base runs/q4_0 --out runs/analysis
    lm-evaluation-harness (lm_eval --log_samples output):
      qfair import lm-eval results/fp16 --out runs/fp16
    """


@import_group.command("llamacpp")
@click.argument("kld", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Dump directory to write.")
@click.option("--tokenizer", default=None, metavar="MODEL",
              help="The model whose tokenizer made the file (e.g. smollm2-135m, a checkpoint directory or a "
                   ".gguf): recorded, so that the import compares with 'qfair dump --text' dumps of that model; "
                   "its vocabulary must match the file's.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Rows per logits shard.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dump in --out.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def llamacpp_cmd(kld, out, tokenizer, shard_rows, overwrite, threads, no_progress) -> None:
    """Import KLD, a file written by 'llama-perplexity --kl-divergence-base KLD'
    (also KLD.xz), as a text dump: its tokens and its log-prob rows, decoded
    exactly as llama.cpp decodes them (stored as float32).

    Two imports of the same text (the base model's file and the quantized
    model's file) analyze against each other; 'qfair analyze' then prints the
    summary 'llama-perplexity --kl-divergence' prints for that pair.
    """
    from qfair.importers.llamacpp import import_llamacpp

    s = _run(lambda: import_llamacpp(kld, out, tokenizer=tokenizer, shard_rows=shard_rows, overwrite=overwrite,
                                     threads=threads, progress=not no_progress), out)
    click.echo(s.text())


@import_group.command("lm-eval")
@click.argument("path", type=click.Path(exists=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Dump directory to write.")
@click.option("--group-field", default=None, metavar="FIELD",
              help="A field of the logged documents that holds each example's group (e.g. bias_type); "
                   "CrowS-Pairs tasks use bias_type by default.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dump in --out.")
def lm_eval_cmd(path, out, group_field, overwrite) -> None:
    """Import the per-sample logs of one lm-evaluation-harness run (lm_eval
    --log_samples): PATH is its output directory or one samples_<task>_<date>.jsonl
    file. Multiple-choice tasks only; acc / acc_norm are checked to be lm-eval's own.

    \b
    Example (one run with the full-precision model, one with the quantized one):
      qfair import lm-eval results/fp16 --out runs/fp16
      qfair import lm-eval results/nf4  --out runs/nf4
      qfair analyze runs/fp16 runs/nf4 --out runs/analysis
    """
    from qfair.importers.lm_eval import import_lm_eval

    s = _run(lambda: import_lm_eval(path, out, group_field=group_field, overwrite=overwrite), out)
    click.echo(s.text())
