"""store.file_sha256's per-user digest cache for large files (model weights)."""

from __future__ import annotations

import hashlib
import json
import os

from fairgen.store import CACHED_HASH_BYTES, file_sha256


def test_large_file_digests_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAIRGEN_CACHE_DIR", str(cache))
    weights = tmp_path / "model.safetensors"
    data = bytes(range(256)) * (CACHED_HASH_BYTES // 256)
    weights.write_bytes(data)
    assert file_sha256(weights) == hashlib.sha256(data).hexdigest()
    known = json.loads((cache / "sha256.json").read_text())
    assert known[str(weights.resolve())]["sha256"] == hashlib.sha256(data).hexdigest()

    # While size, modification time and inode are unchanged, the remembered digest is what comes back.
    known[str(weights.resolve())]["sha256"] = "0" * 64
    (cache / "sha256.json").write_text(json.dumps(known))
    assert file_sha256(weights) == "0" * 64

    # Rewritten (same size, a later time): hashed again.
    changed = data[::-1]
    weights.write_bytes(changed)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_sha256(weights) == hashlib.sha256(changed).hexdigest()


def test_small_files_are_hashed_every_time_and_a_broken_cache_is_ignored(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAIRGEN_CACHE_DIR", str(cache))
    config = tmp_path / "config.json"
    config.write_text("{}")
    assert file_sha256(config) == hashlib.sha256(b"{}").hexdigest()
    assert not (cache / "sha256.json").exists()
    cache.mkdir()
    (cache / "sha256.json").write_text("[not an object")
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\0" * CACHED_HASH_BYTES)
    assert file_sha256(weights) == hashlib.sha256(b"\0" * CACHED_HASH_BYTES).hexdigest()
    assert list(json.loads((cache / "sha256.json").read_text())) == [str(weights.resolve())]


def test_checkpoint_fingerprints_hash_in_the_background_on_rank_0_only(tmp_path, monkeypatch):
    """A fingerprint starts hashing at once in the process that records provenance; another rank of a
    distributed run hashes only if asked, and gets the same digests."""
    from fairgen.models.hf.loading import Fingerprint

    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"\1" * 1000)
    main = Fingerprint(tmp_path, "local", None)
    assert main._digests is not None  # started at construction
    monkeypatch.setenv("RANK", "1")
    other = Fingerprint(tmp_path, "local", None)
    assert other._digests is None
    assert other.sha256 == main.sha256 == {"config.json": hashlib.sha256(b'{"a": 1}').hexdigest(),
                                           "model.safetensors": hashlib.sha256(b"\1" * 1000).hexdigest()}
