"""``profile-embed embed``: outputs, bad rows, cache use, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from server.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "embedder" / "data" / "sample_profiles.jsonl"


@pytest.fixture(scope="module")
def encoder_dir(tiny_encoder, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m"
    tiny_encoder.save(path / "encoder")
    return path


def test_sample_to_npy_and_parquet_uses_cache(encoder_dir, tmp_path, capsys) -> None:
    cache = tmp_path / "cache.sqlite"
    out = tmp_path / "out" / "vectors.npy"
    args = [
        "embed",
        str(SAMPLE),
        "-o",
        str(out),
        "--model",
        str(encoder_dir),
        "--cache",
        str(cache),
    ]
    assert main([*args, "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["embedded"] == 12 and summary["cache"]["misses"] == 12
    vectors = np.load(out)
    sidecar = json.loads(Path(str(out) + ".ids.json").read_text())
    assert vectors.shape == (12, 32) and vectors.dtype == np.float32
    assert sidecar["ids"][0] == "fr-001" and len(sidecar["ids"]) == 12
    assert sidecar["embedding_version"] == summary["embedding_version"]

    pq_out = tmp_path / "vectors.parquet"
    assert (
        main(
            [
                "embed",
                str(SAMPLE),
                "-o",
                str(pq_out),
                "--model",
                str(encoder_dir),
                "--cache",
                str(cache),
                "--no-progress",
            ]
        )
        == 0
    )
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["cache"] == {"path": str(cache), "hits": 12, "misses": 0}
    table = pq.read_table(pq_out).to_pylist()
    assert [r["id"] for r in table] == sidecar["ids"]
    assert {r["embedding_version"] for r in table} == {summary["embedding_version"]}
    np.testing.assert_allclose(np.array([r["embedding"] for r in table]), vectors, atol=1e-6)


def test_npy_output_is_written_under_the_name_given(encoder_dir, tmp_path, capsys) -> None:
    # np.save given a name adds ".npy" unless it ends in lower-case ".npy"
    out = tmp_path / "VECTORS.NPY"
    args = ["embed", str(SAMPLE), "-o", str(out), "--model", str(encoder_dir), "--no-cache"]
    assert main([*args, "--no-progress"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VECTORS.NPY", "VECTORS.NPY.ids.json"]
    assert np.load(out).shape == (12, 32)


def test_outputs_appear_whole_or_not_at_all(tmp_path) -> None:
    from server.commands.outputs import atomic_text

    out = tmp_path / "rows.jsonl"
    out.write_text("previous\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), atomic_text(out) as f:
        f.write("half of the new rows\n")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a run
    assert out.read_text(encoding="utf-8") == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no temporary left behind
    with atomic_text(out) as f:
        f.write("new\n")
    assert out.read_text(encoding="utf-8") == "new\n"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would have made it


def test_bad_lines_reported_with_file_and_line(encoder_dir, tmp_path, capsys) -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:4]
    many = json.dumps({"id": "many", "captions": [f"c{i}" for i in range(8)]})
    lines[1] = '{"id": "broken", "biography": '  # malformed JSON on line 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*lines, many, '{"id": "x", "captions": [1]}']) + "\n", "utf-8")
    out = tmp_path / "bad.npy"
    code = main(
        [
            "embed",
            str(bad),
            "-o",
            str(out),
            "--model",
            str(encoder_dir),
            "--no-cache",
            "--no-progress",
            "--skip-invalid",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert f"{bad}:2:" in captured.err and f"{bad}:6:" in captured.err
    assert captured.err.count("captions beyond the 5 most recent") == 1
    assert "3 captions" in captured.err
    assert "Traceback" not in captured.err
    ids = json.loads(Path(str(out) + ".ids.json").read_text())["ids"]
    assert ids == ["fr-001", "jp-003", "us-004", "many"]
    assert np.load(out).shape == (4, 32)


def test_unknown_suffix_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["embed", str(SAMPLE), "-o", str(tmp_path / "out.txt"), "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "unsupported output suffix '.txt'" in err and ".npy, .parquet" in err
    wrong = tmp_path / "profiles.xml"
    wrong.write_text("<x/>")
    assert main(["embed", str(wrong), "-o", str(tmp_path / "o.npy"), "--no-cache"]) == 2
    assert "unsupported input suffix '.xml'" in capsys.readouterr().err


def test_console_script_subprocess(encoder_dir, tmp_path) -> None:
    script = Path(sys.executable).parent / "profile-embed"
    out = tmp_path / "v.parquet"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            str(script),
            "embed",
            str(SAMPLE),
            "-o",
            str(out),
            "--model",
            str(encoder_dir),
            "--cache",
            str(tmp_path / "c.sqlite"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["embedded"] == 12
    assert pq.read_table(out).num_rows == 12
    bad = subprocess.run(
        [str(script), "embed", str(SAMPLE), "-o", str(tmp_path / "x.csv")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "'.csv'" in bad.stderr
