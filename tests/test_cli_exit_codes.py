"""One exit code per kind of error: bad input exits 2 in every command, with one line, no traceback.

Each case runs the installed ``profile-embed`` console script, so what a shell sees (the exit status
and all of stderr) is what is checked. None of them needs a model: the input is refused first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(sys.executable).parent / "profile-embed"
SAMPLE = Path(__file__).resolve().parents[1] / "embedder" / "data" / "sample_profiles.jsonl"


def _cases(tmp: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (argv after ``profile-embed``, extra environment)."""
    bad = tmp / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "biography": "ok"}) + "\n{not json\n", encoding="utf-8")
    missing = str(tmp / "missing.jsonl")
    out = str(tmp / "out.jsonl")
    no_model = str(tmp / "no-model")
    return {
        "predict, malformed row": (["predict", str(bad), "-o", out, "--model", no_model], {}),
        "predict, missing file": (["predict", missing, "-o", out, "--model", no_model], {}),
        "embed, unsupported suffix": (["embed", str(SAMPLE), "-o", str(tmp / "v.txt")], {}),
        "embed, bad flag value": (["embed", str(SAMPLE), "-o", out, "--batch-size", "abc"], {}),
        "embed, bad env value": (
            ["embed", str(SAMPLE), "-o", out],
            {"PROFILE_EMBED_BATCH_SIZE": "abc"},
        ),
        "audience, missing file": (["audience", missing, "--model", no_model], {}),
        "calibrate, value out of range": (
            ["calibrate", "--model", no_model, "--data", str(SAMPLE), "--target-precision", "1.5"],
            {},
        ),
        "serve, value out of range": (["serve", "--model", no_model, "--max-wait-ms", "5000"], {}),
        # the first batch is read before any call, so no server is needed
        "client, malformed row": (["client", "predict", str(bad), "--target", "127.0.0.1:1"], {}),
        "unknown command": (["no-such-command"], {}),
    }


