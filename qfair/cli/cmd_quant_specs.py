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
    width = max([len(r[0]) for r in rows] + [len("checkpoint"), len("SPEC")])
    click.echo(f"{'SPEC':<{width}}  {'HERE':<4}  WHAT (options below a spec: NAME=DEFAULT)")
    for name, ok, why in rows:
        click.echo(f"{name:<{width}}  {'yes' if ok else 'no ':<4}  {why}")
        for k, d, h in spec_options_help(name):
            click.echo(f"{'':<{width}}        {k}={d}: {h}")
    # already-quantized files are loaded, not quantized: not specs, but where users look for them
    import importlib.util

    gguf = importlib.util.find_spec("gguf") is not None
    extra = [("gguf", gguf, "a GGUF file (llama.cpp quantizations: Q4_0, Q4_1, Q8_0, K-quants, ...): "
              "qfair dump --model FILE.gguf --quant none; transformers de-quantizes it to float, so the "
              "dump measures that float model" + ("" if gguf else " (needs: pip install gguf)")),
             ("checkpoint", True, "a GPTQ / AWQ / compressed-tensors / saved bitsandbytes checkpoint: "
              "qfair dump --model DIR --quant none; loaded as is and recorded as 'prequantized'")]
    if not only_available or gguf:
        click.echo("")
        click.echo("Already-quantized models (not specs; compare their dump with the float model's):")
        for name, ok, why in extra:
            if ok or not only_available:
                click.echo(f"{name:<{width}}  {'yes' if ok else 'no ':<4}  {why}")
