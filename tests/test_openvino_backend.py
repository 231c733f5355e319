"""OpenVINO numerics: same vectors as the torch path, cached int8 IR, version unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.encoder import ProfileEncoder
from embedder.errors import ArtifactError
from embedder.openvino_backend import int8_ir_path
from embedder.profile import Profile

pytest.importorskip("openvino")
pytest.importorskip("nncf")

PROFILES = [
    Profile(id="fr", biography="📍 lyon 🇫🇷 | love food", captions=("bonjour lyon", "coffee")),
    Profile(id="empty"),
    Profile(id="jp", biography="tokyo travel", captions=("tokyo night", "gym", "music")),
    Profile(id="long", biography="hello paris " * 300, captions=("love food " * 200,) * 5),
    Profile(id="br", full_name="João", biography="são paulo 🇧🇷", captions=("rio beach",)),
]


@pytest.fixture(scope="module")
def reference(tiny_encoder) -> np.ndarray:
    return tiny_encoder.encode(PROFILES)


@pytest.mark.parametrize(("numerics", "min_cosine"), [("openvino", 0.99), ("openvino-int8", 0.95)])
def test_openvino_matches_torch(
    tiny_encoder, reference, numerics, min_cosine, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PROFILE_EMBED_ONNX_CACHE", str(tmp_path))
    enc = tiny_encoder
    fast = ProfileEncoder(enc.st_model, assembly=enc.assembly, numerics=numerics, threads=1)
    assert fast.embedding_version == enc.embedding_version
    out = fast.encode(PROFILES, batch_size=2)  # several buckets, padding inside each
    assert out.shape == reference.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert ((out * reference).sum(axis=1) > min_cosine).all()
    if numerics == "openvino-int8":
        ir = int8_ir_path(enc.embedding_version, tmp_path)
        assert ir.is_file() and ir.with_suffix(".bin").is_file()
        assert not [p for p in ir.parent.iterdir() if p.name.startswith(".build-")]
        mtime = ir.stat().st_mtime_ns
        again = ProfileEncoder(enc.st_model, assembly=enc.assembly, numerics=numerics)
        np.testing.assert_allclose(again.encode(PROFILES, batch_size=2), out, atol=1e-5)
        assert ir.stat().st_mtime_ns == mtime  # quantized once, reused


def test_a_damaged_int8_ir_is_named_with_the_fix(tiny_encoder, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PROFILE_EMBED_ONNX_CACHE", str(tmp_path))
    ir = int8_ir_path(tiny_encoder.embedding_version, tmp_path)
    ir.parent.mkdir(parents=True)
    ir.write_text("<net>truncated")
    ir.with_suffix(".bin").write_bytes(b"")
    enc = ProfileEncoder(
        tiny_encoder.st_model, assembly=tiny_encoder.assembly, numerics="openvino-int8"
    )
    with pytest.raises(ArtifactError, match=r"openvino-int8-f\d+\.xml.*delete it"):
        enc.encode(PROFILES[:1])
