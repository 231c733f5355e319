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
