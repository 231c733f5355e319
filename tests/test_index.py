"""SimilarityIndex: exact/IVF switch, upsert semantics, version pinning, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedder.errors import ArtifactError, EmbedderError, InvalidInputError, VersionMismatchError
from embedder.index import INDEX_FILE, META_FILE, SimilarityIndex

DIM = 16


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_finds_itself_and_upsert_replaces() -> None:
    rng = np.random.default_rng(0)
    vecs = _unit(rng, 50)
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM)
    index.upsert([f"p{i}" for i in range(50)], vecs)
    ids, scores = index.search(vecs[:3], k=5)
    assert [row[0] for row in ids] == ["p0", "p1", "p2"]
    assert scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert scores[0] == sorted(scores[0], reverse=True)

    new = _unit(rng, 1)
    index.upsert(["p0"], new)
    assert len(index) == 50
    ids, scores = index.search(new, k=50)
    assert ids[0][0] == "p0" and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert ids[0].count("p0") == 1
    old_ids, old_scores = index.search(vecs[0], k=1)
    assert not (old_ids[0] == ["p0"] and old_scores[0][0] > 0.999)  # the old vector is gone


def test_search_by_id_excludes_itself_and_remove() -> None:
    rng = np.random.default_rng(1)
    vecs = _unit(rng, 20)
    vecs[1] = vecs[0] * 0.9 + 0.1 * vecs[1]  # p1 is p0's nearest neighbour
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM)
    index.upsert([f"p{i}" for i in range(20)], vecs)
    ids, scores = index.search_by_id("p0", k=3)
    assert "p0" not in ids and ids[0] == "p1" and len(ids) == 3 and len(scores) == 3
    assert index.remove(["p1", "nope"]) == 1
    assert "p1" not in index and len(index) == 19
    assert "p1" not in index.search_by_id("p0", k=19)[0]
    with pytest.raises(InvalidInputError, match="p1"):
        index.search_by_id("p1")


def test_wrong_dim_and_duplicates_refused() -> None:
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM)
    with pytest.raises(InvalidInputError, match=r"\(n, 16\)"):
        index.upsert(["a"], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="unique"):
        index.upsert(["a", "a"], np.ones((2, DIM), dtype=np.float32))
    with pytest.raises(InvalidInputError):
        index.search(np.ones(8), k=1)
    assert index.search(np.ones(DIM), k=3) == ([[]], [[]])
    index.upsert([], [])  # an empty batch, however it is spelled
    index.upsert([], np.zeros((0, DIM)))
    assert len(index) == 0
    index.upsert([5], np.ones((1, DIM)))  # ids are strings, whatever was given
    assert 5 in index and "5" in index


def test_save_load_round_trip_and_version_refusal(tmp_path) -> None:
    rng = np.random.default_rng(2)
    vecs = _unit(rng, 30)
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM)
    index.upsert([f"p{i}" for i in range(30)], vecs)
    index.remove(["p3"])
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / META_FILE).read_text())
    assert (
        meta["embedding_version"] == "emb-aaaaaaaaaaaa"
        and meta["kind"] == "flat"
        and meta["dim"] == DIM
    )
    assert (tmp_path / "idx" / INDEX_FILE).is_file()

    loaded = SimilarityIndex.load(tmp_path / "idx", embedding_version="emb-aaaaaaaaaaaa", dim=DIM)
    assert len(loaded) == 29 and loaded.ids() == index.ids()
    assert loaded.search(vecs[5:8], k=4) == index.search(vecs[5:8], k=4)
    loaded.upsert(["p5", "new"], _unit(rng, 2))  # labels keep growing after a reload
    assert len(loaded) == 30 and loaded.search_by_id("p5", k=1)[0] != ["p5"]

    with pytest.raises(VersionMismatchError) as err:
        SimilarityIndex.load(tmp_path / "idx", embedding_version="emb-bbbbbbbbbbbb")
    assert "emb-aaaaaaaaaaaa" in str(err.value) and "emb-bbbbbbbbbbbb" in str(err.value)
    assert str(tmp_path / "idx") in str(err.value)
    with pytest.raises(VersionMismatchError, match="dim"):
        SimilarityIndex.load(tmp_path / "idx", embedding_version="emb-aaaaaaaaaaaa", dim=DIM * 2)
    with pytest.raises(VersionMismatchError):
        SimilarityIndex("emb-bbbbbbbbbbbb", DIM).save(tmp_path / "idx")
    with pytest.raises(ArtifactError, match="missing"):
        SimilarityIndex.load(tmp_path / "nothing", embedding_version=None)
    meta["format_version"] = 99  # written by a later version: refused, not misread
    (tmp_path / "idx" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version 99"):
        SimilarityIndex.load(tmp_path / "idx", embedding_version=None)


def test_switches_to_ivf_with_sane_recall(tmp_path) -> None:
    rng = np.random.default_rng(3)
    centers = _unit(rng, 40)
    vecs = centers[rng.integers(0, 40, 4000)] + 0.15 * rng.standard_normal((4000, DIM)).astype(
        np.float32
    )
    ids = [f"p{i}" for i in range(4000)]
    exact = SimilarityIndex("emb-aaaaaaaaaaaa", DIM, ivf_threshold=10_000)
    exact.upsert(ids, vecs)
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM, ivf_threshold=3000, nprobe=8)
    index.upsert(ids[:2000], vecs[:2000])
    assert index.kind == "flat"
    index.upsert(ids[2000:], vecs[2000:])
    assert index.kind == "ivf" and exact.kind == "flat" and len(index) == 4000

    queries = vecs[rng.choice(4000, 100, replace=False)] + 0.05 * rng.standard_normal(
        (100, DIM)
    ).astype(np.float32)
    truth, _ = exact.search(queries, k=10)
    got, _ = index.search(queries, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got, strict=True)])
    assert recall >= 0.8

    index.upsert(["p0"], vecs[1:2])  # replace inside the IVF index
    assert len(index) == 4000 and index.search_by_id("p1", k=1)[0] == ["p0"]
    index.save(tmp_path / "ivf")
    loaded = SimilarityIndex.load(tmp_path / "ivf", embedding_version="emb-aaaaaaaaaaaa")
    assert loaded.kind == "ivf" and loaded.search(queries[:5], k=10) == index.search(
        queries[:5], k=10
    )
    assert loaded.search_by_id("p1", k=1)[0] == ["p0"]


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_get_vectors_flat_after_upsert_and_reload(tmp_path) -> None:
    from embedder.errors import UnknownIdError

    rng = np.random.default_rng(4)
    raw = rng.standard_normal((12, DIM)).astype(np.float32) * 3.0  # not unit: stored normalised
    ids = [f"p{i}" for i in range(12)]
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM)
    index.upsert(ids, raw)
    want = _normalised(raw)
    np.testing.assert_array_equal(index.get_vectors(ids), want)
    got = index.get_vectors(["p7", "p2", "p7"])  # any order, repeats allowed
    assert got.dtype == np.float32 and got.shape == (3, DIM)
    np.testing.assert_array_equal(got, want[[7, 2, 7]])
    assert index.get_vectors([]).shape == (0, DIM)
    assert "p3" in index and "nope" not in index and index.ids() == ids

    new = rng.standard_normal((1, DIM)).astype(np.float32)
    index.upsert(["p2"], new)  # replaced: the new vector comes back, p2 moves to the end
    np.testing.assert_array_equal(index.get_vectors(["p2"]), _normalised(new))
    assert index.ids() == [i for i in ids if i != "p2"] + ["p2"]
    index.remove(["p5"])

    index.save(tmp_path / "idx")
    loaded = SimilarityIndex.load(tmp_path / "idx", embedding_version="emb-aaaaaaaaaaaa")
    keep = index.ids()
    np.testing.assert_array_equal(loaded.get_vectors(keep), index.get_vectors(keep))
    assert "p5" not in loaded and loaded.ids() == index.ids()

    with pytest.raises(UnknownIdError) as err:
        loaded.get_vectors(["p1", "p5", "ghost", "p5"])
    assert err.value.ids == ("p5", "ghost")
    assert "'p5'" in str(err.value) and "'ghost'" in str(err.value)
    assert "2 of the 4 ids" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, EmbedderError)


def test_get_vectors_ivf_exact_after_replace_and_reload(tmp_path) -> None:
    from embedder.errors import UnknownIdError

    rng = np.random.default_rng(5)
    raw = rng.standard_normal((600, DIM)).astype(np.float32)
    ids = [f"p{i}" for i in range(600)]
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM, ivf_threshold=500, nprobe=4)
    index.upsert(ids, raw)
    assert index.kind == "ivf"
    want = _normalised(raw)
    np.testing.assert_array_equal(index.get_vectors(ids), want)
    index.upsert(["p10"], raw[11:12] * 2)  # replace inside the IVF index
    np.testing.assert_array_equal(index.get_vectors(["p10", "p11"]), want[[11, 11]])
    index.save(tmp_path / "ivf")
    loaded = SimilarityIndex.load(tmp_path / "ivf", embedding_version="emb-aaaaaaaaaaaa")
    assert loaded.kind == "ivf"
    np.testing.assert_array_equal(loaded.get_vectors(ids[:50]), index.get_vectors(ids[:50]))
    with pytest.raises(UnknownIdError, match="'missing'"):
        loaded.get_vectors(["missing"])


def test_load_adds_a_direct_map_to_an_ivf_index_without_one(tmp_path) -> None:
    import faiss

    rng = np.random.default_rng(6)
    raw = _normalised(rng.standard_normal((300, DIM)))
    index = SimilarityIndex("emb-aaaaaaaaaaaa", DIM, ivf_threshold=200)
    index.upsert([f"p{i}" for i in range(300)], raw)
    index.save(tmp_path / "ivf")
    stored = faiss.read_index(str(tmp_path / "ivf" / INDEX_FILE))
    stored.set_direct_map_type(faiss.DirectMap.NoMap)  # as a foreign writer might leave it
    faiss.write_index(stored, str(tmp_path / "ivf" / INDEX_FILE))
    loaded = SimilarityIndex.load(tmp_path / "ivf", embedding_version=None)
    np.testing.assert_array_equal(loaded.get_vectors(["p3", "p299"]), raw[[3, 299]])
