"""EmbeddingCache (SQLite WAL) and CachedEncoder."""

from __future__ import annotations

import multiprocessing as mp
import threading

import numpy as np
import pytest

from embedder.cache import CachedEncoder, EmbeddingCache
from embedder.errors import ArtifactError, InvalidInputError, VersionMismatchError
from embedder.profile import Profile, text_hash

DIM = 8


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _hashes(n: int, tag: str = "t") -> list[bytes]:
    return [text_hash(f"{tag}{i}") for i in range(n)]


def test_hits_misses_bulk_and_persistence(tmp_path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"
    hashes, vecs = _hashes(1200), _vecs(1200)  # more than one IN chunk
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as cache:
        assert cache.get_many(hashes[:3]) == [None, None, None]
        assert (cache.hits, cache.misses) == (0, 3)
        cache.put_many(hashes[:1000], vecs[:1000])
        got = cache.get_many([*hashes[990:1010], hashes[5]])
        assert all(g is not None for g in got[:10]) and all(g is None for g in got[10:20])
        np.testing.assert_array_equal(np.stack(got[:10]), vecs[990:1000])
        np.testing.assert_array_equal(got[20], vecs[5])
        assert (cache.hits, cache.misses) == (11, 13)
        cache.put_many(hashes[:1], vecs[7:8])  # replace
        stats = cache.stats()
        assert (
            stats["rows"] == 1000
            and stats["hits"] == 11
            and stats["hit_rate"] == pytest.approx(11 / 24)
        )
    with pytest.raises(ArtifactError, match="closed"):
        cache.get_many(hashes[:1])
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as again:
        got = again.get_many(hashes[:1000])
        np.testing.assert_array_equal(np.stack(got[1:]), vecs[1:1000])
        np.testing.assert_array_equal(got[0], vecs[7])


def test_version_isolation_and_shape_check(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    hashes = _hashes(5)
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as a:
        a.put_many(hashes, _vecs(5))
        with pytest.raises(InvalidInputError, match=r"\(5, 8\)"):
            a.put_many(hashes, _vecs(4))
    with EmbeddingCache(path, embedding_version="emb-bbbbbbbbbbbb", dim=DIM) as b:
        assert b.get_many(hashes) == [None] * 5
        assert len(b) == 0
        b.put_many(hashes[:1], _vecs(1, seed=9))
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as a:
        np.testing.assert_array_equal(a.get_many(hashes[:1])[0], _vecs(5)[0])
        assert len(a) == 5


def _writer(path: str, n: int) -> None:
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as cache:
        for start in range(0, n, 50):
            cache.put_many(_hashes(n)[start : start + 50], _vecs(n)[start : start + 50])


def test_second_process_writes_first_reads(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    reader = EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM)
    reader.get_many(_hashes(3))  # reader holds an open connection while the other process writes
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(str(path), 400))
    proc.start()
    reader.put_many(_hashes(10, tag="mine"), _vecs(10, seed=3))  # concurrent writes wait, not fail
    proc.join(60)
    assert proc.exitcode == 0
    got = reader.get_many(_hashes(400))
    np.testing.assert_array_equal(np.stack(got), _vecs(400))
    assert len(reader) == 410
    reader.close()


def _ack_then_hang(path: str, conn) -> None:
    cache = EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM)
    cache.put_many(_hashes(20), _vecs(20))
    conn.send("acknowledged")
    threading.Event().wait(120)  # never closes: killed by the parent


def test_acknowledged_put_survives_kill_9(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_ack_then_hang, args=(str(path), child))
    proc.start()
    assert parent.poll(60) and parent.recv() == "acknowledged"
    proc.kill()  # SIGKILL: no close, no checkpoint
    proc.join(10)
    assert proc.exitcode == -9
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as cache:
        np.testing.assert_array_equal(np.stack(cache.get_many(_hashes(20))), _vecs(20))


class _CountingEncoder:
    """A deterministic stand-in with the encoder interface, to count what gets encoded."""

    embedding_version = "emb-aaaaaaaaaaaa"
    dim = DIM

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def assemble(self, profiles):
        return [f"passage: {p.biography}" for p in profiles]

    def encode_texts(self, texts, *, batch_size=64, show_progress=False):
        self.encoded.extend(texts)
        return np.stack([_vecs(1, seed=len(t))[0] for t in texts]) if texts else np.zeros((0, DIM))


