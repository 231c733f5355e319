"""The head plug-in path: every built-in kind registers, and the ``knn`` head goes end to end.

``train-head --kind knn`` on a tiny model folder, then save -> load -> predict in process, through
a real gRPC server on 127.0.0.1:0, and through the batch job's predictor.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedder.data import LabelledProfile, write_profiles
from embedder.errors import ArtifactError, InvalidInputError
from embedder.profile import Profile
from heads.base import Head
from heads.registry import BUILTIN_HEADS, available_kinds, build_head, get_head_class, load_head

ROOT = Path(__file__).resolve().parents[1]
CITIES = {"FR": "paris lyon", "BR": "são paulo rio", "JP": "tokyo osaka", "DE": "berlin köln"}
MOODS = {"positive": "love it great", "negative": "awful hate it"}


def _blobs(n: int, k: int, d: int = 16, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 2.0
    y = rng.integers(k, size=n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _knn(k_labels: int = 3, d: int = 16, **cfg) -> Head:
    labels = tuple(f"c{i}" for i in range(k_labels))
    return build_head("knn", name="t", labels=labels, embedding_version="emb-t", in_dim=d, **cfg)


def test_every_builtin_kind_is_registered_by_its_module():
    assert available_kinds() == sorted(BUILTIN_HEADS)
    for kind, module in BUILTIN_HEADS.items():
        cls = get_head_class(kind)
        assert cls.kind == kind and cls.__module__ == module and issubclass(cls, Head)


def test_knn_head_predicts_abstains_and_round_trips(tmp_path):
    x, y = _blobs(600, 3, seed=1)
    head = _knn().fit(x[:300], y[:300], val_embeddings=x[300:400], val_labels=y[300:400])
    probs = head.predict_proba(x[400:])
    assert probs.shape == (200, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs.argmax(axis=1) == y[400:]).mean() > 0.9
    preds = head.predict(x[400:])
    assigned = [p for p in preds if p.label is not None]
    assert assigned and all(p.reason is None for p in assigned)
    assert (
        np.mean([p.label == f"c{t}" for p, t in zip(preds, y[400:], strict=True) if p.label]) > 0.9
    )
    # far from every training row: out of distribution
    far = head.predict(-50 * np.abs(x[:2]) - 100)
    assert all(p.reason == "out_of_distribution" for p in far)
    loaded = load_head(head.save(tmp_path / "t" / "v1"), embedding_version="emb-t")
    assert type(loaded) is type(head) and loaded.labels == head.labels
    np.testing.assert_allclose(loaded.predict_proba(x[400:]), probs, atol=1e-7)
    np.testing.assert_array_equal(loaded.thresholds_, head.thresholds_)
    assert [p.reason for p in loaded.predict(x[400:])] == [p.reason for p in preds]
    cfg = json.loads((tmp_path / "t" / "v1" / "head_config.json").read_text())
    assert cfg["kind"] == "knn" and cfg["k"] == 10 and cfg["format_version"] == 1


def test_knn_cross_fit_adds_out_of_fold_calibration_rows():
    x, y = _blobs(400, 3, seed=2)
    head = _knn().fit(
        x[:300], y[:300], val_embeddings=x[300:330], val_labels=y[300:330], cross_fit=5
    )
    assert head.calibration_ is not None and head.calibration_["n_val"] == 330
    alone = _knn().fit(x[:300], y[:300], cross_fit=5)  # no validation rows: out-of-fold only
    assert alone.thresholds_ is not None and alone.in_distribution(x[:5]) is None


def test_knn_refusals():
    with pytest.raises(InvalidInputError, match="unknown knn settings"):
        _knn(hidden=3)
    with pytest.raises(InvalidInputError, match="k must be"):
        _knn(k=0)
    x, y = _blobs(50, 3)
    with pytest.raises(InvalidInputError, match="one class only"):
        _knn().fit(x, np.zeros(50, dtype=int))
    with pytest.raises(InvalidInputError, match="fit it first"):
        _knn().predict(x)
    with pytest.raises(InvalidInputError, match="in_dim=16"):
        _knn().fit(x, y).predict(x[:, :8])


def test_knn_load_refuses_arrays_that_do_not_match(tmp_path):
    from safetensors.numpy import save_file

    x, y = _blobs(60, 3)
    folder = _knn().fit(x, y).save(tmp_path / "v1")
    save_file({"embeddings": x[:, :8].copy(), "targets": y}, str(folder / "model.safetensors"))
    with pytest.raises(ArtifactError, match="in_dim 16"):
        load_head(folder)


def test_loading_a_knn_head_imports_no_torch(tmp_path):
    x, y = _blobs(60, 3)
    folder = _knn().fit(x, y, val_embeddings=x, val_labels=y).save(tmp_path / "v1")
    code = (
        "import sys\nfrom heads.registry import load_head\n"
        f"h = load_head({str(folder)!r})\nh.predict(h.embeddings_[:3])\n"
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# ---------------------------------------------------------------------- end to end
def _rows(n: int, seed: int) -> list[LabelledProfile]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c, m = rng.choice(sorted(CITIES)), rng.choice(sorted(MOODS))
        p = Profile(
            id=f"{seed}-{i}", biography=CITIES[c], captions=(MOODS[m],), extra={"sentiment": m}
        )
        out.append(LabelledProfile(p, {"country": c}))
    return out


@pytest.fixture(scope="module")
def knn_model(encoder_only_model_dir, tmp_path_factory) -> Path:
    """A tiny model folder with a ``mood`` head trained by ``train-head --kind knn``."""
    from conftest import copy_model_dir

    from server.cli import main

    path = copy_model_dir(encoder_only_model_dir, tmp_path_factory.mktemp("m") / "model")
    d = tmp_path_factory.mktemp("d")
    write_profiles(d / "train.jsonl", _rows(120, 1))
    write_profiles(d / "val.jsonl", _rows(60, 2))
    args = ["train-head", "--model", str(path), "--head", "mood", "--label-field", "sentiment"]
    args += ["--kind", "knn", "--k", "5", "--cache", "", "--train", str(d / "train.jsonl")]
    assert main([*args, "--val", str(d / "val.jsonl")]) == 0
    return path


QUERIES = [("paris lyon", "awful hate it"), ("tokyo osaka", "love it great")]


def test_train_head_kind_knn_writes_a_knn_head(knn_model, capsys):
    from heads.model import ProfileModel

    cfg = json.loads((knn_model / "heads" / "mood" / "v1" / "head_config.json").read_text())
    assert cfg["kind"] == "knn" and cfg["k"] == 5 and cfg["label_field"] == "sentiment"
    model = ProfileModel.load(knn_model)
    head = model.head("mood")
    assert head.kind == "knn" and head.labels == ("negative", "positive")
    out = model.predict([Profile(id=b, biography=b, captions=(c,)) for b, c in QUERIES])
    assert [p.argmax for p in out["mood"]] == ["negative", "positive"]
    assert "geolocation" in out


def test_predict_command_reads_a_knn_head(knn_model, tmp_path):
    from server.cli import main

    rows = [{"id": b, "biography": b, "captions": [c]} for b, c in QUERIES]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert (
        main(["predict", "--model", str(knn_model), str(tmp_path / "in.jsonl"), "-o", str(out)])
        == 0
    )
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [line["mood"]["argmax"] for line in lines] == ["negative", "positive"]


def test_a_knn_head_is_served_over_grpc(knn_model):
    from server_helpers import ServerThread

    from server.client import ProfileEmbeddingClient
    from server.config import ServerConfig

    server = ServerThread(ServerConfig(model=knn_model, port=0, metrics_port=None))
    try:
        with ProfileEmbeddingClient(server.target) as client:
            kinds = {h["name"]: h["kind"] for h in client.info()["heads"]}
            rows = client.predict(
                [{"id": b, "biography": b, "captions": [c]} for b, c in QUERIES], heads=["mood"]
            )
    finally:
        server.stop()
    assert kinds["mood"] == "knn"
    assert [r["predictions"]["mood"]["argmax"] for r in rows] == ["negative", "positive"]


def test_the_batch_predictor_runs_a_knn_head(knn_model, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from heads.model import ProfileModel
    from server.batch.incremental import JobSpec
    from server.batch.predictor import BatchPredictor, result_schema
    from server.batch.sources import CHUNK_COLUMNS

    model = ProfileModel.load(knn_model, heads=["mood"])
    spec = JobSpec(
        embedding_version=model.embedding_version,
        heads={"mood": model.head("mood").head_version},
        with_embeddings=False,
        with_probabilities=True,
        keep_fields=(),
    )
    schema = result_schema(spec, model.encoder.dim, {"mood": model.head("mood").labels})
    predictor = BatchPredictor(
        model_dir=str(knn_model),
        spec=spec.to_dict(),
        tmp_dir=str(tmp_path),
        schema_bytes=schema.serialize().to_pybytes(),
    )
    cols = {c: [] for c in CHUNK_COLUMNS}
    for i, (bio, cap) in enumerate(QUERIES, start=1):
        row = {"file_key": "f0", "row": i, "n_in_file": 2, "id": bio, "username": ""}
        row |= {"full_name": "", "biography": bio, "captions": [cap], "keep": None}
        for c in CHUNK_COLUMNS:
            cols[c].append(row.get(c))
    out = predictor(pa.table(cols))
    assert out["n_written"] == [2]
    (part,) = list(tmp_path.rglob("*.parquet"))
    table = pq.read_table(part).to_pydict()
    assert table["mood_argmax"] == ["negative", "positive"]


def test_train_head_refuses_settings_of_another_kind(knn_model, tmp_path, capsys):
    from server.cli import main

    write_profiles(tmp_path / "t.jsonl", _rows(40, 3))
    args = ["train-head", "--model", str(knn_model), "--head", "mood2", "--cache", ""]
    args += ["--label-field", "sentiment", "--train", str(tmp_path / "t.jsonl")]
    args += ["--val", str(tmp_path / "t.jsonl"), "--kind", "knn", "--hidden", "8"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "['hidden'] do not apply to a 'knn' head" in err and "Traceback" not in err
    assert main([*args[:-4], "--kind", "tree"]) == 2
    assert "invalid choice: 'tree'" in capsys.readouterr().err
