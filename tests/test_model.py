"""Model folders (save_model, add_head, ProfileModel) and the predict / evaluate / audience CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from embedder.errors import ArtifactError, UnknownHeadError, VersionMismatchError
from embedder.profile import Profile
from heads import standard_head
from heads.model import ProfileModel, add_head, head_versions, save_model
from server.cli import main

CITIES = {"FR": ["paris", "lyon"], "BR": ["rio", "são paulo"], "JP": ["tokyo"], "GB": ["london"]}


def _records(n_per: int, offset: int = 0) -> list[dict]:
    out = []
    for c, cities in CITIES.items():
        for i in range(n_per):
            city = cities[i % len(cities)]
            out.append(
                {
                    "id": f"{c}-{offset + i}",
                    "username": f"user{i}",
                    "biography": f"based in {city} {city}",
                    "captions": [f"love {city}"],
                    "country": c,
                    "language": "xx" if c == "FR" else "yy",
                }
            )
    return out


@pytest.fixture(scope="module")
def built(tiny_encoder, tmp_path_factory):
    encoder = tiny_encoder
    train, val = _records(12), _records(30, offset=100)
    profiles = lambda rs: [Profile.from_dict(r, extra_exclude=("country",))[0] for r in rs]  # noqa: E731
    x, vx = encoder.encode(profiles(train)), encoder.encode(profiles(val))
    head = standard_head(
        "geolocation", embedding_version=encoder.embedding_version, in_dim=encoder.dim
    )
    head.fit(
        x,
        [r["country"] for r in train],
        val_embeddings=vx,
        val_labels=[r["country"] for r in val],
        missing_classes="abstain",
        epochs=200,
        lr=5e-2,
    )
    root = tmp_path_factory.mktemp("models")
    path = save_model(root / "m1", encoder, {"geolocation": head}, extra={"note": "test"})
    return encoder, head, path, val


def test_save_model_layout_and_refusal(built):
    encoder, head, path, _ = built
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == 1 and meta["embedding_version"] == encoder.embedding_version
    assert meta["heads"] == ["geolocation"] and meta["note"] == "test"
    assert (path / "heads" / "geolocation" / "v1" / "model.safetensors").is_file()
    assert (path / "encoder").is_dir()
    with pytest.raises(ArtifactError, match="never overwritten"):
        save_model(path, encoder, [head])
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())


def test_profile_model_round_trip_and_errors(built):
    encoder, head, path, val = built
    model = ProfileModel.load(path)
    assert model.head_names == ["geolocation"]
    assert model.embedding_version == encoder.embedding_version
    profiles = [Profile.from_dict(r, extra_exclude=("country",))[0] for r in val[:20]]
    got = model.predict(profiles)["geolocation"]
    want = head.predict(encoder.encode(profiles))
    np.testing.assert_allclose(
        [p.probabilities for p in got], [p.probabilities for p in want], atol=1e-6
    )
    assert [p.label for p in got] == [p.label for p in want]
    emb = model.embed(profiles)
    assert [p.argmax for p in model.predict(emb)["geolocation"]] == [p.argmax for p in got]
    assert model.predict([]) == {"geolocation": []}
    with pytest.raises(UnknownHeadError, match=r"available heads: \['geolocation'\]"):
        ProfileModel.load(path, heads=["category"])
    with pytest.raises(UnknownHeadError, match=r"this model has heads \['geolocation'\]"):
        model.predict(emb, heads=["category"])
    with pytest.raises(ArtifactError, match=r"model\.json is missing"):
        ProfileModel.load(path / "heads")


def _tree_hash(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_add_head_new_version_and_version_refusal(built, tmp_path):
    import shutil

    encoder, _, path, _ = built
    copy = tmp_path / "m"
    shutil.copytree(path, copy)
    before = _tree_hash(copy / "encoder")
    cat = standard_head("category", embedding_version=encoder.embedding_version, in_dim=encoder.dim)
    new = add_head(copy, cat)
    assert new.name == "v1" and head_versions(copy, "category") == [1]
    geo2 = standard_head(
        "geolocation", embedding_version=encoder.embedding_version, in_dim=encoder.dim, seed=5
    )
    assert add_head(copy, geo2).name == "v2"
    assert _tree_hash(copy / "encoder") == before
    model = ProfileModel.load(copy)
    assert model.head_names == ["category", "geolocation"]
    assert model.heads["geolocation"].head_version == 2
    alien = standard_head("category", embedding_version="emb-000000000000", in_dim=encoder.dim)
    with pytest.raises(VersionMismatchError, match="emb-000000000000"):
        add_head(copy, alien)
    # a head of another version placed by hand is refused at load, naming both versions
    alien.save(copy / "heads" / "category" / "v9")
    with pytest.raises(VersionMismatchError) as err:
        ProfileModel.load(copy)
    assert "emb-000000000000" in str(err.value) and encoder.embedding_version in str(err.value)


def test_cli_predict_evaluate_audience(built, tmp_path, capsys):
    _, _, path, val = built
    rows = val[:10]
    lines = [json.dumps(r) for r in rows[:4]] + ['{"id": 5, "captions": "not a list"}', "{bad json"]
    lines += [json.dumps(r) for r in rows[4:]]
    inp = tmp_path / "in.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(path), str(inp), "-o", str(out), "--skip-invalid"])
    assert code == 1  # invalid rows skipped -> exit 1 at the end, valid rows still written
    err = capsys.readouterr().err
    assert f"{inp}:5: field 'captions'" in err and f"{inp}:6:" in err
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == [r["id"] for r in rows]
    g = recs[0]["geolocation"]
    assert set(g) == {"label", "argmax", "score", "reason", "probabilities"}
    assert len(g["probabilities"]) == 37
    assert g["label"] in (None, g["argmax"])
    assert all(
        (r["geolocation"]["label"] is None) == (r["geolocation"]["reason"] is not None)
        for r in recs
    )

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in val) + "\n")
    report = tmp_path / "report"
    assert (
        main(["evaluate", "--model", str(path), "--data", str(data), "--report", str(report)]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    geo = summary["heads"]["geolocation"]
    assert geo["n"] == len(val)
    lo, hi = geo["intervals"]["accuracy"]  # how far the figure could move on another sample
    assert lo <= geo["accuracy"] <= hi and geo["intervals"]["confidence"] == 0.95
    assert {"REPORT.md", "metrics.json", "geolocation_confusion.png"} <= {
        p.name for p in report.iterdir()
    }
    metrics = json.loads((report / "metrics.json").read_text())["geolocation"]
    assert "language=xx" in metrics["slices"]

    fol = tmp_path / "followers.jsonl"
    fol.write_text(
        "\n".join(
            json.dumps({**r, "influencer_id": "inf1" if i % 2 else "inf2"})
            for i, r in enumerate(val)
        )
        + "\n"
    )
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"inf1": {"FR": 0.25, "BR": 0.25, "JP": 0.25, "GB": 0.25}}))
    adir = tmp_path / "aud"
    assert (
        main(
            [
                "audience",
                "--model",
                str(path),
                str(fol),
                "--out",
                str(adir),
                "--bootstrap",
                "20",
                "--truth",
                str(truth),
            ]
        )
        == 0
    )
    outs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    by_id = {o.get("influencer_id"): o for o in outs}
    assert by_id["inf1"]["n_followers"] == 60 and "mae" in by_id["inf1"]
    assert abs(sum(v["share"] for v in by_id["inf2"]["shares"].values()) - 1) < 0.05
    assert (adir / "audience_inf1.png").read_bytes()[:4] == b"\x89PNG"
    assert outs[-1]["audiences_with_truth"] == 1


def test_cli_evaluate_scores_the_heads_the_data_has_labels_for(built, tmp_path, capsys):
    encoder, geo, _, val = built
    profiles = [Profile.from_dict(r, extra_exclude=("country",))[0] for r in val]
    x = encoder.encode(profiles)
    cats = ["food" if i % 2 else "travel" for i in range(len(val))]
    cat = standard_head("category", embedding_version=encoder.embedding_version, in_dim=encoder.dim)
    cat.fit(x, cats, val_embeddings=x, val_labels=cats, missing_classes="abstain", epochs=20)
    path = save_model(tmp_path / "two", encoder, {"geolocation": geo, "category": cat})
    data = tmp_path / "countries.jsonl"  # country labels only, as a user's real labels would be
    data.write_text("\n".join(json.dumps(r) for r in val) + "\n")
    argv = ["evaluate", "--model", str(path), "--data", str(data)]
    assert main([*argv, "--report", str(tmp_path / "r1")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["heads"]) == ["geolocation"]
    assert summary["heads"]["geolocation"]["n"] == len(val)
    assert summary["not_evaluated"] == {"category": "no labels for it in the data"}
    assert json.loads((tmp_path / "r1" / "metrics.json").read_text()).keys() == {"geolocation"}
    # a head asked for by name still needs its labels
    assert main([*argv, "--report", str(tmp_path / "r2"), "--heads", "category"]) == 2
    assert "no rows with the 'category' label needed by head 'category'" in capsys.readouterr().err
    # and data no head can be scored on is refused, naming what each head needs
    bare = tmp_path / "bare.jsonl"
    bare.write_text("\n".join(json.dumps({"id": r["id"], "biography": "x"}) for r in val) + "\n")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(path),
                "--data",
                str(bare),
                "--report",
                str(tmp_path / "r3"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "('category' for head 'category', 'country' for head 'geolocation')" in err
