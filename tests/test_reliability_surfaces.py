"""Reliability of the newer surfaces (study, generation, imports, recommend,
dump) under hostile input: one test per class of failure, each written against
the mechanism that fixes the class (not only the probe's example).

Oracles: the file system itself (what exists where, byte for byte, after a
refused command), lm-eval's own results file, the definition of a
log-probability row (max <= 0, probabilities summing to 1), transformers'
own loading report, Python's csv module in strict mode.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qfair.cli import main
from qfair.dump import DumpError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: names that must never escape the output directory when they become a path component
HOSTILE_NAMES = ["..", "../x", "/abs/olute", "a/b", "a\\b", "a\x00b", ".", ".hidden", "x/../../y"]


def tree(root: Path) -> dict[str, str]:
    """Every file under root -> sha256 (the oracle of 'nothing was touched')."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(res, needle: str) -> str:
    assert res.exit_code == 1, res.output
    out = res.output.strip()
    assert len(out.splitlines()) == 1 and out.startswith("Error: "), out
    assert "Traceback" not in out
    assert needle in out, out
    return out


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------------------
# class 1: every name that becomes a path stays inside --out
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_path_component_refuses_every_escaping_name(name, tmp_path):
    from qfair.fsutil import PathError, child_path, path_component

    with pytest.raises(PathError, match="expected a plain name"):
        path_component(name, "label")
    with pytest.raises(PathError):
        child_path(tmp_path, "dumps", name)


def test_child_path_refuses_a_symlink_out_of_the_root(tmp_path):
    from qfair.fsutil import PathError, child_path

    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathError, match="outside the output directory"):
        child_path(tmp_path / "out", "link", "x")
    assert child_path(tmp_path / "out", "dumps", "m") == tmp_path / "out" / "dumps" / "m"


def _study_text(model_label=None, group=None, spec_label=None, model_id="m") -> str:
    q = json.dumps
    lines = []
    if spec_label is None:
        lines.append('quant = ["bnb-int8"]')
    else:
        lines.append(f'quant = [{{spec = "bnb-int8", label = {q(spec_label)}}}]')
    lines += ["[[models]]", f"id = {q(model_id)}"]
    if model_label is not None:
        lines.append(f"label = {q(model_label)}")
    lines += ["[[tasks]]", f"name = {q(group if group is not None else 'g')}", 'tasks = ["piqa"]']
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["model_label", "group", "spec_label"])
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_study_labels_never_write_outside_out(tmp_path, where, name):
    from qfair.study import StudyError, load_study, make_plan

    sf = tmp_path / "s.toml"
    sf.write_text(_study_text(**{where: name}), encoding="utf-8")
    out = tmp_path / "out"
    try:
        plan = make_plan(load_study(sf), out)
    except StudyError as e:  # validated: the message names the field
        fld = {"model_label": "models[0].label", "group": "tasks[0].name", "spec_label": "quant[0].label"}[where]
        assert f"field '{fld}'" in str(e)
        return
    # escaped: every path the plan will write is inside out
    root = out.resolve()
    paths = [p for d in plan.dumps for p in (d.path, d.record)] + \
        [p for a in plan.analyses for p in (a.path, a.record)]
    for p in paths:
        rp = Path(os.path.realpath(p))
        assert root in rp.parents, (name, p)
    assert name not in ("..", ".", ".hidden"), "dot names must be refused, not escaped"


def test_derived_model_label_of_dotdot_is_refused(tmp_path):
    from qfair.study import StudyError, load_study

    sf = tmp_path / "s.toml"
    sf.write_text(_study_text(model_id=".."), encoding="utf-8")
    with pytest.raises(StudyError, match=r"field 'models\[0\]\.label'"):
        load_study(sf)


# ---------------------------------------------------------------------------
# class 2: an output that resolves to an input is refused before anything is deleted
# ---------------------------------------------------------------------------

