"""The numpy statistics on the C++ resample draw (qfair.metrics.resampling)
against scipy: spearmanr, bootstrap, permutation_test, ttest_rel, t.sf."""
from __future__ import annotations

import math

import numpy as np
import pytest
import rng_streams
from scipy import stats as sps

from qfair import stats
from qfair.metrics import resampling as R


def _pairs(seed: int, n: int, ties: bool):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 0.5 * x + rng.normal(size=n)
    if ties:
        x = np.round(x, 0)
        y = np.round(y * 2, 0) / 2
    return x, y


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_and_ranks_against_scipy(ties):
    x, y = _pairs(0, 57, ties)
    assert R.spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, abs=1e-13)
    np.testing.assert_allclose(R.rank_average(y), sps.rankdata(y, method="average"))
    assert math.isnan(R.spearman(np.ones(9), y[:9]))       # constant: undefined, as scipy
    assert math.isnan(R.spearman(x[:1], y[:1]))


@pytest.mark.parametrize("ties", [False, True])
def test_every_bootstrap_resample_is_spearman_of_the_expanded_resample(ties):
    x, y = _pairs(1, 40, ties)
    d = R.spearman_bootstrap(x, y, seed=7, resamples=60)
    two = R.spearman_bootstrap(x, np.stack([y, -y]), seed=7, resamples=60)
    np.testing.assert_array_equal(two[0], d)
    for b in range(60):
        c = stats.bootstrap_counts(40, 7, b)
        ref = sps.spearmanr(np.repeat(x, c), np.repeat(y, c)).statistic
        assert d[b] == pytest.approx(ref, abs=1e-12) or (math.isnan(d[b]) and math.isnan(ref))
        assert two[1][b] == pytest.approx(-d[b], abs=1e-12) or math.isnan(d[b])


def test_cluster_bootstrap_repeats_whole_clusters():
    rng = np.random.default_rng(2)
    clusters = np.repeat(np.arange(15), rng.integers(1, 6, 15))
    x = rng.normal(size=clusters.size)
    y = x + rng.normal(size=clusters.size)
    d = R.spearman_bootstrap(x, y, seed=3, resamples=30, clusters=clusters, n_clusters=15)
    for b in range(30):
        c = stats.bootstrap_counts(15, 3, b)
        w = c[clusters]
        assert d[b] == pytest.approx(sps.spearmanr(np.repeat(x, w), np.repeat(y, w)).statistic, abs=1e-12)


def test_spearman_percentile_interval_against_scipy_bootstrap():
    x, y = _pairs(4, 120, False)
    d = R.spearman_bootstrap(x, y, seed=0, resamples=4000)
    ref = sps.bootstrap((x, y), lambda a, b: sps.spearmanr(a, b).statistic, paired=True, vectorized=False,
                        n_resamples=4000, method="percentile", random_state=0).confidence_interval
    se = np.nanstd(d)
    assert np.quantile(d, 0.025) == pytest.approx(ref.low, abs=0.15 * se)
    assert np.quantile(d, 0.975) == pytest.approx(ref.high, abs=0.15 * se)


def _scipy_perm_spearman(x, y, n_resamples, seed=0):
    # one sample permuted against the other: n! pairings (exact when they fit in n_resamples)
    return sps.permutation_test((x,), lambda a: sps.spearmanr(a, y).statistic, permutation_type="pairings",
                                n_resamples=n_resamples, random_state=seed).pvalue


def test_spearman_permutation_exact_equals_scipy():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    y = np.array([1.0, 2.0, 2.0, 5.0, 4.0, 0.5])
    p = R.spearman_permutation(x, y, seed=0, resamples=10_000)       # 6! = 720 <= 10,000: exact
    assert p == pytest.approx(_scipy_perm_spearman(x, y, 10_000), abs=1e-12)


def test_spearman_permutation_random_within_monte_carlo_error():
    x, y = _pairs(5, 35, True)
    y = y * 0.3 + np.random.default_rng(9).normal(size=35)
    p = R.spearman_permutation(x, y, seed=1, resamples=20_000)
    ref = _scipy_perm_spearman(x, y, 20_000)
    assert p == pytest.approx(ref, abs=4 * math.sqrt(ref * (1 - ref) / 20_000) + 1e-3)


