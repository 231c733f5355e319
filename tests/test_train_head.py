"""train-head: a new head on cached frozen embeddings; encoder bit-identical; errors."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from embedder.data import LabelledProfile, write_profiles
from embedder.profile import Profile

CITIES = {"FR": "paris lyon", "BR": "são paulo rio", "JP": "tokyo"}
TOPICS = {"food": "food coffee", "travel": "travel beach", "fitness": "gym"}


def rows(n: int, seed: int) -> list[LabelledProfile]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c, t = rng.choice(sorted(CITIES)), sorted(TOPICS)[i % 3]
        p = Profile(
            id=f"{seed}-{i}", biography=f"{CITIES[c]} {TOPICS[t]}", captions=(f"{TOPICS[t]} post",)
        )
        out.append(LabelledProfile(p, {"country": c, "category": t}))
    return out


@pytest.fixture
def model_dir(writable_model_dir) -> Path:
    """A model folder (encoder + unfitted geolocation head), written the way train does; this
    test's own copy, as train-head adds heads to it."""
    return writable_model_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("data")
    write_profiles(d / "train.jsonl", rows(60, 1))
    write_profiles(d / "val.jsonl", rows(30, 2))
    return d / "train.jsonl", d / "val.jsonl"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_head_adds_versions_and_leaves_encoder_bit_identical(
    model_dir, data, tmp_path, capsys
):
    from heads.model import ProfileModel
    from server.cli import main

    weights = model_dir / "encoder" / "model.safetensors"
    before = {
        p.relative_to(model_dir): _sha(p) for p in (model_dir / "encoder").rglob("*") if p.is_file()
    }
    assert weights.relative_to(model_dir) in before
    cache = tmp_path / "cache.sqlite"
    args = [
        "train-head",
        "--model",
        str(model_dir),
        "--head",
        "category",
        "--train",
        str(data[0]),
        "--val",
        str(data[1]),
        "--cache",
        str(cache),
        "--epochs",
        "50",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["head_version"] == 1 and first["cache"]["misses"] > 0
    after = {
        p.relative_to(model_dir): _sha(p) for p in (model_dir / "encoder").rglob("*") if p.is_file()
    }
    assert after == before

    assert main(args) == 0  # again: embeddings come from the cache, a new version is written
    second = json.loads(capsys.readouterr().out)
    total = first["cache"]["hits"] + first["cache"]["misses"]
    assert second["head_version"] == 2 and second["cache"] == {"hits": total, "misses": 0}
    assert (model_dir / "heads" / "category" / "v1" / "head_config.json").is_file()
    for k in (1, 2):  # each version's model card names its own version
        card = (model_dir / "heads" / "category" / f"v{k}" / "README.md").read_text()
        assert f"- head_version: `{k}`" in card

    model = ProfileModel.load(model_dir)
    assert model.embedding_version == first["embedding_version"]
    assert model.head("category").head_version == 2
    preds = model.predict([r.profile for r in rows(4, 3)], heads=["category"])["category"]
    assert len(preds) == 4 and all(
        p.argmax in ("food", "travel", "fitness") or p.argmax for p in preds
    )


def test_train_head_errors(model_dir, data, tmp_path, capsys):
    from server.cli import main

    base = ["train-head", "--model", str(model_dir), "--cache", ""]
    assert main([*base, "--head", "language", "--train", str(data[0]), "--val", str(data[1])]) == 2
    assert "unknown head 'language'" in capsys.readouterr().err

    one = [LabelledProfile(r.profile, {"category": "food"}) for r in rows(10, 4)]
    write_profiles(tmp_path / "one.jsonl", one)
    assert (
        main(
            [
                *base,
                "--head",
                "category",
                "--train",
                str(tmp_path / "one.jsonl"),
                "--val",
                str(data[1]),
            ]
        )
        == 2
    )
    assert "needs at least 2 classes" in capsys.readouterr().err

    nolab = [LabelledProfile(r.profile, {"country": "FR"}) for r in rows(10, 5)]
    write_profiles(tmp_path / "nolab.jsonl", nolab)
    assert (
        main(
            [
                *base,
                "--head",
                "category",
                "--train",
                str(data[0]),
                "--val",
                str(tmp_path / "nolab.jsonl"),
            ]
        )
        == 2
    )
    assert "no validation row has a 'category' label" in capsys.readouterr().err

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    heads_before = sorted(p.name for p in (bad / "heads").rglob("*"))
    meta = json.loads((bad / "model.json").read_text())
    meta["embedding_version"] = "emb-000000000000"
    (bad / "model.json").write_text(json.dumps(meta))
    args = ["train-head", "--model", str(bad), "--cache", "", "--head", "category"]
    assert main([*args, "--train", str(data[0]), "--val", str(data[1])]) == 1
    assert "emb-000000000000" in capsys.readouterr().err
    assert sorted(p.name for p in (bad / "heads").rglob("*")) == heads_before