def test_check_not_input_follows_symlinks(tmp_path):
    from qfair.fsutil import PathError, check_not_input

    d = tmp_path / "ref"
    d.mkdir()
    (tmp_path / "alias").symlink_to(d)
    for out in (d, tmp_path / "alias", tmp_path):
        with pytest.raises(PathError, match="--reference"):
            check_not_input(out, {"--reference": d})
    assert check_not_input(tmp_path / "new", {"--reference": d, "--text": None}) == (tmp_path / "new").resolve()


@pytest.fixture(scope="module")
def gen_base(tmp_path_factory, tiny_model):
    """A small generation dump of the tiny Llama (the reference of the class 2 and 9 tests)."""
    root = tmp_path_factory.mktemp("gen-base")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(["The river", "A quiet town"])))
    model = tiny_model("llama")
    base = root / "base"
    res = run("dump", "--model", model, "--tasks", "gen_prompts", "--data-file", f"gen_prompts={prompts}",
              "--max-new-tokens", "3", "--no-progress", "--out", base)
    assert res.exit_code == 0, res.output
    return {"model": model, "prompts": prompts, "base": base, "root": root}


@pytest.mark.parametrize("via_symlink", [False, True])
def test_dump_out_equal_to_its_reference_is_refused(gen_base, tmp_path, via_symlink):
    base = gen_base["base"]
    before = tree(base)
    out = base
    if via_symlink:
        out = tmp_path / "alias"
        out.symlink_to(base)
    res = run("dump", "--model", gen_base["model"], "--tasks", "gen_prompts", "--data-file",
              f"gen_prompts={gen_base['prompts']}", "--max-new-tokens", "3", "--no-progress",
              "--reference", base, "--out", out, "--overwrite")
    one_line_error(res, "--reference")
    assert tree(base) == before


def test_study_out_on_an_existing_dump_is_refused(gen_base, tmp_path):
    sf = tmp_path / "s.toml"
    sf.write_text(_study_text(model_id=str(gen_base["model"])))
    before = tree(gen_base["base"])
    for extra in ([], ["--dry-run"]):
        res = run("study", sf, "--out", gen_base["base"], *extra)
        one_line_error(res, "is a qfair dump directory")
    assert tree(gen_base["base"]) == before


def test_analyze_out_holding_an_input_is_refused(gen_base, tmp_path):
    # an analysis directory that (wrongly) holds the base dump: replacing it would delete the dump
    holder = tmp_path / "an"
    holder.mkdir()
    (holder / "settings.json").write_text(json.dumps({"settings": {}}))
    shutil.copytree(gen_base["base"], holder / "base")
    before = tree(holder)
    res = run("analyze", holder / "base", holder / "base", "--out", holder, "--no-progress")
    one_line_error(res, "holds this command's BASE")
    assert tree(holder) == before


def test_recommend_out_on_the_scan_is_refused_before_reading_it(tmp_path):
    from qfair.sensitivity import SensitivityError
    from qfair.sensitivity.recommend import recommend

    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "keep.txt").write_text("x")
    for out in (scan, tmp_path):
        with pytest.raises(SensitivityError, match="SCAN_DIR"):
            recommend(scan, budget="4bits", out=out, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SensitivityError, match="not a directory"):
        recommend(scan, budget="4bits", out=tmp_path / "file", progress=False)


# ---------------------------------------------------------------------------
# class 3: options checked before any work; a dump qfair began can always be cleaned
# ---------------------------------------------------------------------------

def test_infinite_temperature_is_refused_before_any_file(gen_base, tmp_path):
    out = tmp_path / "inf"
    for t in ("inf", "nan", "1e400"):
        res = run("dump", "--model", gen_base["model"], "--tasks", "gen_prompts", "--data-file",
                  f"gen_prompts={gen_base['prompts']}", "--temperature", t, "--no-progress", "--out", out)
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        assert "temperature" in res.output
        assert not out.exists() or not any(out.iterdir())


