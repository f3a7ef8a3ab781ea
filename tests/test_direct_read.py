"""Rows read with O_DIRECT into reused buffers (qfair.npyio.DirectRows) are the
rows numpy reads (np.load is the oracle), in any order, for any row size and
header length; the digest fed as they stream equals hashlib's / xxhash's of the
whole file; and an analysis whose shards are read so gives the same tables and
catches a changed shard without the hash thread reading it."""
from __future__ import annotations

import errno
import hashlib
import os

import numpy as np
import pytest
import xxhash
from polars.testing import assert_frame_equal
from test_analyze import make_corpus, make_rows, write_dump

import qfair
from qfair import directio
from qfair.core import stream_rows
from qfair.dump import DumpError, open_dump
from qfair.errors import QfairError
from qfair.fsutil import StreamedDigest
from qfair.npyio import DirectRead, DirectRows, NpyFormatError


def _npy(tmp_path, name, a, version=None, tail=b""):
    p = tmp_path / f"{name}.npy"
    with open(p, "wb") as f:
        np.lib.format.write_array(f, a, version=version)
        f.write(tail)
    return p


@pytest.mark.parametrize("cols,dtype,version", [(6, np.float16, (1, 0)), (4097, np.float16, (2, 0)),
                                                (2048, np.float16, (1, 0)), (3001, np.float32, (3, 0)),
                                                (1, np.float32, (1, 0))])
def test_rows_in_any_order_equal_numpy(tmp_path, cols, dtype, version):
    rng = np.random.default_rng(cols)
    a = rng.standard_normal((37, cols)).astype(dtype)
    path = _npy(tmp_path, "a", a, version)
    want = np.load(path)
    r = DirectRows(path)
    try:
        assert r.shape == a.shape and r.rows == 37
        pos = 0
        for n in [1, 5, 2, 13, 16]:              # sequential, each next span asked for ahead
            r.prefetch(pos + n, pos + 2 * n)
            np.testing.assert_array_equal(r.take(pos, pos + n), want[pos:pos + n])
            pos += n
        for s, e in [(3, 9), (0, 37), (36, 37), (10, 11), (20, 37), (5, 5)]:   # any order, any span
            if rng.random() < 0.5:
                r.prefetch(s, e)
            got = r.take(s, e)
            assert got.shape == (e - s, cols) and got.dtype == dtype
            np.testing.assert_array_equal(got, want[s:e])
        r.prefetch(30, 99)                       # clipped, like a mapping's prefetch
        np.testing.assert_array_equal(r.take(30, 99), want[30:])
    finally:
        r.close()


def test_a_view_stays_valid_until_rows_after_it_are_taken(tmp_path):
    a = np.arange(40 * 300, dtype=np.float32).reshape(40, 300)
    r = DirectRows(_npy(tmp_path, "a", a))
    try:
        v1 = r.take(0, 10)
        r.prefetch(10, 20)                       # fills the other buffer, not v1's
        np.testing.assert_array_equal(v1, a[0:10])
        v2 = r.take(10, 20)
        np.testing.assert_array_equal(v2, a[10:20])
    finally:
        r.close()


@pytest.mark.parametrize("algorithm", ["sha256", "xxh3_128"])
@pytest.mark.parametrize("tail", [b"", b"trailing bytes after the data"])
def test_the_streamed_digest_is_the_whole_file(tmp_path, algorithm, tail):
    a = np.random.default_rng(1).standard_normal((50, 777)).astype(np.float16)
    path = _npy(tmp_path, "a", a, tail=tail)
    oracle = {"sha256": hashlib.sha256, "xxh3_128": xxhash.xxh3_128}[algorithm](path.read_bytes()).hexdigest()
    for chunk in (1, 7, 50):
        d = StreamedDigest(algorithm)
        r = DirectRows(path, d)
        try:
            for s in range(0, 50, chunk):
                r.prefetch(s + chunk, s + 2 * chunk)
                r.take(s, s + chunk)
                assert d.nbytes < path.stat().st_size or s + chunk >= 50
        finally:
            r.close()
        assert r.digest_complete and d.nbytes == path.stat().st_size
        assert d.hexdigest() == oracle


def test_skipped_rows_leave_the_digest_incomplete(tmp_path):
    a = np.ones((30, 100), dtype=np.float16)
    path = _npy(tmp_path, "a", a)
    d = StreamedDigest("xxh3_128")
    r = DirectRows(path, d)
    try:
        r.take(0, 10)
        r.take(20, 30)                           # rows 10..19 never read: no digest can be claimed
        r.take(10, 20)                           # read late: still not in order
    finally:
        r.close()
    assert not r.digest_complete and d.nbytes < path.stat().st_size


