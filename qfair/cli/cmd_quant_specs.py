"""`qfair quant-specs`: the quantization specs, and which ones work on this machine."""
from __future__ import annotations

import click

from qfair.cli import main


@main.command("quant-specs")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--available", "only_available", is_flag=True, help="Only the specs that work here.")
def quant_specs_cmd(as_json: bool, only_available: bool) -> None:
    """List the quantization specs accepted by `qfair dump --quant SPEC`, whether
    each works on this machine (and why not), and their options.

    \b
    Grammar:  NAME[:KEY=VALUE,...]   module lists join names with '+'
    Examples: bnb-nf4:double_quant=true,compute_dtype=bfloat16
              bnb-int8:threshold=4.0
              quanto-int4:skip_modules=lm_head+down_proj
    skip_modules replaces transformers' default list (which keeps lm_head in full
    precision): include lm_head to keep it.  A checkpoint that is already
    quantized (GPTQ, AWQ, compressed-tensors, ...) is loaded as is with
    --quant none and recorded as 'prequantized'.
    """
    from qfair.models.quant import available_quant_specs, spec_options_help

    rows = [r for r in available_quant_specs() if r[1] or not only_available]
    if as_json:
        import json

        click.echo(json.dumps([
            {"spec": name, "available": ok, "reason": why,
             "options": [{"name": k, "default": d, "help": h} for k, d, h in spec_options_help(name)]}
            for name, ok, why in rows], indent=2))
        return
    width = max([len(r[0]) for r in rows] + [len("spec")])
    click.echo(f"{'spec':<{width}}  {'here':<4}  what it does [backend version] / why not; its options below it")
    for name, ok, why in rows:
        click.echo(f"{name:<{width}}  {'yes' if ok else 'no':<4}  {why}")
        for k, d, h in spec_options_help(name):
            click.echo(f"{'':<{width}}        {k}={d}: {h}")
    click.echo("\nCheckpoint formats loaded as they are (no spec needed):\n"
               "  gguf          a llama.cpp GGUF file (--model FILE.gguf, or --gguf-file in a model directory) is\n"
               "                de-quantized to float once (cached) and is then the base; quantize it further with\n"
               "                any spec above. Files llama-perplexity wrote: qfair import llamacpp.\n"
               "  prequantized  a checkpoint whose config carries its own quantization (GPTQ, AWQ, ...): use\n"
               "                --quant none; the row above says which formats can load here.")