def test_writer_refuses_a_manifest_json_cannot_hold(tmp_path):
    from test_reliability import _choices_only_writer

    for bad in (float("inf"), float("nan")):
        out = tmp_path / f"d{bad}"
        with pytest.raises(DumpError, match="not a finite number"):
            _choices_only_writer(out, info={"x": {"y": [1.0, bad]}})
        assert not out.exists()


def test_overwrite_cleans_a_dump_that_died_before_its_manifest(tmp_path):
    from test_reliability import _add_all, _choices_only_writer

    out = tmp_path / "d"
    w = _choices_only_writer(out)
    w.abort()
    (out / "manifest.json").unlink()  # as a run killed between its first file and its first manifest
    assert any(out.iterdir())
    with pytest.raises(DumpError, match="not empty"):
        _choices_only_writer(out)
    m = _add_all(_choices_only_writer(out, overwrite=True))
    assert m["status"] == "complete"
    # a directory qfair did not begin is still never deleted
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(DumpError, match="refusing to delete it"):
        _choices_only_writer(other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep"


# ---------------------------------------------------------------------------
# class 4: the study's plan and its jobs agree; "complete" is checked on disk
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_study(tmp_path_factory, tiny_model):
    from qfair.study import run_study

    root = tmp_path_factory.mktemp("study")
    sf = root / "s.toml"
    sf.write_text(f"""quant = ["bnb-int8"]
tasks = ["piqa"]
[[models]]
id = "{tiny_model('llama')}"
label = "tiny"
[dump]
limit = 2
threads = 1
[analysis]
bootstrap = 100
report = false
metrics = ["nope"]
""")
    res = run_study(sf, root / "out", log=lambda s: None)
    assert not res.failed, res.failed
    return {"file": sf, "out": root / "out", "result": res}


def test_unknown_analysis_metric_is_a_note_not_a_crash(small_study):
    res = small_study["result"]
    assert any("analysis.metrics: none of nope" in n for n in res.notes)
    assert (small_study["out"] / "results.parquet").is_file() and (small_study["out"] / "report.html").is_file()


def _job(plan, key):
    return next(d for d in plan.dumps if d.key == key)


def test_corrupted_manifest_is_redone_by_the_job_too(small_study):
    from qfair.study import load_study, make_plan, run_study

    sf, out = small_study["file"], small_study["out"]
    d = out / "dumps" / "tiny" / "tasks" / "none"
    (d / "manifest.json").write_text("{ not json")
    plan = make_plan(load_study(sf), out)
    job = _job(plan, "tiny/tasks/none")
    assert job.action == "redo"
    res = run_study(sf, out, log=lambda s: None)
    assert not res.failed, res.failed
    assert json.loads((d / "manifest.json").read_text())["status"] == "complete"


def test_complete_dump_with_a_missing_or_changed_file_is_redone(small_study):
    from qfair.study import load_study, make_plan

    sf, out = small_study["file"], small_study["out"]
    d = out / "dumps" / "tiny" / "tasks" / "bnb-int8"
    key = "tiny/tasks/bnb-int8"
    assert _job(make_plan(load_study(sf), out), key).action == "skip"
    shard = sorted((d / "logits").glob("*.npy"))[0]
    saved = shard.read_bytes()
    try:
        shard.unlink()
        job = _job(make_plan(load_study(sf), out), key)
        assert job.action == "redo" and "missing" in job.why
        # same size, other bytes: found by the digest check of --verify only (the shard's xxh3_128)
        shard.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
        assert _job(make_plan(load_study(sf), out), key).action == "skip"
        job = _job(make_plan(load_study(sf), out, verify=True), key)
        assert job.action == "redo" and "xxh3_128 differs" in job.why
    finally:
        shard.write_bytes(saved)
    assert _job(make_plan(load_study(sf), out, verify=True), key).action == "skip"


# ---------------------------------------------------------------------------
# class 5: lm-eval logs with non-finite log-likelihoods
# ---------------------------------------------------------------------------

LM_EVAL = Path(__file__).parent / "data" / "lm_eval"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", 1e30])
def test_lm_eval_nonfinite_loglik_is_refused_naming_the_document(tmp_path, value):
    d = tmp_path / "run"
    shutil.copytree(LM_EVAL / "fp32", d)
    f = next(d.glob("samples_qfair_piqa_*.jsonl"))
    lines = f.read_text().splitlines()
    s = json.loads(lines[2])
    s["filtered_resps"][1][0] = value
    lines[2] = json.dumps(s)
    f.write_text("\n".join(lines) + "\n")
    res = run("import", "lm-eval", d, "--out", tmp_path / "o")
    one_line_error(res, f"doc {s['doc_id']}, choice 1")
    assert not (tmp_path / "o").exists()


def test_lm_eval_accuracy_is_checked_against_the_results_file(tmp_path):
    """The logged per-document acc agrees with the log-likelihoods, but the
    results file says another mean: the import must not print its own number."""
    d = tmp_path / "run"
    shutil.copytree(LM_EVAL / "fp32", d)
    rf = next(d.glob("results_*.json"))
    r = json.loads(rf.read_text())
    r["results"]["qfair_piqa"]["acc,none"] = 0.333
    rf.write_text(json.dumps(r))
    one_line_error(run("import", "lm-eval", d, "--out", tmp_path / "o"), "results_*.json says 0.333")


# ---------------------------------------------------------------------------
# class 6: .kld rows that cannot be log-probabilities
# ---------------------------------------------------------------------------

def _kld(tmp_path, patch):
    from qfair.llamacpp import KldHeader, encode_rows, write_kld

    rng = np.random.default_rng(0)
    n_ctx, vocab, n_chunk = 16, 40, 2
    h = KldHeader(n_ctx, vocab, n_chunk)
    tokens = rng.integers(0, vocab, n_ctx * n_chunk)
    chunks = [encode_rows(rng.normal(0, 3, (h.rows_per_chunk, vocab)).astype(np.float32)) for _ in range(n_chunk)]
    patch(chunks)
    p = tmp_path / "base.kld"
    write_kld(p, h, tokens, iter(chunks))
    return p, h


def _set_header(rows, r, scale=None, lo=None):
    hdr = rows[r, :4].view("<f4").copy()
    if scale is not None:
        hdr[0] = scale
    if lo is not None:
        hdr[1] = lo
    rows[r, :4] = hdr.view("<u2")


@pytest.mark.parametrize("what, patch, needle", [
    ("min_log_prob 1e30", lambda c: _set_header(c[1], 3, lo=1e30), "largest log-probability"),
    ("max above 0", lambda c: _set_header(c[1], 3, lo=0.5), "largest log-probability"),
    ("mass far below 1", lambda c: _set_header(c[1], 3, lo=-40.0), "sum to"),
    ("scale blown up", lambda c: _set_header(c[1], 3, scale=1.0, lo=-70000.0), "sum to"),
])
def test_kld_rows_that_are_not_log_probabilities_are_refused(tmp_path, what, patch, needle):
    from qfair.llamacpp import KldError, KldReader

    p, h = _kld(tmp_path, patch)
    with pytest.raises(KldError, match=needle) as e, KldReader(p) as r:
        for _ in r.chunks():
            pass
    assert f"chunk 1, row {h.rows_per_chunk + 3}" in str(e.value)
    res = run("import", "llamacpp", p, "--out", tmp_path / "o", "--no-progress")
    one_line_error(res, "chunk 1, row")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_kld_rows_llama_cpp_writes_pass_the_check(tmp_path):
    """encode_rows follows llama.cpp's encoder: wide, narrow and one-hot rows all pass."""
    from qfair.llamacpp import KldReader

    def patch(c):
        from qfair.llamacpp import encode_rows

        v = 40
        wide = np.full(v, -200.0, np.float32)
        wide[0] = 50.0
        c[0][:2] = encode_rows(np.stack([wide, np.zeros(v, np.float32)]))

    p, _ = _kld(tmp_path, patch)
    with KldReader(p) as r:
        assert sum(1 for _ in r.chunks()) == 2


# ---------------------------------------------------------------------------
# class 7: --scorer hf:PATH only for a trained classifier
# ---------------------------------------------------------------------------

def test_scorer_refuses_a_model_without_a_trained_head(tiny_model, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from qfair.generation.scorer import ScorerError, TextScorer

    causal = tiny_model("llama")
    with pytest.raises(ScorerError, match="not in the checkpoint"):
        _ = TextScorer(str(causal)).labels
    # the same body with a saved classification head loads and scores
    cfg = LlamaConfig.from_pretrained(causal)
    cfg.num_labels = 2
    cfg.pad_token_id = 0
    clf = LlamaForSequenceClassification(cfg)
    clf.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(causal).save_pretrained(tmp_path / "clf")
    s = TextScorer(str(tmp_path / "clf"))
    assert len(s.labels) == 2
    p = s.probabilities(["a text", "another"])
    assert p.shape == (2, 2) and np.allclose(p.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------
# class 8: malformed CSV is refused, naming the line
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, line", [
    ('prompt\nfirst\n"unterminated\nsecond\nthird\n', 3),
    ('prompt\nfirst\n"closed"then text\n', 3),
])
def test_malformed_generation_csv_is_refused_naming_the_line(tmp_path, body, line):
    import qfair.tasks as T

    f = tmp_path / "p.csv"
    f.write_text(body)
    with pytest.raises(T.TaskError, match=f"line {line}"):
        list(T.get("gen_prompts", data_file=f).docs())


def test_quoted_newlines_in_csv_still_read(tmp_path):
    import qfair.tasks as T

    f = tmp_path / "p.csv"
    f.write_text('prompt\n"two\nlines"\nplain\n')
    docs = list(T.get("gen_prompts", data_file=f).docs())
    assert [d.context for d in docs] == ["two\nlines", "plain"]


# ---------------------------------------------------------------------------
# class 9: the tokenizer fingerprint records BOS / EOS adding
# ---------------------------------------------------------------------------

def test_reference_with_other_bos_behaviour_is_refused(gen_base, tmp_path):
    from qfair.dump.reader import open_dump

    fp = open_dump(gen_base["base"]).tokenizer_fingerprint
    assert fp.get("adds_bos") is True
    nobos = tmp_path / "nobos"
    shutil.copytree(gen_base["model"], nobos)
    # same vocabulary, but no BOS put in front of a text (the tokenizer's post-processor)
    tj = json.loads((nobos / "tokenizer.json").read_text())
    tj["post_processor"] = {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
                            "special_tokens": {}}
    (nobos / "tokenizer.json").write_text(json.dumps(tj))
    from transformers import AutoTokenizer

    from qfair.scoring import special_tokens_added

    assert special_tokens_added(AutoTokenizer.from_pretrained(nobos)) == {"adds_bos": False, "adds_eos": False}
    res = run("dump", "--model", nobos, "--tasks", "gen_prompts", "--data-file",
              f"gen_prompts={gen_base['prompts']}", "--max-new-tokens", "3", "--no-progress",
              "--reference", gen_base["base"], "--out", tmp_path / "q")
    one_line_error(res, "tokenizer fingerprint field 'adds_bos'")


# ---------------------------------------------------------------------------
# class 10: one line instead of a traceback
# ---------------------------------------------------------------------------

def test_symlink_loop_out_is_one_line(tmp_path, tiny_model):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    sf = tmp_path / "s.toml"
    sf.write_text(_study_text(model_id=str(tiny_model("llama"))))
    for args in (["study", sf, "--out", loop / "x"], ["study", sf, "--out", loop, "--dry-run"],
                 ["dump", "--tasks", "piqa", "--out", loop / "x"],
                 ["sensitivity", "--quant", "bnb-nf4", "--out", loop / "x"],
                 ["recommend", tmp_path, "--budget", "4bits", "--out", loop / "x"]):
        res = run(*args)
        assert res.exit_code == 1 and "Traceback" not in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert "symbolic link loop" in res.output or "Too many levels of symbolic links" in res.output, res.output


def test_recommend_huge_budget_is_one_line(tmp_path):
    from qfair.sensitivity import SensitivityError
    from qfair.sensitivity.recommend import parse_budget

    for b in ("1e400", "1e400bits", "1e300MB"):
        with pytest.raises(SensitivityError, match="too large"):
            parse_budget(b, unit_params=1000, outside_bytes=10)


def test_slurm_without_slurm_is_one_line_and_writes_nothing(tmp_path, tiny_model, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    sf = tmp_path / "s.toml"
    sf.write_text(_study_text(model_id=str(tiny_model("llama"))))
    res = run("study", sf, "--out", tmp_path / "out", "--executor", "slurm")
    one_line_error(res, "no Slurm on this machine")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# class 11: the dry run refuses what the run would refuse
# ---------------------------------------------------------------------------

GEN_GROUP = '[[tasks]]\nname = "gen"\ntasks = ["gen_prompts"]\n'


@pytest.mark.parametrize("extra, needle", [
    (GEN_GROUP + "temperature = 0.5\ntop_p = 2.0\n", "tasks[0].top_p"),
    (GEN_GROUP + "temperature = inf\n", "tasks[0].temperature"),
    (GEN_GROUP + "temperature = -1.0\n", "tasks[0].temperature"),
    (GEN_GROUP + "max_new_tokens = 1099511627776\n", "tasks[0].max_new_tokens"),
    (GEN_GROUP + "samples = 3\n", "tasks[0].samples"),
    ('tasks = ["piqa"]\n[dump]\nthreads = 100000\n', "dump.threads"),
    ('tasks = ["piqa"]\n[analysis]\nthreads = 100000\n', "analysis.threads"),
    ('tasks = ["piqa"]\n[analysis]\nbins = "abc"\n', "analysis.bins"),
    ('tasks = ["piqa"]\n[analysis]\nbins = {nope = 3}\n', "analysis.bins"),
    ('tasks = ["piqa"]\n[dump]\nseed = -1\n', "dump.seed"),
])
def test_dry_run_refuses_what_the_run_refuses(tmp_path, tiny_model, extra, needle):
    sf = tmp_path / "s.toml"
    head = f'quant = ["bnb-int8"]\n[[models]]\nid = "{tiny_model("llama")}"\n'
    # top-level keys must come before the first table
    top, _, rest = ("\n" + extra).partition("\n[")
    sf.write_text(top + "\n" + head + "[" + rest)
    for flag in (["--dry-run"], []):
        res = run("study", sf, "--out", tmp_path / "out", *flag)
        one_line_error(res, f"field '{needle}'")
    assert not (tmp_path / "out").exists()


def test_dry_run_refuses_an_out_that_is_a_file(tmp_path, tiny_model):
    sf = tmp_path / "s.toml"
    (tmp_path / "f").write_text("x")
    sf.write_text(f'out = "{tmp_path / "f"}"\n' + _study_text(model_id=str(tiny_model("llama"))))
    for flag in (["--dry-run"], []):
        one_line_error(run("study", sf, *flag), "not a directory")
    assert (tmp_path / "f").read_text() == "x"


def test_sensitivity_checks_out_before_loading(tmp_path):
    # --out holding one of the scan's inputs (a data file), with a model that does not exist: the out
    # check must come first
    out = tmp_path / "out"
    out.mkdir()
    (out / "piqa.jsonl").write_text("{}\n")
    res = run("sensitivity", "--quant", "bnb-nf4", "--model", tmp_path / "no-such-model", "--tasks", "piqa",
              "--data-file", f"piqa={out / 'piqa.jsonl'}", "--out", out, "--overwrite")
    one_line_error(res, "--data-file piqa")
    assert (out / "piqa.jsonl").read_text() == "{}\n"


# ---------------------------------------------------------------------------
# smaller: an import offers only the options it has
# ---------------------------------------------------------------------------

def test_import_onto_existing_out_does_not_suggest_resume(tmp_path):
    p, _ = _kld(tmp_path, lambda c: None)
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("x")
    msg = one_line_error(run("import", "llamacpp", p, "--out", out, "--no-progress"), "--overwrite")
    assert "--resume" not in msg
    res = run("import", "lm-eval", LM_EVAL / "fp32", "--out", out)
    assert "--resume" not in one_line_error(res, "--overwrite")


def test_import_out_holding_its_input_is_refused(tmp_path):
    """--overwrite onto a dump directory that holds the logs being imported: refused before deleting."""
    from test_reliability import _add_all, _choices_only_writer

    d = tmp_path / "d"
    _add_all(_choices_only_writer(d))
    shutil.copytree(LM_EVAL / "fp32", d / "logs")
    before = tree(d)
    one_line_error(run("import", "lm-eval", d / "logs", "--out", d, "--overwrite"), "holds this command's PATH")
    assert tree(d) == before
    p, _ = _kld(tmp_path, lambda c: None)
    shutil.copy(p, d / "base.kld")
    before = tree(d)
    one_line_error(run("import", "llamacpp", d / "base.kld", "--out", d, "--overwrite", "--no-progress"),
                   "holds this command's FILE")
    assert tree(d) == before


def test_nul_in_study_paths_is_refused_naming_the_field(tmp_path):
    """Found by the fuzzer: a NUL in `out` or a model path raised ValueError from the OS layer."""
    from qfair.study import StudyError, load_study, make_plan

    sf = tmp_path / "s.toml"
    sf.write_text('out = "a\\u0000b"\n' + _study_text())
    with pytest.raises(StudyError, match="field 'out'.*NUL"):
        load_study(sf)
    sf.write_text(_study_text(model_id="m\x00x"))
    with pytest.raises(StudyError, match=r"field 'models\[0\]\.id'.*NUL"):
        load_study(sf)
    sf.write_text(_study_text())
    with pytest.raises(StudyError, match="NUL"):
        make_plan(load_study(sf), "o\x00ut")


def test_tilde_of_an_unknown_user_is_a_plain_name(tmp_path):
    """Found by the fuzzer: `out = "~0"` raised pathlib's RuntimeError (no such user)."""
    from qfair.study import load_study, make_plan

    sf = tmp_path / "s.toml"
    sf.write_text('out = "~nosuchuser0"\n' + _study_text(model_id="~nosuchuser1/m"))
    st = load_study(sf)
    assert st.out == (tmp_path / "~nosuchuser0").resolve()
    assert st.models[0].id == "~nosuchuser1/m"
    make_plan(st, tmp_path / "~nosuchuser2")
    one_line_error(run("dump", "--model", "~nosuchuser3", "--tasks", "piqa", "--limit", "1", "--out",
                       tmp_path / "d"), "model not found")


def test_library_generation_dump_onto_its_reference_is_refused(gen_base):
    """The library path (run_generation_dump), not only the CLI: the writer knows its inputs."""
    import qfair.tasks as T
    from qfair.generation.decode import DecodeSettings
    from qfair.generation.producer import run_generation_dump
    from qfair.models import load_model

    base = gen_base["base"]
    before = tree(base)
    loaded = load_model(str(gen_base["model"]), progress=False)
    with pytest.raises(DumpError, match="--reference"):
        run_generation_dump(base, loaded, [T.get("gen_prompts", data_file=gen_base["prompts"])],
                            settings=DecodeSettings(max_new_tokens=3), reference=base, overwrite=True,
                            progress=False)
    assert tree(base) == before
