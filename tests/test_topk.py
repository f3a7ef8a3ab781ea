"""Top-K storage (``--store topk:K``): the records, and the comparison built on them.

Oracles, all independent of :mod:`qfair.analyze.topk`:

- the records: a numpy lexsort of the rows rounded to the storage dtype
  (value descending, token id ascending) and a float64 log-sum-exp of the rest;
- the divergences: the coarse partition written out per row in float64 (one
  cell per id known on both sides, one cell for the rest), with scipy's
  ``rel_entr`` for KL and ``jensenshannon`` for JS; the full rows' exact
  divergences (scipy again) must never be below those bounds;
- the overlaps: the C++ core on the full stored rows (itself tested against a
  numpy top-k in test_divergence.py);
- end to end: a top-K dump whose K is the whole vocabulary must give the full
  dump's token table, and any K the same overlaps and never a larger KL.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_special = pytest.importorskip("scipy.special")
scipy_distance = pytest.importorskip("scipy.spatial.distance")

import qfair  # noqa: E402
from qfair.analyze.topk import TopkSide, topk_metrics  # noqa: E402
from qfair.dump import DumpError  # noqa: E402
from qfair.dump.writer import to_topk  # noqa: E402

RNG = np.random.default_rng(20261130)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return (x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))).astype(np.float32)


def rows(n: int, vocab: int, scale: float = 3.0, ties: bool = False) -> np.ndarray:
    x = RNG.normal(0, scale, size=(n, vocab))
    if ties:  # coarse values: many exact ties, also after rounding
        x = np.round(x * 2) / 2
    return log_softmax(x)


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """The row as a full dump stores it, widened to float32."""
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    return x


def assert_same_overlap(a, b, err_msg=""):
    """Overlaps are counts over k: the same count gives the same float32 (the core's type)."""
    np.testing.assert_array_equal(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32), err_msg=err_msg)


def oracle_records(x: np.ndarray, k: int, dtype: str):
    r = stored(x, dtype)
    ids = np.empty((len(x), k), dtype=np.int64)
    tail = np.empty(len(x))
    for i in range(len(x)):
        order = np.lexsort((np.arange(x.shape[1]), -r[i]))[:k]
        ids[i] = order
        rest = np.delete(x[i].astype(np.float64), order)
        tail[i] = np.logaddexp.reduce(rest) if rest.size else -np.inf
    return ids, tail


# ---------------------------------------------------------------------------
# the records
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_records_hold_the_stored_top_k_in_the_core_order(dtype, ties, k):
    x = rows(12, 300, ties=ties)
    rec = to_topk(x, k, dtype)
    ids, tail = oracle_records(x, k, dtype)
    np.testing.assert_array_equal(rec["id"], ids)
    got = rec["logprob"]
    if dtype == "bf16":
        got = (got.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got.astype(np.float32), np.take_along_axis(stored(x, dtype), ids, axis=1))
    np.testing.assert_allclose(rec["tail"], tail, rtol=2e-6, atol=1e-7)


def test_records_of_the_whole_vocabulary_have_no_tail_and_bad_k_is_refused():
    x = rows(3, 10)
    rec = to_topk(x, 10, "f32")
    assert np.all(np.isneginf(rec["tail"]))
    with pytest.raises(DumpError, match="topk:11"):
        to_topk(x, 11, "f32")
    with pytest.raises(DumpError, match="topk:0"):
        to_topk(x, 0, "f32")


def test_a_nan_row_gives_a_nan_record():
    x = rows(3, 50)
    x[1, 4] = np.nan
    rec = to_topk(x, 5, "f16")
    assert np.isnan(rec["tail"][1]) and np.isnan(rec["logprob"][1].astype(np.float32)).all()
    assert np.isfinite(rec["tail"][[0, 2]]).all()


# ---------------------------------------------------------------------------
# the comparison on a chunk
# ---------------------------------------------------------------------------

