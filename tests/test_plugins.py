"""Plugins by entry point: a package that is not qfair registers a quantization
backend, a task, a task kind with its own metric and a dump kind, and qfair
sees them in `qfair quant-specs`, `qfair tasks`, a dump and its analysis.

The plugin is a real distribution: a module and a ``.dist-info`` directory
(METADATA + entry_points.txt) on ``PYTHONPATH``, found by importlib.metadata
exactly as an installed package is; every check runs in a fresh interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
"""A toy qfair plugin: one of everything."""
import numpy as np

from qfair.dump.kinds import DumpKind, register_kind
from qfair.metrics.example_metrics import ExampleMetric
from qfair.metrics.task_kinds import TaskKind, register_task_kind
from qfair.models.backends import register_backend
from qfair.models.backends.base import QuantBackend, SpecDef
from qfair.tasks import formats
from qfair.tasks.registry import TaskSpec, register_task

SAMPLE = {sample!r}


@register_backend
class ToyBackend(QuantBackend):
    name = "toy"
    specs = (SpecDef("toy-none", "a plugin's spec: full precision under another name"),)


def register_kinds():
    def first_choice_prob(a):
        # probability of choice 0 under the model, normalised over the choices
        return np.asarray(a.p[a.starts], dtype=np.float64)

    register_task_kind(TaskKind("toy_kind", metrics=(ExampleMetric("toy_p0", "toy_p0", first_choice_prob,
                                                                   direction=0),),
                                headline=("acc", "toy_p0")))


def register_tasks():
    register_task(TaskSpec("toy_mc", "A plugin's task: generic multiple choice rows of its own.", "toy_kind",
                           "toy-plugin/toy_mc@1", formats.generic_mc, "context, choices, label",
                           sample=SAMPLE))


register_kind(DumpKind("toy_rows", tables=("choices",), stores_rows=False, doc="a plugin's dump kind"))
'''

ENTRY_POINTS = """
[qfair.backends]
toy = qfair_toy_plugin

[qfair.metrics]
toy = qfair_toy_plugin:register_kinds

[qfair.tasks]
toy = qfair_toy_plugin:register_tasks

[qfair.dump_kinds]
toy = qfair_toy_plugin
"""


def _install(root: Path, plugin: str, entry_points: str, name: str = "qfair_toy_plugin") -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(plugin)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _qfair(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qfair", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    sample = root / "toy_mc.jsonl"
    rows = [{"id": f"toy-{i}", "context": f"Question: {i} plus one is?\nAnswer:",
             "choices": [str(i + 1), str(i + 2), str(i + 5)], "label": 0} for i in range(6)]
    sample.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _install(root / "site", textwrap.dedent(PLUGIN.format(sample=str(sample))), ENTRY_POINTS)


def test_the_plugin_is_seen_by_every_registry(plugin_env):
    r = _qfair(plugin_env, "quant-specs")
    assert r.returncode == 0 and "toy-none" in r.stdout, r.stdout + r.stderr
    r = _qfair(plugin_env, "tasks")
    assert r.returncode == 0 and "toy_mc" in r.stdout, r.stdout + r.stderr
    code = ("from qfair.dump.kinds import get_kind; from qfair.metrics.task_kinds import get_task_kind; "
            "from qfair.plugins import plugin_names; print(get_kind('toy_rows').doc, "
            "[m.name for m in get_task_kind('toy_kind').metrics], plugin_names('qfair.metrics'))")
    r = subprocess.run([sys.executable, "-c", code], env=plugin_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["a", "plugin's", "dump", "kind", "['toy_p0']", "['toy']"]


def test_without_the_plugin_none_of_it_exists(tmp_path):
    env = dict(os.environ)
    r = _qfair(env, "tasks")
    assert r.returncode == 0 and "toy_mc" not in r.stdout
    r = _qfair(env, "quant-specs")
    assert "toy-none" not in r.stdout


def test_a_dump_and_its_analysis_use_the_plugins_task_spec_and_metric(plugin_env, tiny_model, tmp_path):
    model = tiny_model("llama", 0)
    for name, spec in (("base", "none"), ("toy", "toy-none")):
        r = _qfair(plugin_env, "dump", "--model", str(model), "--tasks", "toy_mc", "--quant", spec,
                   "--out", str(tmp_path / name), "--no-progress")
        assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "toy" / "manifest.json").read_text())
    assert [t["name"] for t in m["tasks"]] == ["toy_mc"] and m["tasks"][0]["kind"] == "toy_kind"
    assert "toy-none" in json.dumps(m["model"])
    r = _qfair(plugin_env, "analyze", str(tmp_path / "base"), str(tmp_path / "toy"), "--out", str(tmp_path / "a"),
               "--bootstrap", "50", "--no-progress", "--print", "rows")
    assert r.returncode == 0, r.stderr
    import polars as pl

    s = pl.read_parquet(tmp_path / "a" / "summary.parquet")
    row = s.filter(pl.col("metric") == "toy_p0")
    assert row.height == 1 and row["task_kind"][0] == "toy_kind"
    # toy_p0 recomputed independently from the stored choice log-likelihoods (the same model: no change)
    ch = pl.read_parquet(tmp_path / "base" / "choices.parquet")
    import numpy as np

    p0 = [np.exp(g["loglik"][0]) / np.exp(g["loglik"]).sum()
          for _, g in ch.sort("choice").group_by("example_id", maintain_order=True)]
    assert row["base"][0] == pytest.approx(np.mean(p0), rel=1e-9) and row["diff"][0] == pytest.approx(0.0, abs=1e-12)


def test_a_broken_plugin_is_one_line_naming_it(tmp_path):
    env = _install(tmp_path / "site", "raise RuntimeError('the toy is broken')\n",
                   "[qfair.tasks]\nbroken = qfair_broken_plugin\n", name="qfair_broken_plugin")
    r = _qfair(env, "tasks")
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "plugin 'broken' (qfair.tasks = qfair_broken_plugin) failed to load: RuntimeError: the toy is broken" \
        in lines[0]
