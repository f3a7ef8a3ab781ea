"""core.read_rows, the pure-read ceiling the benchmarks and `qfair doctor`
measure against: it must really read every byte of every row (and only the
rows' bytes, whatever the stride), on any thread count."""
from __future__ import annotations

import numpy as np
import pytest

from qfair._native import core


def xor_oracle(x: np.ndarray) -> int:
    """XOR of each row's 64-bit words over its whole 32-byte blocks, then of
    its remaining bytes (the core's definition), over all rows."""
    acc = 0
    for row in x:
        b = np.ascontiguousarray(row).view(np.uint8)
        whole = len(b) // 32 * 32
        if whole:
            acc ^= int(np.bitwise_xor.reduce(b[:whole].view(np.uint64)))
        if len(b) > whole:
            acc ^= int(np.bitwise_xor.reduce(b[whole:]))
    return acc


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("vocab", [1, 3, 16, 17, 1000])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_read_rows_reads_every_byte(dtype, vocab, threads):
    rng = np.random.default_rng(vocab)
    x = rng.standard_normal((11, vocab)).astype(dtype)
    assert core.read_rows(x, threads) == xor_oracle(x)
    y = x.copy()
    y[7, vocab - 1] = -y[7, vocab - 1] if y[7, vocab - 1] != 0 else 1  # one element changes the answer
    assert core.read_rows(y, threads) != core.read_rows(x, threads)


def test_read_rows_skips_the_stride_padding():
    rng = np.random.default_rng(0)
    wide = rng.standard_normal((9, 40)).astype(np.float32)
    view = wide[:, :33]
    assert core.read_rows(view, 2) == xor_oracle(view)
    wide[:, 33:] = 0  # bytes outside the rows do not count
    assert core.read_rows(view, 2) == xor_oracle(wide[:, :33])
