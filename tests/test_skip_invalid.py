"""``--skip-invalid`` on every command that reads profile files.

Without the flag the first invalid row stops the command (exit 2, one clear line naming the file,
line and field, no stack trace, nothing written); with it every invalid row is listed as
``file:line: field 'x': ...``, a count line follows, all valid rows are used and the exit code is 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from embedder.errors import InvalidInputError
from embedder.profile import Profile
from server.cli import main

CITIES = {"FR": "paris lyon", "BR": "são paulo rio", "JP": "tokyo", "GB": "london"}
TOPICS = ("food", "travel", "fitness")

#: One invalid line of each kind: (JSONL text, the field the error must name).
BAD = {
    "malformed_json": ('{"id": "broken", "biography": ', None),
    "wrong_type_caption": ('{"id": "cap", "captions": ["ok", 3], "country": "FR"}', "captions[1]"),
    "unknown_country": ('{"id": "zz", "biography": "paris", "country": "ZZ"}', "country"),
    "duplicate_id": ('{"id": "FR-0", "biography": "lyon", "country": "FR"}', "id"),  # 1st row's
}


def _record(i: int, country: str, prefix: str = "") -> dict:
    city = CITIES[country].split()[i % len(CITIES[country].split())]
    topic = TOPICS[i % 3]
    return {
        "id": f"{prefix}{country}-{i}",
        "username": f"user{i}",
        "biography": f"based in {city} {city} {topic}",
        "captions": [f"love {city}", f"{topic} post"],
        "country": country,
        "category": topic,
    }


def _records(n_per: int, prefix: str = "") -> list[dict]:
    return [_record(i, c, prefix) for i in range(n_per) for c in CITIES]


def _mixed_file(path: Path, records: list[dict]) -> tuple[Path, list[str], dict[int, str | None]]:
    """Valid records with each BAD line spread among them; return (path, valid ids, bad lines)."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    bad_lines: dict[int, str | None] = {}
    step = max(2, len(lines) // (len(BAD) + 1))
    for k, (text, field) in enumerate(BAD.values()):
        if field == "id":
            text = text.replace('"FR-0"', json.dumps(records[0]["id"]))
        at = min((k + 1) * step + k, len(lines))
        lines.insert(at, text)
        bad_lines[at + 1] = field
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, [r["id"] for r in records], bad_lines


def _assert_listed(err: str, path: Path, bad_lines: dict[int, str | None]) -> None:
    for line, field in bad_lines.items():
        expected = f"{path}:{line}:" + (f" field '{field}':" if field else "")
        assert expected in err, (expected, err)
    assert "Traceback" not in err


def _count_line(path: Path, n_valid: int, n_bad: int) -> str:
    return f"{path}: read {n_valid + n_bad} rows: {n_valid} valid, {n_bad} invalid (skipped)"


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tiny_encoder, tmp_path_factory) -> Path:
    """A model folder: the tiny encoder and a (briefly fitted) geolocation head."""
    from heads import standard_head
    from heads.model import save_model

    encoder = tiny_encoder
    recs = _records(6)
    profiles = [Profile.from_dict(r, extra_exclude=("country", "category"))[0] for r in recs]
    x = encoder.encode(profiles)
    head = standard_head(
        "geolocation", embedding_version=encoder.embedding_version, in_dim=encoder.dim
    )
    labels = [r["country"] for r in recs]
    head.fit(x, labels, val_embeddings=x, val_labels=labels, missing_classes="abstain", epochs=30)
    root = tmp_path_factory.mktemp("skip_invalid_models")
    return save_model(root / "m", encoder, {"geolocation": head})


# ------------------------------------------------------------------- without --skip-invalid


