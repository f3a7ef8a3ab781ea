"""qfair.dump.DumpWriter: the public writer of every dump kind.

- a choices_only dump written from plain Python lists is analyzed by
  ``qfair analyze`` (flips with McNemar, ECE, bootstrap CIs);
- rows added without a plan are cut into shards by the same rule as planned
  ones (so planned and on-the-fly dumps hold identical files), resume after
  an interruption gives the same bytes;
- bad input is refused with messages naming table and column.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

pl = pytest.importorskip("polars")

from qfair.cli import main  # noqa: E402
from qfair.dump import DumpError, DumpWriter, open_dump  # noqa: E402


def _choices_only(path, logliks, labels, *, model="m"):
    """A choices_only dump: every example has len(logliks[i]) choices."""
    n = len(labels)
    examples = {
        "example_id": [f"ex{i}" for i in range(n)], "task": ["toy"] * n, "doc_index": list(range(n)),
        "group": ["a" if i % 2 else "b" for i in range(n)], "label": labels,
        "n_choices": [len(x) for x in logliks], "context": [f"question {i}" for i in range(n)],
        "choices": [[f"c{k}" for k in range(len(x))] for x in logliks], "labels": [None] * n, "extras": [None] * n,
    }
    w = DumpWriter(path, kind="choices_only", examples=examples, vocab_size=1, tokenizer=None,
                   tasks=[{"name": "toy", "kind": "multiple_choice"}], model={"id": model}, store="none")
    for i in range(w.start, w.n_examples):
        k = len(logliks[i])
        w.add({"choices": {
            "task": ["toy"] * k, "example_id": [f"ex{i}"] * k, "doc_index": [i] * k, "choice": list(range(k)),
            "loglik": [float(x) for x in logliks[i]], "n_tokens": [1] * k, "n_chars": [2] * k, "n_bytes": [2] * k,
            "is_greedy": [False] * k, "first_row": [-1] * k, "n_rows": [0] * k}})
    return w.close()


def test_choices_only_dump_from_lists_analyzes_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    base = rng.normal(0, 2, size=(n, 3))
    labels = rng.integers(0, 3, size=n).tolist()
    quant = base + rng.normal(0, 1.5, size=(n, 3))
    m = _choices_only(tmp_path / "base", base.tolist(), labels)
    _choices_only(tmp_path / "quant", quant.tolist(), labels, model="q")
    assert m["kind"] == "choices_only" and m["status"] == "complete"
    d = open_dump(tmp_path / "base")
    assert d.kind.name == "choices_only" and not d.has_logits
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["choices.parquet", "examples.parquet",
                                                                      "manifest.json"]
    with pytest.raises(DumpError, match="no 'tokens' table"):
        _ = d.tokens

    out = tmp_path / "analysis"
    r = CliRunner().invoke(main, ["analyze", str(tmp_path / "base"), str(tmp_path / "quant"), "--out", str(out),
                                  "--bootstrap", "2000", "--no-progress"])
    assert r.exit_code == 0, r.output
    s = pl.read_parquet(out / "summary.parquet")
    metrics = set(s["metric"])
    assert {"acc", "acc_norm", "confidence", "ece", "mce", "flips", "flips_c2i", "flips_i2c"} <= metrics
    assert not (metrics & {"kl_pq", "js", "top1_agree"})  # no rows, no token statistics
    # the flips and their McNemar p, recomputed here
    bc = (np.argmax(base, 1) == labels).astype(int)
    qc = (np.argmax(quant, 1) == labels).astype(int)
    b, c = int(((bc == 1) & (qc == 0)).sum()), int(((bc == 0) & (qc == 1)).sum())
    flips = s.filter(pl.col("metric") == "flips").row(0, named=True)
    assert flips["diff"] == pytest.approx((b + c) / n)
    assert flips["p_mcnemar"] == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0)
    acc = s.filter(pl.col("metric") == "acc").row(0, named=True)
    assert acc["diff"] == pytest.approx(qc.mean() - bc.mean())
    assert acc["ci_low"] <= acc["ci_high"] and acc["test"] == "paired bootstrap"
    ece = s.filter(pl.col("metric") == "ece").row(0, named=True)
    assert ece["ci_low"] is not None and ece["p"] is not None
    assert pl.read_parquet(out / "groups.parquet")["group"].unique().sort().to_list() == ["a", "b"]


def _mc_rows(n_examples, seed=0, vocab=16):
    """Per example: (n rows, rows [n, vocab] of log-probs, tokens columns)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_examples):
        n = int(rng.integers(0, 6))
        x = rng.normal(0, 2, size=(n, vocab))
        lp = (x - np.log(np.exp(x).sum(1, keepdims=True))).astype(np.float32)
        out.append((n, lp))
    return out


