"""`qfair recommend`: which units to keep in full precision under a memory budget."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.cmd_sensitivity import sensitivity_errors
from qfair.cli.errors import reported
from qfair.cli.threads import set_torch_threads


@main.command("recommend")
@click.argument("scan_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--budget", required=True, metavar="BYTES|BITS",
              help="Size limit of the whole model: bytes (60MB, 57MiB, 60000000) or bits per scanned "
                   "parameter (4.5bits, or 4.25bpw).")
@click.option("--bias-weight", type=float, default=1.0, show_default=True,
              help="Bit allocation (a scan with --bits): weight of the bias gap shift against the token KL in "
                   "the objective weight*gap_shift + KL.")
@click.option("--bits", "widths", default=None, metavar="B,B,...",
              help="Bit allocation: the candidate widths to choose from (default: every width the scan has).")
@click.option("--objective", type=click.Choice(["bias", "pct_stereotype", "likelihood_diff", "stereo_gap", "kl",
                                                "acc", "gen_bias", "gen_kl"]), default="bias", show_default=True,
              help="What to minimise: bias = mean shift of the pair probes' stereotype gap; kl = token KL; "
                   "acc = accuracy loss; or one pair metric's change; gen_bias / gen_kl = the generation "
                   "probes' lexicon gap shift / KL along the float text (a scan with --gen-probes).")
@click.option("--bias-source", type=click.Choice(["pairs", "generation"]), default="pairs", show_default=True,
              help="Bit allocation: the objective's bias and KL terms from the pair probes (stereotype gap "
                   "shift, token KL) or from the generation probes (lexicon gap shift, KL along the float "
                   "model's texts; a scan with --gen-probes).")
@click.option("--keep", default="none", show_default=True, metavar="SPEC",
              help="Precision of the kept units: none (full precision, via the backend's skip list) or a "
                   "higher-bit spec such as bnb-int8 (written as a mixed spec).")
@click.option("--from", "source", type=click.Choice(["single", "leave-one-out"]), default="single",
              show_default=True, help="Which scan rows give each unit's gain.")
@click.option("--probe-split", type=click.Choice(["heldout", "scan", "none"]), default="heldout",
              show_default=True,
              help="Where the recommendation is validated: the held-out probes (default), the scan's own "
                   "(in-sample), or not at all.")
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random same-bytes configurations to compare with.")
@click.option("--resamples", type=click.IntRange(min=100), default=10_000, show_default=True,
              help="Bootstrap resamples per interval.")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Directory for recommendation.json, spec.txt and validation.parquet (default: SCAN_DIR/recommend).")
@click.option("--threads", type=click.IntRange(min=1, max=4096), default=None,
              help="torch compute threads (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use).")
@click.option("--no-progress", is_flag=True, help="No progress messages.")
def recommend_cmd(scan_dir, budget, bias_weight, widths, objective, bias_source, keep, source, probe_split, seeds, resamples, out, threads,
                  no_progress) -> None:
    """From a sensitivity scan in SCAN_DIR, choose the units to keep in full
    precision that minimise the objective within the budget, and print a
    quantization spec that qfair dump --quant accepts as is, with its size
    measured on the loaded model. Then validate it on the probe examples the
    scan never saw: against uniform quantization and against the same bytes
    kept in random units, with paired bootstrap intervals.

    \b
    A scan with candidate widths (qfair sensitivity --unit linear --bits 3,4,8)
    gets a bit allocation instead: one width per linear layer minimising
    bias-weight x gap shift + KL under the budget (an exact multiple-choice
    knapsack), printed as one rtn/gptq spec with layer_bits and its size
    measured on the loaded spec (files: allocation.json, allocation.parquet,
    spec.txt). --objective, --keep, --from, --probe-split and --seeds apply to
    keep-in-full-precision recommendations only.

    \b
    Example:
      qfair recommend runs/sens --budget 4.6bits --objective bias
      qfair dump --quant "$(cat runs/sens/recommend/spec.txt)" --out runs/mixed
      qfair recommend runs/widths --budget 4.25bpw --bias-weight 2
    """
    from pathlib import Path

    from qfair.sensitivity.allocate import allocate
    from qfair.sensitivity.recommend import recommend

    set_torch_threads(threads)
    with reported(scan_dir, *sensitivity_errors()):
        if (Path(scan_dir) / "widths.parquet").is_file():
            a = allocate(scan_dir, budget=budget, bias_weight=bias_weight, bits=widths, out=out,
                         progress=not no_progress, bias_source=bias_source)
            click.echo(a.text())
            return
        if widths is not None:
            from qfair.sensitivity import SensitivityError

            raise SensitivityError(f"--bits: the scan in {scan_dir} has no candidate widths; rerun qfair "
                                   "sensitivity with --unit linear --bits 3,4,8 (for example)")
        r = recommend(scan_dir, budget=budget, objective=objective, keep=keep, source=source, probe_split=probe_split,
                      seeds=seeds, out=out, resamples=resamples, progress=not no_progress)
    click.echo(r.text())
