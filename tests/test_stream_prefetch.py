"""stream_rows asks for the next chunk's rows (MADV_WILLNEED of a mapped file, a read on
the reader thread of a file read with O_DIRECT) before it hands out the current one: the
rows asked for are exactly the rows of the chunk that comes next, across shard
boundaries, and the rows streamed are unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from qfair.core import stream_rows
from qfair.npyio import DirectRows, NpyRows, open_npy_rows


def _write(tmp_path, name, a):
    p = tmp_path / f"{name}.npy"
    np.save(p, a)
    return p


@pytest.mark.parametrize("reader", ["never", "always"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 50])
def test_prefetch_asks_for_the_next_rows(tmp_path, monkeypatch, chunk, reader):
    monkeypatch.setenv("QFAIR_DIRECT_READ", reader)
    rng = np.random.default_rng(0)
    p_sizes, q_sizes = [5, 0, 8, 3], [7, 9]
    p_blocks = [rng.standard_normal((n, 6)).astype(np.float16) for n in p_sizes]
    q_blocks = [rng.standard_normal((n, 6)).astype(np.float16) for n in q_sizes]
    p_paths = [_write(tmp_path, f"p{i}", a) for i, a in enumerate(p_blocks)]
    q_paths = [_write(tmp_path, f"q{i}", a) for i, a in enumerate(q_blocks)]
    asked: dict[str, set[int]] = {"p": set(), "q": set()}
    offsets = {"p": np.cumsum([0] + p_sizes), "q": np.cumsum([0] + q_sizes)}
    names = {str(x): ("p", i) for i, x in enumerate(p_paths)} | {str(x): ("q", i) for i, x in enumerate(q_paths)}
    cls = DirectRows if reader == "always" else NpyRows
    real = cls.prefetch

    def spy(self, start, stop):
        side, i = names[str(self.path)]
        asked[side].update(range(offsets[side][i] + max(0, start), offsets[side][i] + min(self.rows, stop)))
        return real(self, start, stop)

    monkeypatch.setattr(cls, "prefetch", spy)
    got_p, got_q, chunks, asked_then = [], [], [], []
    for start, stop, pv, qv in stream_rows([str(x) for x in p_paths], [str(x) for x in q_paths], chunk_rows=chunk):
        chunks.append((start, stop))
        asked_then.append((set(asked["p"]), set(asked["q"])))
        got_p.append(np.array(pv))
        got_q.append(np.array(qv))
    assert chunks[-1][1] == 16
    # the chunks are the ones the shard boundaries and chunk_rows make
    cuts = sorted({0, 16, *np.cumsum(p_sizes), *np.cumsum(q_sizes)})
    want = [(a, min(a + chunk, b)) for lo, b in zip(cuts, cuts[1:]) for a in range(lo, b, chunk)]
    assert chunks == want
    # every row of the next chunk was asked for before the current one was handed out
    for (ap, aq), (s, e) in zip(asked_then, chunks[1:]):
        assert set(range(s, e)) <= ap and set(range(s, e)) <= aq, (s, e)
    np.testing.assert_array_equal(np.concatenate(got_p), np.concatenate(p_blocks))
    np.testing.assert_array_equal(np.concatenate(got_q), np.concatenate(q_blocks))
    assert asked["p"] <= set(range(16)) and asked["q"] <= set(range(16))   # nothing outside the files


def test_prefetch_clips_and_tolerates_any_range(tmp_path):
    """Ranges past either end, empty or reversed ones are clipped (madvise would raise on a
    range outside the mapping), and a closed block ignores the request."""
    a = np.arange(3 * 5000, dtype=np.float32).reshape(3, 5000)
    rows = open_npy_rows(_write(tmp_path, "a", a))
    try:
        for start, stop in [(0, 3), (1, 2), (2, 99), (-5, 1), (3, 9), (2, 2), (5, 1), (-9, -1)]:
            rows.prefetch(start, stop)
        np.testing.assert_array_equal(rows.array, a)
    finally:
        rows.close()
    rows.prefetch(0, 3)