def test_bad_input_exits_2_with_one_error_line_and_no_traceback(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PROFILE_EMBED_BATCH_SIZE", None)
    failures = []
    for name, (argv, extra) in _cases(tmp_path).items():
        proc = subprocess.run(
            [str(SCRIPT), *argv],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=120,
            check=False,
        )
        command = argv[0]
        errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
        ok = (
            proc.returncode == 2
            and "Traceback" not in proc.stderr
            and len(errors) == 1
            and errors[0].startswith("profile-embed")
            and (command == "no-such-command" or f"profile-embed {command}" in errors[0])
        )
        if not ok:
            failures.append(f"{name}: exit {proc.returncode}\n{proc.stderr}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["--help"], 0), (["embed", "--batch-size", "x"], 2), (["client"], 2)],
)
def test_main_returns_argparse_exit_codes_instead_of_raising(argv, code, capsys) -> None:
    from server.cli import main

    assert main(argv) == code
    capsys.readouterr()


@pytest.fixture(scope="module")
def tiny_model(tiny_base_dir, tmp_path_factory) -> Path:
    """A model folder as ``train`` writes it (tiny encoder, unfitted geolocation head)."""
    from server_helpers import save_encoder_only_model

    return save_encoder_only_model(tiny_base_dir, tmp_path_factory.mktemp("m") / "model")


def _in_process_cases(tmp: Path, model: Path) -> dict[str, list[str]]:
    """One bad value per command, each refused as the user's mistake."""
    bad_json = tmp / "truth.json"
    bad_json.write_text("[1, 2]", encoding="utf-8")
    empty = tmp / "token"
    empty.write_text("\n", encoding="utf-8")
    out, m, s = str(tmp / "out"), str(model), str(SAMPLE)
    fit = ["--train", s, "--val", s]
    latin1 = tmp / "latin1"
    latin1.write_bytes('{"caf\xe9": {}}'.encode("latin-1"))
    own = tmp / "own.jsonl"  # a copy: were the check to fail, the sample would be overwritten
    own.write_bytes(SAMPLE.read_bytes())
    rows = tmp / "rows.parquet"
    pq.write_table(pa.table({"id": ["a"], "biography": ["paris"]}), rows)
    return {
        "embed": ["embed", s, "-o", str(tmp / "v.txt")],
        "batch": ["batch", "--input", s, "--output", out, "--batch-size", "0"],
        "batch-audience": ["batch-audience", "--followers", s, "--output", out, "--method", "x"],
        "index build": ["index", "build", "--embeddings", str(tmp / "none"), "-o", out],
        "train": ["train", *fit, "-o", out, "--epochs", "0"],
        "train, precision": ["train", *fit, "-o", out, "--target-precision", "1"],
        "build-default": ["build-default", "--recipe", "huge"],
        "train-head": [
            "train-head",
            "--model",
            m,
            "--head",
            "geolocation",
            *fit,
            "--kind",
            "knn",
            "--hidden",
            "4",
        ],
        "train-head, precision": [
            "train-head",
            "--model",
            m,
            "--head",
            "geolocation",
            *fit,
            "--target-precision",
            "0",
        ],
        "calibrate": ["calibrate", "--model", m, "--data", s, "--target-precision", "1.5"],
        "numerics check": ["numerics", "check", "--model", m, "--data", s, "--rows", "0"],
        "numerics choose": ["numerics", "choose", "--model", m, "--threads", "many"],
        "evaluate": ["evaluate", "--model", m, "--data", s, "--report", out, "--heads", "mood"],
        "predict": ["predict", s, "-o", out, "--model", m, "--heads", "mood"],
        "audience": ["audience", s, "--model", m, "--truth", str(bad_json)],
        "simulate": ["simulate", "--n", "-5", "-o", out, "--no-progress"],
        "serve": ["serve", "--model", m, "--max-wait-ms", "5000"],
        "serve, settings": ["serve", "--model", m, "--tls-cert", s],
        "client": ["client", "info", "--target", "127.0.0.1:1", "--timeout", "-1"],
        "client, token": ["client", "info", "--target", "127.0.0.1:1", "--token-file", str(empty)],
        "client, token not UTF-8": [
            "client",
            "info",
            "--target",
            "127.0.0.1:1",
            "--token-file",
            str(latin1),
        ],
        "predict, output is the input": ["predict", str(own), "-o", str(own), "--model", m],
        "predict, output format": ["predict", s, "-o", str(tmp / "p.parquet"), "--model", m],
        "predict, no head": ["predict", s, "-o", out, "--model", m, "--heads", ","],
        "predict, chunk": ["predict", s, "-o", out, "--model", m, "--chunk", "0"],
        "embed, output is the input": ["embed", str(rows), "-o", str(rows), "--model", m],
        "audience, truth not UTF-8": ["audience", s, "--model", m, "--truth", str(latin1)],
        "train-head, lr": [
            "train-head",
            "--model",
            m,
            "--head",
            "geolocation",
            *fit,
            "--lr",
            "nan",
        ],
        "index build, nlist": [
            "index",
            "build",
            "--embeddings",
            str(tmp / "none"),
            "-o",
            out,
            "--nlist",
            "-3",
        ],
        "a path too long": [
            "predict",
            str(tmp / ("a" * 300 + ".jsonl")),
            "-o",
            str(tmp / "o.jsonl"),
            "--model",
            m,
        ],
    }


#: What the one error line must say, where a case checks a particular refusal.
_SAYS = {
    "client, token not UTF-8": "not valid UTF-8",
    "predict, output is the input": "is the input file",
    "predict, output format": "allowed: .jsonl",
    "predict, no head": "names no head",
    "predict, chunk": "--chunk",
    "embed, output is the input": "is the input file",
    "audience, truth not UTF-8": "not valid UTF-8",
    "train-head, lr": "field '--lr'",
    "index build, nlist": "field 'nlist'",
    "a path too long": "File name too long",
}


_IN_PROCESS = [
    "embed", "batch", "batch-audience", "index build", "train", "train, precision",
    "build-default", "train-head", "train-head, precision", "calibrate", "numerics check",
    "numerics choose", "evaluate", "predict", "audience", "simulate", "serve", "serve, settings",
    "client",
    "client, token",
    *_SAYS,
]  # fmt: skip


@pytest.mark.parametrize("case", _IN_PROCESS)
def test_each_command_refuses_a_bad_value_with_exit_2_and_one_line(
    case, tiny_model, tmp_path, capsys, monkeypatch
) -> None:
    from server.cli import main

    for name in [n for n in os.environ if n.startswith("PROFILE_EMBED_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PROFILE_EMBED_HOME", str(tmp_path / "home"))
    argv = _in_process_cases(tmp_path, tiny_model)[case]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"profile-embed {argv[0]}"), err
    assert _SAYS.get(case, "") in errors[0], err
