"""The README is executable: every shell command of its quick start and gRPC sections runs.

The ```bash blocks of "Quick start" and "The gRPC service" are read from README.md and run as
written, in a scratch folder set up like a clone: ``.venv`` links to this venv, ``models/default``
to a tiny random model, ``embedder/data/sample_profiles.jsonl`` and ``profiles.jsonl`` are the
sample profiles. Only the port changes: the README's ``profile-embed serve`` line is started in the
background on port 0 and the other commands are pointed at the port it reports. A command that
exits non-zero, prints a traceback or prints a stdout line that is not JSON fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import copy_model_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLE = ROOT / "embedder" / "data" / "sample_profiles.jsonl"

#: The README sections whose ```bash blocks are run.
SECTIONS = ("Quick start", "The gRPC service")

#: Commands not run, by how they start, each with the reason.
NOT_RUN = {
    # `make test` is this suite; `make serve` builds models/default first (minutes on 2 cores):
    # the gRPC section's `profile-embed serve` line runs the same server here, on the tiny model.
    "make ": "make targets: the suite itself, or a model build of minutes",
    # grpcurl has no Debian package (bookworm: `apt-cache policy grpcurl` finds none) and is not
    # installed; the same RPCs (Info, Predict, health) run through `profile-embed client` here and
    # in tests/test_server.py.
    "grpcurl ": "grpcurl is not installed and has no Debian package",
}

#: Long-running commands: started in the background, awaited until SERVING, stopped with SIGTERM.
BACKGROUND = ("profile-embed serve ",)

#: The README's fixed ports -> what the scratch run uses ({port}: the port the server reports).
PORTS = (
    ("localhost:50051", "127.0.0.1:{port}"),
    ("--port 50051", "--port 0"),
    ("--metrics-port 9464", "--metrics-port 0"),
)

READY = re.compile(r"health SERVING: serving \S+ on \S+:(\d+)")


def readme_commands(text: str) -> list[str]:
    """The shell commands of the ```bash blocks under the ``SECTIONS`` headings, in order.

    Continued lines (ending in a backslash) are joined; blank and comment-only lines are dropped.
    """
    commands: list[str] = []
    section = None
    block: list[str] | None = None
    for line in text.splitlines():
        if block is None and line.startswith("## "):
            section = line[3:].strip()
        elif block is None and line.strip() == "```bash" and section in SECTIONS:
            block = []
        elif block is not None and line.strip() == "```":
            commands += _logical_lines(block)
            block = None
        elif block is not None:
            block.append(line)
    return commands


def _logical_lines(lines: list[str]) -> list[str]:
    out: list[str] = []
    pending = ""
    for line in lines:
        if pending:
            line = pending + " " + line.strip()
            pending = ""
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1].rstrip()
            continue
        if line.strip() and not line.strip().startswith("#"):
            out.append(line.strip())
    assert not pending, f"a README command ends in a backslash: {pending!r}"
    return out


def _not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def _is_background(command: str) -> bool:
    return any(command.removeprefix(".venv/bin/").startswith(b) for b in BACKGROUND)


def _with_ports(command: str, port: int | str) -> str:
    for readme, here in PORTS:
        command = command.replace(readme, here.format(port=port))
    return command


def test_readme_commands_are_found_and_the_allow_list_is_live() -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert any(c.startswith(".venv/bin/profile-embed client predict") for c in commands)
    assert sum(_is_background(c) for c in commands) == 1
    for start in NOT_RUN:  # an entry that no longer matches anything must be removed
        assert any(c.startswith(start) for c in commands), start
    assert len([c for c in commands if not _not_run(c) and not _is_background(c)]) >= 4


@pytest.fixture(scope="module")
def scratch(tiny_model_dir, tmp_path_factory) -> Path:
    """A folder laid out like a clone after `make serve`, with a tiny model as models/default."""
    root = tmp_path_factory.mktemp("readme")
    copy_model_dir(tiny_model_dir, root / "tiny-model")  # the README's commands may write into it
    (root / "models").mkdir()
    (root / "models" / "default").symlink_to(root / "tiny-model")
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])
    (root / "embedder" / "data").mkdir(parents=True)
    shutil.copy(SAMPLE, root / "embedder" / "data" / SAMPLE.name)
    shutil.copy(SAMPLE, root / "profiles.jsonl")
    return root


def _env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILE_EMBED_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PROFILE_EMBED_HOME"] = str(scratch / "home")
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(
    command: str, scratch: Path
) -> tuple[subprocess.Popen, int, list[str], threading.Thread]:
    """Run a long-running README command; wait for the port it serves on.

    Its stderr is read on into the returned list by the returned thread (done at its exit), so a
    full pipe never blocks it.
    """
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + _with_ports(command, 0)],
        cwd=scratch,
        env=_env(scratch),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        log.append(line)
        if match := READY.search(line):
            reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
            reader.start()
            return proc, int(match.group(1)), log, reader
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"{command!r} did not report SERVING:\n{''.join(log)}")


@pytest.mark.slow  # every README command as a subprocess, a server among them
def test_readme_quick_start_and_grpc_commands_run(scratch) -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    background = [c for c in commands if _is_background(c)]
    server, port, log, reader = _start(background[0], scratch)
    failures, ran = [], 0
    try:
        for command in commands:
            if _not_run(command) or _is_background(command):
                continue
            line = _with_ports(command, port)
            proc = subprocess.run(
                ["bash", "-c", line],
                cwd=scratch,
                env=_env(scratch),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            ran += 1
            problem = _problem(proc)
            if problem:
                failures.append(f"$ {line}\n{problem}\n{proc.stderr[-3000:]}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        reader.join(10)
        server.stderr.close()  # read to EOF by now; closed here, not left to the GC
    assert not failures, "\n\n".join(failures)
    assert ran >= 4
    assert server.returncode == 0, "".join(log)  # SIGTERM drains and exits 0
    assert "Traceback" not in "".join(log)
    # the client's JSON lines went to the file the README redirects them to
    rows = [json.loads(x) for x in (scratch / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [
        json.loads(x)["id"] for x in SAMPLE.read_text().splitlines() if x.strip()
    ]


def _problem(proc: subprocess.CompletedProcess) -> str | None:
    if proc.returncode != 0:
        return f"exit {proc.returncode}"
    if "Traceback" in proc.stderr:
        return "a traceback on stderr"
    for out in proc.stdout.splitlines():
        try:
            json.loads(out)
        except json.JSONDecodeError:
            return f"a stdout line that is not JSON: {out[:200]!r}"
    return None
