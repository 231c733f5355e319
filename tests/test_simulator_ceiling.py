"""The simulator-ceiling oracle (bench/simulator_ceiling.py) on a hand-made corpus."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _module():
    path = Path(__file__).parents[1] / "bench" / "simulator_ceiling.py"
    spec = importlib.util.spec_from_file_location("simulator_ceiling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(country, language, cues=(), noise=False):
    return {"country": country, "language": language, "cues": list(cues), "label_noise": noise}


def test_cued_rows_count_unless_noisy_and_cue_free_rows_use_the_language_majority():
    ceiling = _module().ceiling
    train = [_row("US", "en")] * 3 + [_row("GB", "en")] + [_row("JP", "ja")]
    test = [
        _row("GB", "en", ["city"]),  # cued: right
        _row("BR", "pt", ["flag"], noise=True),  # cued but relabelled: wrong
        _row("US", "en"),  # cue-free English: majority US, right
        _row("GB", "en"),  # cue-free English: wrong
        _row("JP", "ja"),  # cue-free Japanese: right
    ]
    out = ceiling(train, test)
    assert out["cue_free_share"] == pytest.approx(3 / 5)
    assert out["oracle_accuracy_cued"] == pytest.approx(1 / 2)
    assert out["oracle_accuracy_cue_free"] == pytest.approx(2 / 3)
    assert out["oracle_accuracy"] == pytest.approx(3 / 5)
