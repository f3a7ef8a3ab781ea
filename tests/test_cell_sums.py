"""The core's per-cell sums under multiplicities (stats.cell_sums), its one-cell dots
(stats.weighted_dots) and its row-block draw (stats.bootstrap_count_rows), against float64
numpy references: explicit loops, math.fsum, np.bincount (whose item order cell_sums keeps, so
the sums agree bit for bit) and stats.bootstrap_counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_study_measures import ace_loops, mce_loops

from qfair import stats
from qfair._native import core
from qfair.analyze.study import study_ace, study_calibration, study_mce


def loops(w, cells, n_cells, v):
    """[k + 1, m, n_cells] by explicit float64 loops."""
    m, n = w.shape
    k = v.shape[1]
    out = np.zeros((k + 1, m, n_cells))
    for r in range(m):
        for i in range(n):
            c = cells[r, i] if cells.ndim == 2 else cells[i]
            wi = float(w[r, i])
            out[0, r, c] += wi
            for t in range(k):
                out[1 + t, r, c] += wi * float(v[i, t])
    return out


def bincounts(w, cells, n_cells, v):
    """The same sums by one np.bincount per column over the flattened rows (the study's old way)."""
    m, n = w.shape
    idx = cells if cells.ndim == 2 else np.broadcast_to(cells, (m, n))
    flat = (np.arange(m)[:, None] * n_cells + idx).ravel()
    wf = w.astype(np.float64)
    with np.errstate(invalid="ignore"):   # 0 * inf is NaN on purpose in one test
        cols = [wf] + [wf * v[:, t][None, :] for t in range(v.shape[1])]
    return np.stack([np.bincount(flat, weights=c.ravel(), minlength=m * n_cells).reshape(m, n_cells)
                     for c in cols])


def _counts(rng, m, n, dtype, high=6):
    if dtype == np.float64:
        return rng.integers(0, high, (m, n)).astype(np.float64) * rng.choice([1.0, 0.5, 1.25], (m, n))
    return rng.integers(0, high, (m, n)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float64])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("per_row", [False, True])
