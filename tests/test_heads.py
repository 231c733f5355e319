"""Head interface, registry, fitting, abstention, save -> load round trip and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedder.errors import ArtifactError, InvalidInputError, UnknownHeadError, VersionMismatchError
from embedder.labels import GEO_LABELS
from heads import (
    Head,
    SoftmaxAbstainHead,
    available_kinds,
    build_head,
    load_head,
    register_head,
    standard_head,
)
from heads.base import ABSTAIN_REASONS, Prediction, predictions_from_proba

EMB = "emb-0123456789ab"
DIM = 16


def _blobs(n: int, k: int, *, seed: int, spread: float = 2.0, dim: int = DIM):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, dim)) * spread
    y = rng.integers(0, k, n)
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def _fit_on_blobs(
    labels: tuple[str, ...], fit_options: dict | None = None, **settings
) -> SoftmaxAbstainHead:
    """A ``geo`` head with ``settings``, fitted on 600 blobs and validated on 600 others."""
    x, y = _blobs(600, len(labels), seed=0)
    vx, vy = _blobs(600, len(labels), seed=1)
    head = build_head(
        "softmax_abstain", name="geo", labels=labels, embedding_version=EMB, in_dim=DIM, **settings
    )
    head.fit(
        x,
        [labels[i] for i in y],
        val_embeddings=vx,
        val_labels=[labels[i] for i in vy],
        **(fit_options or {}),
    )
    return head


@pytest.fixture(scope="module")
def fitted() -> SoftmaxAbstainHead:
    return _fit_on_blobs(
        ("FR", "DE", "BR", "OTHER"), {"epochs": 150}, hidden=8, label_field="country"
    )


def test_registry_is_closed_dict_with_builtin_kind():
    assert "softmax_abstain" in available_kinds()
    with pytest.raises(UnknownHeadError, match=r"registered kinds: .*softmax_abstain"):
        build_head("nope", name="x", labels=("a", "b"), embedding_version=EMB, in_dim=4)


def test_register_head_refuses_taking_an_existing_kind():
    with pytest.raises(ValueError, match="already registered"):

        @register_head("softmax_abstain")
        class Other(SoftmaxAbstainHead):
            pass


def test_build_head_validates_in_from_config():
    with pytest.raises(InvalidInputError, match="unknown softmax_abstain settings"):
        build_head(
            "softmax_abstain", name="g", labels=("a", "b"), embedding_version=EMB, in_dim=4, hiden=3
        )
    with pytest.raises(InvalidInputError, match="duplicate labels"):
        build_head("softmax_abstain", name="g", labels=("a", "a"), embedding_version=EMB, in_dim=4)
    with pytest.raises(InvalidInputError, match=">= 2 labels"):
        build_head("softmax_abstain", name="g", labels=("a",), embedding_version=EMB, in_dim=4)


def test_geolocation_head_has_geo_labels_and_torch_module():
    head = standard_head("geolocation", embedding_version=EMB, in_dim=DIM)
    assert isinstance(head, Head) and head.labels == GEO_LABELS
    assert head.config.label_field == "country"
    module = head.logits_module()
    assert isinstance(module, torch.nn.Module)
    out = module(torch.zeros(2, DIM))
    assert out.shape == (2, len(GEO_LABELS))
    # numpy and torch inputs give the same probabilities, rows sum to 1
    x = np.random.default_rng(0).normal(size=(5, DIM)).astype(np.float32)
    p_np = head.predict_proba(x)
    p_t = head.predict_proba(torch.from_numpy(x))
    np.testing.assert_allclose(p_np, p_t)
    np.testing.assert_allclose(p_np.sum(1), 1.0, atol=1e-9)
    with pytest.raises(UnknownHeadError, match="standard heads"):
        standard_head("language", embedding_version=EMB, in_dim=DIM)


def test_heads_refuse_text_and_wrong_width():
    head = standard_head("category", embedding_version=EMB, in_dim=DIM)
    with pytest.raises(InvalidInputError, match="not text"):
        head.predict_proba(["hello paris"])
    with pytest.raises(InvalidInputError, match="in_dim=16"):
        head.predict_proba(np.zeros((2, 8), dtype=np.float32))


def test_fit_learns_and_calibrates(fitted):
    tx, ty = _blobs(400, 4, seed=2)
    probs = fitted.predict_proba(tx)
    assert (probs.argmax(1) == ty).mean() > 0.9
    assert fitted.temperature_ > 0
    assert fitted.thresholds_ is not None and fitted.thresholds_.shape == (4,)
    report = fitted.calibration_["per_class"]
    assert set(report) == {"FR", "DE", "BR", "OTHER"}
    for row in report.values():
        if row["threshold"] is not None:
            assert row["precision_lower"] >= 0.9


def test_predict_abstains_below_class_threshold(fitted):
    x, _ = _blobs(300, 4, seed=3)
    probs = fitted.predict_proba(x)
    fitted_thr, guard = fitted.thresholds_.copy(), fitted.ood_
    try:
        fitted.ood_ = None  # thresholds only here (tests/test_shift.py covers the guard)
        fitted.thresholds_ = np.array([0.0, np.inf, 0.999, 0.0])
        preds = fitted.predict(x)
        for p, row in zip(preds, probs, strict=True):
            i = int(row.argmax())
            assert p.argmax == fitted.labels[i]
            assert p.score == pytest.approx(row[i])
            should_abstain = bool(i == 1 or (i == 2 and row[i] < 0.999))
            assert p.abstained is should_abstain
            assert p.label == (None if should_abstain else fitted.labels[i])
            want = None
            if i == 1:
                want = "no_threshold_for_class"
            elif should_abstain:
                want = "below_threshold"
            assert p.reason == want
        assert any(p.abstained for p in preds) and not all(p.abstained for p in preds)
        assert all(p.label != "DE" for p in preds)  # a class with an inf threshold assigns nothing
        assert {p.reason for p in preds} == {None, "no_threshold_for_class", "below_threshold"}
        d = preds[0].to_dict(fitted.labels)
        assert set(d) == {"label", "argmax", "score", "reason", "probabilities"}
        assert list(d["probabilities"]) == list(fitted.labels)
        assert d["reason"] == preds[0].reason
        json.dumps(d)
    finally:
        fitted.thresholds_, fitted.ood_ = fitted_thr, guard


def test_fit_refuses_bad_training_data():
    head = build_head(
        "softmax_abstain", name="g", labels=("a", "b", "c"), embedding_version=EMB, in_dim=DIM
    )
    x, _ = _blobs(20, 3, seed=0)
    with pytest.raises(InvalidInputError, match="one class only"):
        head.fit(x, ["a"] * 20)
    with pytest.raises(InvalidInputError, match=r"\['zz'\] are not in head 'g'"):
        head.fit(x, ["a", "b"] * 9 + ["zz", "a"])
    with pytest.raises(InvalidInputError, match="n >= 1"):
        head.fit(x[:0], [])
    with pytest.raises(InvalidInputError, match=r"lack classes \['c'\]"):
        head.fit(x, ["a", "b", "c", "a"] * 5, val_embeddings=x[:4], val_labels=["a", "b", "a", "b"])
    # opting in: the missing class assigns nothing
    head.fit(
        x,
        ["a", "b", "c", "a"] * 5,
        val_embeddings=x[:4],
        val_labels=["a", "b", "a", "b"],
        missing_classes="abstain",
        epochs=5,
    )
    assert np.isinf(head.thresholds_[2])
    assert head.calibration_["missing_in_validation"] == ["c"]


def _fit_twice(fit_options: dict, *, reseed: bool = False, **settings) -> list[np.ndarray]:
    """The probabilities of two heads of ``settings`` (seed 3) fitted alike on the same rows;
    ``reseed``: torch's global generator in another state before each fit."""
    x, y = _blobs(200, 3, seed=5)
    outs = []
    for _ in range(2):
        if reseed:
            torch.manual_seed(len(outs))  # another caller's state each time
        h = build_head(
            "softmax_abstain",
            name="g",
            labels=("a", "b", "c"),
            embedding_version=EMB,
            in_dim=DIM,
            seed=3,
            **settings,
        )
        h.fit(x, y, val_embeddings=x[:60], val_labels=y[:60], epochs=10, **fit_options)
        outs.append(h.predict_proba(x))
    return outs


