"""Evaluation metrics on hand-checkable inputs, and the report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedder.errors import InvalidInputError
from heads.evaluation.metrics import evaluate
from heads.evaluation.report import write_model_card, write_report

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
    from heads.evaluation.metrics import default_slices, label_field

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


def test_score_predictions_is_sklearns_accuracy_and_macro_f1() -> None:
    from sklearn.metrics import f1_score

    from heads.evaluation.metrics import score_predictions
    from heads.training.loop import validation_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=200)  # class 4 is never true but can be predicted
    logits = rng.normal(size=(200, 5)) + 2.0 * np.eye(5)[y]
    pred = logits.argmax(1)
    m = score_predictions(y, logits)
    assert m["n"] == 200 and m["coverage"] == 1.0
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    # training's validation: the same numbers on the labelled rows only
    y_missing = y.copy()
    y_missing[:50] = -1
    v = validation_metrics(logits, y_missing)
    assert v == {
        k: score_predictions(y[50:], logits[50:])[k] for k in ("accuracy", "macro_f1", "n")
    }
    assert validation_metrics(logits, np.full(200, -1))["n"] == 0


def test_default_slices_and_the_one_evaluation_loop() -> None:
    from embedder.data import LabelledProfile
    from embedder.profile import Profile
    from heads.evaluation.metrics import default_slices, evaluate_heads
    from heads.registry import build_head

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 8)) * 3.0
    y = rng.integers(0, 2, size=120)
    x = (centres[y] + rng.normal(size=(120, 8))).astype(np.float32)
    head = build_head(
        "knn", name="mood", labels=("neg", "pos"), embedding_version="emb-t", in_dim=8,
        label_field="mood",
    )  # fmt: skip
    head.fit(x[:60], y[:60], val_embeddings=x[60:90], val_labels=y[60:90])
    rows = []
    for i in range(30):  # the evaluation rows; the mood label is an extra field of every 3rd
        extra = {"language": "fr" if i % 2 else "pt"}
        if i % 3:
            extra["mood"] = ("neg", "pos")[y[90 + i]]
        bio = "" if i % 5 == 0 else "bio"
        rows.append(LabelledProfile(Profile(id=str(i), biography=bio, extra=extra), labels={}))
    masks = default_slices(rows)
    assert list(masks) == ["no bio, <= 1 caption", "language=pt", "language=fr"]  # ties: first seen
    assert masks["no bio, <= 1 caption"].sum() == 6 and masks["language=fr"].sum() == 15
    assert list(default_slices(rows, top_languages=0)) == ["no bio, <= 1 caption"]

    evs = evaluate_heads({"mood": head}, rows, x[90:], info={"data": "d"}, head_facts=("rows",))
    ev = evs["mood"]
    labelled = [i for i in range(30) if i % 3]
    assert ev.metrics["n"] == len(labelled) == ev.info["rows"] and ev.info["data"] == "d"
    direct = evaluate(head.predict_proba(x[90:][labelled]), y[90:][labelled], head.labels,
                      thresholds=head.thresholds_)  # fmt: skip
    assert ev.metrics["accuracy"] == direct.metrics["accuracy"]
    assert set(ev.metrics["slices"]) == {"no bio, <= 1 caption", "language=fr", "language=pt"}
    assert evaluate_heads({"mood": head}, [r for r in rows if "mood" not in r.profile.extra],
                          x[90:100], fields={"mood": "mood"}) == {}  # fmt: skip
    with pytest.raises(InvalidInputError, match="29 embeddings but 30 rows"):
        evaluate_heads({"mood": head}, rows, x[90:119])