def test_random_inputs_equal_loops_and_bincount_bits(dtype, k, per_row):
    rng = np.random.default_rng(k * 10 + per_row)
    m, n, n_cells = 7, 40, 6
    w = _counts(rng, m, n, dtype)
    cells = rng.integers(0, n_cells, (m, n) if per_row else n)
    v = rng.normal(0, 3, (n, k))
    got = stats.cell_sums(w, cells, n_cells, v)
    assert got.shape == (k + 1, m, n_cells) and got.dtype == np.float64
    np.testing.assert_allclose(got, loops(w, cells, n_cells, v), rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(got, bincounts(w, cells, n_cells, v))


def test_bootstrap_shapes_equal_bincount_bits_at_any_thread_count():
    rng = np.random.default_rng(3)
    n = 1333
    w = np.stack([stats.bootstrap_counts(n, 4, b) for b in range(64)]).astype(np.uint16)
    cells = rng.integers(0, 101, n)
    v = np.column_stack([rng.uniform(size=n), rng.integers(0, 2, n).astype(float)])
    ref = bincounts(w, cells, 101, v)
    for threads in (1, 2, 3, 7, 64, 100):
        np.testing.assert_array_equal(stats.cell_sums(w, cells, 101, v, threads=threads), ref)
    # the three count types give the same sums
    np.testing.assert_array_equal(stats.cell_sums(w.astype(np.uint32), cells, 101, v), ref)
    np.testing.assert_array_equal(stats.cell_sums(w.astype(np.float64), cells, 101, v), ref)


def test_adversarial_cells_and_counts():
    rng = np.random.default_rng(5)
    # empty cells stay exactly zero; n = 1
    w = np.array([[3], [0], [65535]], dtype=np.uint16)
    got = stats.cell_sums(w, np.array([2]), 5, np.array([[1.5, -2.0]]))
    ref = np.zeros((3, 3, 5))
    ref[0, :, 2] = [3, 0, 65535]
    ref[1, :, 2] = [4.5, 0, 65535 * 1.5]
    ref[2, :, 2] = [-6, 0, -131070]
    np.testing.assert_array_equal(got, ref)
    # all weight in one cell; counts near the uint16 limit with large values
    n = 300
    w = rng.integers(65000, 65536, (4, n)).astype(np.uint16)
    v = rng.normal(0, 1e6, (n, 3))
    got = stats.cell_sums(w, np.zeros(n, np.int64), 1, v)
    np.testing.assert_allclose(got, loops(w, np.zeros(n, np.int64), 1, v), rtol=1e-12)
    np.testing.assert_array_equal(got[0, :, 0], w.astype(np.int64).sum(axis=1).astype(float))
    np.testing.assert_array_equal(got, bincounts(w, np.zeros(n, np.int64), 1, v))
    # no rows, no items
    assert stats.cell_sums(np.zeros((0, 5), np.uint16), np.zeros(5, np.int64), 3, np.ones((5, 2))).shape == (3, 0, 3)
    np.testing.assert_array_equal(stats.cell_sums(np.zeros((2, 0), np.uint16), np.zeros(0, np.int64), 3,
                                                  np.zeros((0, 1))), np.zeros((2, 2, 3)))
    # a NaN or inf value reaches its cell even under a zero count, as in numpy (0 * inf = NaN)
    v = np.array([[np.nan], [np.inf], [1.0]])
    w = np.array([[0, 0, 2]], dtype=np.uint16)
    got = stats.cell_sums(w, np.array([0, 1, 2]), 3, v)
    np.testing.assert_array_equal(got, bincounts(w, np.array([0, 1, 2]), 3, v))
    assert np.isnan(got[1, 0, 0]) and np.isnan(got[1, 0, 1]) and got[1, 0, 2] == 2.0


def test_bad_inputs_are_refused():
    w = np.ones((2, 4), np.uint16)
    v = np.ones((4, 1))
    with pytest.raises(ValueError, match="cell 3 outside"):
        stats.cell_sums(w, np.array([0, 1, 2, 3]), 3, v)
    with pytest.raises(ValueError, match="outside"):
        stats.cell_sums(w, np.array([[0, 0, 0, 0], [0, -1, 0, 0]]), 3, v)
    with pytest.raises(ValueError, match="cells"):
        stats.cell_sums(w, np.array([0, 1, 2]), 3, v)
    with pytest.raises(ValueError, match="values"):
        stats.cell_sums(w, np.zeros(4, np.int64), 3, np.ones((3, 1)))
    with pytest.raises(ValueError, match="n_cells"):
        stats.cell_sums(w, np.zeros(4, np.int64), 0, v)
    # the binding takes no silent copies: other count types and layouts are refused
    with pytest.raises(ValueError, match="counts"):
        core.cell_sums(w.astype(np.int64), np.zeros(4, np.int64), 1, v, 1)
    with pytest.raises(ValueError, match="counts"):
        core.cell_sums(np.ones((4, 2), np.uint16).T, np.zeros(4, np.int64), 1, v, 1)
    with pytest.raises(ValueError, match="cells"):
        core.cell_sums(w, np.zeros(4, np.int32), 1, v, 1)


@pytest.mark.parametrize("n", [1, 2, 37, 511, 512, 1333, 70_000])
def test_count_rows_are_the_shared_draw(n):
    rows = 3 if n >= 1 << 16 else 9
    ref = np.stack([stats.bootstrap_counts(n, 11, b) for b in range(5, 5 + rows)])
    for dtype in (np.uint16, np.uint32):
        for threads in (1, 2, 5):
            got = stats.bootstrap_count_rows(n, 11, 5, 5 + rows, dtype, threads=threads)
            assert got.dtype == dtype and got.shape == (rows, n)
            np.testing.assert_array_equal(got, ref)
    assert stats.bootstrap_count_rows(n, 11, 5, 5).shape == (0, n)
    with pytest.raises(ValueError, match="dtype"):
        stats.bootstrap_count_rows(n, 11, 0, 1, np.int64)
    with pytest.raises(ValueError, match="n must be"):
        stats.bootstrap_count_rows(0, 11, 0, 1)


@pytest.mark.parametrize("k", [2, 4])
def test_study_estimators_read_uint16_counts_as_float_counts(k):
    rng = np.random.default_rng(k)
    n = 90
    p = rng.dirichlet(np.ones(k), n)
    p = np.round(p, 1) + 1e-3 * (np.arange(k) == 0)   # heavy ties in the confidences
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, k, n)
    w16 = stats.bootstrap_count_rows(n, 3, 0, 30, np.uint16)
    wf = w16.astype(np.float64)
    for fn in (study_ace, study_mce):
        np.testing.assert_array_equal(fn(p, y, w16), fn(p, y, wf))
        np.testing.assert_array_equal(fn(p, y, w16.astype(np.uint32)), fn(p, y, wf))
    both = study_calibration(p, y, w16, ranges=7)
    for threads in (1, 3):
        again = study_calibration(p, y, w16, ranges=7, threads=threads)
        for key in both:
            np.testing.assert_array_equal(again[key], both[key])
    np.testing.assert_array_equal(both["ace_study"], study_ace(p, y, wf, ranges=7))
    # every resample is the published loops on the expanded sample (ties included), row by row
    for b in range(0, 30, 7):
        idx = np.repeat(np.arange(n), w16[b].astype(int))
        assert both["ace_study"][b] == pytest.approx(ace_loops(p[idx], y[idx], ranges=7), abs=1e-12)
        assert both["mce_study"][b] == pytest.approx(mce_loops(p[idx], y[idx]), abs=1e-12)