def test_minibatch_fit_is_deterministic():
    first, second = _fit_twice({"batch_size": 32})
    np.testing.assert_array_equal(first, second)


def test_hidden_heads_with_dropout_fit_the_same_for_one_seed():
    # dropout draws from torch's global generator, which the head's seed did not set
    state = torch.random.get_rng_state()
    first, second = _fit_twice({}, reseed=True, hidden=8, dropout=0.3)
    np.testing.assert_array_equal(first, second)
    torch.random.set_rng_state(state)


def test_never_assigned_labels_assign_nothing_in_the_record_too():
    # The audience estimators read the record as the head's behaviour on validation rows.
    from heads.audience import head_audience_inputs

    head = _fit_on_blobs(
        ("FR", "DE", "OTHER"),
        never_assign=("OTHER",),
        ood_quantile=None,  # the record is the thresholds' (the guard refuses a few rows more)
    )
    vx, _ = _blobs(600, 3, seed=1)  # its validation rows
    row = head.calibration_["per_class"]["OTHER"]
    assert np.isinf(head.thresholds_[2]) and row["threshold"] is None
    assert (row["assigned"], row["correct"], row["recall"]) == (0, 0, 0.0)
    assert "OTHER" in head.calibration_["unreachable"]
    assert head.calibration_["per_class"]["FR"]["assigned"] > 0
    inputs = head_audience_inputs(head)
    really = np.mean([p.label is not None for p in head.predict(vx)])
    assert inputs["val_assigned_share"] == pytest.approx(really)
    assert inputs["recall_counts"][2, 0] == 0
    # a head saved before the record followed never_assign: the closed threshold decides
    head.calibration_["per_class"]["OTHER"].update(assigned=150, correct=140)
    stale = head_audience_inputs(head)
    assert stale["val_assigned_share"] == pytest.approx(really)
    assert stale["recall_counts"][2, 0] == 0


