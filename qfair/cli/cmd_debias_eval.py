"""`qfair debias-eval`: candidate quantizers judged on held-out bias benchmarks against uniform GPTQ."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.cmd_sensitivity import sensitivity_errors
from qfair.cli.errors import reported
from qfair.cli.threads import set_torch_threads


def _floats(text: str) -> tuple[float, ...]:
    from qfair.sensitivity import SensitivityError

    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        out = ()
    if not out or any(not (a == a) or a < 0 or a == float("inf") for a in out):
        raise SensitivityError(f"--alphas {text!r}: expected finite numbers >= 0 joined by ',' (e.g. 1,10)")
    return out


@main.command("debias-eval")
@click.option("--model", "model", default=None, metavar="M",
              help="Model: a local directory or 'smollm2-135m' (the embedded default, used when omitted).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Directory for the dumps, tables, figure and report (existing complete dumps are reused).")
@click.option("--candidate", "candidates", multiple=True, metavar="NAME=SPEC",
              help="A candidate (repeatable); replaces the default set: rtn, gptq, gptq_bias_balanced and "
                   "fair_ALPHA for each --alphas.")
@click.option("--reference", default="gptq", show_default=True, metavar="NAME",
              help="The candidate every other one is compared with (paired, per example).")
@click.option("--allocation", default=None, metavar="SPEC|FILE",
              help="A bit-allocation spec (or qfair recommend's spec.txt) added as candidate 'allocation', with "
                   "--random-seeds random allocations of the same widths among same-shape layers.")
@click.option("--random-seeds", type=click.IntRange(min=0), default=3, show_default=True,
              help="Random allocations at exactly the allocation's bytes.")
@click.option("--random-unit", type=click.Choice(["layer", "block"]), default="layer", show_default=True,
              help="How the random allocations shuffle the allocation's widths: among layers of one shape, or "
                   "whole blocks permuted (the null for an allocation chosen per block).")
@click.option("--bits", type=click.IntRange(2, 8), default=4, show_default=True, help="Default candidates: bits.")
@click.option("--group-size", type=int, default=64, show_default=True, help="Default candidates: group size.")
@click.option("--alphas", default="1,10", show_default=True, metavar="A,A",
              help="Default candidates: the fairness weights of fair GPTQ.")
@click.option("--fair-probes", default="stereoset", show_default=True,
              help="Default candidates: the pairs fair GPTQ is built from (scan side of the split).")
@click.option("--tasks", default="crows_pairs_english,bbq,winogender_all,arc_easy,piqa", show_default=True,
              metavar="A,B,C", help="Evaluation tasks: bias benchmarks other than the build probes, plus "
                                    "general tasks.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most N documents per task.")
@click.option("--bootstrap", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap resamples per interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Choice sequences per forward pass.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Where quantized models are cached.")
@click.option("--threads", type=click.IntRange(min=1, max=4096), default=None,
              help="torch compute threads (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use).")
@click.option("--no-progress", is_flag=True, help="No progress messages.")
def debias_eval_cmd(model, out, candidates, reference, allocation, random_seeds, random_unit, bits, group_size, alphas,
                    fair_probes, tasks, limit, bootstrap, seed, batch_size, cache_dir, threads, no_progress) -> None:
    """Dump the float model and every candidate quantizer on evaluation tasks
    of a different kind from those the quantizers were built from, and report
    each candidate against the reference (uniform GPTQ) as paired differences
    with bootstrap intervals (qfair analyze on the dumps), with an equal-bits
    check (bits per weight within 1 %), a table, a Pareto figure of bias shift
    against KL and an HTML report.

    \b
    Example:
      qfair debias-eval --out runs/debias --limit 200
      qfair debias-eval --out runs/debias --allocation runs/widths/recommend/spec.txt \\
          --candidate gptq=gptq:bits=4 --candidate fair=gptq:bits=4,fair=10
    """
    from pathlib import Path

    from qfair.debias_eval import debias_eval, default_candidates
    from qfair.sensitivity import SensitivityError

    set_torch_threads(threads)
    with reported(out, *sensitivity_errors()):
        if candidates:
            cands = {}
            for c in candidates:
                name, eq, spec = c.partition("=")
                if not eq or not name.strip() or not spec.strip():
                    raise SensitivityError(f"--candidate {c!r}: expected NAME=SPEC (e.g. gptq=gptq:bits=4)")
                cands[name.strip()] = spec.strip()
        else:
            cands = default_candidates(bits, group_size, _floats(alphas), fair_probes)
        alloc = allocation
        if alloc is not None and Path(alloc).is_file():
            alloc = Path(alloc).read_text().strip()
        r = debias_eval(out, model=model, candidates=cands, reference=reference, allocation=alloc,
                        random_seeds=random_seeds, random_unit=random_unit, tasks=tasks, limit=limit, bootstrap=bootstrap, seed=seed,
                        load_kwargs={"cache_dir": cache_dir}, batch_size=batch_size, progress=not no_progress)
    click.echo(r.text())
