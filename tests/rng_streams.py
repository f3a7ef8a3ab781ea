"""The core's permutation streams written out in Python as oracles, from their
definition in cpp/src/stats_basic.cpp and cpp/include/qfair/stats.hpp: Rng(seed,
stream) mixes the key through two splitmix64 rounds and runs xoshiro256**; a
bounded draw (Lemire's multiply-and-reject) reads the 32-bit halves of its words,
the high half first."""
from __future__ import annotations

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def _splitmix(x: int) -> tuple[int, int]:
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


def _rotl(v: int, k: int) -> int:
    return ((v << k) | (v >> (64 - k))) & M64


class Stream:
    def __init__(self, seed: int, stream: int) -> None:
        _, a = _splitmix(seed & M64)
        _, h = _splitmix(a ^ ((stream * 0xD1342543DE82EF95 + 0x2545F4914F6CDD1D) & M64))
        self.s, y = [], h
        for _ in range(4):
            y, z = _splitmix(y)
            self.s.append(z)
        if not any(self.s):
            self.s[0] = 1
        self.spare: int | None = None

    def next(self) -> int:
        s = self.s
        out = (_rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return out

    def next32(self) -> int:
        if self.spare is not None:
            v, self.spare = self.spare, None
            return v
        w = self.next()
        self.spare = w & M32
        return w >> 32

    def below(self, n: int) -> int:
        m = self.next32() * n
        if (m & M32) < n:
            t = ((1 << 32) - n) % n
            while (m & M32) < t:
                m = self.next32() * n
        return m >> 32


def shuffled(n: int, steps: int, seed: int, stream: int) -> list[int]:
    """The first `steps` positions of the Fisher-Yates shuffle of 0..n-1 under Rng(seed, stream)."""
    p = list(range(n))
    g = Stream(seed, stream)
    for i in range(min(steps, n - 1)):
        j = i + g.below(n - i)
        p[i], p[j] = p[j], p[i]
    return p[:steps]
