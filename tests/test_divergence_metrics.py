"""divergence(metrics=...): the core computes only the columns asked for. A
subset must give the very same values (bit for bit) as the full call, which
tests/test_divergence.py checks against scipy / numpy oracles, on every
instruction set and storage type, with the same invalid-row counts."""
from __future__ import annotations

import numpy as np
import pytest

import qfair
from qfair._native import core

ISAS = [i for i in ("avx512", "avx2", "baseline") if core.select_isa(i) == i]
core.select_isa("avx512")

SUBSETS = [
    ("kl_pq", "kl_qp", "js", "tv", "margin_p", "margin_q"),  # what qfair analyze reads
    ("kl_pq", "kl_qp", "tv"),  # no JS: the cheaper joint pass
    ("js",),
    ("margin_p", "maxprob_q", "argmax_p"),  # no joint pass at all
    ("entropy_p", "entropy_q"),
    (),
]


@pytest.fixture(params=ISAS)
def isa(request):
    core.select_isa(request.param)
    yield request.param
    core.select_isa("avx512")


def rows(kind: str, vocab: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Random rows, rows far apart (the exact form of the joint pass), zero
    probabilities (-inf), and invalid rows (NaN, +inf, all -inf)."""
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((12, vocab)) * 3).astype(np.float32)
    b = (a + rng.standard_normal((12, vocab)) * 0.2).astype(np.float32)
    b[1] = rng.standard_normal(vocab) * 6  # far from a[1]
    a[2, ::3] = -np.inf
    b[3, 1::4] = -np.inf
    a[4, vocab // 2] = np.nan
    b[5, 0] = np.inf
    a[6, :] = -np.inf
    if kind == "f32":
        return a, b, None
    if kind == "f16":
        return a.astype(np.float16), b.astype(np.float16), None
    bits = lambda x: (x.view(np.uint32) >> 16).astype(np.uint16)  # noqa: E731 (truncation is fine here)
    return bits(a), bits(b), "bf16"


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("vocab", [7, 4099])
def test_a_subset_equals_the_full_call(isa, kind, vocab):
    p, q, hint = rows(kind, vocab)
    targets = np.arange(p.shape[0]) % vocab
    full = qfair.divergence(p, q, targets=targets, topk=(1, 5), dtype=hint, threads=2)
    assert full.invalid_rows == 3
    for subset in SUBSETS:
        part = qfair.divergence(p, q, targets=targets, topk=(1, 5), dtype=hint, threads=2, metrics=subset)
        expected = set(subset) | {"top1_agree", "overlap_at_1", "overlap_at_5",
                                  "logprob_p", "logprob_q", "delta_p", "rank_p", "rank_q"}
        assert set(part.keys()) == expected, subset
        for name in expected:
            np.testing.assert_array_equal(part[name], full[name], err_msg=f"{subset}: {name}")
        assert (part.invalid_p, part.invalid_q, part.invalid_rows) == (full.invalid_p, full.invalid_q,
                                                                       full.invalid_rows)
        np.testing.assert_array_equal(part.valid(), full.valid())


def test_stream_passes_the_selection_on():
    p, q, _ = rows("f16", 257)
    whole = qfair.divergence(p, q, topk=(1,), metrics=("kl_pq", "tv"))
    chunks = list(qfair.stream_divergence([p[:5], p[5:]], [q[:8], q[8:]], topk=(1,), chunk_rows=3,
                                          metrics=("kl_pq", "tv")))
    for name in ("kl_pq", "tv", "top1_agree"):
        np.testing.assert_array_equal(np.concatenate([c.result[name] for c in chunks]), whole[name])
    assert all("js" not in c.result and "entropy_p" not in c.result for c in chunks)


def test_unknown_metric_names_are_refused():
    p, q, _ = rows("f32", 7)
    with pytest.raises(ValueError, match="metrics: unknown name 'kl'"):
        qfair.divergence(p, q, metrics=("kl",))
    with pytest.raises(ValueError, match="sequence of names"):
        qfair.divergence(p, q, metrics="kl_pq")
    with pytest.raises(ValueError, match="metrics: unknown metric 'overlap_at_1'"):
        core.divergence(p, q, None, [1], 1, "", ["overlap_at_1"])
    with pytest.raises(ValueError, match="unknown name"):
        next(qfair.stream_divergence(p, q, metrics=("nope",)))


def test_empty_input_keeps_the_selected_columns():
    p = np.zeros((0, 5), np.float32)
    res = qfair.divergence(p, p, topk=(1,), metrics=("js",))
    assert set(res.keys()) == {"js", "top1_agree", "overlap_at_1"}
    assert res["js"].shape == (0,)