def test_a_head_with_evidence_and_a_guard_predicts_the_same_after_loading(tmp_path):
    # Saved as float32, the evidence and the guard moved rows scored at a threshold or at the
    # cutoff to the other side of it after loading.
    from heads.language_evidence import LanguageEvidence

    labels = ("US", "GB", "FR", "OTHER")
    x, y = _blobs(1500, 4, seed=0)
    vx, vy = _blobs(1000, 4, seed=1)
    languages = np.array(["en", "fr"])[(y == 2).astype(int)]
    evidence = LanguageEvidence.fit(x, list(languages), labels, alpha=0.5)
    head = build_head(
        "softmax_abstain", name="geo", labels=labels, embedding_version=EMB, in_dim=DIM
    )
    head.fit(
        x,
        [labels[i] for i in y],
        val_embeddings=vx,
        val_labels=[labels[i] for i in vy],
        language_evidence_after_calibration=evidence,
    )
    assert head.ood_ is not None and head.language_ is not None
    loaded = load_head(head.save(tmp_path / "h"))
    np.testing.assert_array_equal(loaded.predict_proba(vx), head.predict_proba(vx))
    np.testing.assert_array_equal(loaded.ood_.distance(vx), head.ood_.distance(vx))
    assert [(p.label, p.reason) for p in loaded.predict(vx)] == [
        (p.label, p.reason) for p in head.predict(vx)
    ]


def test_val_labels_without_val_embeddings_are_refused():
    x, y = _blobs(100, 3, seed=5)
    h = build_head(
        "softmax_abstain", name="g", labels=("a", "b", "c"), embedding_version=EMB, in_dim=DIM
    )
    with pytest.raises(InvalidInputError, match="val_labels given without val_embeddings"):
        h.fit(x, y, val_labels=y[:10])


def test_save_load_round_trip(fitted, tmp_path):
    path = fitted.save(tmp_path / "geo" / "v1")
    assert sorted(p.name for p in path.iterdir()) == [
        "README.md",
        "head_config.json",
        "labels.json",
        "model.safetensors",
    ]
    cfg = json.loads((path / "head_config.json").read_text())
    for key in (
        "kind",
        "name",
        "head_version",
        "embedding_version",
        "in_dim",
        "hidden",
        "temperature",
        "thresholds",
        "calibration",
        "label_field",
        "format_version",
    ):
        assert key in cfg
    assert cfg["kind"] == "softmax_abstain" and cfg["embedding_version"] == EMB
    assert json.loads((path / "labels.json").read_text()) == list(fitted.labels)
    loaded = load_head(path, embedding_version=EMB)
    assert isinstance(loaded, SoftmaxAbstainHead)
    x, _ = _blobs(50, 4, seed=7)
    np.testing.assert_allclose(loaded.predict_proba(x), fitted.predict_proba(x), rtol=1e-6)
    np.testing.assert_array_equal(loaded.thresholds_, fitted.thresholds_)
    assert loaded.temperature_ == fitted.temperature_
    assert [p.label for p in loaded.predict(x)] == [p.label for p in fitted.predict(x)]
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        fitted.save(path)


