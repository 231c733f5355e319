"""What the build does to a jointly trained head before serving it: the class-weighted fit's
posteriors are returned to the training prior, and OTHER is scored but never assigned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedder.errors import InvalidInputError
from embedder.labels import GEO_LABELS
from heads import standard_head
from heads.training.data import class_weights


def _head():
    head = standard_head("geolocation", embedding_version="emb-test", in_dim=4, seed=0)
    layer = head.logits_module()[-1]
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
    return head


def test_undo_class_weights_shifts_the_bias_by_minus_log_weight() -> None:
    head = _head()
    sa, other = GEO_LABELS.index("SA"), GEO_LABELS.index("OTHER")
    # a training set with 10x more OTHER rows than SA rows, one class never seen
    counts = np.full(len(GEO_LABELS), 100)
    counts[sa], counts[other] = 50, 500
    counts[GEO_LABELS.index("SE")] = 0
    y = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    w = class_weights(y, len(GEO_LABELS))
    # the weighted fit would have learnt these odds: SA inflated over OTHER by w_SA / w_OTHER
    with torch.no_grad():
        head.logits_module()[-1].bias.copy_(torch.from_numpy(np.log(np.where(w > 0, w, 1.0))))
    ambiguous = np.zeros((1, 4), dtype=np.float32)
    assert head.logits(ambiguous)[0, sa] > head.logits(ambiguous)[0, other]
    head.undo_class_weights(w)
    logits = head.logits(ambiguous)[0]
    np.testing.assert_allclose(logits, 0.0, atol=1e-6)  # back to the (here uniform) evidence
    # a class without rows (weight 0) keeps its bias instead of getting +inf
    assert w[GEO_LABELS.index("SE")] == 0 and np.isfinite(logits).all()


def test_undo_class_weights_refuses_a_wrong_shape() -> None:
    with pytest.raises(InvalidInputError, match="weights"):
        _head().undo_class_weights(np.ones(3))


def test_never_assign_keeps_a_label_scored_but_unassigned(tmp_path) -> None:
    from heads.registry import load_head
    from heads.softmax import SoftmaxAbstainHead

    rng = np.random.default_rng(0)
    labels = ["A", "B", "OTHER"]
    centres = rng.normal(size=(3, 8)) * 3
    y = rng.integers(0, 3, 600)
    x = (centres[y] + rng.normal(size=(600, 8))).astype(np.float32)
    head = SoftmaxAbstainHead.from_config(
        {"name": "geo", "embedding_version": "emb-test", "in_dim": 8, "never_assign": ["OTHER"]},
        labels,
    )
    head.fit(x[:400], [labels[i] for i in y[:400]])
    head.calibrate(x[400:], [labels[i] for i in y[400:]])
    other = labels.index("OTHER")
    assert np.isinf(head.thresholds_[other]) and np.isfinite(head.thresholds_[0])
    preds = head.predict(x[400:])
    from_other = [p for p, t in zip(preds, y[400:], strict=True) if t == other]
    assert all(p.label is None for p in from_other)  # scored, argmax OTHER, never assigned
    assert any(p.argmax == "OTHER" and p.reason == "no_threshold_for_class" for p in from_other)
    assert any(p.label == "A" for p in preds)
    # it survives save/load (head_config.json holds a list)
    head.save(tmp_path / "h")
    again = load_head(tmp_path / "h")
    assert again.config.never_assign == ("OTHER",) and np.isinf(again.thresholds_[other])
    with pytest.raises(InvalidInputError, match="never_assign"):
        SoftmaxAbstainHead.from_config(
            {"name": "g", "embedding_version": "e", "in_dim": 8, "never_assign": ["XX"]}, labels
        )
