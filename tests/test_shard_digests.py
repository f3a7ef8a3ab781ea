"""Each logits shard's manifest entry records the sha256 and xxh3_128 of the
file's bytes (hashlib and the xxhash library over the whole file are the
oracles), whether the writer knew the shard's rows in advance (digests taken
as the bytes go out) or patched the header at the end (digests of the
finished file); and verification uses them."""
from __future__ import annotations

import hashlib
import json

import pytest
import xxhash
from test_analyze import make_corpus, make_rows, write_dump

import qfair.dump as qdump
from qfair.dump import DumpError, open_dump


@pytest.mark.parametrize("planned", [True, False])
@pytest.mark.parametrize("dtype", ["f16", "f32"])
def test_each_shard_records_the_digests_of_its_bytes(tmp_path, monkeypatch, planned, dtype):
    if not planned:   # the writer cuts shards as rows arrive: row count patched into the header at the end
        real = qdump.DumpWriter

        def unplanned(*a, **kw):
            kw.pop("rows_per_example")
            return real(*a, **kw)

        monkeypatch.setattr(qdump, "DumpWriter", unplanned)
    corpus = make_corpus(2, n_per_task=6)
    path = write_dump(tmp_path / "d", corpus, make_rows(corpus, 1), dtype=dtype, shard_rows=17)
    m = json.loads((path / "manifest.json").read_text())
    assert len(m["shards"]) >= 3
    assert ("plan" in m and m["plan"] is not None) == planned
    for s in m["shards"]:
        data = (path / s["file"]).read_bytes()
        assert s["bytes"] == len(data)
        assert s["sha256"] == hashlib.sha256(data).hexdigest()
        assert s["xxh3_128"] == xxhash.xxh3_128_hexdigest(data)
    open_dump(path).verify()


def test_a_changed_shard_fails_verification_by_either_digest(tmp_path):
    corpus = make_corpus(2, n_per_task=6)
    path = write_dump(tmp_path / "d", corpus, make_rows(corpus, 2), shard_rows=17)
    shard = path / "logits" / "00002.npy"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01                       # one bit, same size, header intact
    shard.write_bytes(bytes(raw))
    d = open_dump(path)
    d.verify(hash=False)                             # sizes and headers cannot see it
    with pytest.raises(DumpError, match=r"00002\.npy: xxh3_128 differs from manifest\.json shards\[2\]\.xxh3_128"):
        d.verify()
    m = json.loads((path / "manifest.json").read_text())
    for s in m["shards"]:
        s.pop("xxh3_128")                            # as a dump written before xxh3_128 was recorded
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DumpError, match=r"00002\.npy: sha256 differs from manifest\.json shards\[2\]\.sha256"):
        open_dump(path).verify()