def test_load_refuses_version_and_shape_mismatches(fitted, tmp_path):
    path = fitted.save(tmp_path / "h")
    with pytest.raises(VersionMismatchError) as err:
        load_head(path, embedding_version="emb-ffffffffffff")
    assert (
        EMB in str(err.value)
        and "emb-ffffffffffff" in str(err.value)
        and str(path) in str(err.value)
    )

    cfg = json.loads((path / "head_config.json").read_text())
    bad_dim = tmp_path / "bad_dim"
    fitted.save(bad_dim)
    (bad_dim / "head_config.json").write_text(json.dumps({**cfg, "in_dim": DIM + 1}))
    with pytest.raises(ArtifactError, match=r"in_dim 17 .* weights take 16"):
        load_head(bad_dim)

    bad_labels = tmp_path / "bad_labels"
    fitted.save(bad_labels)
    (bad_labels / "labels.json").write_text(json.dumps(["FR", "DE", "BR"]))
    with pytest.raises(ArtifactError, match="3 labels but the weights have 4 rows"):
        load_head(bad_labels)

    bad_kind = tmp_path / "bad_kind"
    fitted.save(bad_kind)
    (bad_kind / "head_config.json").write_text(json.dumps({**cfg, "kind": "mystery"}))
    with pytest.raises(UnknownHeadError, match="mystery"):
        load_head(bad_kind)

    with pytest.raises(ArtifactError, match=r"has no head_config\.json"):
        load_head(tmp_path / "nowhere")

    # settings that used to load and then predict NaN, a reversed ranking or a raw error
    for name, patch, needle in (
        ("zero_temperature", {"temperature": 0}, "temperature must be a number > 0"),
        ("negative_temperature", {"temperature": -1.0}, "temperature must be a number > 0"),
        ("null_temperature", {"temperature": None}, "temperature must be a number > 0"),
        ("text_threshold", {"thresholds": {"FR": "high"}}, r"thresholds\['FR'\] must be a number"),
        ("list_thresholds", {"thresholds": [0.5, 0.5]}, "thresholds must map each label"),
    ):
        broken = tmp_path / name
        fitted.save(broken)
        (broken / "head_config.json").write_text(json.dumps({**cfg, **patch}))
        with pytest.raises(ArtifactError, match=needle):
            load_head(broken)


def test_out_of_distribution_rows_abstain_whatever_their_score(fitted, monkeypatch):
    x, _ = _blobs(60, 4, seed=4)
    from heads.base import Head

    assert Head.in_distribution(fitted, x) is None  # the base class runs no check
    refused = np.zeros(len(x), dtype=bool)
    refused[::3] = True
    seen = []

    def check(embeddings):
        seen.append(embeddings)
        return ~refused

    monkeypatch.setattr(fitted, "thresholds_", np.zeros(len(fitted.labels)))  # all would assign
    monkeypatch.setattr(fitted, "in_distribution", check)
    preds = fitted.predict(torch.from_numpy(x))
    assert isinstance(seen[0], np.ndarray) and seen[0].shape == x.shape  # numpy, even from torch
    probs = fitted.predict_proba(x)
    for p, row, out in zip(preds, probs, refused, strict=True):
        assert p.argmax == fitted.labels[int(row.argmax())]
        assert p.score == pytest.approx(row.max())
        if out:
            assert (p.label, p.abstained, p.reason) == (None, True, "out_of_distribution")
        else:
            assert (p.label, p.abstained, p.reason) == (p.argmax, False, None)
    # out of distribution wins over the threshold reasons
    monkeypatch.setattr(fitted, "thresholds_", np.full(len(fitted.labels), np.inf))
    reasons = [p.reason for p in fitted.predict(x)]
    assert reasons == [
        "out_of_distribution" if out else "no_threshold_for_class" for out in refused
    ]


def test_predictions_from_proba_checks_the_mask():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
    labels = ("a", "b")
    thr = np.array([0.8, np.inf])
    preds = predictions_from_proba(
        probs, labels, thr, in_distribution=np.array([True, True, False])
    )
    assert [(p.label, p.reason) for p in preds] == [
        ("a", None),
        (None, "no_threshold_for_class"),
        (None, "out_of_distribution"),
    ]
    below = predictions_from_proba(np.array([[0.7, 0.3]]), labels, thr)[0]
    assert (below.label, below.abstained, below.reason) == (None, True, "below_threshold")
    never = predictions_from_proba(probs, labels, None)
    assert all(p.reason is None and p.label == p.argmax for p in never)
    with pytest.raises(ValueError, match=r"boolean array of shape \(3,\).*shape \(2,\)"):
        predictions_from_proba(probs, labels, thr, in_distribution=np.array([True, False]))
    with pytest.raises(ValueError, match="dtype float64"):
        predictions_from_proba(probs, labels, thr, in_distribution=np.ones(3))


def test_prediction_reason_must_match_abstained():
    row = np.array([0.5, 0.5])
    assert ABSTAIN_REASONS == ("no_threshold_for_class", "below_threshold", "out_of_distribution")
    with pytest.raises(ValueError, match="needs a reason in"):
        Prediction(label=None, argmax="a", score=0.5, abstained=True, probabilities=row)
    with pytest.raises(ValueError, match=r"needs a reason in .*'too_far'"):
        Prediction(None, "a", 0.5, True, row, reason="too_far")
    with pytest.raises(ValueError, match="assigned Prediction has reason None"):
        Prediction("a", "a", 0.5, False, row, reason="below_threshold")
