"""qfair.fsutil.sha256_file / file_digest against hashlib and the xxhash library
over the whole bytes, at the sizes where the memory-mapped blocks could go
wrong (empty, one byte, block edges)."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest
import xxhash

from qfair.fsutil import file_digest, sha256_file


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 1000, 1001, 2999, 3000, 3001, 1 << 20])
@pytest.mark.parametrize("chunk", [1000, 1 << 24])
def test_file_digests_equal_the_libraries_over_the_bytes(tmp_path, size, chunk):
    data = os.urandom(size)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert sha256_file(p, chunk=chunk) == hashlib.sha256(data).hexdigest()
    assert file_digest(p, "sha256", chunk=chunk) == hashlib.sha256(data).hexdigest()
    assert file_digest(p, "xxh3_128", chunk=chunk) == xxhash.xxh3_128_hexdigest(data)


def test_memo_keeps_the_algorithms_apart(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"same file")
    assert file_digest(p, "sha256", memo=True) == hashlib.sha256(b"same file").hexdigest()
    assert file_digest(p, "xxh3_128", memo=True) == xxhash.xxh3_128_hexdigest(b"same file")


def test_a_fifo_is_hashed_by_plain_reads(tmp_path):
    data = os.urandom(70_000)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    try:
        assert sha256_file(fifo, chunk=4096) == hashlib.sha256(data).hexdigest()
    finally:
        writer.join()


def test_stop_abandons_the_hashing(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(os.urandom(10_000))
    stop = threading.Event()
    stop.set()
    assert sha256_file(p, chunk=1000, stop=stop) is None
    stop.clear()
    assert sha256_file(p, chunk=1000, stop=stop) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_memo_answers_again_until_the_file_changes(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"one")
    first = sha256_file(p, memo=True)
    assert sha256_file(p, memo=True) == first == hashlib.sha256(b"one").hexdigest()
    p.write_bytes(b"two!")          # a different size: a new key
    assert sha256_file(p, memo=True) == hashlib.sha256(b"two!").hexdigest()


def _rss_file_kb() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssFile:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def test_hashing_holds_one_block_of_the_file(tmp_path, monkeypatch):
    """The mapped pages of hashed blocks are handed back: the file-backed resident memory
    stays near one block while a 64 MB file is hashed in 1 MB blocks."""
    if _rss_file_kb() is None:
        pytest.skip("no /proc/self/status RssFile here")
    import qfair.fsutil as fsutil

    p = tmp_path / "big.bin"
    data = os.urandom(1 << 20) * 64
    p.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    seen: list[int] = []
    real_sha256 = hashlib.sha256

    class Spy:
        def __init__(self):
            self.h = real_sha256()

        def update(self, block):
            self.h.update(block)
            seen.append(_rss_file_kb())

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setitem(fsutil.DIGESTS, "sha256", Spy)
    before = _rss_file_kb()
    assert fsutil.sha256_file(p, chunk=1 << 20) == want
    assert len(seen) == 64
    assert max(seen) - before < 8 * 1024, (before, max(seen))
