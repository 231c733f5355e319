"""``profile-embed index build``: IVF / IVF-PQ from Parquet embeddings, recall, PQ decision."""

from __future__ import annotations

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

DIM = 32
VERSION = "emb-0123456789ab"


def _write_embeddings(root, n=6000, files=3, seed=0, version=VERSION):
    """Clustered unit vectors in the batch output layout (results/*.parquet)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(40, DIM))
    x = centers[rng.integers(0, 40, n)] + 0.35 * rng.normal(size=(n, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    (root / "results").mkdir(parents=True)
    for i in range(files):
        part = x[i::files]
        ids = [f"p{j}" for j in range(i, n, files)]
        table = pa.table({
            "id": ids,
            "embedding_version": [version] * len(ids),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(part.ravel()), DIM),
        })  # fmt: skip
        pq.write_table(table, root / "results" / f"part-{i}.parquet")
    return x


def test_flat_ivf_recall_is_exact_when_probing_every_list(tmp_path):
    from embedder.index import SimilarityIndex
    from server.batch.index_build import IndexBuildConfig, build_index

    x = _write_embeddings(tmp_path / "emb")
    facts = build_index(
        IndexBuildConfig(
            embeddings=str(tmp_path / "emb"),
            output=tmp_path / "idx",
            nlist=32,
            n_queries=200,
            nprobe=8,
        )
    )
    assert facts["compression"] == "flat" and facts["nlist"] == 32
    assert facts["n_vectors"] + facts["n_queries_held_out"] == len(x)
    assert 0.5 < facts["recall_at_10"] <= 1.0
    # Probing fewer lists cannot find more; probing all 32 is exact search.
    by = {int(k): v for k, v in facts["recall_by_nprobe"].items()}
    assert by[1] <= by[4] <= by[16] and by[16] <= 1.0
    meta = json.loads((tmp_path / "idx" / "profiles.meta.json").read_text())
    assert meta["build"]["recall_at_10"] == facts["recall_at_10"]
    index = SimilarityIndex.load(tmp_path / "idx", embedding_version=VERSION, dim=DIM)
    assert len(index) == facts["n_vectors"] and index.kind == "ivf"
    ids, _ = index.search(x[:5], k=3)
    assert all(len(row) == 3 for row in ids)


def test_ids_twice_in_the_folder_count_once_and_held_out_queries_stay_out(tmp_path):
    """Two batch runs in one folder (two specs) hold every id twice: the index holds each id
    once, and a held-out query's twin must not be in the index (its recall would be free)."""
    from embedder.index import SimilarityIndex
    from server.batch.index_build import IndexBuildConfig, build_index

    x = _write_embeddings(tmp_path / "emb", n=2000, files=2)
    results = tmp_path / "emb" / "results"
    for part in sorted(results.glob("*.parquet")):
        (results / f"again-{part.name}").write_bytes(part.read_bytes())
    facts = build_index(
        IndexBuildConfig(
            embeddings=str(tmp_path / "emb"), output=tmp_path / "idx", nlist=16, n_queries=100
        )
    )
    assert facts["duplicate_ids_skipped"] == len(x)
    assert facts["n_queries_held_out"] == 100
    assert facts["n_vectors"] + facts["n_queries_held_out"] == len(x)
    index = SimilarityIndex.load(tmp_path / "idx", embedding_version=VERSION, dim=DIM)
    assert len(index) == len(x) - 100


def test_pq_is_chosen_when_vectors_exceed_memory_and_reports_recall(tmp_path):
    from server.batch.index_build import IndexBuildConfig, build_index

    _write_embeddings(tmp_path / "emb")
    facts = build_index(
        IndexBuildConfig(
            embeddings=str(tmp_path / "emb"),
            output=tmp_path / "idx",
            nlist=16,
            available_bytes=100_000,
            n_queries=100,
        )
    )
    assert facts["compression"] == "pq" and facts["pq_m"] == 4
    assert facts["estimated_flat_bytes"] > 0.5 * 100_000
    assert 0.0 < facts["recall_at_10"] < 1.0


def test_refuses_mixed_versions_and_missing_embeddings(tmp_path):
    from embedder.errors import ArtifactError, InvalidInputError
    from server.batch.index_build import IndexBuildConfig, build_index

    _write_embeddings(tmp_path / "emb")
    other = tmp_path / "emb2"
    _write_embeddings(other, n=600, files=1, version="emb-ffffffffffff")
    for p in (other / "results").glob("*.parquet"):
        p.rename(tmp_path / "emb" / "results" / "other.parquet")
    with pytest.raises(ArtifactError, match="several versions"):
        build_index(IndexBuildConfig(embeddings=str(tmp_path / "emb"), output=tmp_path / "i"))
    empty = tmp_path / "none"
    empty.mkdir()
    pq.write_table(pa.table({"id": ["a"]}), empty / "x.parquet")
    with pytest.raises(InvalidInputError, match="with-embeddings"):
        build_index(IndexBuildConfig(embeddings=str(empty), output=tmp_path / "j"))


def test_build_and_save_refuse_another_version_with_one_error(tmp_path):
    """``index build`` and ``SimilarityIndex.save`` share the writer, so they refuse alike."""
    from embedder.errors import VersionMismatchError
    from embedder.index import SimilarityIndex
    from server.batch.index_build import IndexBuildConfig, build_index

    _write_embeddings(tmp_path / "emb", n=600, files=1)
    SimilarityIndex("emb-ffffffffffff", DIM).save(tmp_path / "taken")
    with pytest.raises(VersionMismatchError) as built:
        build_index(IndexBuildConfig(embeddings=str(tmp_path / "emb"), output=tmp_path / "taken"))
    with pytest.raises(VersionMismatchError) as saved:
        SimilarityIndex(VERSION, DIM).save(tmp_path / "taken")
    assert str(built.value) == str(saved.value)
    assert "emb-ffffffffffff" in str(built.value) and VERSION in str(built.value)


def test_cli_index_build(tmp_path, capsys):
    from server.cli import main

    _write_embeddings(tmp_path / "emb", n=3000)
    code = main(["index", "build", "--embeddings", str(tmp_path / "emb"), "-o",
                 str(tmp_path / "idx"), "--nlist", "16", "--queries", "50"])  # fmt: skip
    assert code == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert facts["embedding_version"] == VERSION and "recall_at_10" in facts