def test_cached_encoder_encodes_only_unique_misses(tmp_path) -> None:
    enc = _CountingEncoder()
    profiles = [Profile(id=str(i), biography=b) for i, b in enumerate(["a", "bb", "a", "ccc", ""])]
    with EmbeddingCache(
        tmp_path / "c.sqlite", embedding_version=enc.embedding_version, dim=DIM
    ) as cache:
        cached = CachedEncoder(enc, cache)
        first = cached.encode(profiles)
        assert sorted(enc.encoded) == sorted(
            {"passage: a", "passage: bb", "passage: ccc", "passage: "}
        )
        np.testing.assert_array_equal(first, enc.encode_texts(enc.assemble(profiles)))
        enc.encoded.clear()
        second = cached.encode([*profiles[::-1], Profile(id="x", biography="dddd")])
        assert enc.encoded == ["passage: dddd"]
        np.testing.assert_array_equal(second[:5], first[::-1])
        assert cache.hits == 5

        results: list[np.ndarray] = []
        threads = [
            threading.Thread(target=lambda: results.append(cached.encode(profiles)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4
        for r in results:
            np.testing.assert_array_equal(r, first)
    with EmbeddingCache(
        tmp_path / "c.sqlite", embedding_version="emb-bbbbbbbbbbbb", dim=DIM
    ) as other:
        with pytest.raises(VersionMismatchError, match="emb-bbbbbbbbbbbb"):
            CachedEncoder(enc, other)
        # the pair is checked once, at construction, so neither half can be swapped afterwards
        checked = CachedEncoder(enc, None)
        with pytest.raises(AttributeError):
            checked.cache = other  # type: ignore[misc]
        with pytest.raises(AttributeError):
            checked.encoder = _CountingEncoder()  # type: ignore[misc]
    assert CachedEncoder(enc, None).encode(profiles[:2]).shape == (2, DIM)


def test_lookup_and_encode_misses_are_the_steps_of_encode(tmp_path) -> None:
    """The server runs the two steps apart (batcher between); together they equal ``encode``."""
    enc = _CountingEncoder()
    texts = ["passage: a", "passage: bb", "passage: a"]
    with EmbeddingCache(
        tmp_path / "c.sqlite", embedding_version=enc.embedding_version, dim=DIM
    ) as cache:
        cached = CachedEncoder(enc, cache)
        assert cached.lookup(texts) == [None, None, None]
        vectors = cached.encode_misses(texts, batch_size=None)
        assert enc.encoded == ["passage: a", "passage: bb"]  # each distinct text once
        np.testing.assert_array_equal(vectors[0], vectors[2])
        stored = cached.lookup(texts, hashes=[text_hash(t) for t in texts])
        np.testing.assert_array_equal(np.stack(stored), vectors)  # written back before returning
        enc.encoded.clear()
        np.testing.assert_array_equal(cached.encode_texts(texts), vectors)
        assert enc.encoded == []
    assert CachedEncoder(enc, None).lookup(texts) == [None, None, None]


def test_profile_model_embeds_through_its_cache(tmp_path) -> None:
    from heads.model import ProfileModel

    enc = _CountingEncoder()
    profiles = [Profile(id=str(i), biography=b) for i, b in enumerate(["a", "bb"])]
    with EmbeddingCache(
        tmp_path / "c.sqlite", embedding_version=enc.embedding_version, dim=DIM
    ) as cache:
        model = ProfileModel(enc, {}, cache=cache)
        first = model.embed(profiles)
        enc.encoded.clear()
        np.testing.assert_array_equal(model.embed(profiles), first)
        assert enc.encoded == [] and model.cache is cache
        model.close()
    with EmbeddingCache(
        tmp_path / "c.sqlite", embedding_version="emb-bbbbbbbbbbbb", dim=DIM
    ) as other:
        with pytest.raises(VersionMismatchError):
            ProfileModel(enc, {}, cache=other)


def test_a_cache_damaged_past_its_header_is_an_artifact_error_naming_it(tmp_path) -> None:
    # The file opens (the header is fine); its pages are not: a raw sqlite3 error named no path
    # and reached the CLI as a traceback.
    path = tmp_path / "cache.sqlite"
    hashes = _hashes(2000)
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as cache:
        cache.put_many(hashes, np.random.default_rng(0).random((2000, DIM)))
    data = bytearray(path.read_bytes())
    data[8192:16384] = b"\xff" * 8192
    path.write_bytes(bytes(data))
    with EmbeddingCache(path, embedding_version="emb-aaaaaaaaaaaa", dim=DIM) as damaged:
        with pytest.raises(ArtifactError, match=f"{path}.*delete the file"):
            damaged.get_many(hashes)
