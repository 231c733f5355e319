"""oneDNN fused linear layers: same vectors, shared weights, and a clean fall-back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from embedder import cpu_fusion
from embedder.cpu_fusion import FusedLinear, fuse_bert_linears, fused_inference_copy

TEXTS = ["📍 Lyon, France | pâtisserie", "São Paulo 🇧🇷 café", "東京 ramen", "good morning ☕"]


def _supported(dtype: torch.dtype) -> None:
    if not cpu_fusion.fusion_supported(dtype):
        pytest.skip(f"oneDNN fused linear does not run in {dtype} on this CPU/torch build")


@pytest.fixture
def encoder(tiny_base_dir):
    from embedder.encoder import ProfileEncoder

    return ProfileEncoder.from_base(tiny_base_dir, num_layers=2, threads=1)


def _forward(model: nn.Module, encoder, texts=TEXTS) -> torch.Tensor:
    from embedder.encoder import _pad

    ids = encoder.tokenizer(list(texts), truncation=True, max_length=64)["input_ids"]
    pad = encoder.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        return model(_pad(ids, pad, torch.device("cpu")))["sentence_embedding"].float()


def test_fused_copy_gives_the_same_vectors_and_shares_the_weights(encoder):
    _supported(torch.float32)
    model = encoder.st_model.eval()
    fused = fused_inference_copy(model)
    assert fused is not model
    kinds = [type(m).__name__ for m in fused.modules()]
    assert kinds.count("FusedLinear") == 6 * 2  # q, k, v, attention out, FFN in, FFN out x 2
    assert "FusedLinear" not in [type(m).__name__ for m in model.modules()]
    gelus = [m for m in fused.modules() if isinstance(m, FusedLinear) and m.activation == "gelu"]
    assert len(gelus) == 2  # BERT's exact GELU went into the FFN's first GEMM
    torch.testing.assert_close(
        _forward(fused, encoder), _forward(model, encoder), atol=2e-5, rtol=0
    )
    # the weights are shared, so an in-place update (an optimizer step) is seen at once
    ours = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in fused.parameters()} <= ours
    before = _forward(fused, encoder)
    with torch.no_grad():
        model[0].auto_model.encoder.layer[0].output.dense.weight.mul_(1.5)
    after_fused, after_plain = _forward(fused, encoder), _forward(model, encoder)
    assert not torch.allclose(before, after_fused)
    torch.testing.assert_close(after_fused, after_plain, atol=2e-5, rtol=0)


def test_the_encoder_serves_fp32_and_bf16_through_fused_layers(encoder):
    _supported(torch.float32)
    fp32 = encoder.encode_texts(TEXTS)
    assert (
        isinstance(encoder._fp32_model, nn.Module) and encoder._fp32_model is not encoder.st_model
    )
    plain = _forward(encoder.st_model.eval(), encoder).numpy()
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    np.testing.assert_allclose(fp32, plain, atol=1e-5)
    # a weight change drops the derived copies (refresh_version), so nothing stale is served
    encoder.refresh_version()
    assert encoder._fp32_model is None
    if cpu_fusion.fusion_supported(torch.bfloat16):
        encoder.numerics = "bf16"
        bf16 = encoder.encode_texts(TEXTS)
        kinds = {type(m).__name__ for m in encoder._bf16_model.modules()}
        assert "FusedLinear" in kinds
        assert (bf16 * fp32).sum(axis=1).min() > 0.99


def test_without_the_op_the_model_is_used_as_it_is(encoder, monkeypatch):
    monkeypatch.setattr(cpu_fusion, "fusion_supported", lambda dtype: False)
    model = encoder.st_model
    assert fused_inference_copy(model) is model
    assert fuse_bert_linears(model) == 0
    vectors = encoder.encode_texts(TEXTS)
    assert encoder._fp32_model is model and np.isfinite(vectors).all()


def test_an_approximate_gelu_is_not_fused_into_the_gemm(encoder):
    _supported(torch.float32)
    model = encoder.st_model.eval()
    for layer in model[0].auto_model.encoder.layer:
        layer.intermediate.intermediate_act_fn = nn.GELU(approximate="tanh")
    fused = fused_inference_copy(model)
    acts = [m for m in fused.modules() if isinstance(m, FusedLinear) and m.activation == "gelu"]
    assert acts == []
    torch.testing.assert_close(
        _forward(fused, encoder), _forward(model, encoder), atol=2e-5, rtol=0
    )
    with pytest.raises(ValueError, match="activation must be"):
        FusedLinear(nn.Linear(2, 2), "relu")
