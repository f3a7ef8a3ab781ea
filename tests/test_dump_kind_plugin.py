"""A new dump kind is one module plus one registration.

A toy kind, ``toy_lines``, lives in one module outside qfair and is registered
by one entry point (``qfair.dump_kinds``). It declares everything the commands
ask a kind for: its options (``--toy-lines FILE`` selects it, ``--toy-max N``),
its ``prepare`` and producer (each line of the file is an example with two
choices, the line and its words reversed, scored by the model), its row
estimate, its analysis table and its report section. Nothing in qfair names
it, yet ``qfair dump`` offers and writes it, ``qfair study --dry-run`` counts
its rows with its estimate, ``qfair analyze`` adds its table and ``qfair
report`` shows its section. docs/extending.md's table of what goes where is
checked against qfair's registries and plugin groups.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_plugins import _install, _qfair  # noqa: E402

TOY_KIND = '''
"""The toy_lines dump kind: one module, registered by one entry point."""
from pathlib import Path

import polars as pl

from qfair.dump import DumpError
from qfair.dump.kinds import DumpKind, KindOption, register_kind
from qfair.report.common import Section


def _lines(options):
    lines = [ln for ln in Path(options["toy_lines"]).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines[: options.get("toy_max") or len(lines)]


def _choices(line):
    return [line, " ".join(reversed(line.split()))]


def prepare(tasks, options, seed):
    lines = _lines(options)
    if not lines:
        raise DumpError(f"--toy-lines {options['toy_lines']}: no line to score")
    return lines


def _loglik(model, ids):
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(lp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).sum())


def produce(out, loaded, tasks, *, settings, options, config, threads, part, store, store_dtype, shard_rows,
            batch_size, resume, overwrite, seed, progress):
    import time

    from qfair.dump.summary import summarize
    from qfair.dump.writer import DumpWriter

    t0 = time.perf_counter()
    lines, tok = settings, loaded.tokenizer
    n = len(lines)
    ids = [f"toy-{k}" for k in range(n)]
    examples = {"example_id": ids, "task": ["toy"] * n, "doc_index": list(range(n)), "group": [None] * n,
                "label": [0] * n, "n_choices": [2] * n, "context": [""] * n,
                "choices": [_choices(ln) for ln in lines], "labels": [None] * n, "extras": [None] * n}
    w = DumpWriter(out, kind="toy_lines", examples=examples, vocab_size=1, tokenizer=None, config=config,
                   tasks=[{"name": "toy", "kind": "multiple_choice"}], store="none", resume=resume,
                   overwrite=overwrite, seed=seed)
    for k in range(w.start, w.n_examples):
        texts = _choices(lines[k])
        toks = [tok(t)["input_ids"] for t in texts]
        w.add({"choices": {"task": ["toy"] * 2, "example_id": [ids[k]] * 2, "doc_index": [k] * 2,
                           "choice": [0, 1], "loglik": [_loglik(loaded.model, t) for t in toks],
                           "n_tokens": [len(t) - 1 for t in toks], "n_chars": [len(t) for t in texts],
                           "n_bytes": [len(t.encode()) for t in texts], "is_greedy": [False] * 2,
                           "first_row": [-1] * 2, "n_rows": [0] * 2}})
    w.close()
    return summarize(Path(out), w.manifest, time.perf_counter() - t0)


def estimate_rows(tasks, options, tokenizer):
    """The tokens the dump scores: every token but the first of both choices of every line."""
    return sum(len(tokenizer(t)["input_ids"]) - 1 for ln in _lines(options) for t in _choices(ln)), True


def toy_tables(base, quant, label, cfg, token_table):
    """Per line, the margin of the line over its reversal under each model."""
    def margin(d):
        ch = d.choices.sort("example_id", "choice")
        return ch.group_by("example_id", maintain_order=True).agg(
            (pl.col("loglik").first() - pl.col("loglik").last()).alias("margin"))

    j = margin(base).join(margin(quant), on="example_id", suffix="_quant")
    return {"toy_margins": j.select(pl.lit(label).alias("model"), "example_id",
                                    pl.col("margin").alias("base_margin"),
                                    pl.col("margin_quant").alias("quant_margin"))}


def _section(data, figs):
    from qfair.report.common import table_html
    from qfair.report.data import read_table

    t = read_table(data.path, "toy_margins")
    return "" if t is None or t.height == 0 else "<p>toy margins</p>" + table_html(t)


def _present(data):
    from qfair.report.data import read_table

    return read_table(data.path, "toy_margins") is not None


SECTIONS = (Section("toy", "Toy lines: the line over its reversal", "the toy_lines dump kind", ("toy_margins",),
                    _section, present=_present),)

register_kind(DumpKind(
    "toy_lines", ("choices",), stores_rows=False, doc="a plugin's dump kind: lines against their reversal",
    options=(KindOption("toy_lines", "file", "Score each line of FILE against its words reversed.", metavar="FILE",
                        is_input=True),
             KindOption("toy_max", "int", "With --toy-lines: at most N lines.", metavar="N", min=1)),
    selected_by="toy_lines", prepare="qfair_toy_kind:prepare", producer="qfair_toy_kind:produce",
    estimate="qfair_toy_kind:estimate_rows", analysis="qfair_toy_kind:toy_tables",
    report="qfair_toy_kind:SECTIONS"))
'''

LINES = ["the cat sat on the mat", "a small dog ran home", "rain fell all day long", "we read two old books",
         "green trees grow tall"]


@pytest.fixture(scope="module")
def toy_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_kind")
    env = _install(root / "site", textwrap.dedent(TOY_KIND), "[qfair.dump_kinds]\ntoy = qfair_toy_kind\n",
                   name="qfair_toy_kind")
    lines = root / "lines.txt"
    lines.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return env, lines


def test_qfair_dump_offers_the_kinds_options(toy_env):
    env, _ = toy_env
    r = _qfair(env, "dump", "--help")
    assert r.returncode == 0 and "--toy-lines FILE" in r.stdout and "--toy-max N" in r.stdout, r.stdout + r.stderr


def test_a_toy_kind_goes_through_dump_study_analyze_and_report(toy_env, tiny_model, tmp_path):
    env, lines = toy_env
    model = tiny_model("llama", 3)
    # qfair dump: the option selects the kind; its flags' rules hold like any kind's
    r = _qfair(env, "dump", "--model", str(model), "--toy-max", "2", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--toy-max go with --toy-lines" in r.stderr, r.stderr
    r = _qfair(env, "dump", "--model", str(model), "--toy-lines", str(lines), "--tasks", "piqa",
               "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "drop --tasks" in r.stderr, r.stderr
    for name, spec in (("base", "none"), ("q", "bnb-nf4")):
        r = _qfair(env, "dump", "--model", str(model), "--quant", spec, "--toy-lines", str(lines), "--toy-max", "4",
                   "--out", str(tmp_path / name), "--no-progress")
        assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "base" / "manifest.json").read_text())
    assert m["kind"] == "toy_lines" and m["status"] == "complete" and m["counts"]["examples"] == 4
    ch = pl.read_parquet(tmp_path / "base" / "choices.parquet")
    assert ch.height == 8

    # the log-likelihoods are the model's: recomputed here with transformers
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    ids = tok(LINES[1])["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(lm(torch.tensor([ids])).logits[0].double(), dim=-1)
    want = float(sum(lp[i, ids[i + 1]] for i in range(len(ids) - 1)))
    got = ch.filter((pl.col("example_id") == "toy-1") & (pl.col("choice") == 0))["loglik"][0]
    assert got == pytest.approx(want, abs=1e-4)

    # qfair study --dry-run: the group is the kind's (its option selects it), rows from the kind's estimate
    study = tmp_path / "study.toml"
    study.write_text(f'quant = ["bnb-nf4"]\n[[models]]\nid = "{model}"\nlabel = "tiny"\n'
                     f'[[tasks]]\nname = "toy"\ntoy_lines = "{lines}"\ntoy_max = 3\n')
    r = _qfair(env, "study", str(study), "--out", str(tmp_path / "st"), "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    expected = sum(len(tok(t)["input_ids"]) - 1 for ln in LINES[:3] for t in (ln, " ".join(reversed(ln.split()))))
    dump_lines = [ln for ln in r.stdout.split("analyses (base vs spec)")[0].splitlines() if "tiny/toy/" in ln]
    assert len(dump_lines) == 2 and all(ln.split()[2] == f"{expected:,}" for ln in dump_lines), r.stdout
    assert all(ln.split()[3:5] == ["0", "B"] for ln in dump_lines), r.stdout  # no logits rows: nothing stored

    # qfair analyze: the kind's own table; qfair report: the kind's own section after the headline
    r = _qfair(env, "analyze", str(tmp_path / "base"), str(tmp_path / "q"), "--out", str(tmp_path / "a"),
               "--bootstrap", "50", "--no-progress")
    assert r.returncode == 0, r.stderr
    t = pl.read_parquet(tmp_path / "a" / "toy_margins.parquet").sort("example_id")
    margins = ch.sort("example_id", "choice").group_by("example_id", maintain_order=True).agg(
        (pl.col("loglik").first() - pl.col("loglik").last()).alias("m"))
    np.testing.assert_allclose(t["base_margin"].to_numpy(), margins["m"].to_numpy(), rtol=0, atol=1e-12)
    r = _qfair(env, "report", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "a" / "report" / "report.html").read_text()
    ids = re.findall(r"<section id='([a-z_]+)'>", html)
    assert ids[:2] == ["headline", "toy"] and "toy margins" in html and "toy-3" in html


def test_without_the_plugin_the_kind_and_its_flags_are_not_there():
    import os

    r = _qfair(dict(os.environ), "dump", "--help")
    assert r.returncode == 0 and "--toy-lines" not in r.stdout


def _table(doc: str) -> list[list[str]]:
    """The rows of extending.md's table of what goes where (header and rule left out)."""
    body = doc[doc.index("| what you add |"):].splitlines()
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in body if ln.startswith("|")]
    return rows[2:]


def test_extending_md_table_names_real_files_and_plugin_groups():
    from qfair.plugins import GROUPS

    rows = _table((ROOT / "docs" / "extending.md").read_text(encoding="utf-8"))
    assert [r[0] for r in rows] == ["quantization backend", "task", "task kind, example or bias metric", "dump kind",
                                    "report section"]
    for what, in_qfair, plugin in rows:
        for path in re.findall(r"`(qfair/[^`]+?)`", in_qfair):
            assert (ROOT / path.split()[0]).exists(), (what, path)
        groups = re.findall(r"`(qfair\.[a-z_]+)`", plugin)
        assert all(g in GROUPS for g in groups), (what, groups)
    # the dump kind row says what this module's toy kind did: one module, one registration
    kind_row = next(r for r in rows if r[0] == "dump kind")
    assert "one module" in kind_row[1] and "_PLUGINS" in kind_row[1] and "`qfair.dump_kinds`" in kind_row[2]
    from qfair.dump import kinds

    for module in kinds._PLUGINS:  # each built-in kind implemented elsewhere is one module on that list
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", __file__]))
