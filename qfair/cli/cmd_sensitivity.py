"""`qfair sensitivity`: which units' quantization moves the bias metrics."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.errors import reported
from qfair.cli.threads import set_torch_threads


def sensitivity_errors() -> tuple[type[BaseException], ...]:
    from qfair.sensitivity import ProbeError, SensitivityError

    return (SensitivityError, ProbeError)


@main.command("sensitivity")
@click.option("--model", "model", default=None, metavar="M",
              help="Model: a local directory or 'smollm2-135m' (the embedded default, used when omitted).")
@click.option("--quant", required=True, metavar="SPEC",
              help="Quantization spec whose units are scanned, e.g. bnb-nf4 (see qfair quant-specs).")
@click.option("--tasks", default=None, metavar="PROBES",
              help="Probe tasks: CrowS-Pairs and StereoSet tasks are the bias probes, the others give accuracy. "
                   "Default: crows_pairs,arc_easy,piqa.")
@click.option("--unit", type=click.Choice(["block", "linear"]), default="block", show_default=True,
              help="block: one transformer block per unit; linear: every quantized layer.")
@click.option("--bits", "widths", default=None, metavar="B,B,...",
              help="Candidate bit widths (2..8, e.g. 3,4,8) scanned per unit for qfair recommend's "
                   "bit allocation: each unit (a linear layer with --unit linear, or all layers of a block) at "
                   "each width, the rest at the spec's width. Needs an rtn or gptq spec.")
@click.option("--gen-probes", default=None, metavar="TASKS",
              help="Generation tasks (e.g. gen_bias_probes) scored in every model state as another bias "
                   "objective: the float model's greedy texts, each state's lexicon gap shift between groups "
                   "and its KL along the float texts (rows of set 'gen'). With them --tasks needs no bias probe.")
@click.option("--gen-tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="Tokens generated per prompt of --gen-probes.")
@click.option("--mode", type=click.Choice(["single", "leave-one-out", "both", "none"]), default=None,
              help="single: quantize only that unit; leave-one-out: quantize all but that unit; none: only the "
                   "width rows of --bits. Default: single, or none with --bits.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--split", default="0.5:0", show_default=True, metavar="FRACTION[:SEED]",
              help="Share of the probe examples the scan uses; the rest is held out for qfair recommend.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most N documents per task.")
@click.option("--data-file", "data_files", multiple=True, metavar="TASK=PATH",
              help="Read TASK's documents from a local JSONL/Parquet/CSV file (repeatable).")
@click.option("--data-dir", "data_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Read every probe task DIR holds from there, offline, sha256-checked (written by qfair data "
                   "fetch); --data-file wins for its task.")
@click.option("--resamples", type=click.IntRange(min=100), default=10_000, show_default=True,
              help="Bootstrap resamples per interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Choice sequences per forward pass.")
@click.option("--threads", type=click.IntRange(min=1, max=4096), default=None,
              help="torch compute threads (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use).")
@click.option("--dtype", default=None, help="Model dtype (float32, bfloat16, float16, auto).")
@click.option("--device", default=None, help="Device (cpu, cuda, cuda:1, ...).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Where converted models are cached.")
@click.option("--overwrite", is_flag=True, help="Replace an existing directory in --out.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def sensitivity_cmd(model, quant, tasks, unit, widths, gen_probes, gen_tokens, mode, out, split, limit, data_files, data_dir, resamples, seed,
                    batch_size,
                    threads, dtype, device, cache_dir, overwrite, no_progress) -> None:
    """Quantize one unit at a time (a transformer block, or every quantized
    linear layer) and measure what it does against the unquantized model on the
    scan side of the probes: CrowS-Pairs pct_stereotype, likelihood_diff and
    stereotype-gap shift per bias type, mean token KL, and accuracy on the
    general tasks, each with a bootstrap interval over examples.

    The float model and the quantized model are both loaded once; a unit is
    quantized by putting the backend's own quantized modules in place, so the
    numbers are the backend's (the run checks that all units together give the
    quantized model's logits).

    \b
    Example:
      qfair sensitivity --quant bnb-nf4 --out runs/sens
      qfair report runs/sens
      qfair recommend runs/sens --budget 4.6bits --objective bias
      qfair sensitivity --quant rtn:bits=4 --unit linear --bits 3,4,8 --out runs/widths
      qfair recommend runs/widths --budget 4.25bpw --bias-weight 1
    """
    from qfair.sensitivity import run_scan
    from qfair.tasks import parse_data_files

    set_torch_threads(threads)
    with reported(out, *sensitivity_errors()):
        files = parse_data_files(list(data_files))
        objectives = []
        if gen_probes:
            import qfair.tasks as T
            from qfair.generation.probe_objective import GenProbeObjective
            from qfair.sensitivity import Split

            gen_tasks = [T.get(n, limit=limit, data_dir=data_dir) for n in T.resolve(gen_probes)]
            objectives.append(GenProbeObjective(gen_tasks, Split.parse(split), max_new_tokens=gen_tokens,
                                                batch_size=batch_size))
        r = run_scan(out, model=model, quant=quant, tasks=tasks, data_files=files, limit=limit, data_dir=data_dir,
                     unit=unit, mode=mode, widths=widths, split=split, resamples=resamples, seed=seed,
                     batch_size=batch_size,
                     load_kwargs={"dtype": dtype, "device": device, "cache_dir": cache_dir},
                     overwrite=overwrite, progress=not no_progress, objectives=objectives)
    click.echo(r.text())