@pytest.mark.parametrize("kind", sorted(BAD))
def test_first_invalid_row_stops_predict_naming_file_line_field(kind, tmp_path, capsys):
    text, field = BAD[kind]
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(_record(0, "FR")) + "\n" + text + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    # the file is read before the model is loaded, so a missing model is never reached
    code = main(["predict", "--model", str(tmp_path / "no-model"), str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"profile-embed predict: error: {path}, line 2" in err
    if field is not None:
        assert f"field '{field}'" in err
    assert "Traceback" not in err and not out.exists()


def test_without_flag_every_command_stops_at_the_first_invalid_row(
    model_dir, tiny_base_dir, tmp_path, capsys
):
    path, _, bad_lines = _mixed_file(tmp_path / "mixed.jsonl", _records(3))
    first = min(bad_lines)
    m = str(model_dir)
    commands = {
        "embed": ["embed", str(path), "-o", str(tmp_path / "e.npy"), "--model", m, "--no-cache"],
        "evaluate": [
            "evaluate",
            "--model",
            m,
            "--data",
            str(path),
            "--report",
            str(tmp_path / "r"),
        ],
        "audience": ["audience", str(path), "--model", m, "--bootstrap", "0"],
        "train": [
            "train",
            "--train",
            str(path),
            "--val",
            str(path),
            "-o",
            str(tmp_path / "t"),
            "--base",
            str(tiny_base_dir),
        ],
        "train-head": [
            "train-head",
            "--model",
            m,
            "--head",
            "category",
            "--train",
            str(path),
            "--val",
            str(path),
            "--cache",
            "",
        ],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        captured = capsys.readouterr()
        assert f"profile-embed {name}: error: {path}, line {first}" in captured.err, name
        assert "Traceback" not in captured.err
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "r").exists()
    assert not (tmp_path / "t").exists()
    assert not (model_dir / "heads" / "category").exists()


# ----------------------------------------------------------------------- with --skip-invalid


def test_predict_skip_invalid_writes_exactly_the_valid_rows(model_dir, tmp_path, capsys):
    path, valid, bad_lines = _mixed_file(tmp_path / "in.jsonl", _records(3))
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(model_dir), str(path), "-o", str(out), "--skip-invalid"])
    err = capsys.readouterr().err
    assert code == 1
    _assert_listed(err, path, bad_lines)
    assert _count_line(path, len(valid), len(bad_lines)) in err
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == valid


def test_predict_skip_invalid_on_a_clean_file_exits_0_with_counts(model_dir, tmp_path, capsys):
    path = tmp_path / "clean.jsonl"
    recs = _records(1)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(model_dir), str(path), "-o", str(out), "--skip-invalid"])
    assert code == 0
    assert _count_line(path, len(recs), 0) in capsys.readouterr().err


def test_embed_skip_invalid_embeds_every_valid_row(model_dir, tmp_path, capsys):
    path, valid, bad_lines = _mixed_file(tmp_path / "in.jsonl", _records(2))
    out = tmp_path / "v.npy"
    argv = ["embed", str(path), "-o", str(out), "--model", str(model_dir), "--no-cache"]
    code = main([*argv, "--no-progress", "--skip-invalid"])
    captured = capsys.readouterr()
    assert code == 1
    _assert_listed(captured.err, path, bad_lines)
    assert _count_line(path, len(valid), len(bad_lines)) in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["embedded"] == len(valid) and summary["invalid"] == len(bad_lines)
    assert json.loads(Path(str(out) + ".ids.json").read_text())["ids"] == valid


def test_evaluate_and_audience_skip_invalid_use_every_valid_row(model_dir, tmp_path, capsys):
    path, valid, bad_lines = _mixed_file(tmp_path / "in.jsonl", _records(3))
    report = tmp_path / "report"
    argv = ["evaluate", "--model", str(model_dir), "--data", str(path), "--report", str(report)]
    assert main([*argv, "--skip-invalid"]) == 1
    captured = capsys.readouterr()
    _assert_listed(captured.err, path, bad_lines)
    assert json.loads(captured.out)["heads"]["geolocation"]["n"] == len(valid)

    argv = ["audience", str(path), "--model", str(model_dir), "--bootstrap", "0"]
    assert main([*argv, "--skip-invalid"]) == 1
    captured = capsys.readouterr()
    _assert_listed(captured.err, path, bad_lines)
    assert _count_line(path, len(valid), len(bad_lines)) in captured.err
    (record,) = [json.loads(x) for x in captured.out.splitlines()]
    assert record["n_followers"] == len(valid)


def test_train_head_skip_invalid_trains_on_the_valid_rows(model_dir, tmp_path, capsys):
    import shutil

    from heads.model import ProfileModel

    model = tmp_path / "m"
    shutil.copytree(model_dir, model)
    train, train_valid, train_bad = _mixed_file(tmp_path / "train.jsonl", _records(6))
    val, val_valid, val_bad = _mixed_file(tmp_path / "val.jsonl", _records(3, prefix="v"))
    argv = ["train-head", "--model", str(model), "--head", "category", "--cache", ""]
    argv += ["--train", str(train), "--val", str(val), "--epochs", "20", "--skip-invalid"]
    assert main(argv) == 1  # rows were skipped: the head is written, the exit code says so
    captured = capsys.readouterr()
    _assert_listed(captured.err, train, train_bad)
    _assert_listed(captured.err, val, val_bad)
    assert _count_line(train, len(train_valid), len(train_bad)) in captured.err
    assert _count_line(val, len(val_valid), len(val_bad)) in captured.err
    assert json.loads(captured.out)["head_version"] == 1
    data = ProfileModel.load(model).head("category").fit_info_["data"]
    assert data["train"]["rows_invalid"] == len(train_bad)
    assert data["val"]["rows_invalid"] == len(val_bad)