def oracle_partition(p: np.ndarray, q: np.ndarray, known: list[np.ndarray]) -> dict[str, np.ndarray]:
    """KL/JS/TV of full float64 distributions p, q [n, V] after merging every id
    outside ``known[i]`` into one cell."""
    out = {k: np.empty(len(p)) for k in ("kl_pq", "kl_qp", "js", "tv")}
    for i, ids in enumerate(known):
        rest = np.setdiff1d(np.arange(p.shape[1]), ids)
        pc = np.append(p[i, ids], p[i, rest].sum())
        qc = np.append(q[i, ids], q[i, rest].sum())
        out["kl_pq"][i] = scipy_special.rel_entr(pc, qc).sum()
        out["kl_qp"][i] = scipy_special.rel_entr(qc, pc).sum()
        out["js"][i] = scipy_distance.jensenshannon(pc, qc) ** 2 if not np.allclose(pc, qc) else \
            0.5 * (scipy_special.rel_entr(pc, (pc + qc) / 2).sum() + scipy_special.rel_entr(qc, (pc + qc) / 2).sum())
        out["tv"][i] = 0.5 * np.abs(pc - qc).sum()
    return out


def exact(p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    known = [np.arange(p.shape[1])] * len(p)
    return oracle_partition(p, q, known)


def probs(x: np.ndarray) -> np.ndarray:
    """A stored row as the reader re-normalises it (float64)."""
    x = x.astype(np.float64)
    return np.exp(x - np.logaddexp.reduce(x, axis=1, keepdims=True))


def record_probs(rec: np.ndarray, dtype: str, vocab: int) -> np.ndarray:
    """A top-K record as a distribution over the K ids plus one pseudo-id for the tail."""
    v = rec["logprob"]
    if dtype == "bf16":
        v = (v.astype(np.uint32) << 16).view(np.float32)
    v = v.astype(np.float64)
    allv = np.concatenate([v, rec["tail"].astype(np.float64)[:, None]], axis=1)
    return np.exp(allv - np.logaddexp.reduce(allv, axis=1, keepdims=True))


@pytest.mark.parametrize("dtype", ["f16", "f32"])
@pytest.mark.parametrize("k", [4, 32])
def test_top_k_against_full_rows_is_the_partition_bound(dtype, k):
    vocab = 257
    x_p, x_q = rows(16, vocab), rows(16, vocab)
    x_q[:8] = log_softmax(x_p[:8] + RNG.normal(0, 0.3, size=(8, vocab)))  # close pairs too
    rec = to_topk(x_p, k, dtype)
    sp = stored(x_p, dtype)
    sq = stored(x_q, dtype)
    res = topk_metrics(TopkSide(rec=rec, dtype=dtype), TopkSide(rows=x_q.astype(np.float16) if dtype == "f16"
                                                                 else x_q, dtype=dtype), (1, 2, 3, 5, 50), vocab)
    # P as the record says (K cells + tail re-normalised), Q's full row merged on the same cells
    pk = record_probs(rec, dtype, vocab)
    q = probs(sq)
    known = [rec["id"][i].astype(np.int64) for i in range(len(rec))]
    ref = {m: np.empty(len(rec)) for m in ("kl_pq", "kl_qp", "js", "tv")}
    for i, ids in enumerate(known):
        qc = np.append(q[i, ids], 1 - q[i, ids].sum())
        pc = pk[i]
        ref["kl_pq"][i] = scipy_special.rel_entr(pc, qc).sum()
        ref["kl_qp"][i] = scipy_special.rel_entr(qc, pc).sum()
        m = (pc + qc) / 2
        ref["js"][i] = 0.5 * (scipy_special.rel_entr(pc, m).sum() + scipy_special.rel_entr(qc, m).sum())
        ref["tv"][i] = 0.5 * np.abs(pc - qc).sum()
    # Q's normaliser is the core's float32 log-sum-exp: absolute errors of about 1e-7 x |log q|
    for m in ref:
        np.testing.assert_allclose(res[m], ref[m], rtol=1e-6, atol=1e-7, err_msg=m)
    # never above the exact divergence of the full rows (allow the storage rounding of P's K values)
    ex = exact(probs(sp), q)
    for m in ("kl_pq", "kl_qp", "js", "tv"):
        assert np.all(res[m] <= ex[m] * (1 + 1e-3) + 1e-6), m
    # overlaps up to K equal the core's on the full stored rows; NaN beyond
    full = qfair.divergence(sp, sq, topk=(1, 2, 3, 5)).metrics
    for kk in (1, 2, 3, 5):
        if kk <= k:
            assert_same_overlap(res[f"overlap_at_{kk}"], full[f"overlap_at_{kk}"])
    assert np.isnan(res["overlap_at_50"]).all() == (50 > k)
    np.testing.assert_allclose(res["margin_q"], full["margin_q"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kp, kq", [(8, 8), (3, 20), (40, 5)])
def test_two_top_k_sides_merge_everything_not_stored_on_both(kp, kq):
    vocab = 120
    x_p = rows(20, vocab, scale=2.0)
    x_q = log_softmax(x_p + RNG.normal(0, 0.8, size=x_p.shape))
    rp, rq = to_topk(x_p, kp, "f32"), to_topk(x_q, kq, "f32")
    res = topk_metrics(TopkSide(rec=rp, dtype="f32"), TopkSide(rec=rq, dtype="f32"), (1, 3, 10), vocab)
    p, q = probs(x_p), probs(x_q)
    shared = [np.intersect1d(rp["id"][i], rq["id"][i]) for i in range(len(rp))]
    ref = oracle_partition(p, q, shared)
    for m in ref:
        np.testing.assert_allclose(res[m], ref[m], rtol=1e-5, atol=1e-9, err_msg=m)
    ex = exact(p, q)
    for m in ref:
        assert np.all(res[m] <= ex[m] + 1e-9), m
    full = qfair.divergence(x_p, x_q, topk=(1, 3, 10)).metrics
    for kk in (1, 3, 10):
        if kk <= min(kp, kq):
            assert_same_overlap(res[f"overlap_at_{kk}"], full[f"overlap_at_{kk}"])
        else:
            assert np.isnan(res[f"overlap_at_{kk}"]).all()


def test_swapped_sides_swap_the_directed_metrics():
    vocab = 64
    x_p, x_q = rows(6, vocab), rows(6, vocab)
    rq = to_topk(x_q, 10, "f32")
    a = topk_metrics(TopkSide(rows=x_p, dtype="f32"), TopkSide(rec=rq, dtype="f32"), (1,), vocab)
    b = topk_metrics(TopkSide(rec=rq, dtype="f32"), TopkSide(rows=x_p, dtype="f32"), (1,), vocab)
    np.testing.assert_array_equal(a["kl_pq"], b["kl_qp"])
    np.testing.assert_array_equal(a["margin_p"], b["margin_q"])
    np.testing.assert_array_equal(a["js"], b["js"])


def test_invalid_rows_are_flagged_not_averaged():
    vocab = 50
    x_p, x_q = rows(4, vocab), rows(4, vocab)
    x_p[2, 0] = np.nan
    x_q[3, :] = -np.inf
    rp = to_topk(x_p, 5, "f32")
    res = topk_metrics(TopkSide(rec=rp, dtype="f32"), TopkSide(rows=x_q, dtype="f32"), (1,), vocab)
    assert res["_invalid_p"].tolist() == [False, False, True, False]
    assert res["_invalid_q"].tolist() == [False, False, False, True]
    assert np.isnan(res["kl_pq"][[2, 3]]).all() and np.isfinite(res["kl_pq"][[0, 1]]).all()


def test_a_token_outside_q_support_gives_infinite_kl():
    vocab = 30
    x_p = rows(1, vocab)
    x_q = x_p.copy()
    top = int(np.argmax(x_p[0]))
    x_q[0, top] = -np.inf
    x_q = log_softmax(np.where(np.isinf(x_q), -1e30, x_q))
    x_q[0, top] = -np.inf
    res = topk_metrics(TopkSide(rec=to_topk(x_p, 3, "f32"), dtype="f32"), TopkSide(rows=x_q, dtype="f32"),
                       (1,), vocab)
    assert np.isposinf(res["kl_pq"][0]) and np.isfinite(res["kl_qp"][0])


# ---------------------------------------------------------------------------
# end to end: dumps and qfair.compare
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    from test_dump_support import load_tiny, write_mc_file

    import qfair.tasks as T
    from qfair.dump.run import run_dump
    from qfair.models.tiny import TOKENIZER_VOCAB_SIZE, make_tiny_model

    root = tmp_path_factory.mktemp("topk")
    torch.set_num_threads(1)
    mc = write_mc_file(root / "mc.jsonl", 12, seed=5)
    out = {"vocab": TOKENIZER_VOCAB_SIZE}
    for name, seed in (("base", 1), ("other", 2)):
        loaded = load_tiny(make_tiny_model("llama", root / f"m{seed}", seed=seed))
        for store in ("full", "topk:16", f"topk:{TOKENIZER_VOCAB_SIZE}"):
            d = root / f"{name}-{store.replace(':', '')}"
            run_dump(d, loaded, [T.get("mc", data_file=mc)], store=store, shard_rows=25, progress=False,
                     config={"model": name})
            out[(name, store)] = d
    return out


def _tokens(a, b):
    return qfair.compare(a, b, bootstrap=20, uncertainty=False, topk=(1, 5, 10, 20)).tokens


def test_top_k_of_the_whole_vocabulary_gives_the_full_comparison(dumps):
    v = dumps["vocab"]
    ex = _tokens(dumps[("base", "full")], dumps[("other", "full")])
    for pair in ((f"topk:{v}", "full"), ("full", f"topk:{v}"), (f"topk:{v}", f"topk:{v}")):
        t = _tokens(dumps[("base", pair[0])], dumps[("other", pair[1])])
        assert t.height == ex.height
        for c in ("kl_pq", "kl_qp", "js", "tv", "overlap_at_1", "overlap_at_5", "overlap_at_10", "margin_p",
                  "margin_q", "logprob_p", "logprob_q"):
            np.testing.assert_allclose(t[c].to_numpy(), ex[c].to_numpy(), rtol=2e-4, atol=1e-6, err_msg=f"{pair} {c}")


def test_top_k_dumps_are_small_lower_bounds_with_exact_overlaps(dumps):
    ex = _tokens(dumps[("base", "full")], dumps[("other", "full")])
    for pair in (("topk:16", "full"), ("full", "topk:16"), ("topk:16", "topk:16")):
        t = _tokens(dumps[("base", pair[0])], dumps[("other", pair[1])])
        for c in ("kl_pq", "kl_qp", "js", "tv"):
            assert np.all(t[c].to_numpy() <= ex[c].to_numpy() * (1 + 1e-3) + 1e-6), f"{pair} {c}"
            assert np.mean(t[c].to_numpy()) > 0
        for c in ("overlap_at_1", "overlap_at_5", "overlap_at_10"):
            assert_same_overlap(t[c].to_numpy(), ex[c].to_numpy(), err_msg=f"{pair} {c}")
        assert np.isnan(t["overlap_at_20"].to_numpy()).all()
    size = {s: sum(f.stat().st_size for f in (dumps[("base", s)] / "logits").iterdir()) for s in ("full", "topk:16")}
    # 16 x (2 + 4) + 4 bytes per row instead of 512 x 2 (plus .npy headers)
    assert size["topk:16"] < size["full"] / 8
    m = qfair.open_dump(dumps[("base", "topk:16")]).manifest
    assert m["storage"]["mode"] == "topk" and m["storage"]["k"] == 16