@pytest.mark.parametrize("n", [6, 35])
def test_spearman_permutations_of_several_shifts_are_each_p_alone(n):
    """The batch (one set of pairings for every y) gives each y's p exactly as one call
    for it, with a constant y (undefined: NaN) and a tied one among them; on 6 items
    (exact) each equals scipy."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    ys = [rng.normal(size=n), np.full(n, 2.0), np.round(x + rng.normal(size=n)), -x]
    R.clear_draw_cache()
    batch = R.spearman_permutations(x, ys, seed=4, resamples=2_000)
    R.clear_draw_cache()
    alone = [R.spearman_permutation(x, y, seed=4, resamples=2_000) for y in ys]
    assert math.isnan(batch[1]) and math.isnan(alone[1])
    assert [batch[i] for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]
    assert R.spearman_permutations(x, ys, seed=4, resamples=2_000)[2] == batch[2]   # remembered: the same
    if n == 6:
        for i in (0, 2, 3):
            assert batch[i] == pytest.approx(_scipy_perm_spearman(x, ys[i], 2_000), abs=1e-12)


@pytest.mark.parametrize("na,nb,exact", [(4, 5, True), (25, 30, False)])
def test_two_sample_permutation_against_scipy(na, nb, exact):
    rng = np.random.default_rng(na)
    a, b = rng.normal(0.4, 1, na), rng.normal(0, 1, nb)
    p = R.mean_diff_permutation(a, b, seed=2, resamples=20_000)
    ref = sps.permutation_test((a, b), lambda u, v: np.mean(u) - np.mean(v), permutation_type="independent",
                               n_resamples=20_000, random_state=0).pvalue
    tol = 1e-12 if exact else 4 * math.sqrt(ref * (1 - ref) / 20_000) + 1e-3
    assert p == pytest.approx(ref, abs=tol)


@pytest.mark.filterwarnings("ignore:Precision loss")
@pytest.mark.parametrize("case", ["normal", "skewed", "tiny", "constant_diff", "zero_diff", "huge_t"])
def test_ttest_rel_against_scipy(case):
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = {"normal": x + rng.normal(0.2, 1, 30), "skewed": x + rng.exponential(1.0, 30) - 0.8,
         "tiny": None, "constant_diff": x + 0.5, "zero_diff": x.copy(), "huge_t": x + 5 + rng.normal(0, 1e-3, 30)}[case]
    if case == "tiny":
        x, y = np.array([1.0, 2.0]), np.array([1.5, 2.7])
    t, p = R.ttest_rel(x, y)
    ref = sps.ttest_rel(x, y)
    if math.isnan(ref.pvalue):
        assert math.isnan(p)
    else:
        assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        assert t == pytest.approx(ref.statistic, rel=1e-12)


def test_student_t_sf_against_scipy():
    for df in (1, 2, 3.5, 10, 29, 200, 5000):
        for t in (-40.0, -3.0, -0.5, 0.0, 0.3, 1.96, 4.0, 12.0, 80.0):
            assert R.student_t_sf(t, df) == pytest.approx(sps.t.sf(t, df), rel=1e-9, abs=1e-300), (t, df)


def test_weighted_sums_are_the_count_matrix_product():
    v = np.random.default_rng(0).normal(size=(23, 3))
    s = R.weighted_sums(v, seed=5, resamples=50)
    for b in (0, 17, 49):
        np.testing.assert_allclose(s[b], stats.bootstrap_counts(23, 5, b) @ v, rtol=1e-12)
    # the cached and the streamed draw agree
    big = R.weighted_sums(v[:, 0], seed=5, resamples=50)
    np.testing.assert_allclose(big[:, 0], s[:, 0], rtol=1e-12)


def test_kept_draw_is_the_core_draw_extended_and_streamed_beyond_the_budget(monkeypatch):
    R.clear_draw_cache()
    n, seed = 31, 9
    first = np.concatenate(list(R.count_blocks(n, seed, 40)))
    longer = np.concatenate(list(R.count_blocks(n, seed, 130, width=n * 7)))   # extends the kept 40 rows
    ref = np.stack([stats.bootstrap_counts(n, seed, b) for b in range(130)]).astype(np.float64)
    np.testing.assert_array_equal(longer, ref)
    np.testing.assert_array_equal(first, ref[:40])
    assert R._cache[(n, seed)].dtype == np.uint16 and R._cache[(n, seed)].shape == (130, n)
    # a draw over the byte budget is not kept but streamed: the same counts
    monkeypatch.setattr(R, "CACHE_BYTES", n * 2 * 10)
    R.clear_draw_cache()
    streamed = np.concatenate(list(R.count_blocks(n, seed, 130)))
    np.testing.assert_array_equal(streamed, ref)
    assert (n, seed) not in R._cache
    R.clear_draw_cache()


def test_remembered_results_equal_a_fresh_computation():
    x, y = _pairs(11, 300, True)
    R.clear_draw_cache()
    p1 = R.spearman_permutation(x, y, seed=2, resamples=500)
    d1 = R.spearman_bootstrap(x, np.stack([y, y ** 3]), seed=2, resamples=80)
    s1 = R.weighted_sums(np.column_stack([x, y]), seed=2, resamples=80)
    s1[:] = 0.0                                   # the caller's copy: the remembered sums stay intact
    m1 = R.mean_diff_permutation(x[:100], y[:200], seed=2, resamples=500)
    # a monotone transform of x ranks the pairs identically: the same test, answered from memory
    assert R.spearman_permutation(np.exp(x), y, seed=2, resamples=500) == p1
    np.testing.assert_array_equal(R.spearman_bootstrap(2 * x + 1, np.stack([y, y ** 3]), seed=2, resamples=80), d1)
    again = R.weighted_sums(np.column_stack([x, y]), seed=2, resamples=80)
    R.clear_draw_cache()
    np.testing.assert_array_equal(again, R.weighted_sums(np.column_stack([x, y]), seed=2, resamples=80))
    assert R.spearman_permutation(x, y, seed=2, resamples=500) == p1
    assert R.mean_diff_permutation(x[:100], y[:200], seed=2, resamples=500) == m1
    np.testing.assert_array_equal(R.spearman_bootstrap(x, np.stack([y, y ** 3]), seed=2, resamples=80), d1)
    # other inputs, another seed, other resamples: not confused with the remembered ones
    assert not np.array_equal(R.spearman_bootstrap(x, np.stack([y, y ** 3]), seed=3, resamples=80), d1)
    assert R.weighted_sums(np.column_stack([x, y]), seed=2, resamples=81).shape == (81, 2)


def test_remembered_results_stay_within_their_byte_budget(monkeypatch):
    R.clear_draw_cache()
    monkeypatch.setattr(R, "MEMO_BYTES", 3 * 80 * 8)        # three results of 80 resamples
    x, y = _pairs(13, 50, False)
    first = R.spearman_bootstrap(x, y, seed=1, resamples=80)
    for s in range(2, 6):
        R.spearman_bootstrap(x, y, seed=s, resamples=80)
    assert len(R._memo) == 3 and sum(v.nbytes for v in R._memo.values()) <= 3 * 80 * 8
    # the oldest went first; asked again, it is computed again, equal
    np.testing.assert_array_equal(R.spearman_bootstrap(x, y, seed=1, resamples=80), first)
    R.clear_draw_cache()


# ---------------------------------------------------------------------------
# the core's weighted Spearman on adversarial multiplicities
# ---------------------------------------------------------------------------

def _expanded(x, y, w):
    import warnings

    w = np.asarray(w, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.ConstantInputWarning)  # NaN is the expected answer there
        return sps.spearmanr(np.repeat(x, w), np.repeat(y, w)).statistic if w.sum() > 1 else math.nan


def _core_rho(x, ys, counts, clusters=None):
    from qfair._native import core

    xo, xe = R._order_and_ends(np.asarray(x, dtype=np.float64))
    ranked = [R._order_and_ends(np.asarray(v, dtype=np.float64)) for v in ys]
    return core.weighted_spearman(np.ascontiguousarray(counts, dtype=np.float64),
                                  None if clusters is None else np.asarray(clusters, dtype=np.int64), xo, xe,
                                  np.stack([o for o, _ in ranked]), np.stack([e for _, e in ranked]), 0)


@pytest.mark.parametrize("seed", range(4))
def test_weighted_spearman_on_adversarial_weights_equals_scipy_on_the_expanded_sample(seed):
    rng = np.random.default_rng(seed)
    n = 30
    x = np.round(rng.normal(size=n), 1 if seed % 2 else 3)          # with and without many ties
    y = np.where(rng.random(n) < 0.3, 0.0, x + rng.normal(size=n))  # a heavy tie at 0
    counts = np.stack([
        rng.integers(0, 4, n),                         # zeros: items left out
        np.eye(n, dtype=np.int64)[3] * 7,              # one item only: constant, NaN
        np.r_[np.full(n - 2, 0), 5, 9],                # two items
        np.full(n, 1),                                 # the sample itself
        rng.integers(0, 2, n) * 1000,                  # large multiplicities
        np.zeros(n, dtype=np.int64),                   # nothing drawn: NaN
    ])
    got = _core_rho(x, [y, -y, np.full(n, 2.0)], counts)
    for r, w in enumerate(counts):
        ref = _expanded(x, y, w)
        assert got[0, r] == pytest.approx(ref, abs=1e-12) or (math.isnan(got[0, r]) and math.isnan(ref)), r
        assert got[1, r] == pytest.approx(-ref, abs=1e-12) or (math.isnan(got[1, r]) and math.isnan(ref)), r
    assert np.isnan(got[2]).all()  # a constant y: undefined, as scipy


def test_weighted_spearman_large_sample_and_thread_invariance():
    from qfair._native import core

    rng = np.random.default_rng(9)
    n_cl = 400
    clusters = np.repeat(np.arange(n_cl), rng.integers(1, 12, n_cl))
    x = rng.normal(size=clusters.size).round(2)
    y = 0.1 * x + rng.normal(size=clusters.size)
    counts = np.stack([stats.bootstrap_counts(n_cl, 5, b) for b in range(16)]).astype(np.float64)
    xo, xe = R._order_and_ends(x)
    yo, ye = R._order_and_ends(y)
    runs = [core.weighted_spearman(counts, clusters.astype(np.int64), xo, xe, yo[None], ye[None], t)
            for t in (1, 2, 3, 7)]
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])
    for b in (0, 7, 15):
        assert runs[0][0, b] == pytest.approx(_expanded(x, y, counts[b].astype(np.int64)[clusters]), abs=1e-12)


def test_weighted_spearman_reads_the_kept_integer_counts_as_float_counts():
    # the kept draw's uint16 rows (and uint32 rows beyond the budget) give the float64 counts' bits
    from qfair._native import core

    x, y = _pairs(4, 120, True)
    xo, xe = R._order_and_ends(x)
    yo, ye = (a[None] for a in R._order_and_ends(y))
    clusters = np.random.default_rng(1).integers(0, 40, 120)
    for cl, n_draw in ((None, 120), (clusters, 40)):
        c16 = stats.bootstrap_count_rows(n_draw, 3, 0, 50, np.uint16)
        ref = core.weighted_spearman(c16.astype(np.float64), cl, xo, xe, yo, ye, 1)
        for c in (c16, c16.astype(np.uint32)):
            for threads in (1, 3):
                np.testing.assert_array_equal(core.weighted_spearman(c, cl, xo, xe, yo, ye, threads), ref)


def _scalar_walk_rho(c, clusters, xo, xe, yo, ye):
    """rho of one resample by the core's documented walk, in Python floats (IEEE doubles, no
    fused multiply-add): weights summed in item order, each variable's tie groups visited in
    sorted order, mid = before + 0.5 (group weight + 1), sums accumulated in sorted order."""
    w = [float(c[u]) for u in (clusters if clusters is not None else range(len(c)))]
    tot = 0.0
    for v in w:
        tot += v
    centre = 0.5 * (tot + 1.0)
    tiny = 1e-9 * tot * centre * centre

    def mids(order, end):
        before, p = 0.0, 0
        while p < len(order):
            e = int(end[p])
            gw = 0.0
            for q in range(p, e + 1):
                gw += w[order[q]]
            mid = before + 0.5 * (gw + 1.0)
            for q in range(p, e + 1):
                yield int(order[q]), mid
            before += gw
            p = e + 1

    dx = {}
    sxx = 0.0
    for i, mid in mids(xo, xe):
        dx[i] = mid - centre
        sxx += w[i] * dx[i] * dx[i]
    out = []
    for o, e in zip(yo, ye):
        sxy = syy = 0.0
        for i, mid in mids(o, e):
            dy = mid - centre
            sxy += w[i] * dx[i] * dy
            syy += w[i] * dy * dy
        out.append(max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy))) if sxx > tiny and syy > tiny else math.nan)
    return out


@pytest.mark.parametrize("clustered", [False, True])
def test_weighted_spearman_is_the_scalar_walk_bit_for_bit(clustered):
    """The core runs several resamples at once (one per vector lane) from a precomputed layout;
    each result must still be exactly the scalar walk's, on every instruction set (QFAIR_ISA),
    at any thread count, and for a number of resamples that leaves a block partly empty."""
    from qfair._native import core

    rng = np.random.default_rng(17)
    n_units = 37
    clusters = np.repeat(np.arange(n_units), rng.integers(1, 4, n_units)) if clustered else None
    n = clusters.size if clustered else n_units
    x = rng.normal(size=n).round(1)                                   # ties and singletons mixed
    ys = [np.where(rng.random(n) < 0.3, 0.0, x + rng.normal(size=n)), rng.integers(0, 3, n) * 1.0,
          rng.normal(size=n)]
    counts = np.concatenate([rng.integers(0, 4, (6, n_units)) * 1.0,
                             rng.random((5, n_units)) * 3.0,         # fractional weights: rounding shows
                             rng.integers(0, 2, (2, n_units)) * 1e6,
                             np.where(rng.random((1, n_units)) < 0.5, -0.0, 1.0),  # signed zeros
                             np.zeros((1, n_units))])
    xo, xe = R._order_and_ends(x)
    ranked = [R._order_and_ends(v) for v in ys]
    yo, ye = np.stack([o for o, _ in ranked]), np.stack([e for _, e in ranked])
    want = np.array([_scalar_walk_rho(c, clusters, xo, xe, yo, ye) for c in counts]).T
    assert np.isfinite(want[:, :-1]).all() and np.isnan(want[:, -1]).all()
    for t in (1, 2, 5):
        got = core.weighted_spearman(counts, None if clusters is None else clusters.astype(np.int64), xo, xe,
                                     yo, ye, t)
        np.testing.assert_array_equal(got, want)


def test_weighted_spearman_refuses_bad_layouts():
    from qfair._native import core

    x = np.arange(5.0)
    xo, xe = R._order_and_ends(x)
    c = np.ones((2, 5))
    with pytest.raises(ValueError, match="float64"):
        core.weighted_spearman(c.astype(np.float32), None, xo, xe, xo[None], xe[None], 0)
    with pytest.raises(ValueError, match="outside"):
        core.weighted_spearman(c, None, xo + 1, xe, xo[None], xe[None], 0)
    with pytest.raises(ValueError, match="cluster"):
        core.weighted_spearman(np.ones((2, 2)), np.array([0, 1, 2, 0, 1]), xo, xe, xo[None], xe[None], 0)
    with pytest.raises(ValueError, match="must match"):
        core.weighted_spearman(np.ones((2, 4)), None, xo, xe, xo[None], xe[None], 0)
    with pytest.raises(ValueError, match="tie-group"):
        core.weighted_spearman(c, None, xo, np.array([1, 1, 1, 3, 4]), xo[None], xe[None], 0)


# ---------------------------------------------------------------------------
# the core's permutation nulls: uniform draws, thread invariance
# ---------------------------------------------------------------------------

def test_pairings_are_uniform_permutations_at_any_thread_count():
    from qfair._native import core

    a = np.array([1.0, 10.0, 100.0, 1000.0])  # each permutation of b gives its own dot product
    b = np.arange(4.0)
    draws = [core.pairings_dot(a, b, 48_000, 11, t) for t in (1, 2, 5)]
    for other in draws[1:]:
        np.testing.assert_array_equal(other, draws[0])
    _, counts = np.unique(draws[0], return_counts=True)
    assert counts.size == 24                                   # every permutation of 4 occurs
    assert sps.chisquare(counts).pvalue > 1e-4                 # and equally often
    assert not np.array_equal(core.pairings_dot(a, b, 100, 12, 0), draws[0][:100])  # another seed, other draws


@pytest.mark.parametrize("n", [0, 1, 2, 37, 130])
def test_pairings_and_subsets_are_the_defined_shuffles(n):
    """Each resample's draw and sum, value for value, from the Python reimplementation of the
    stream: the Fisher-Yates shuffle of Rng(seed ^ domain, r), the sum taken in position order."""
    from qfair._native import core

    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(size=n) * 1e3
    seed, B = 0xFEED, 9
    want_dot, want_sub = [], []
    k = n // 3
    for r in range(B):
        acc = 0.0
        for i, j in enumerate(rng_streams.shuffled(n, n, seed ^ 0x70616972696E6773, r)):  # "pairings"
            acc += a[i] * b[j]
        want_dot.append(acc)
        acc = 0.0
        for j in rng_streams.shuffled(n, k, seed ^ 0x7375627365747321, r):              # "subsets!"
            acc += a[j]
        want_sub.append(acc)
    for t in (1, 2, 4):
        np.testing.assert_array_equal(core.pairings_dot(a, b, B, seed, t), want_dot)
        np.testing.assert_array_equal(core.subset_sums(a, k, B, seed, t), want_sub)


@pytest.mark.parametrize("n", [1, 2, 37, 130])
def test_pairings_of_several_b_share_the_shuffles_and_keep_each_sum(n):
    """b [k, n]: row t of the result is, value for value, the Python reimplementation's sums
    against b[t] (so also what b[t] alone gives), at any thread count; bad shapes are refused."""
    from qfair._native import core

    rng = np.random.default_rng(100 + n)
    a, bs = rng.normal(size=n), rng.normal(size=(3, n)) * np.array([[1.0], [1e3], [1e-3]])
    seed, B = 0xBEEF, 7
    want = np.zeros((3, B))
    for r in range(B):
        perm = list(rng_streams.shuffled(n, n, seed ^ 0x70616972696E6773, r))
        for t in range(3):
            acc = 0.0
            for i, j in enumerate(perm):
                acc += a[i] * bs[t, j]
            want[t, r] = acc
    for th in (1, 2, 4):
        got = core.pairings_dot(a, bs, B, seed, th)
        assert got.shape == (3, B)
        np.testing.assert_array_equal(got, want)
    for t in range(3):
        np.testing.assert_array_equal(core.pairings_dot(a, np.ascontiguousarray(bs[t]), B, seed, 2), want[t])
    with pytest.raises(ValueError, match="b: expected"):
        core.pairings_dot(a, np.zeros((2, n + 1)), B, seed, 1)
    with pytest.raises(ValueError, match="b: expected"):
        core.pairings_dot(a, np.zeros((0, n)), B, seed, 1)


def test_subsets_are_uniform_and_sums_exact():
    from qfair._native import core

    z = 2.0 ** np.arange(5)                                     # each 2-subset has its own sum
    s = core.subset_sums(z, 2, 30_000, 3, 0)
    vals, counts = np.unique(s, return_counts=True)
    assert counts.size == 10 and sps.chisquare(counts).pvalue > 1e-4
    assert set(vals) == {z[i] + z[j] for i in range(5) for j in range(i + 1, 5)}
    np.testing.assert_array_equal(core.subset_sums(z, 5, 7, 3, 0), np.full(7, z.sum()))
    np.testing.assert_array_equal(core.subset_sums(z, 0, 7, 3, 0), np.zeros(7))
    np.testing.assert_array_equal(core.subset_sums(z, 2, 500, 3, 1), core.subset_sums(z, 2, 500, 3, 4))
    with pytest.raises(ValueError, match="k must be"):
        core.subset_sums(z, 6, 10, 0, 0)
    with pytest.raises(ValueError, match="float64"):
        core.subset_sums(z.astype(np.float32), 2, 10, 0, 0)
