"""The dump path writes exactly what it wrote when the golden files were
recorded (tests/golden_dump.py): same table contents, same shard bytes.

Exact on a machine with the recorded arithmetic (the golden model's logits on a
fixed input hash the same: tests/golden_dump.py). On another one the model's
own arithmetic differs (measured: float64 log-likelihoods agree to
1e-12 relative between AVX-512 and AVX2 kernels, to 4e-7 with torch's scalar
fallback), so float columns and shards are compared within a few rounding
steps there; keys, ids, counts and shapes stay exact.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pl = pytest.importorskip("polars")

from golden_dump import GOLDEN, TABLES, arithmetic_fingerprint, golden_dump, shard_hashes  # noqa: E402

META = json.loads((GOLDEN / "shards.json").read_text())
EXACT = arithmetic_fingerprint() == META["arithmetic"]


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    return golden_dump(tmp_path_factory.mktemp("golden") / "dump")


def _close_floats(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if a.dtype == np.float64:
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg=what)
        return
    # a few rounding steps of the stored dtype, on a small share of the values
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    step = np.abs(np.spacing(b)).astype(np.float64)
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    assert np.all(both_inf | (diff <= 4 * step)), what
    assert (diff > 0).mean() < 0.05, what


@pytest.mark.parametrize("table", TABLES)
def test_tables_identical_to_golden(dump, table):
    # Parquet bytes embed the writer's version, so contents are compared: every
    # column, dtype and value.
    got, want = pl.read_parquet(dump / f"{table}.parquet"), pl.read_parquet(GOLDEN / f"{table}.parquet")
    assert got.schema == want.schema
    assert got.height == want.height
    for col, dtype in got.schema.items():
        if EXACT or not dtype.is_float():
            assert got[col].equals(want[col]), f"{table}.{col}"
        else:
            _close_floats(got[col].to_numpy(), want[col].to_numpy(), f"{table}.{col}")


def test_shards_byte_identical_to_golden(dump):
    want = META["shards"]
    assert len(want) >= 2  # the sample spans several shards
    if EXACT:
        assert shard_hashes(dump) == want
        return
    assert sorted(shard_hashes(dump)) == sorted(want)
    for name in want:
        _close_floats(np.load(dump / "logits" / name), np.load(GOLDEN / "logits" / name), name)