def _mc_writer(path, per_ex, *, planned, vocab=16, shard_rows=7, **kw):
    n = len(per_ex)
    examples = {"example_id": [f"e{i}" for i in range(n)], "task": ["t"] * n, "doc_index": list(range(n)),
                "group": [None] * n, "label": [0] * n, "n_choices": [1] * n, "context": ["x"] * n,
                "choices": [["y"]] * n, "labels": [None] * n, "extras": [None] * n}
    return DumpWriter(path, kind="multiple_choice", examples=examples, vocab_size=vocab,
                      tokenizer={"vocab_size": vocab}, tasks=[{"name": "t", "kind": "multiple_choice"}],
                      rows_per_example=[r for r, _ in per_ex] if planned else None, shard_rows=shard_rows, **kw)


def _add_mc(w, i, n, lp):
    r0 = w.next_row
    w.add({"choices": {"task": ["t"], "example_id": [f"e{i}"], "doc_index": [i], "choice": [0],
                       "loglik": [float(lp[:, 0].sum())], "n_tokens": [n], "n_chars": [1], "n_bytes": [1],
                       "is_greedy": [False], "first_row": [r0], "n_rows": [n]},
           "tokens": {"row": list(range(r0, r0 + n)), "task": ["t"] * n, "example_id": [f"e{i}"] * n,
                      "choice": [0] * n, "pos": list(range(n)), "target": [0] * n, "logprob": lp[:, 0].tolist(),
                      "entropy": [0.0] * n, "max_logprob": lp.max(1).tolist(), "argmax": lp.argmax(1).tolist(),
                      "rank": [1] * n}}, lp)


def _files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
            and p.name != "manifest.json"}


def test_unplanned_shards_equal_planned_ones_and_resume(tmp_path):
    per_ex = _mc_rows(25)
    for planned in (True, False):
        w = _mc_writer(tmp_path / f"p{planned}", per_ex, planned=planned)
        for i, (n, lp) in enumerate(per_ex):
            _add_mc(w, i, n, lp)
        w.close()
    a, b = _files(tmp_path / "pTrue"), _files(tmp_path / "pFalse")
    assert a == b and sum(k.startswith("logits/") for k in a) > 3
    ma = json.loads((tmp_path / "pTrue" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "pFalse" / "manifest.json").read_text())
    assert ma["shards"] == mb["shards"] and ma["plan"] is not None and mb["plan"] is None
    # the stored rows are the added ones (f16), in order
    rows = np.concatenate([np.asarray(x) for x in open_dump(tmp_path / "pFalse").logit_blocks()])
    np.testing.assert_array_equal(rows, np.concatenate([lp for _, lp in per_ex]).astype(np.float16))

    # interrupted after 14 examples, then resumed: the same bytes
    w = _mc_writer(tmp_path / "r", per_ex, planned=False)
    for i, (n, lp) in enumerate(per_ex[:14]):
        _add_mc(w, i, n, lp)
    w.abort()
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["status"] == "partial"
    w = _mc_writer(tmp_path / "r", per_ex, planned=False, resume=True)
    assert 0 < w.start <= 14
    for i in range(w.start, w.n_examples):
        _add_mc(w, i, *per_ex[i])
    w.close()
    assert _files(tmp_path / "r") == b


def test_bad_input_is_refused_with_table_and_column(tmp_path):
    per_ex = _mc_rows(3)
    w = _mc_writer(tmp_path / "a", per_ex, planned=True)
    with pytest.raises(DumpError, match=r"table\(s\) bogus are not part of a 'multiple_choice' dump"):
        w.add({"bogus": {}})
    with pytest.raises(DumpError, match="table 'choices' has no column.*colour"):
        w.add({"choices": {"colour": [1]}})
    w.abort()
    with pytest.raises(DumpError, match="rows_per_example has 2 entries for 3 examples"):
        DumpWriter(tmp_path / "b", examples=_mc_writer(tmp_path / "c", per_ex, planned=True).examples,
                   vocab_size=16, tokenizer={}, tasks=[], rows_per_example=[1, 2])
    with pytest.raises(DumpError, match="stores no logits rows"):
        DumpWriter(tmp_path / "d", kind="choices_only", examples={}, vocab_size=1, tokenizer=None, tasks=[])
    with pytest.raises(DumpError, match="missing column"):
        DumpWriter(tmp_path / "e", kind="choices_only", examples={"example_id": []}, vocab_size=1,
                   tokenizer=None, tasks=[], store="none")
    with pytest.raises(DumpError, match="unknown dump kind 'novel'"):
        DumpWriter(tmp_path / "f", kind="novel", examples={}, vocab_size=1, tokenizer=None, tasks=[])
    # a dtype that does not fit the schema names table and column
    n = 2
    ex = {"example_id": ["a", "b"], "task": ["t"] * n, "doc_index": [0, 1], "group": [None] * n,
          "label": ["zero", "one"], "n_choices": [1] * n, "context": ["x"] * n, "choices": [["y"]] * n,
          "labels": [None] * n, "extras": [None] * n}
    with pytest.raises(DumpError, match="table 'examples'"):
        DumpWriter(tmp_path / "g", kind="choices_only", examples=ex, vocab_size=1, tokenizer=None, tasks=[],
                   store="none")
