"""`qfair demo` end to end (reduced: a tiny random Llama, three tasks, --limit 3),
the report generated from it, and the checks of the issue: every figure file
exists and is non-trivial, the HTML references only embedded images and
in-page anchors. One slow-marked run on the embedded SmolLM2."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

TASKS = ("piqa", "truthfulqa_mc2", "crows_pairs_english")
GOLD = ("piqa", "truthfulqa_mc2")  # tasks whose kind has gold answers
QUANTS = ("bnb-int8", "bnb-nf4")
LIMIT = 3


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from qfair.models.tiny import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama", seed=3)


@pytest.fixture(scope="module")
def demo_run(tiny_model, tmp_path_factory):
    from qfair.cli import main

    out = tmp_path_factory.mktemp("demo") / "run"
    res = CliRunner().invoke(main, ["demo", "--model", str(tiny_model), "--quant", ",".join(QUANTS),
                                    "--tasks", ",".join(TASKS), "--limit", str(LIMIT), "--bootstrap", "400",
                                    "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, res.stdout


# ---------------------------------------------------------------------------
# the run


def test_demo_writes_dumps_analysis_and_report(demo_run):
    out, output = demo_run
    for label in ("base", *QUANTS):
        m = json.loads((out / "dumps" / label / "manifest.json").read_text())
        assert m["status"] == "complete"
        assert [t["name"] for t in m["tasks"]] == list(TASKS)
        assert all(t["n_examples"] == LIMIT for t in m["tasks"])
        assert m["model"]["quantization"]["name"] == ("none" if label == "base" else label)
    for t in ("summary", "examples", "tokens", "calibration", "strata", "groups"):
        assert (out / "analysis" / f"{t}.parquet").is_file()
        assert (out / "analysis" / f"{t}.csv").is_file()
    assert (out / "analysis" / "summary.tex").is_file()  # as qfair analyze writes it
    prov = json.loads((out / "analysis" / "provenance.json").read_text())
    assert list(prov["dumps"]) == ["base", *QUANTS]
    assert all("manifest" in d for d in prov["dumps"].values())
    html = out / "report" / "report.html"
    assert html.is_file()
    # the CLI ends with the path of report.html and prints the compact summary
    assert output.rstrip().splitlines()[-1] == f"report: {html.resolve()}"
    for q in QUANTS:
        assert f"base vs {q}" in output
    assert "Δ [95% CI]" in output and "pct_stereotype" in output and "likelihood_diff" in output
    # fits a 110-column terminal (the path lines aside)
    assert max(len(line) for line in output.splitlines()
               if not line.startswith(("report:", "tables:", "generation report:"))) <= 110
    assert "[1/5]" not in output  # step messages go to stderr


def test_demo_generation_part(demo_run):
    from qfair.demo import GEN_MAX_NEW_TOKENS, GEN_PROMPTS

    out, output = demo_run
    gen = out / "generation"
    for label in ("base", *QUANTS):
        m = json.loads((gen / "dumps" / label / "manifest.json").read_text())
        assert m["kind"] == "generation" and m["status"] == "complete"
        assert m["generation"]["settings"]["max_new_tokens"] == GEN_MAX_NEW_TOKENS
        assert m["counts"]["examples"] == len(GEN_PROMPTS)
        ref = m["generation"]["reference"]
        assert (ref is None) if label == "base" else (Path(ref["path"]) == gen / "dumps" / "base")
    assert (gen / "analysis" / "gen_summary.parquet").is_file()
    assert (gen / "report" / "report.html").is_file()
    for q in QUANTS:
        assert f"generation, base vs {q}:" in output
    assert f"generation report: {(gen / 'report' / 'report.html').resolve()}" in output


def _acc_from_dump(dump: Path) -> dict[str, np.ndarray]:
    """Independent oracle: correctness per example from choices.parquet (argmax of
    the summed log-likelihoods, first index on ties, against examples.label)."""
    ex = pl.read_parquet(dump / "examples.parquet")
    ch = pl.read_parquet(dump / "choices.parquet")
    out: dict[str, list[float]] = {}
    for r in ex.iter_rows(named=True):
        ll = ch.filter(pl.col("example_id") == r["example_id"]).sort("choice")["loglik"].to_numpy()
        out.setdefault(r["task"], []).append(float(int(np.argmax(ll)) == r["label"]))
    return {k: np.array(v) for k, v in out.items()}


def test_terminal_summary_numbers_match_the_dumps(demo_run):
    from qfair.report.text import headline_rows

    out, output = demo_run
    summary = pl.read_parquet(out / "analysis" / "summary.parquet")
    rows = headline_rows(summary, list(QUANTS))
    want = [(q, t, m) for q in QUANTS for t, ms in (("piqa", ["acc"]), ("truthfulqa_mc2", ["mc2", "acc"]),
                                                    ("crows_pairs_english", ["pct_stereotype", "likelihood_diff"]))
            for m in ms]
    assert [(r["model"], r["task"], r["metric"]) for r in rows] == want
    base = _acc_from_dump(out / "dumps" / "base")
    for r in rows:
        if r["metric"] != "acc":
            continue
        quant = _acc_from_dump(out / "dumps" / r["model"])
        b, q = base[r["task"]], quant[r["task"]]
        assert r["n"] == LIMIT
        assert r["base"] == pytest.approx(b.mean())
        assert r["quant"] == pytest.approx(q.mean())
        assert r["diff"] == pytest.approx(q.mean() - b.mean())
        if r["first"]:
            assert r["c2i"] == int(((b == 1) & (q == 0)).sum())
            assert r["i2c"] == int(((b == 0) & (q == 1)).sum())
            line = next(line for line in output.splitlines() if line.startswith(r["task"][:18]))
            assert f"{r['base']:.3f}→" in line
    # every tested row of the demo's summary: interval excludes 0 <=> p < 0.05
    from qfair.analyze.intervals import agrees

    tested = summary.filter(pl.col("p").is_not_null())
    assert tested.height > 50
    assert all(agrees(r["ci_low"], r["ci_high"], r["p"], 0.95, r["null"]) for r in tested.iter_rows(named=True))


def test_demo_resumes_in_its_output_directory(demo_run, tiny_model, tmp_path):
    """A second run reuses complete dumps without loading the model; an interrupted dump is
    finished from its last complete shard; a dump made with other settings is redone."""
    from qfair.demo import existing_dump, run_demo

    out = tmp_path / "again"
    shutil.copytree(demo_run[0] / "dumps", out / "dumps")
    int8 = out / "dumps" / "bnb-int8"
    m = json.loads((int8 / "manifest.json").read_text())
    # make the int8 dump look interrupted after its first shard
    assert len(m["shards"]) >= 1
    m["status"] = "partial"
    m["shards"] = m["shards"][:0]
    (int8 / "manifest.json").write_text(json.dumps(m))
    kw = dict(model=tiny_model, quant=QUANTS, tasks=TASKS, limit=LIMIT, bootstrap=200, progress=False,
              generation=False)
    assert existing_dump(out / "dumps" / "base", model=tiny_model, quant="none", tasks=TASKS, limit=LIMIT,
                         seed=0) == "complete"
    assert existing_dump(int8, model=tiny_model, quant="bnb-int8", tasks=TASKS, limit=LIMIT, seed=0) == "partial"
    assert existing_dump(int8, model=tiny_model, quant="bnb-int8", tasks=TASKS, limit=LIMIT + 1, seed=0) == "other"
    before = (out / "dumps" / "base" / "manifest.json").read_bytes()
    log: list[str] = []
    r = run_demo(out, log=log.append, **kw)
    assert any(line.startswith("[1/5] reuse") for line in log), log
    assert any(line.startswith("[2/5] resume") for line in log), log
    assert any(line.startswith("[3/5] reuse") for line in log), log
    assert r.seconds["dump base"] == 0.0
    assert (out / "dumps" / "base" / "manifest.json").read_bytes() == before   # untouched
    assert json.loads((int8 / "manifest.json").read_text())["status"] == "complete"
    # the finished dump holds the same tables as the uninterrupted one
    for t in ("examples", "choices", "tokens"):
        a = pl.read_parquet(int8 / f"{t}.parquet")
        b = pl.read_parquet(demo_run[0] / "dumps" / "bnb-int8" / f"{t}.parquet")
        assert a.equals(b), t
    # other settings (a different limit): redone, not reused
    log.clear()
    run_demo(out, log=log.append, **{**kw, "limit": LIMIT - 1, "quant": ("bnb-nf4",)})
    assert any(line.startswith("[1/4] redo") for line in log), log


# ---------------------------------------------------------------------------
# the report's files


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k == "id":
                self.ids.add(v)
            if k in ("src", "href", "srcset", "data", "poster", "action", "formaction", "xlink:href"):
                self.refs.append((tag, k, v or ""))


def test_every_figure_exists_and_is_not_trivial(demo_run):
    import matplotlib.image as mpimg

    out, _ = demo_run
    rep = out / "report"
    expected = {f"reliability_{t}" for t in GOLD} | {"token_kl_cdf", "confidence_strata", "uncertainty_tests",
                                                      "accuracy", "flips", "groups_crows_pairs_english"}
    pngs = {p.stem: p for p in rep.glob("*.png")}
    assert expected <= set(pngs), sorted(expected - set(pngs))
    assert "reliability_crows_pairs_english" not in pngs  # no gold answers: no reliability diagram
    for name, p in pngs.items():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert p.stat().st_size > 15_000, name
        img = mpimg.imread(p)
        assert img.shape[0] >= 300 and img.shape[1] >= 400, name
        rgb = img[..., :3].reshape(-1, 3)
        # drawn content: many distinct colours, and a real share of non-white pixels
        packed = (rgb * 255).astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
        assert np.unique(packed).size > 50, name
        assert (rgb.min(axis=1) < 0.9).mean() > 0.02, name


def test_html_embeds_every_image_and_links_only_anchors(demo_run):
    out, _ = demo_run
    rep = out / "report"
    text = (rep / "report.html").read_text(encoding="utf-8")
    p = _Refs()
    p.feed(text)
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert "url(" not in text and "@import" not in text
    imgs = [v for tag, k, v in p.refs if tag == "img"]
    embedded = set()
    for tag, k, v in p.refs:
        if k == "href":
            assert v.startswith("#") and v[1:] in p.ids, (tag, v)
        else:
            assert tag == "img" and k == "src" and v.startswith("data:image/png;base64,"), (tag, k, v[:60])
            embedded.add(base64.b64decode(v.split(",", 1)[1], validate=True))
    # every PNG on disk is in the page, byte for byte, and nothing else is
    on_disk = {q.read_bytes() for q in rep.glob("*.png")}
    assert embedded == on_disk
    assert len(imgs) == len(on_disk)
    for section in ("headline", "calibration", "tokens", "strata", "accuracy", "groups", "summary", "provenance"):
        assert section in p.ids
    # provenance: models, quantization configs, library versions, seeds
    for needle in ("BitsAndBytesConfig", "bnb_4bit_quant_type", "transformers", "bitsandbytes", "LlamaForCausalLM",
                   "&quot;seed&quot;", "p_holm"):
        assert needle in text, needle


def test_figures_have_titles_labels_and_legends(demo_run):
    """Every drawn axes has x/y labels; every figure has a title and a legend."""
    import matplotlib.pyplot as plt

    from qfair.report.data import load_analysis
    from qfair.report.figures import FIGURE_FUNCS

    data = load_analysis(demo_run[0] / "analysis")
    n = 0
    for fn in FIGURE_FUNCS:
        for f in fn(data):
            n += 1
            titles = [a.get_title() for a in f.fig.axes] + [f.fig._suptitle.get_text() if f.fig._suptitle else ""]
            assert any(t.strip() for t in titles), f.name
            assert any(a.get_legend() is not None for a in f.fig.axes) or f.fig.legends, f.name
            for a in f.fig.axes:
                # a panel sharing an axis with a labelled panel (stacked / side by side) counts as labelled
                xl = any(s.get_xlabel().strip() for s in a.get_shared_x_axes().get_siblings(a))
                yl = any(s.get_ylabel().strip() for s in a.get_shared_y_axes().get_siblings(a))
                assert xl and yl, (f.name, a.get_title())
            plt.close(f.fig)
    assert n >= len(TASKS) + 5


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_chromium_renders_the_report(demo_run, tmp_path):
    """Headless Chromium loads the page with no console error and every image
    decoded (scripts/check_report_chromium.py)."""
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report_chromium.py"
    r = subprocess.run([sys.executable, str(script), str(demo_run[0] / "report" / "report.html")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------
# choosing the variants


def test_unavailable_backend_is_skipped_with_a_message(monkeypatch):
    import qfair.models.quant as Q
    from qfair.demo import plan_quants

    real = Q.spec_availability

    def fake(name, **kw):
        if name == "bnb-int8":
            return False, "needs bitsandbytes: pip install 'bitsandbytes>=0.46'"
        return real(name, **kw)

    monkeypatch.setattr(Q, "spec_availability", fake)
    ok, skipped = plan_quants("bnb-int8,bnb-nf4")
    assert ok == ["bnb-nf4"]
    assert "bitsandbytes" in skipped["bnb-int8"]


def test_no_available_variant_fails_before_loading_a_model(monkeypatch, tmp_path):
    import qfair.models.quant as Q
    from qfair.cli import main

    monkeypatch.setattr(Q, "spec_availability", lambda name, **kw: (False, f"{name} needs a GPU here"))
    res = CliRunner().invoke(main, ["demo", "--quant", "bnb-nf4", "--out", str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code != 0
    assert "no requested quantization is available" in res.output and "bnb-nf4 needs a GPU here" in res.output
    assert not (tmp_path / "d" / "dumps").exists()


@pytest.mark.parametrize("args, needle", [
    (["--quant", "bnb-int9"], "bnb-int9"),
    (["--quant", "none"], "not a quantization"),
    (["--tasks", "piqa,nosuchtask"], "nosuchtask"),
    (["--tasks", "xstorycloze_ar"], "no built-in sample"),
])
def test_bad_arguments_give_one_line_errors(args, needle, tmp_path, monkeypatch):
    import dataclasses

    from qfair.cli import main
    from qfair.tasks import registry

    # every built-in task ships a sample now: take xstorycloze_ar's away
    monkeypatch.setitem(registry.SPECS, "xstorycloze_ar", dataclasses.replace(registry.SPECS["xstorycloze_ar"], sample=None))

    res = CliRunner().invoke(main, ["demo", *args, "--out", str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 1, res.output
    err = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(err) == 1 and needle in err[0]


# ---------------------------------------------------------------------------
# the real thing, reduced


@pytest.mark.slow
def test_demo_on_embedded_smollm2(tmp_path):
    """The default model (GGUF float conversion cached once), one quantized variant,
    two tasks, two examples each."""
    from qfair.demo import run_demo

    r = run_demo(tmp_path / "demo", quant=("bnb-nf4",), tasks=("piqa", "crows_pairs_english"), limit=2,
                 bootstrap=200, progress=False, log=lambda m: None)
    m = json.loads((r.base / "manifest.json").read_text())
    assert m["model"]["model"]["gguf_file"] and m["vocab_size"] >= 49152
    assert list(r.quants) == ["bnb-nf4"]
    # the quantized load starts from the same cached float conversion as the base
    mq = json.loads((r.quants["bnb-nf4"] / "manifest.json").read_text())
    assert m["model"]["model"]["float_cache"] and mq["model"]["model"]["float_cache"] == m["model"]["model"]["float_cache"]
    tok = pl.read_parquet(r.analysis / "tokens.parquet")
    assert tok["kl_pq"].mean() > 1e-3  # NF4 moves a 135M model's distributions visibly
    assert r.report.is_file() and len(r.figures) >= 6


def test_missing_dependency_is_named_before_any_work(monkeypatch, tmp_path):
    import importlib.util

    from qfair.demo import DemoError, run_demo

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(DemoError, match=r"needs matplotlib: pip install 'qfair\[all\]'"):
        run_demo(tmp_path / "d", progress=False, log=lambda m: None)
    assert not (tmp_path / "d").exists()
