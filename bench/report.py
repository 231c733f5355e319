"""Helpers of the benchmark suite: machine facts, timing, the generated table in BENCHMARKS.md.

``write_section`` replaces only the text between ``<!-- bench:start -->`` and
``<!-- bench:end -->``, so the hand-written parts of the document stay as they are.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
#: The peer-engine block, written by ``run_all.py --doc-block peers`` (a run of some sections only).
PEERS_START = "<!-- bench:peers:start -->"
PEERS_END = "<!-- bench:peers:end -->"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load and library versions, for the JSON next to every figure."""
    import numpy as np
    import torch

    from embedder.numerics import allowed_cpus, physical_cores

    model = ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
    except OSError:
        model = platform.processor()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    info: dict[str, Any] = {
        "cpu_model": model,
        "cpu_flags": [f for f in wanted if f in flags],
        "logical_cpus": len(allowed_cpus()),
        "physical_cores": physical_cores(),
        "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for name in ("onnxruntime", "faiss", "sentence_transformers", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            info[name] = None
    return info


def best_time(fn: Callable[[], Any], *, repeat: int = 3, warmup: int = 1) -> float:
    """Fastest wall time of ``fn()`` over ``repeat`` runs, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub table; ``|`` inside cells is escaped."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(document: str, body: str, start_mark: str = START, end_mark: str = END) -> str:
    """Return ``document`` with the marked section's content replaced by ``body``.

    Without markers the section is appended at the end. ``start_mark``/``end_mark`` name another
    marked section (the default is the ``make bench`` one).

    Raises:
        ValueError: when only one marker is present or they are out of order.
    """
    start, end = document.find(start_mark), document.find(end_mark)
    block = f"{start_mark}\n{body.strip()}\n{end_mark}"
    if start == -1 and end == -1:
        return document.rstrip("\n") + "\n\n" + block + "\n"
    n_start, n_end = document.count(start_mark), document.count(end_mark)
    if start == -1 or end == -1 or end < start or n_start + n_end > 2:
        raise ValueError(
            f"expected one {start_mark!r} followed by one {end_mark!r}, found {n_start} "
            f"start and {n_end} end markers"
        )
    return document[:start] + block + document[end + len(end_mark) :]


def write_section(path: Path, body: str, start_mark: str = START, end_mark: str = END) -> None:
    """Replace the marked section of ``path`` (created if missing), writing atomically."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(replace_section(old, body, start_mark, end_mark), encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def fmt(value: float | None, digits: int = 0) -> str:
    """Thousands separators, fixed digits; ``-`` for None."""
    return "-" if value is None else f"{value:,.{digits}f}"
