"""The out-of-distribution guard: known answers, persistence, and abstention with its reason."""

from __future__ import annotations

import numpy as np

from heads.base import REASON_OUT_OF_DISTRIBUTION
from heads.registry import build_head, load_head
from heads.shift import MahalanobisGuard


def _data(n: int, *, shift: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 4
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(size=(n, 8))
    x[:, 5:] += shift  # a shift along directions the classes never use
    return x.astype(np.float32), y


def test_guard_passes_its_quantile_of_like_rows_and_refuses_shifted_ones():
    x, y = _data(2000)
    guard = MahalanobisGuard.fit(x, y, 3, quantile=0.95)
    assert guard is not None and guard.n == 2000
    fresh, _ = _data(4000, seed=1)
    assert abs(guard.in_distribution(fresh).mean() - 0.95) < 0.02
    shifted, _ = _data(1000, shift=6.0, seed=2)
    assert guard.in_distribution(shifted).mean() < 0.02
    # too few rows to estimate a covariance: no guard rather than a noisy one
    assert MahalanobisGuard.fit(x[:20], y[:20], 3) is None


def test_head_calibration_fits_the_guard_saves_it_and_abstains_with_the_reason(tmp_path):
    x, y = _data(1500)
    labels = ("a", "b", "c")
    head = build_head(
        "softmax_abstain", name="t", labels=labels, embedding_version="emb-t", in_dim=8
    )
    head.fit(x[:1000], y[:1000], val_embeddings=x[1000:], val_labels=y[1000:])
    assert head.ood_ is not None and head.to_config()["ood"]["n"] == 500
    shifted, _ = _data(50, shift=6.0, seed=3)
    preds = head.predict(shifted)
    assert all(p.label is None and p.reason == REASON_OUT_OF_DISTRIBUTION for p in preds)
    assert sum(p.label is not None for p in head.predict(x[:200])) > 150
    loaded = load_head(head.save(tmp_path / "t" / "v1"))
    np.testing.assert_array_equal(
        loaded.in_distribution(np.r_[x[:100], shifted]),
        head.in_distribution(np.r_[x[:100], shifted]),
    )
    off = build_head(
        "softmax_abstain", name="t", labels=labels, embedding_version="emb-t", in_dim=8,
        ood_quantile=None,
    )  # fmt: skip
    off.fit(x[:1000], y[:1000], val_embeddings=x[1000:], val_labels=y[1000:])
    assert off.ood_ is None and off.in_distribution(shifted) is None


def test_a_saved_guard_whose_arrays_do_not_fit_is_refused_at_load(tmp_path):
    import json

    import pytest
    from safetensors.numpy import load_file, save_file

    from embedder.errors import ArtifactError

    x, y = _data(1500)
    head = build_head(
        "softmax_abstain", name="t", labels=("a", "b", "c"), embedding_version="emb-t", in_dim=8
    )
    head.fit(x[:1000], y[:1000], val_embeddings=x[1000:], val_labels=y[1000:])
    path = head.save(tmp_path / "t")
    tensors = load_file(str(path / "model.safetensors"))
    assert tensors["ood.whiten"].dtype == np.float64  # as computed: see the round trip above
    tensors["ood.whiten"] = tensors["ood.whiten"][:, :5].copy()  # loaded, then failed at predict
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(ArtifactError, match="do not fit together"):
        load_head(path)
    assert json.loads((path / "head_config.json").read_text())["ood"]["n"] == 500
