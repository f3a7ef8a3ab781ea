"""`qfair dump` command line: a run on a tiny local model, and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from test_dump_support import write_mc_file  # noqa: E402

from qfair.cli import main  # noqa: E402
from qfair.dump import open_dump  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("cli")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"model": make_tiny_model("llama", root / "tiny", seed=4), "mc": write_mc_file(root / "mc.jsonl", 12, 3)}
    torch.set_num_threads(n)


def _run(args):
    return CliRunner().invoke(main, ["dump", "--no-progress", *map(str, args)])


def test_dump_command_writes_a_dump_and_a_summary(tiny, tmp_path):
    out = tmp_path / "d"
    r = _run(["--model", tiny["model"], "--tasks", "mc,piqa", "--data-file", f"mc={tiny['mc']}", "--limit", "5",
              "--shard-rows", "50", "--out", out])
    assert r.exit_code == 0, r.output
    summary = r.output.strip().splitlines()[-1]
    assert summary.startswith(f"Wrote {out}: 10 examples") and "mc (n=5" in summary and "piqa (n=5" in summary
    d = open_dump(out)
    assert d.is_complete and d.has_logits and len(d.logit_paths) >= 2
    m = d.manifest
    assert m["run"]["config"]["tasks"] == ["mc", "piqa"] and m["run"]["config"]["limit"] == 5
    assert m["run"]["config"]["data_files"] == {"mc": str(tiny["mc"])}
    assert m["model"]["quantization"]["name"] == "none"  # LoadedModel.manifest() recorded as is
    # same command again: refused before any work; --overwrite with --store none replaces it
    r = _run(["--model", tiny["model"], "--tasks", "mc", "--data-file", f"mc={tiny['mc']}", "--out", out])
    assert r.exit_code != 0 and "--resume" in r.output and len(r.output.strip().splitlines()) == 1
    r = _run(["--model", tiny["model"], "--tasks", "mc", "--data-file", f"mc={tiny['mc']}", "--out", out,
              "--overwrite", "--store", "none"])
    assert r.exit_code == 0, r.output
    assert not open_dump(out).has_logits


@pytest.mark.parametrize("args, message", [
    (["--tasks", "no_such_task"], "unknown task 'no_such_task'"),
    (["--tasks", "mc", "--data-file", "piqa=x.jsonl"], "not among --tasks"),
    (["--tasks", "mc", "--quant", "bnb-int3"], "quantization spec"),
    (["--tasks", "mc", "--resume"], "nothing to resume"),
    (["--tasks", "mc", "--resume", "--overwrite"], "exclude each other"),
])
def test_one_line_errors(tiny, tmp_path, args, message):
    r = _run(["--model", tiny["model"], "--data-file", f"mc={tiny['mc']}", "--out", tmp_path / "o", *args])
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], r.output
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_missing_model_and_malformed_row(tiny, tmp_path):
    r = _run(["--model", tmp_path / "nowhere", "--tasks", "piqa", "--out", tmp_path / "o"])
    assert r.exit_code != 0 and "nowhere" in r.output.strip().splitlines()[-1]
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(line) for line in Path(tiny["mc"]).read_text().splitlines()[:3]]
    rows[2]["label"] = 17
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = _run(["--model", tiny["model"], "--tasks", "mc", "--data-file", f"mc={bad}", "--out", tmp_path / "o"])
    last = r.output.strip().splitlines()[-1]
    assert r.exit_code != 0 and str(bad) in last and "line 3" in last and "label" in last, r.output


def test_help_lists_the_options():
    r = CliRunner().invoke(main, ["dump", "--help"])
    assert r.exit_code == 0
    for opt in ("--model", "--quant", "--tasks", "--out", "--limit", "--data-file", "--store", "--store-dtype",
                "--shard-rows", "--batch-size", "--resume", "--overwrite", "--seed", "--revision", "--dtype",
                "--device", "--device-map", "--gguf-file", "--trust-remote-code"):
        assert opt in r.output


@pytest.mark.parametrize("spec", ["quanto-int4", "quanto-int8", "bnb-nf4"])
def test_dump_runs_with_weight_only_backends(tiny, tmp_path, spec):
    """quanto's packed weights cannot be used with inference tensors: scoring runs under no_grad."""
    from qfair.models.quant import spec_availability

    if not spec_availability(spec)[0]:
        pytest.skip(f"{spec} not available here")
    r = _run(["--model", tiny["model"], "--tasks", "piqa", "--limit", "2", "--quant", spec, "--out", tmp_path / "d"])
    assert r.exit_code == 0, r.output
    assert open_dump(tmp_path / "d").manifest["model"]["quantization"]["name"] == spec
