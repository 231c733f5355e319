"""ONNX Runtime numerics: same vectors as the torch path, cached export, version unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.encoder import ProfileEncoder
from embedder.onnx_backend import onnx_path
from embedder.profile import Profile

pytest.importorskip("onnxruntime")

PROFILES = [
    Profile(id="fr", biography="📍 lyon 🇫🇷 | love food", captions=("bonjour lyon", "coffee")),
    Profile(id="empty"),
    Profile(id="jp", biography="tokyo travel", captions=("tokyo night", "gym", "music")),
    Profile(id="long", biography="hello paris " * 300, captions=("love food " * 200,) * 5),
    Profile(id="br", full_name="João", biography="são paulo 🇧🇷", captions=("rio beach",)),
]


@pytest.fixture(scope="module")
def encoder(tiny_encoder) -> ProfileEncoder:
    return tiny_encoder


@pytest.fixture(scope="module")
def reference(encoder) -> np.ndarray:
    return encoder.encode(PROFILES)


@pytest.mark.parametrize(("numerics", "min_cosine"), [("onnx-fp32", 0.9999), ("onnx-int8", 0.95)])
def test_onnx_matches_torch(encoder, reference, numerics, min_cosine, tmp_path, monkeypatch):
    monkeypatch.setenv("PROFILE_EMBED_ONNX_CACHE", str(tmp_path))
    fast = ProfileEncoder(encoder.st_model, assembly=encoder.assembly, numerics=numerics, threads=1)
    assert fast.embedding_version == encoder.embedding_version
    # small batches and token budget: several buckets, padding inside each
    out = fast.encode(PROFILES, batch_size=2)
    assert out.shape == reference.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert ((out * reference).sum(axis=1) > min_cosine).all()
    cached = onnx_path(encoder.embedding_version, numerics, tmp_path)
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns
    again = ProfileEncoder(encoder.st_model, assembly=encoder.assembly, numerics=numerics)
    np.testing.assert_allclose(again.encode(PROFILES, batch_size=2), out, atol=1e-5)
    assert cached.stat().st_mtime_ns == mtime  # exported once, reused
