"""``profile-embed --help`` and ``profile-embed client ...`` start without importing torch.

Each check runs in a fresh interpreter: in this process torch is long imported by other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Modules that take seconds to import and that neither the parser nor the client needs.
HEAVY = ("torch", "transformers", "sentence_transformers", "scipy", "sklearn", "faiss", "pyarrow")

_PROBE = f"""
import json, sys
from server.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"code": code, "heavy": sorted(set(sys.modules) & set({HEAVY!r}))}}))
"""


def _run_cli(*argv: str, stdin: str = "") -> dict:
    """Run ``profile-embed ARGV`` in a fresh interpreter; its exit code and heavy modules loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_build_parser_imports_no_heavy_module() -> None:
    code = "import sys\nfrom server.cli import build_parser\nbuild_parser()\n"
    code += f"print(sorted(set(sys.modules) & set({HEAVY!r})))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["build-default", "--help"], ["client", "--help"]])
def test_help_imports_no_heavy_module(argv: list[str]) -> None:
    result = _run_cli(*argv)
    assert result == {"code": 0, "heavy": []}


@pytest.mark.parametrize("action", ["predict", "embed", "info"])
def test_client_imports_no_heavy_module(action: str) -> None:
    # Nothing listens on port 1: the call fails UNAVAILABLE (exit 1) after the whole client path,
    # input reading and the prediction converter included, has been imported.
    profile = json.dumps({"id": "1", "biography": "📍 Lyon"})
    source = ["-"] if action != "info" else []
    argv = ["client", action, *source, "--target", "127.0.0.1:1", "--timeout", "5"]
    result = _run_cli(*argv, stdin=profile + "\n")
    assert result == {"code": 1, "heavy": []}


def test_every_command_help_renders(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse %-formats help strings but not descriptions: a "%%" meant for one shows as is
    from server.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert "audience" in commands and "serve" in commands
    for name, sub in commands.items():
        text = sub.format_help()
        assert "%%" not in text and "%(" not in text, name
        assert len(text) > 200, name