def test_an_empty_file_and_a_damaged_one(tmp_path):
    path = _npy(tmp_path, "e", np.empty((0, 5), dtype=np.float16))
    d = StreamedDigest("sha256")
    r = DirectRows(path, d)
    assert r.shape == (0, 5) and r.take(0, 0).shape == (0, 5)
    r.close()
    assert d.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    bad = _npy(tmp_path, "b", np.ones((10, 5), dtype=np.float16))
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(NpyFormatError, match="truncated"):
        DirectRows(bad)


def test_plain_reads_where_o_direct_is_refused(tmp_path, monkeypatch):
    """A file system that refuses O_DIRECT at open, or at the first read: the same rows by plain reads."""
    a = np.random.default_rng(2).standard_normal((20, 999)).astype(np.float16)
    path = _npy(tmp_path, "a", a)
    real_open, real_preadv = os.open, os.preadv

    def refuse_open(p, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", refuse_open)
    r = DirectRows(path)
    assert not r.direct
    np.testing.assert_array_equal(r.take(0, 20), a)
    r.close()
    monkeypatch.setattr(os, "open", real_open)

    calls = []

    def refuse_read(fd, bufs, offset, *args):
        calls.append(offset)
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, bufs, offset, *args)

    monkeypatch.setattr(os, "preadv", refuse_read)
    r = DirectRows(path)
    np.testing.assert_array_equal(r.take(3, 17), a[3:17])
    assert not r.direct and len(calls) >= 2
    r.close()


def test_a_read_error_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """An I/O error on the reader thread, or a file cut short after it was opened,
    reaches the caller as the one-line error the command line prints."""
    a = np.ones((40, 300), dtype=np.float16)
    path = _npy(tmp_path, "a", a)
    r = DirectRows(path)
    real = os.preadv

    def failing(fd, bufs, offset, *args):
        if offset >= 8192:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, bufs, offset, *args)

    monkeypatch.setattr(os, "preadv", failing)
    try:
        np.testing.assert_array_equal(r.take(0, 5), a[:5])
        r.prefetch(20, 40)
        with pytest.raises(NpyFormatError, match=r"a\.npy: cannot be read \(Input/output error\)"):
            r.take(20, 40)
    finally:
        r.close()
    monkeypatch.setattr(os, "preadv", real)
    r = DirectRows(path)
    try:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 5000)
        with pytest.raises(NpyFormatError, match="cannot be read"):
            r.take(0, 40)
    finally:
        r.close()


def test_a_file_that_ends_early_is_an_error_not_short_rows(tmp_path):
    path = _npy(tmp_path, "a", np.ones((64, 512), dtype=np.float16))
    f = directio.DirectFile(path)
    try:
        buf = directio.aligned_empty(f.span_bytes(0, f.size + 10))
        with pytest.raises(OSError, match="ends at byte"):
            f.read_span(0, f.size + 10, buf)
        at = f.read_span(100, 5000, buf)
        assert bytes(buf[at:at + 4900]) == path.read_bytes()[100:5000]
    finally:
        f.close()


def test_the_mode_and_the_decision(tmp_path, monkeypatch):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(directio.MIN_DIRECT_BYTES)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 4096)
    big.read_bytes()
    frac = directio.resident_fraction(big)
    assert frac is None or frac == 1.0           # just read: all of it in the page cache
    for mode, want_big, want_small in [("always", True, True), ("never", False, False)]:
        monkeypatch.setenv("QFAIR_DIRECT_READ", mode)
        assert (directio.read_direct(big), directio.read_direct(small)) == (want_big, want_small)
    monkeypatch.setenv("QFAIR_DIRECT_READ", "auto")
    for resident, want in [(0.0, True), (0.49, True), (0.5, False), (1.0, False), (None, False)]:
        monkeypatch.setattr(directio, "resident_fraction", lambda p, r=resident: r)
        assert directio.read_direct(big) is want
        assert directio.read_direct(small) is False  # too small to be worth a reader thread
    monkeypatch.setattr(directio, "resident_fraction", lambda p: 0.0)
    monkeypatch.delattr(os, "O_DIRECT", raising=False)  # an OS without it: mapped, as before
    assert directio.read_direct(big) is False
    monkeypatch.setenv("QFAIR_DIRECT_READ", "sometimes")
    with pytest.raises(QfairError, match="QFAIR_DIRECT_READ is 'sometimes'"):
        directio.read_direct(big)