@pytest.mark.parametrize("n", [1, 3, 4, 15, 16, 17, 63, 1333, 4000])
def test_weighted_dots_equal_exact_float64_sums(n):
    rng = np.random.default_rng(n)
    for dtype, high in ((np.uint16, 6), (np.uint16, 65536), (np.uint32, 1 << 20)):
        w = rng.integers(0 if high < 100 else high - 600, high, (5, n)).astype(dtype)
        v = rng.normal(0, 1e3, (n, 3))
        got = stats.weighted_dots(w, v)
        assert got.shape == (5, 3)
        ref = np.array([[math.fsum(float(w[r, i]) * v[i, t] for i in range(n)) for t in range(3)] for r in range(5)])
        np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-9)
        for threads in (1, 2, 3, 8):
            np.testing.assert_array_equal(stats.weighted_dots(w, v, threads=threads), got)


@pytest.mark.parametrize("k", [2, 5, 7])
def test_weighted_dots_of_several_columns_keep_each_columns_bits(k):
    # the core converts a row's multiplicities once for a few columns at a time: every dot must
    # still be the one column alone gives, bit for bit (n past a whole number of 16-term steps)
    rng = np.random.default_rng(k)
    n = 1001
    w = rng.integers(0, 9, (6, n)).astype(np.uint16)
    v = rng.normal(0, 1, (n, k)) * 10.0 ** rng.uniform(-6, 6, (n, k))
    got = stats.weighted_dots(w, v)
    for t in range(k):
        np.testing.assert_array_equal(got[:, t], stats.weighted_dots(w, v[:, t])[:, 0], err_msg=f"column {t}")


def test_weighted_dots_edges_and_refusals():
    assert stats.weighted_dots(np.zeros((3, 0), np.uint16), np.zeros((0, 2))).tolist() == [[0.0, 0.0]] * 3
    assert stats.weighted_dots(np.ones((3, 5), np.uint16), np.zeros((5, 0))).shape == (3, 0)
    assert stats.weighted_dots(np.ones((0, 5), np.uint32), np.ones(5)).shape == (0, 1)
    with pytest.raises(ValueError, match="values"):
        stats.weighted_dots(np.ones((2, 5), np.uint16), np.ones((4, 1)))
    with pytest.raises(ValueError, match="counts"):
        stats.weighted_dots(np.ones((2, 5)), np.ones((5, 1)))


@pytest.mark.parametrize("seed", range(4))
def test_ace_ranges_by_binary_search_equal_the_comparisons(seed):
    # the K > 2 ACE's per-row thresholds: binary searches (kept-draw weights) against the
    # [B, N, R] comparisons they replace, on tied, random and zero-heavy weights
    from qfair.analyze.study import _first_ranges

    rng = np.random.default_rng(seed)
    n, ranges = int(rng.integers(15, 200)), int(rng.integers(2, 16))
    c = np.round(rng.uniform(0.25, 1, n), int(rng.integers(1, 4)))
    w = rng.integers(0, 3 + seed, (40, n)).astype(float)
    w[0] = 0.0
    w[1, : n // 2] = 0.0
    order = np.argsort(c, kind="stable")
    cw = np.cumsum(w[:, order], axis=1)
    step = max(1, n // ranges)
    np.testing.assert_array_equal(_first_ranges(c, c[order], cw, step, ranges, True),
                                  _first_ranges(c, c[order], cw, step, ranges, False))
