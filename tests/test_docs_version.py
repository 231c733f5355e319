"""The docs quote the embedding_version of the default model the recipe builds.

``build.json`` records the ``embedding_version`` (tests/test_build_default.py checks it matches
``model.json``). The recipe is deterministic on one CPU family but not across them: fp32 kernels
for AVX-512 and for AVX2 round differently, so the same recipe builds another encoder on each (the
README names the family of each build it has seen). Here: README's "The default model" section
quotes its reference build first (the one its figures are of) and any other build of the same
recipe after it, the Quick start quotes only those, and, on a machine where ``make serve`` has
built ``models/default``, that build is one of them (``make check-docs`` runs this after a build;
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


def readme_versions() -> list[str]:
    """The embedding_versions README's "The default model" section quotes, reference first."""
    section = _section((ROOT / "README.md").read_text(), "The default model")
    quoted = list(dict.fromkeys(VERSION.findall(section)))
    assert quoted, "README's 'The default model' quotes no embedding_version"
    return quoted


def test_readme_quotes_its_builds_and_the_quick_start_agrees() -> None:
    versions = readme_versions()
    quick = set(VERSION.findall(_section((ROOT / "README.md").read_text(), "Quick start")))
    assert quick <= set(versions), f"Quick start quotes {sorted(quick)}, not among {versions}"


def test_the_built_default_model_is_the_one_the_docs_quote() -> None:
    build = ROOT / "models" / "default" / "build.json"
    if not build.is_file():
        pytest.skip("no models/default here (make serve builds it); CI checks the README only")
    recorded = json.loads(build.read_text()).get("embedding_version")
    if recorded is None:  # built before build.json recorded it
        recorded = json.loads((build.parent / "model.json").read_text())["embedding_version"]
    assert recorded in readme_versions(), (
        f"models/default is {recorded} but README quotes {readme_versions()}: a new build of the "
        "recipe; measure it (make real-eval) and name it in README's 'The default model'"
    )
