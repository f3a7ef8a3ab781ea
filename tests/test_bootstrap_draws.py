"""The bootstrap's draws against an independent reimplementation of the
generator (numpy, from its definition in cpp/src/stats_bootstrap.cpp: the
resample key, wyrand over a counter, Lemire's multiply-shift with rejection).
The core reduces the random words a vector at a time and redoes a block in
order where a rejection may occur; these sizes cover whole blocks, tails,
odd n and blocks with rejections, on every instruction set."""
from __future__ import annotations

import numpy as np
import pytest

from qfair._native import core

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
WY_INC = 0xA0761D6478BD642F
WY_XOR = 0xE7037ED1A0B428DB
ISAS = [i for i in ("avx512", "avx2", "baseline") if core.select_isa(i) == i]
core.select_isa("avx512")


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def resample_key(seed: int, b: int) -> int:
    return mix64(mix64((seed + GOLDEN) & M64) ^ ((b * 0xD1342543DE82EF95 + 0x2545F4914F6CDD1D) & M64))


def mul_hi_lo(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 128-bit product of uint64 arrays as (high, low) words, from 32-bit limbs."""
    m32 = np.uint64(0xFFFFFFFF)
    s32 = np.uint64(32)
    a0, a1, b0, b1 = a & m32, a >> s32, b & m32, b >> s32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> s32) + (p01 & m32) + (p10 & m32)
    hi = p11 + (p01 >> s32) + (p10 >> s32) + (mid >> s32)
    lo = (p00 & m32) | ((mid & m32) << s32)
    return hi, lo


def first_halves(n: int, key: int) -> np.ndarray:
    """The n 32-bit halves of the counter sequence, in draw order (before rejection)."""
    pairs = (n + 1) // 2
    with np.errstate(over="ignore"):
        ctr = np.uint64(key) + np.arange(1, pairs + 1, dtype=np.uint64) * np.uint64(WY_INC)
        hi, lo = mul_hi_lo(ctr, ctr ^ np.uint64(WY_XOR))
        z = hi ^ lo
    return np.stack([z >> np.uint64(32), z & np.uint64(0xFFFFFFFF)], 1).reshape(-1)[:n]


def draws(n: int, seed: int, b: int) -> np.ndarray:
    key = resample_key(seed, b)
    m = first_halves(n, key) * np.uint64(n)  # < 2^64: both factors < 2^32
    out = (m >> np.uint64(32)).astype(np.int64)
    low = (m & np.uint64(0xFFFFFFFF)).astype(np.int64)
    t = (1 << 32) % n  # Lemire's threshold, (2^32 - n) mod n
    rej = 0
    for k in np.flatnonzero(low < t):  # in draw order, one second counter sequence per resample
        mk = int(m[k])
        while (mk & 0xFFFFFFFF) < t:
            rej += 1
            zz = mix64(((key ^ 0x5851F42D4C957F2D) + rej * GOLDEN) & M64)
            mk = (zz >> 32) * n
        out[k] = mk >> 32
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 511, 512, 513, 1001, 10_000, 3_000_017])
def test_draws_match_the_generator_definition(isa, n):
    try:
        core.select_isa(isa)
        for seed, b in ((0, 0), (12345, 7), (2**63 + 5, 9999)):
            counts = core.bootstrap_counts(n, seed, b)
            np.testing.assert_array_equal(counts, np.bincount(draws(n, seed, b), minlength=n),
                                          err_msg=f"n={n} seed={seed} b={b}")
    finally:
        core.select_isa("avx512")


def test_large_n_exercises_rejections():
    # the reference must itself see rejections at this size, else the test above proves less
    n, key = 3_000_017, resample_key(12345, 7)
    assert (1 << 32) % n > 0 and key
    ref = draws(n, 12345, 7)
    with np.errstate(over="ignore"):
        assert len(ref) == n
    low = ((first_halves(n, key) * np.uint64(n)) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    assert (low < (1 << 32) % n).sum() > 10


def two_chain_mean(t: np.ndarray, idx: np.ndarray) -> float:
    """A mean's bootstrap replicate as the core defines it: the terms drawn at even positions
    (and the last of an odd count) summed in draw order, those at odd positions likewise, then
    (s0 + s1) / n -- np.cumsum adds strictly in order."""
    d = t[idx]
    s0 = np.cumsum(d[0::2])[-1]
    s1 = np.cumsum(d[1::2])[-1] if d.size > 1 else 0.0
    return float((s0 + s1) / t.size)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 3, 64, 1001])
def test_means_bootstrapped_together_keep_each_means_bits(isa, n):
    """The core sums up to 16 means side by side (one per vector lane) from drawn indices. Every
    replicate must be the two-chain sum above, bit for bit, whatever its lane and pack: widths
    16, 8 and 4 with padding (K = 1, 2, 5, 9, 16, 17, 36). Terms span 10 orders of magnitude so
    that any other order of the adds shows in the low bits."""
    rng = np.random.default_rng(n)
    seed, B = 77, 40
    try:
        core.select_isa(isa)
        for K in (1, 2, 5, 9, 16, 17, 36):
            ys = [rng.normal(size=n) * 10.0 ** rng.uniform(-5, 5, size=n) for _ in range(K)]
            xs = [rng.normal(size=n) for _ in range(K)]
            specs = [{"kind": "mean", "x": x, "y": y} for x, y in zip(xs, ys)]
            out = core.paired_bootstrap(specs, resamples=B, seed=seed, confidence=0.95, threads=2,
                                        keep_distribution=True)
            for k in range(K):
                t = ys[k] - xs[k]
                want = [two_chain_mean(t, draws(n, seed, b)) for b in range(B)]
                np.testing.assert_array_equal(out[k]["distribution"], want, err_msg=f"K={k + 1}/{K} lane")
    finally:
        core.select_isa("avx512")
