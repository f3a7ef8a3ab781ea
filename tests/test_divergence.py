"""The C++ distribution core against the oracles named in docs/metrics.md.

Oracles run in float64 on the very values the core reads (float16 / bfloat16
inputs are widened exactly), so any difference is the core's own error.

Tolerances. The core forms every element term in float32 (unit roundoff
6e-8), with exp/log polynomials accurate to ~2 ulp, and sums rows in double.
KL and JS are computed in forms whose terms are all non-negative, so their
error is relative, a few 1e-7 at worst: we allow rtol 5e-6. Entropy and TV
are sums of non-negative terms too: rtol 2e-6 plus atol 1e-7 (entropies reach
ln 128256 = 11.8). Target log-probs are x[y] minus the row's log-normaliser,
whose sum of float32 exponentials carries a relative error of a few 1e-8:
atol 2e-7 (and the same relative error for delta_p).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax, rel_entr
from scipy.stats import entropy as scipy_entropy

import qfair
from qfair._native import core

RTOL_DIV = 5e-6
ATOL_DIV = 1e-10
RTOL_H = 2e-6
ATOL_H = 1e-7

ISAS = []
for _isa in ("avx512", "avx2", "baseline"):
    if core.select_isa(_isa) == _isa:
        ISAS.append(_isa)
core.select_isa("avx512")


@pytest.fixture(params=ISAS)
def isa(request):
    core.select_isa(request.param)
    yield request.param
    core.select_isa("avx512")


# ---- helpers -------------------------------------------------------------


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even) and return the raw uint16 bits."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = 0x7FC0
    return out


def widen(x: np.ndarray, dtype: str | None) -> np.ndarray:
    """The exact float64 values the core reads."""
    if dtype == "bf16":
        return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return x.astype(np.float64)


def cast(x32: np.ndarray, kind: str) -> tuple[np.ndarray, str | None]:
    if kind == "f32":
        return x32.astype(np.float32), None
    if kind == "f16":
        return x32.astype(np.float16), None
    return to_bf16_bits(x32), "bf16"


def topk_ids(lp: np.ndarray, k: int) -> np.ndarray:
    """Top-k token ids ordered by (-value, id): numpy lexsort reference."""
    ids = np.arange(lp.shape[-1])
    order = np.lexsort((ids, -lp))  # last key is primary
    return order[:k]


def oracle(xp: np.ndarray, xq: np.ndarray, targets=None, topk=(1, 5, 10)) -> dict[str, np.ndarray]:
    lp = log_softmax(xp, axis=-1)
    lq = log_softmax(xq, axis=-1)
    p, q = np.exp(lp), np.exp(lq)
    with np.errstate(invalid="ignore"):
        js = jensenshannon(p, q, axis=-1) ** 2
    # scipy takes a square root of its sum, which is NaN when rounding makes the
    # sum of a pair of equal distributions slightly negative; the sum itself:
    m = 0.5 * (p + q)
    js_direct = 0.5 * (rel_entr(p, m).sum(-1) + rel_entr(q, m).sum(-1))
    js = np.where(np.isnan(js), js_direct, js)
    out = {
        "kl_pq": rel_entr(p, q).sum(-1),
        "kl_qp": rel_entr(q, p).sum(-1),
        "js": js,
        "tv": 0.5 * np.abs(p - q).sum(-1),
        "entropy_p": scipy_entropy(p, axis=-1),
        "entropy_q": scipy_entropy(q, axis=-1),
        "argmax_p": np.argmax(xp, axis=-1),
        "argmax_q": np.argmax(xq, axis=-1),
    }
    for side, lx in (("p", lp), ("q", lq)):
        srt = np.sort(lx, axis=-1)
        top1 = np.exp(srt[:, -1])
        top2 = np.exp(srt[:, -2]) if lx.shape[1] > 1 else np.zeros(lx.shape[0])
        out[f"maxprob_{side}"] = top1
        out[f"margin_{side}"] = top1 - top2
    out["top1_agree"] = (out["argmax_p"] == out["argmax_q"]).astype(np.float32)
    V = xp.shape[1]
    for k in topk:
        kk = min(k, V)
        out[f"overlap_at_{k}"] = np.array(
            [len(set(topk_ids(a, kk)) & set(topk_ids(b, kk))) / kk for a, b in zip(xp, xq)], dtype=np.float32
        )
    if targets is not None:
        r = np.arange(xp.shape[0])
        out["logprob_p"] = lp[r, targets]
        out["logprob_q"] = lq[r, targets]
        out["delta_p"] = q[r, targets] - p[r, targets]
        out["rank_p"] = 1 + (xp > xp[r, targets][:, None]).sum(-1)
        out["rank_q"] = 1 + (xq > xq[r, targets][:, None]).sum(-1)
    return out


def check_against_oracle(res, ref: dict[str, np.ndarray]) -> None:
    for name in ("kl_pq", "kl_qp", "js"):
        np.testing.assert_allclose(res[name], ref[name], rtol=RTOL_DIV, atol=ATOL_DIV, err_msg=name)
    for name in ("tv", "entropy_p", "entropy_q", "maxprob_p", "maxprob_q", "margin_p", "margin_q"):
        np.testing.assert_allclose(res[name], ref[name], rtol=RTOL_H, atol=ATOL_H, err_msg=name)
    for name in ("argmax_p", "argmax_q", "top1_agree"):
        np.testing.assert_array_equal(res[name], ref[name], err_msg=name)
    for name in ref:
        if name.startswith("overlap_at_"):
            np.testing.assert_array_equal(res[name], ref[name], err_msg=name)
    if "logprob_p" in ref:
        for name in ("logprob_p", "logprob_q"):
            np.testing.assert_allclose(res[name], ref[name], rtol=0, atol=2e-7, err_msg=name)
        np.testing.assert_allclose(res["delta_p"], ref["delta_p"], rtol=1e-6, atol=2e-7)
        np.testing.assert_array_equal(res["rank_p"], ref["rank_p"])
        np.testing.assert_array_equal(res["rank_q"], ref["rank_q"])


def random_pair(rng, rows, vocab, scale=3.0, noise=0.3):
    a = (rng.standard_normal((rows, vocab)) * scale).astype(np.float32)
    b = (a + rng.standard_normal((rows, vocab)) * noise).astype(np.float32)
    return a, b


# ---- oracle agreement -------------------------------------------------------


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("vocab", [1, 2, 3, 17, 32000, 49152, 128256])
def test_random_rows_match_oracles(kind, vocab):
    rng = np.random.default_rng(vocab)
    rows = 6 if vocab > 1000 else 40
    a, b = random_pair(rng, rows, vocab)
    A, hint = cast(a, kind)
    B, _ = cast(b, kind)
    targets = rng.integers(0, vocab, rows)
    res = qfair.divergence(A, B, targets=targets, dtype=hint)
    ref = oracle(widen(A, hint), widen(B, hint), targets)
    check_against_oracle(res, ref)
    assert res.invalid_rows == 0


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_every_instruction_set_matches_oracle(isa, kind):
    rng = np.random.default_rng(7)
    a, b = random_pair(rng, 8, 4099, noise=1.5)  # odd vocab: exercises the tail
    A, hint = cast(a, kind)
    B, _ = cast(b, kind)
    t = rng.integers(0, 4099, 8)
    check_against_oracle(qfair.divergence(A, B, targets=t, dtype=hint), oracle(widen(A, hint), widen(B, hint), t))


def test_torch_kl_div_agrees():
    rng = np.random.default_rng(1)
    a, b = random_pair(rng, 16, 1000, noise=1.0)
    lp = torch.log_softmax(torch.from_numpy(a).double(), -1)
    lq = torch.log_softmax(torch.from_numpy(b).double(), -1)
    # kl_div(input=log q, target=log p) = sum p (log p - log q) = KL(P || Q)
    kl = torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1).numpy()
    kl_rev = torch.nn.functional.kl_div(lp, lq, log_target=True, reduction="none").sum(-1).numpy()
    res = qfair.divergence(a, b)
    np.testing.assert_allclose(res["kl_pq"], kl, rtol=RTOL_DIV)
    np.testing.assert_allclose(res["kl_qp"], kl_rev, rtol=RTOL_DIV)


def test_nearly_identical_rows_keep_relative_precision(isa):
    """Storage-fidelity scale KLs (1e-7 nats) must not drown in rounding."""
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((8, 49152)) * 4).astype(np.float32)
    lp = log_softmax(a.astype(np.float64), axis=-1).astype(np.float32)
    stored = lp.astype(np.float16)  # the dump's f16 log-probs
    res = qfair.divergence(lp, stored)
    ref = oracle(lp.astype(np.float64), stored.astype(np.float64))
    assert np.all(ref["kl_pq"] < 1e-5)
    np.testing.assert_allclose(res["kl_pq"], ref["kl_pq"], rtol=RTOL_DIV)
    np.testing.assert_allclose(res["kl_qp"], ref["kl_qp"], rtol=RTOL_DIV)
    np.testing.assert_allclose(res["js"], ref["js"], rtol=RTOL_DIV)


@pytest.mark.parametrize("kind", ["f32", "f16"])
@pytest.mark.parametrize("most", [0.7, 1.45, 8.0])
def test_rows_far_apart_everywhere_keep_js_within_1e_6(isa, kind, most):
    """Every entry moved by 0.5 nats or more: the wide series (moves below 1.5) or
    the exact form with the JS term's log((1 + e^-|d|) / 2) polynomial in every
    lane, against float64 sums. Measured worst: 3e-7 relative (5e-7 with the
    logarithm the polynomial replaced)."""
    rng = np.random.default_rng(7)
    xp = rng.normal(0, 3, (64, 4099)).astype(np.float32)
    moved = np.sign(rng.standard_normal(xp.shape)) * rng.uniform(0.5, most, xp.shape)
    a, b = cast(xp, kind)[0], cast((xp + moved).astype(np.float32), kind)[0]
    ref = oracle(a.astype(np.float64), b.astype(np.float64))
    res = qfair.divergence(a, b, metrics=("js", "kl_pq", "kl_qp"))
    np.testing.assert_allclose(res["js"], ref["js"], rtol=1e-6)
    np.testing.assert_allclose(res["kl_pq"], ref["kl_pq"], rtol=1e-6)
    np.testing.assert_allclose(res["kl_qp"], ref["kl_qp"], rtol=1e-6)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_rows_that_switch_between_near_moderate_and_far_moves(isa, kind):
    """Runs of entries moved by little (the short series), by 0.5-1.4 nats (the
    wide one) and by 2-6 nats (the exact form), in every order, so that each block
    starts in every tier and every switch between them happens: float64 sums agree."""
    rng = np.random.default_rng(11)
    run = 256  # a multiple of every ISA's block (8 vectors)
    kinds = [0, 1, 2, 1, 0, 2, 0, 1, 1, 2, 2, 0, 2, 1, 0, 0]
    scale = {0: (0.0, 0.05), 1: (0.5, 1.4), 2: (2.0, 6.0)}
    xp = rng.normal(0, 2, (24, run * len(kinds))).astype(np.float32)
    moved = np.concatenate([np.sign(rng.standard_normal((24, run))) * rng.uniform(*scale[k], (24, run))
                            for k in kinds], axis=1)
    a, dt = cast(xp, kind)
    b, _ = cast((xp + moved).astype(np.float32), kind)
    ref = oracle(widen(a, dt), widen(b, dt))
    res = qfair.divergence(a, b, dtype=dt) if dt else qfair.divergence(a, b)
    for name in ("kl_pq", "kl_qp", "js"):
        np.testing.assert_allclose(res[name], ref[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(res["tv"], ref["tv"], rtol=RTOL_H, atol=ATOL_H)


def test_identical_rows_give_exact_zeros():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((5, 3000)).astype(np.float16)
    res = qfair.divergence(a, a.copy(), targets=np.zeros(5, dtype=np.int64))
    for name in ("kl_pq", "kl_qp", "js", "tv", "delta_p"):
        assert np.all(res[name] == 0.0), name
    assert np.all(res["top1_agree"] == 1) and np.all(res["overlap_at_10"] == 1)


def test_shift_invariance_logits_vs_logprobs():
    rng = np.random.default_rng(5)
    a, b = random_pair(rng, 4, 5000)
    res_logits = qfair.divergence(a, b)
    lp = log_softmax(a.astype(np.float64), -1).astype(np.float32)
    res_lp = qfair.divergence(lp, b)
    np.testing.assert_allclose(res_logits["kl_pq"], res_lp["kl_pq"], rtol=1e-5)


# ---- adversarial rows -----------------------------------------------------------


def adversarial_rows(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rows_p, rows_q = [], []
    flat = np.zeros(vocab, np.float32)
    peaked = np.zeros(vocab, np.float32)
    peaked[vocab // 3] = 60.0  # one-hot in float32: others underflow relative to it
    mild_peak = np.zeros(vocab, np.float32)
    mild_peak[vocab - 1] = 12.0
    ties = np.zeros(vocab, np.float32)
    ties[[2, 5, 9]] = 4.0  # exact ties: lowest id wins
    neg = np.random.default_rng(0).standard_normal(vocab).astype(np.float32)
    neg_inf = neg.copy()
    neg_inf[::3] = -np.inf  # zero probabilities
    neg_inf[1] = 5.0
    pairs = [
        (flat, flat),
        (flat, peaked),
        (peaked, flat),
        (peaked, mild_peak),
        (ties, flat),
        (ties, ties[::-1].copy()),
        (neg_inf, neg),  # P has zeros where Q has mass: KL(Q||P) = inf
        (neg, neg_inf),  # Q has zeros where P has mass: KL(P||Q) = inf
        (neg_inf, neg_inf + 0.25),
        (peaked, peaked),
    ]
    for a, b in pairs:
        rows_p.append(a)
        rows_q.append(b)
    return np.stack(rows_p), np.stack(rows_q)


@pytest.mark.parametrize("vocab", [17, 32000])
@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_adversarial_rows(isa, vocab, kind):
    a, b = adversarial_rows(vocab)
    A, hint = cast(a, kind)
    B, _ = cast(b, kind)
    targets = np.array([0, 1, vocab // 3, vocab - 1, 2, 9, 1, 1, 3, vocab // 3])
    res = qfair.divergence(A, B, targets=targets, topk=(1, 2, 5, 10), dtype=hint)
    ref = oracle(widen(A, hint), widen(B, hint), targets, topk=(1, 2, 5, 10))
    with np.errstate(invalid="ignore"):
        check_against_oracle(res, ref)
    assert np.isinf(res["kl_qp"][6]) and np.isinf(res["kl_pq"][7])
    assert res["argmax_p"][4] == 2  # ties: lowest id
    assert res.invalid_rows == 0


def test_invalid_rows_are_nan_and_counted():
    rng = np.random.default_rng(6)
    a, b = random_pair(rng, 6, 50)
    a[1, 3] = np.nan
    b[2, 7] = np.inf
    a[3, :] = -np.inf  # no finite entry
    b[3, :] = -np.inf
    a[4, 0] = np.inf
    t = np.arange(6)
    res = qfair.divergence(a, b, targets=t)
    assert (res.invalid_p, res.invalid_q, res.invalid_rows) == (3, 2, 4)
    bad = [1, 2, 3, 4]
    for name in ("kl_pq", "kl_qp", "js", "tv", "top1_agree", "overlap_at_5", "delta_p"):
        assert np.all(np.isnan(res[name][bad])), name
        assert np.all(np.isfinite(res[name][[0, 5]])), name
    # single-side metrics stay defined where that side is valid
    assert np.isfinite(res["entropy_q"][1]) and np.isnan(res["entropy_p"][1])
    assert res["argmax_p"][1] == -1 and res["rank_p"][1] == -1
    good = oracle(a[[0, 5]].astype(np.float64), b[[0, 5]].astype(np.float64))
    np.testing.assert_allclose(res["kl_pq"][[0, 5]], good["kl_pq"], rtol=RTOL_DIV)
    summary = res.summary()
    assert summary["invalid_rows"] == 4
    np.testing.assert_allclose(summary["kl_pq"], good["kl_pq"].mean(), rtol=RTOL_DIV)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_nan_or_inf_anywhere_makes_the_row_invalid(isa, kind):
    # NaN is caught by the normaliser pass (the top-k never takes it), +inf by
    # the max: wherever they sit -- in the scalar head that fills the top-k,
    # in a vector block, in the partial last vector.
    vocab = 4099
    rng = np.random.default_rng(17)
    a = rng.standard_normal((8, vocab)).astype(np.float32)
    for r, (col, val) in enumerate([(0, np.nan), (5, np.nan), (2000, np.nan), (vocab - 1, np.nan),
                                    (0, np.inf), (2000, np.inf), (vocab - 1, np.inf)]):
        a[r, col] = val
    A, hint = cast(a, kind)
    res = qfair.divergence(A, A, dtype=hint)
    assert (res.invalid_p, res.invalid_rows) == (7, 7)
    assert np.all(np.isnan(res["kl_pq"][:7])) and np.isfinite(res["kl_pq"][7])
    st = qfair.distribution_stats(A, dtype=hint)
    assert np.all(np.isnan(st["entropy"][:7])) and np.all(st["argmax"][:7] == -1)
    assert np.isfinite(st["entropy"][7])


def test_negative_target_means_none_and_out_of_range_raises():
    a = np.zeros((3, 10), np.float32)
    res = qfair.divergence(a, a, targets=np.array([-100, 2, 3]))
    assert np.isnan(res["logprob_p"][0]) and res["rank_p"][0] == -1
    assert res["rank_p"][1] == 1
    with pytest.raises(ValueError, match="row 2 has token id 10"):
        qfair.divergence(a, a, targets=np.array([0, 1, 10]))


def test_worker_exception_propagates_from_any_thread():
    a = np.zeros((64, 10), np.float32)
    t = np.zeros(64, np.int64)
    t[-1] = 99  # met by the last worker
    with pytest.raises(ValueError, match="row 63"):
        qfair.divergence(a, a, targets=t, threads=2)


def test_distribution_stats_matches_oracle():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((10, 777)).astype(np.float16)
    t = rng.integers(0, 777, 10)
    res = qfair.distribution_stats(a, targets=t)
    ref = oracle(a.astype(np.float64), a.astype(np.float64), t)
    np.testing.assert_allclose(res["entropy"], ref["entropy_p"], rtol=RTOL_H)
    np.testing.assert_allclose(res["maxprob"], ref["maxprob_p"], rtol=RTOL_H)
    np.testing.assert_allclose(res["margin"], ref["margin_p"], rtol=RTOL_H, atol=ATOL_H)
    np.testing.assert_array_equal(res["argmax"], ref["argmax_p"])
    np.testing.assert_allclose(res["logprob"], ref["logprob_p"], atol=2e-7)
    np.testing.assert_array_equal(res["rank"], ref["rank_p"])


@pytest.mark.parametrize("k", [1, 3, 50, 1000])
def test_topk_overlap_large_k_and_ties(k):
    rng = np.random.default_rng(k)
    # Heavy ties: small integer logits.
    a = rng.integers(-3, 3, (5, 2000)).astype(np.float32)
    b = rng.integers(-3, 3, (5, 2000)).astype(np.float32)
    res = qfair.divergence(a, b, topk=(k,))
    ref = oracle(a.astype(np.float64), b.astype(np.float64), topk=(k,))
    np.testing.assert_array_equal(res[f"overlap_at_{k}"], ref[f"overlap_at_{k}"])


def test_topk_bounds_are_checked():
    a = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        qfair.divergence(a, a, topk=(1001,))
    res = qfair.divergence(a, a, topk=(10,))  # k above the vocabulary: over min(k, V)
    assert res["overlap_at_10"][0] == 1.0


# ---- input handling: zero-copy and refusals ---------------------------------------


def test_refuses_wrong_dtype_and_layout():
    a = np.zeros((4, 8), np.float64)
    with pytest.raises(ValueError, match="float64"):
        qfair.divergence(a, a)
    b = np.zeros((4, 16), np.float32)
    with pytest.raises(ValueError, match="not contiguous"):
        qfair.divergence(b[:, ::2], b[:, ::2])
    f = np.asfortranarray(np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError):
        qfair.divergence(f, f)
    u = np.zeros((4, 8), np.uint16)
    with pytest.raises(ValueError, match="bf16"):
        qfair.divergence(u, u)
    with pytest.raises(ValueError, match="same shape"):
        qfair.divergence(np.zeros((4, 8), np.float32), np.zeros((4, 9), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        qfair.divergence(np.zeros(8, np.float32), np.zeros(8, np.float32))


def test_row_stride_larger_than_vocab_is_read_in_place():
    rng = np.random.default_rng(9)
    wide = rng.standard_normal((6, 130)).astype(np.float32)
    wide2 = rng.standard_normal((6, 130)).astype(np.float32)
    view, view2 = wide[:, :100], wide2[:, :100]
    res = qfair.divergence(view, view2)
    ref = qfair.divergence(np.ascontiguousarray(view), np.ascontiguousarray(view2))
    np.testing.assert_array_equal(res["kl_pq"], ref["kl_pq"])


def test_torch_tensors_including_bf16():
    rng = np.random.default_rng(10)
    a, b = random_pair(rng, 4, 300)
    ta, tb = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    res = qfair.divergence(ta, tb)
    ref = oracle(ta.double().numpy(), tb.double().numpy())
    np.testing.assert_allclose(res["kl_pq"], ref["kl_pq"], rtol=RTOL_DIV)
    res32 = qfair.divergence(torch.from_numpy(a), torch.from_numpy(b))
    np.testing.assert_allclose(res32["js"], oracle(a.astype(np.float64), b.astype(np.float64))["js"], rtol=RTOL_DIV)


def test_mmap_input_is_not_copied(tmp_path):
    import tracemalloc

    rows, vocab = 256, 32768  # 16 MiB of float16 per side
    rng = np.random.default_rng(11)
    for name in ("p", "q"):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((rows, vocab)).astype(np.float16))
    p = np.load(tmp_path / "p.npy", mmap_mode="r")
    q = np.load(tmp_path / "q.npy", mmap_mode="r")
    tracemalloc.start()
    res = qfair.divergence(p, q, threads=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.n_rows == rows
    # numpy reports its allocations to tracemalloc: a copy of either input
    # would show up as >= 16 MiB. The outputs are ~20 arrays of 256 values.
    assert peak < 1 << 20, peak


def test_results_identical_for_any_thread_count():
    rng = np.random.default_rng(12)
    a, b = random_pair(rng, 37, 3001, noise=1.0)
    t = rng.integers(0, 3001, 37)
    base = qfair.divergence(a, b, targets=t, threads=1)
    for threads in (2, 3, 8):
        other = qfair.divergence(a, b, targets=t, threads=threads)
        for name in base.keys():
            np.testing.assert_array_equal(base[name], other[name], err_msg=f"{name} threads={threads}")


def test_gil_is_released_during_a_long_call():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((1500, 32000)).astype(np.float16)
    done = threading.Event()

    def work():
        qfair.divergence(a, a, threads=1)
        done.set()

    worker = threading.Thread(target=work)
    ticks = 0
    worker.start()
    time.sleep(0.01)
    while not done.is_set():
        ticks += 1
        time.sleep(0)  # a pure-Python loop can only run if the core let go of the GIL
    worker.join()
    # With the GIL held for the whole call the loop could not run at all
    # between the worker's start and its end (a tick or two at the edges).
    assert ticks > 50, ticks


# ---- streaming ---------------------------------------------------------------------


def test_stream_matches_one_call_across_uneven_shards(tmp_path):
    rng = np.random.default_rng(14)
    a, b = random_pair(rng, 50, 700, noise=1.0)
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    t = rng.integers(0, 700, 50)
    p_paths = []
    for i, (s, e) in enumerate([(0, 13), (13, 40), (40, 50)]):
        path = tmp_path / f"p{i:05d}.npy"
        np.save(path, a16[s:e])
        p_paths.append(path)
    q_blocks = [b16[:25], b16[25:]]  # arrays, other boundaries
    chunks = list(qfair.stream_divergence(p_paths, q_blocks, targets=t, chunk_rows=7))
    assert chunks[0].start == 0 and chunks[-1].stop == 50
    assert all(c.stop - c.start <= 7 for c in chunks)
    assert all(c1.stop == c2.start for c1, c2 in zip(chunks, chunks[1:]))
    whole = qfair.divergence(a16, b16, targets=t)
    for name in whole.keys():
        streamed = np.concatenate([c.result[name] for c in chunks])
        np.testing.assert_array_equal(streamed, whole[name], err_msg=name)


def test_stream_rejects_row_count_mismatch():
    a = np.zeros((10, 5), np.float32)
    with pytest.raises(ValueError, match="different numbers of rows"):
        list(qfair.stream_divergence([a], [a[:7]]))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.slow
def test_stream_memory_is_bounded_by_the_chunk(tmp_path):
    rows, vocab = 2048, 32768  # 128 MiB of float16 per side
    rng = np.random.default_rng(15)
    block = rng.standard_normal((256, vocab)).astype(np.float16)
    for name in ("p", "q"):
        # Write without holding the whole array in memory.
        with open(tmp_path / f"{name}.npy", "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False,
                     "shape": (rows, vocab)}
            )
            for _ in range(rows // 256):
                fh.write(block.tobytes())
    del block
    base = _rss_bytes()
    peak = base
    n = 0
    for chunk in qfair.stream_divergence(tmp_path / "p.npy", tmp_path / "q.npy", chunk_rows=128):
        n += chunk.stop - chunk.start
        peak = max(peak, _rss_bytes())
    assert n == rows
    # Two 128 MiB files went through; a chunk is 2 x 8 MiB. Allow generous slack.
    assert peak - base < 64 << 20, (peak - base) >> 20


def test_missing_extension_gives_a_helpful_message():
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'qfair._core':\n"
        "            raise ImportError('simulated: extension not built')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import qfair\n"  # the package itself imports without the extension
        "try:\n"
        "    qfair.divergence\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "not built" in out and "pip install" in out


def test_public_names_survive_submodule_imports():
    """Importing the module behind a lazy name must not shadow the name."""
    import importlib

    importlib.import_module("qfair.core")
    qfair.stream_divergence  # noqa: B018 - triggers the lazy import path
    assert callable(qfair.divergence) and callable(qfair.stream_divergence)
    for name in qfair.__all__:
        if name != "__version__":
            getattr(qfair, name)
    assert callable(qfair.divergence) and callable(qfair.open_dump) and callable(qfair.compare)