def test_the_sampled_residency_agrees_with_every_page(tmp_path):
    """A large file is asked about in 64 runs of pages: with the first half of it
    in the page cache (where the file system lets DONTNEED drop the rest; else all
    of it), the sample and the count of every page agree to a few percent."""
    path = tmp_path / "big.bin"
    size = 64 << 20
    with open(path, "wb") as f:
        f.write(np.random.default_rng(5).integers(0, 255, size, dtype=np.uint8).tobytes())
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.pread(fd, size // 2, 0)
    finally:
        os.close(fd)
    exact = directio.resident_fraction(path, exact=True)
    sampled = directio.resident_fraction(path)
    assert exact is not None and sampled is not None
    assert abs(sampled - exact) < 0.05, (sampled, exact)
    assert exact >= 0.45                       # the half just read is there


def test_stream_rows_takes_direct_reads_and_paths_alike(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    p = [rng.standard_normal((n, 70)).astype(np.float16) for n in (9, 0, 14)]
    q = [rng.standard_normal((n, 70)).astype(np.float16) for n in (4, 19)]
    pp = [_npy(tmp_path, f"p{i}", a) for i, a in enumerate(p)]
    qp = [_npy(tmp_path, f"q{i}", a) for i, a in enumerate(q)]
    monkeypatch.setenv("QFAIR_DIRECT_READ", "never")
    digest = StreamedDigest("xxh3_128")
    got = [(s, e, np.array(a), np.array(b))
           for s, e, a, b in stream_rows([DirectRead(pp[0], digest), pp[1], pp[2]], qp, chunk_rows=5)]
    np.testing.assert_array_equal(np.concatenate([g[2] for g in got]), np.concatenate(p))
    np.testing.assert_array_equal(np.concatenate([g[3] for g in got]), np.concatenate(q))
    assert digest.hexdigest() == xxhash.xxh3_128_hexdigest(pp[0].read_bytes())


def _pair(tmp_path):
    corpus = make_corpus(4, n_per_task=8)
    base_rows = make_rows(corpus, 4)
    b = write_dump(tmp_path / "base", corpus, base_rows, shard_rows=23)
    q = write_dump(tmp_path / "quant", corpus, make_rows(corpus, 5, base_rows=base_rows, noise=0.3), shard_rows=31)
    return b, q


def test_an_analysis_read_directly_gives_the_same_tables(tmp_path, monkeypatch):
    b, q = _pair(tmp_path)
    out = {}
    for mode in ("never", "always"):
        monkeypatch.setenv("QFAIR_DIRECT_READ", mode)
        out[mode] = qfair.compare(open_dump(b), open_dump(q), bootstrap=200, seed=1, progress=False)
    tables = out["never"].tables()
    assert {"summary", "examples", "tokens", "calibration", "groups"} <= set(tables)
    assert len(tables["tokens"]) > 100
    for name, a in tables.items():
        assert_frame_equal(a, out["always"].tables()[name], check_exact=True)


def test_a_changed_shard_read_directly_is_caught_by_the_stream(tmp_path, monkeypatch):
    """The hash thread leaves the directly read shards alone; the stream's digest
    catches the flipped bit, and a shard the stream did not read is hashed at the end."""
    b, q = _pair(tmp_path)
    shard = q / "logits" / "00001.npy"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    monkeypatch.setenv("QFAIR_DIRECT_READ", "always")
    import qfair.dump.manifest as mf
    hashed = []
    real = mf.file_digest

    def spy(path, *a, **kw):
        hashed.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(mf, "file_digest", spy)
    with pytest.raises(DumpError, match=r"00001\.npy: xxh3_128 differs from manifest\.json shards\[1\]\.xxh3_128"):
        qfair.compare(open_dump(b), open_dump(q), bootstrap=50, progress=False)
    assert not any("logits" in h for h in hashed), hashed  # the tables only
    assert any(h.endswith(".parquet") for h in hashed)

    # a comparison that streams no logits (store none on one side) still checks the shards
    from qfair.dump.reader import digests_in_background
    hashed.clear()
    with pytest.raises(DumpError, match=r"00001\.npy: xxh3_128 differs"):
        with digests_in_background([open_dump(b), open_dump(q)]):
            pass
    assert any(h.endswith("00001.npy") for h in hashed)


def test_the_shards_of_a_side_share_two_buffers(tmp_path, monkeypatch):
    """Memory stays at two chunks per side however many shards: the readers of one
    side take their buffers from one pool, and rows handed out are never overwritten
    before the next chunk is asked for."""
    rng = np.random.default_rng(4)
    p = [rng.standard_normal((n, 300)).astype(np.float16) for n in (7, 12, 5, 9, 11)]
    q = [rng.standard_normal((n, 300)).astype(np.float16) for n in (20, 24)]
    pp = [_npy(tmp_path, f"p{i}", a) for i, a in enumerate(p)]
    qp = [_npy(tmp_path, f"q{i}", a) for i, a in enumerate(q)]
    monkeypatch.setenv("QFAIR_DIRECT_READ", "always")
    made = []
    real = directio.aligned_empty

    def spy(n):
        made.append(n)
        return real(n)

    monkeypatch.setattr(directio, "aligned_empty", spy)
    want_p, want_q = np.concatenate(p), np.concatenate(q)
    for chunk in (3, 4, 100):
        made.clear()
        for s, e, a, b in stream_rows(pp, qp, chunk_rows=chunk):
            np.testing.assert_array_equal(a, want_p[s:e])
            np.testing.assert_array_equal(b, want_q[s:e])
        assert len(made) <= 4, (chunk, made)      # two per side (one more per side if a span outgrows one)