def test_train_skip_invalid_records_counts_in_training_json(tiny_base_dir, tmp_path, capsys):
    train, train_valid, train_bad = _mixed_file(tmp_path / "train.jsonl", _records(4))
    val, val_valid, val_bad = _mixed_file(tmp_path / "val.jsonl", _records(2, prefix="v"))
    out = tmp_path / "model"
    argv = ["train", "--train", str(train), "--val", str(val), "-o", str(out)]
    argv += ["--base", str(tiny_base_dir), "--layers", "1", "--epochs", "1", "--batch-size", "8"]
    argv += ["--max-tokens", "32", "--no-augment", "--patience", "0", "--device", "cpu"]
    assert main([*argv, "--skip-invalid"]) == 1
    captured = capsys.readouterr()
    _assert_listed(captured.err, train, train_bad)
    assert _count_line(val, len(val_valid), len(val_bad)) in captured.err
    info = json.loads((out / "training.json").read_text())
    assert info["data"]["train"]["rows_used"] == len(train_valid)
    assert info["data"]["train"]["rows_invalid"] == len(train_bad)
    assert info["data"]["val"] == {**info["data"]["val"], "rows": len(val_valid)}
    assert info["data"]["val"]["rows_invalid"] == len(val_bad)


def test_train_model_default_is_strict(tiny_base_dir, tmp_path):
    from heads.training.config import TrainConfig
    from heads.training.run import train_model

    train, _, bad_lines = _mixed_file(tmp_path / "train.jsonl", _records(2))
    with pytest.raises(InvalidInputError) as err:
        train_model(train, train, tmp_path / "m", TrainConfig(base=str(tiny_base_dir)))
    assert err.value.line == min(bad_lines) and err.value.source == str(train)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------- listing and client


def test_listing_is_capped_and_parquet_rows_are_named(capsys):
    from server.commands.invalid_rows import MAX_LISTED, describe, report_load

    errors = [
        InvalidInputError("bad", source="f.jsonl", line=i, field="id")
        for i in range(1, MAX_LISTED + 6)
    ]
    result = SimpleNamespace(
        errors=errors,
        rows=[],
        n_read=len(errors),
        n_invalid=len(errors),
        captions_dropped=0,
        error_counts=lambda: {"id": len(errors)},
    )
    report_load("f.jsonl", result, skip_invalid=True)
    err = capsys.readouterr().err.splitlines()
    assert err[:MAX_LISTED] == [f"f.jsonl:{i}: field 'id': bad" for i in range(1, MAX_LISTED + 1)]
    assert err[MAX_LISTED] == "... and 5 more invalid rows"
    assert err[MAX_LISTED + 1].startswith("f.jsonl: read 25 rows: 0 valid, 25 invalid (skipped)")
    assert "invalid by field: id 25" in err[MAX_LISTED + 1]
    parquet = InvalidInputError("bad", source="x.parquet", line=4, field="country")
    assert describe(parquet) == "x.parquet:row 4: field 'country': bad"


def test_client_reader_strict_and_skip(tmp_path, capsys):
    from server.commands.client import _Reader

    path, valid, bad_lines = _mixed_file(tmp_path / "in.jsonl", _records(2))
    # the client sends profiles, not labels: the unknown country is an extra, not an error
    bad_lines = {k: v for k, v in bad_lines.items() if v != "country"}
    with pytest.raises(InvalidInputError) as err:
        list(_Reader(str(path), skip_invalid=False))
    assert err.value.line == min(bad_lines) and err.value.source == str(path)
    reader = _Reader(str(path), skip_invalid=True)
    ids = [p.id for p in reader]
    reader.report()
    captured = capsys.readouterr().err
    assert [i for i in ids if i != "zz"] == valid and len(ids) == len(valid) + 1
    assert len(reader.errors) == len(bad_lines)
    _assert_listed(captured, path, bad_lines)
    assert _count_line(path, len(ids), len(bad_lines)) in captured
