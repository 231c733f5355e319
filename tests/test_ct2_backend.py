"""CTranslate2 numerics: same vectors as the torch path, converted once, version unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.ct2_backend import ct2_model_dir
from embedder.encoder import ProfileEncoder
from embedder.errors import ArtifactError

pytest.importorskip("ctranslate2")

from test_onnx_backend import PROFILES  # the same mixed profiles as the ONNX Runtime tests


@pytest.fixture(scope="module")
def reference(tiny_encoder) -> np.ndarray:
    return tiny_encoder.encode(PROFILES)


def test_ct2_int8_matches_torch_and_converts_once(
    tiny_encoder, reference, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PROFILE_EMBED_ONNX_CACHE", str(tmp_path))
    enc = tiny_encoder
    fast = ProfileEncoder(enc.st_model, assembly=enc.assembly, numerics="ct2-int8", threads=1)
    assert fast.embedding_version == enc.embedding_version
    out = fast.encode(PROFILES, batch_size=2)  # several buckets, padding inside each
    assert out.shape == reference.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert ((out * reference).sum(axis=1) > 0.95).all()
    # one row alone (no padding) gives the vector it gets inside a padded batch
    alone = fast.encode(PROFILES[:1], batch_size=1)
    np.testing.assert_allclose(alone[0], out[0], atol=2e-3)
    converted = ct2_model_dir(enc.embedding_version, "ct2-int8", tmp_path)
    assert (converted / "model.bin").is_file()
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".build-")]
    mtime = (converted / "model.bin").stat().st_mtime_ns
    again = ProfileEncoder(enc.st_model, assembly=enc.assembly, numerics="ct2-int8")
    np.testing.assert_allclose(again.encode(PROFILES, batch_size=2), out, atol=1e-5)
    assert (converted / "model.bin").stat().st_mtime_ns == mtime  # converted once, reused


def test_a_damaged_ct2_model_is_named_with_the_fix(tiny_encoder, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PROFILE_EMBED_ONNX_CACHE", str(tmp_path))
    converted = ct2_model_dir(tiny_encoder.embedding_version, "ct2-int8", tmp_path)
    converted.mkdir(parents=True)
    (converted / "model.bin").write_bytes(b"truncated")
    enc = ProfileEncoder(tiny_encoder.st_model, assembly=tiny_encoder.assembly, numerics="ct2-int8")
    with pytest.raises(ArtifactError, match=r"ct2-int8-f\d+.*delete it"):
        enc.encode(PROFILES[:1])
