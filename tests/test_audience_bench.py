"""bench/audience_error.py: its core on a tiny model folder, and perfect probabilities."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from embedder.labels import GEO_LABELS, to_geo_label
from embedder.profile import Profile
from heads import standard_head
from heads.model import save_model

CITIES = {"FR": ["paris", "lyon"], "BR": ["rio", "são paulo"], "JP": ["tokyo"], "GB": ["london"]}


ROOT = Path(__file__).resolve().parents[1]


def _module():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("bench.audience_error")


def _records(n_per: int, offset: int = 0) -> list[dict]:
    return [
        {
            "id": f"{c}-{offset + i}",
            "biography": f"based in {cities[i % len(cities)]}",
            "captions": [f"love {cities[i % len(cities)]}"],
            "country": c,
        }
        for c, cities in CITIES.items()
        for i in range(n_per)
    ]


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder, tmp_path_factory) -> Path:
    encoder = tiny_encoder
    train, val = _records(8), _records(10, offset=100)
    profiles = lambda rs: [Profile.from_dict(r, extra_exclude=("country",))[0] for r in rs]  # noqa: E731
    head = standard_head(
        "geolocation", embedding_version=encoder.embedding_version, in_dim=encoder.dim
    )
    head.fit(
        encoder.encode(profiles(train)),
        [r["country"] for r in train],
        val_embeddings=encoder.encode(profiles(val)),
        val_labels=[r["country"] for r in val],
        missing_classes="abstain",
        epochs=50,
        lr=5e-2,
    )
    return save_model(tmp_path_factory.mktemp("models") / "m", encoder, {"geolocation": head})


def test_benchmark_on_a_tiny_model_and_resume(tiny_model, tmp_path, capsys):
    bench = _module()
    predict_proba, labels, inputs, desc = bench.model_predictor(tiny_model)
    result = bench.benchmark(
        predict_proba, labels, inputs, sizes=[20], influencers={20: 2}, n_bootstrap=10
    )
    assert result["complete"] and result["audiences_done"] == 2
    from heads.audience import METHODS, NEEDS

    methods = {m for m in METHODS if all(inputs[x] is not None for x in NEEDS[m])} | {"oracle"}
    assert {"em", "guarded", "fallback", "average"} <= methods  # the tiny head is calibrated
    assert set(result["sizes"]["20"]) == methods
    for m, s in result["sizes"]["20"].items():
        assert 0.0 <= s["mae"] <= 1.0 and s["influencers"] == 2, m
        if m != "oracle":
            assert 0.0 <= s["coverage"] <= 1.0 and s["interval_width"] >= 0.0
            assert 0.0 <= s["total_variation"] <= 1.0 and s["flagged"] == 1.0  # 20 followers
    assert len(result["influencers"]) == 2
    table = bench.markdown_table(result)
    assert "MAE @ 20" in table and "`em`" in table and "`guarded`" in table
    assert "Audiences flagged low-evidence (any flag): 100% @ 20" in table

    # the CLI, in parts: a zero budget does one step, a rerun with the cache finishes
    out, cache = tmp_path / "aud.json", tmp_path / "cache"
    args = ["--model", str(tiny_model), "--sizes", "20", "--influencers", "2", "--bootstrap", "10"]
    args += ["--out", str(out), "--cache", str(cache)]
    assert bench.main([*args, "--time-budget", "0"]) == 3
    assert "INCOMPLETE" in capsys.readouterr().out
    assert bench.main(args) == 0
    record = json.loads(out.read_text())
    assert record["complete"] and record["embedding_version"] == desc["embedding_version"]
    assert record["sizes"]["20"]["em"]["mae"] == pytest.approx(result["sizes"]["20"]["em"]["mae"])
    assert record["timing"]["profiles_embedded_this_run"] == 20  # first audience came from cache


def test_perfect_probabilities_recover_the_mixture():
    bench = _module()
    index = {lab: i for i, lab in enumerate(GEO_LABELS)}

    def one_hot(profiles):
        y = [index[to_geo_label(p.extra["country_iso"])] for p in profiles]
        return np.eye(len(GEO_LABELS))[y]

    k = len(GEO_LABELS)
    inputs = {
        "prior": np.full(k, 1 / k),
        "confusion": np.eye(k) * 50,
        "thresholds": np.full(k, 0.5),
    }
    result = bench.benchmark(
        one_hot, GEO_LABELS, inputs, sizes=[1000], influencers={1000: 2}, n_bootstrap=0
    )
    s = result["sizes"]["1000"]
    for m in ("em", "guarded", "map", "fallback", "ensemble", "average", "acc", "cc"):
        assert s[m]["mae_vs_sample"] == pytest.approx(0.0, abs=1e-9), m
        assert s[m]["mae"] == pytest.approx(s["oracle"]["mae"], abs=1e-9), m
    assert s["oracle"]["mae"] < 0.01  # 1,000 followers: only sampling error is left
