"""Tests for bench/baselines.py: cue-word matcher, metrics, a run on a tiny simulated corpus."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from embedder.data import split_rows, write_profiles
from embedder.labels import GEO_LABELS, OTHER

_PATH = Path(__file__).resolve().parents[1] / "bench" / "baselines.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("bench_baselines", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


B = _load_module()


@pytest.fixture(scope="module")
def lexicon():
    return B.build_lexicon()


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("📍 São Paulo", "BR"),
        ("amo #saopaulo demais", "BR"),
        ("東京在住のカメラマン", "JP"),
        ("based in Lyon ☕", "FR"),
        ("живу: Москва", "RU"),
        ("🇳🇿 vibes", "NZ"),
        ("Deutschland 🥨", "DE"),
    ],
)
def test_lexicon_finds_location_words(lexicon, text, iso):
    found = lexicon.match(text)
    assert found and {m[1] for m in found} == {iso}, found


def test_longest_match_wins(lexicon):
    assert [m[1] for m in lexicon.match("weekend in New York")] == ["US"]


def test_no_location_words_no_match(lexicon):
    assert lexicon.match("love coffee and sunsets with my friends") == []


def test_cue_baseline_falls_back_to_majority_and_maps_other(lexicon):
    model = B.CueWordBaseline(lexicon).fit([""] * 4, ["BR", "BR", "US", OTHER])
    probs = model.predict_proba(["no place here", "🇳🇿🇳🇿", "Rio de Janeiro 🇧🇷"])
    assert probs.shape == (3, len(GEO_LABELS)) and np.allclose(probs.sum(axis=1), 1.0)
    assert [GEO_LABELS[i] for i in probs.argmax(axis=1)] == ["BR", OTHER, "BR"]
    assert probs[2].max() > probs[0].max()


def test_evaluate_perfect_and_uninformative_scores():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 80)
    perfect = np.eye(len(GEO_LABELS))[y]
    m = B.evaluate(perfect, y, perfect, y)
    assert m["accuracy"] == 1.0 and m["assigned_correct_share"] == 1.0
    assert m["classes_assigning"] == 3 and m["assigned_precision"] == 1.0
    noise = rng.dirichlet(np.ones(len(GEO_LABELS)), size=len(y))
    m = B.evaluate(noise, y, noise, y)
    assert m["accuracy"] < 0.2 and m["assigned_correct_share"] < 0.05
    assert not B.reaches_seed(m)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from embedder.simulator.core import simulate_profiles

    folder = tmp_path_factory.mktemp("sim")
    splits = split_rows(simulate_profiles(900, seed=3), (0.6, 0.2, 0.2))
    for name, rows in splits.items():
        write_profiles(folder / f"{name}.jsonl", rows)
    return folder


def test_script_on_tiny_simulated_corpus(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "docs" / "baselines.json"
    argv = [f"--{s}={tiny_corpus / s}.jsonl" for s in ("train", "val", "test")]
    code = B.main([*argv, f"--out={out}", "--max-features=5000", "--max-iter=30"])
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["baselines"]) == {"cue_words", "tfidf_lr"}
    assert report["data"]["n_test"] == report["baselines"]["tfidf_lr"]["n_test"] > 100
    for metrics in report["baselines"].values():
        for key in ("accuracy", "macro_f1", "assigned_correct_share", "assigned_share"):
            assert 0.0 <= metrics[key] <= 1.0
        assert metrics["assigned_correct_share"] <= metrics["assigned_share"]
        assert metrics["reaches_seed"] == B.reaches_seed(metrics)
    assert report["baselines"]["tfidf_lr"]["params"]["n_iter"] <= 30
    cue = report["baselines"]["cue_words"]
    # the matcher reads planted cues: better with cues than without, and above the majority class
    assert cue["by_cues"]["with_cues"]["accuracy"] > cue["by_cues"]["cue_free"]["accuracy"]
    assert cue["accuracy"] > report["majority_share_test"]
    printed = capsys.readouterr().out
    assert "cue_words" in printed and "tfidf_lr" in printed and "seed:" in printed


def test_script_reports_bad_input_without_traceback(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"id": "a", "country": "XX"}\n', encoding="utf-8")
    code = B.main(
        [f"--train={bad}", f"--val={bad}", f"--test={bad}", f"--out={tmp_path / 'o.json'}"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "line 1, field 'country'" in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()
