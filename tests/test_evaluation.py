"""Evaluation metrics on hand-checkable inputs, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedder.errors import InvalidInputError
from heads.evaluation import evaluate, write_model_card, write_report

LABELS = ("FR", "DE", "OTHER")
PNG = b"\x89PNG\r\n\x1a\n"


def _case():
    # 6 profiles: argmax FR FR DE DE OTHER FR ; truth FR DE DE DE OTHER OTHER
    probs = np.array(
        [
            [0.95, 0.03, 0.02],
            [0.60, 0.30, 0.10],
            [0.05, 0.90, 0.05],
            [0.20, 0.70, 0.10],
            [0.10, 0.10, 0.80],
            [0.50, 0.10, 0.40],
        ]
    )
    y = ["FR", "DE", "DE", "DE", "OTHER", "OTHER"]
    thresholds = np.array([0.9, 0.8, np.inf])
    return probs, y, thresholds


def test_metrics_with_and_without_abstention():
    probs, y, thr = _case()
    ev = evaluate(probs, y, LABELS, thresholds=thr, name="geolocation")
    m = ev.metrics
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # assigned: row0 FR (0.95>=0.9, correct), row2 DE (0.9>=0.8, correct); OTHER never assigns
    assert m["coverage"] == pytest.approx(2 / 6)
    assert m["selective_accuracy"] == 1.0
    assert m["correct_assigned_share"] == pytest.approx(2 / 6)
    fr = m["per_class"]["FR"]
    assert (fr["support"], fr["precision"], fr["recall"]) == (1, pytest.approx(1 / 3), 1.0)
    assert fr["assigned"] == 1 and fr["precision_with_abstention"] == 1.0
    de = m["per_class"]["DE"]
    assert de["precision"] == 1.0 and de["recall"] == pytest.approx(2 / 3)
    assert de["recall_with_abstention"] == pytest.approx(1 / 3)
    other = m["per_class"]["OTHER"]
    assert other["threshold"] is None and other["assigned"] == 0
    assert m["classes_assigning_nothing"] == ["OTHER"]
    assert m["classes_meeting_target"] == ["DE", "FR"]
    # macro-F1 (argmax): FR 2*1/(3+1)=0.5, DE 2*2/(2+3)=0.8, OTHER 2*1/(1+2)=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert 0 <= m["ece"] <= 1 and m["nll"] > 0


def test_slices_and_errors():
    probs, y, thr = _case()
    mask = np.array([True, True, False, False, False, False])
    ev = evaluate(
        probs, y, LABELS, thresholds=thr, slices={"first two": mask, "none": ~np.ones(6, bool)}
    )
    s = ev.metrics["slices"]["first two"]
    assert s["n"] == 2 and s["accuracy"] == 0.5 and s["coverage"] == 0.5
    assert ev.metrics["slices"]["none"] == {"n": 0}
    with pytest.raises(InvalidInputError, match="slice 'bad' mask has shape"):
        evaluate(probs, y, LABELS, slices={"bad": np.ones(3, bool)})
    with pytest.raises(InvalidInputError, match=r"\['XX'\] are not in"):
        evaluate(probs, ["XX"] * 6, LABELS)
    with pytest.raises(InvalidInputError, match="6 probability rows but 2 labels"):
        evaluate(probs, ["FR", "DE"], LABELS)


def test_write_report_and_model_card(tmp_path):
    probs, y, thr = _case()
    ev = evaluate(
        probs,
        y,
        LABELS,
        thresholds=thr,
        name="geolocation",
        info={"embedding_version": "emb-000000000000"},
    )
    report = write_report(tmp_path / "rep", ev, title="Test report", notes="synthetic")
    files = sorted(p.name for p in (tmp_path / "rep").iterdir())
    assert files == [
        "REPORT.md",
        "geolocation_confusion.png",
        "geolocation_precision_coverage.png",
        "geolocation_reliability.png",
        "metrics.json",
    ]
    for f in files:
        if f.endswith(".png"):
            assert (tmp_path / "rep" / f).read_bytes()[:8] == PNG
    md = report.read_text()
    assert "![confusion](geolocation_confusion.png)" in md and "| FR | 1 |" in md
    assert "emb-000000000000" in md and "OTHER" in md
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["geolocation"]["accuracy"] == pytest.approx(4 / 6)
    card = write_model_card(tmp_path / "head", ev)
    text = card.read_text()
    assert text.startswith("# Model card: head `geolocation`")
    assert "![reliability](reliability.png)" in text
    assert (tmp_path / "head" / "reliability.png").read_bytes()[:8] == PNG


def test_default_slices_and_label_fields() -> None:
    from types import SimpleNamespace

    from embedder.data import LabelledProfile
    from embedder.profile import Profile
    from heads.evaluation import default_slices, label_field

    profiles = [
        Profile(id="1", biography="", captions=("one",), extra={"language": "fr"}),
        Profile(id="2", biography="bio", captions=("a", "b"), extra={"language": "fr"}),
        Profile(id="3", biography=" ", extra={"language": "pt"}),
    ]
    masks = default_slices([LabelledProfile(p, {}) for p in profiles], top_languages=1)
    assert list(masks) == ["no bio, <= 1 caption", "language=fr"]
    assert masks["no bio, <= 1 caption"].tolist() == [True, False, True]
    assert masks["language=fr"].tolist() == [True, True, False]

    assert label_field(SimpleNamespace(name="geolocation", config=None)) == "country"
    custom = SimpleNamespace(name="mood", config=SimpleNamespace(label_field="sentiment"))
    assert label_field(custom) == "sentiment"
    assert label_field(SimpleNamespace(name="mood")) == "mood"
