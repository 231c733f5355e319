"""The docs quote the embedding_version of the default model the recipe builds.

``build.json`` records the ``embedding_version`` (tests/test_build_default.py checks it matches
``model.json``). Here: README's "The default model" section quotes one version, the other docs'
current figures quote the same one, and, on a machine where ``make serve`` has built
``models/default``, it is the one that build recorded (``make check-docs`` runs this after a build;
in CI no model is built and that part is skipped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.compile(r"\bemb-[0-9a-f]{12}\b")


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def readme_version() -> str:
    """The one embedding_version README's "The default model" section quotes."""
    quoted = set(VERSION.findall(_section((ROOT / "README.md").read_text(), "The default model")))
    assert len(quoted) == 1, f"README's 'The default model' quotes {sorted(quoted)}; want one"
    return quoted.pop()


def test_readme_quotes_one_version_and_the_quick_start_agrees() -> None:
    version = readme_version()
    quick = set(VERSION.findall(_section((ROOT / "README.md").read_text(), "Quick start")))
    assert quick <= {version}, f"Quick start quotes {sorted(quick)}, The default model {version}"


def test_the_built_default_model_is_the_one_the_docs_quote() -> None:
    build = ROOT / "models" / "default" / "build.json"
    if not build.is_file():
        pytest.skip("no models/default here (make serve builds it); CI checks the README only")
    recorded = json.loads(build.read_text()).get("embedding_version")
    if recorded is None:  # built before build.json recorded it
        recorded = json.loads((build.parent / "model.json").read_text())["embedding_version"]
    assert readme_version() == recorded, (
        f"models/default is {recorded} but README quotes {readme_version()}: update the figures "
        "(make real-eval) and the version in README's 'The default model'"
    )
