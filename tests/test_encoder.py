"""ProfileEncoder: layer cut, content-hash version, save/load, bucketed encoding, numerics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedder.encoder import ProfileEncoder
from embedder.errors import ArtifactError, InvalidInputError
from embedder.profile import AssemblyConfig, Profile

PROFILES = [
    Profile(
        id="fr1",
        username="camille.lyon",
        full_name="Camille",
        biography="Photographe 📷 | 📍 Lyon 🇫🇷 | contact: camille@mail.fr",
        captions=("Bonjour Lyon ☀️ #lyon #food", "Marché du dimanche 🥖 @amis https://x.fr/a"),
    ),
    Profile(id="empty"),
    Profile(
        id="jp", biography="東京 🇯🇵 travel", captions=("tokyo night", "ramen!!", "gym", "coffee")
    ),
    Profile(id="long", biography="hello paris " * 400, captions=("love food " * 300,) * 5),
    Profile(id="br", full_name="João", biography="são paulo 🇧🇷", captions=("praia 🏖️ rio",)),
]


@pytest.fixture(scope="module")
def encoder(tiny_encoder) -> ProfileEncoder:
    return tiny_encoder


def test_from_base_cuts_layers(encoder, tiny_base_dir) -> None:
    assert encoder.num_layers == 2 and encoder.transformer.auto_model.config.num_hidden_layers == 2
    assert encoder.dim == 32
    assert encoder.max_seq_length == AssemblyConfig().max_tokens + AssemblyConfig().marker_overhead
    assert encoder.embedding_version.startswith("emb-") and len(encoder.embedding_version) == 16
    # deterministic: nothing randomly initialised
    assert ProfileEncoder.from_base(tiny_base_dir, num_layers=2).embedding_version == (
        encoder.embedding_version
    )
    with pytest.raises(ValueError, match=r"1\.\.3"):
        ProfileEncoder.from_base(tiny_base_dir, num_layers=4)


def test_encode_shapes_norms_and_empty(encoder) -> None:
    out = encoder.encode(PROFILES)
    assert out.shape == (len(PROFILES), 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(out).all()
    assert encoder.encode([]).shape == (0, 32)
    assert encoder.encode_texts([]).shape == (0, 32)
    assert encoder.assemble([Profile(id="e")]) == ["passage: "]


def test_bucketed_equals_unbatched_and_keeps_order(encoder) -> None:
    texts = encoder.assemble(PROFILES) + [f"passage: hello {'paris ' * i}" for i in range(15)]
    single = np.stack([encoder.encode_texts([t])[0] for t in texts])
    encoder.max_batch_tokens = 300  # forces many small, length-sorted batches
    try:
        bucketed = encoder.encode_texts(texts, batch_size=7, show_progress=True)
    finally:
        encoder.max_batch_tokens = 16384
    np.testing.assert_allclose(bucketed, single, atol=1e-5)
    reversed_ = encoder.encode_texts(texts[::-1], batch_size=64)
    np.testing.assert_allclose(reversed_[::-1], single, atol=1e-5)


def _width(lengths, p):
    """The width a pass runs at: its longest input rounded up to ``PAD_MULTIPLE``."""
    from embedder.encoder import PAD_MULTIPLE

    return -(-max(lengths[i] for i in p) // PAD_MULTIPLE) * PAD_MULTIPLE


def _pass_cost(lengths, passes, overhead):
    return sum(overhead + len(p) * _width(lengths, p) for p in passes)


def test_min_cost_passes_cover_every_input_within_caps_and_beat_one_padded_pass() -> None:
    from embedder.encoder import PAD_MULTIPLE, _buckets, _min_cost_buckets

    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.choice([96, 96, 96, 90, 70, 50, 30, 12], size=90)]
    for overhead in (0, 16, 64, 10**6):
        passes = _min_cost_buckets(lengths, 40, 2000, overhead)
        assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
        for p in passes:
            assert len(p) <= 40 and len(p) * _width(lengths, p) <= 2000
        greedy = list(_buckets(lengths, 40, 2000))
        for p in greedy:
            assert len(p) <= 40 and len(p) * _width(lengths, p) <= 2000
        assert _pass_cost(lengths, passes, overhead) <= _pass_cost(lengths, greedy, overhead)
    # no per-pass cost: every pass holds inputs of one padded width (no padding beyond the
    # rounding the pass runs at anyway)
    rounded = [-(-n // PAD_MULTIPLE) for n in lengths]
    assert all(len({rounded[i] for i in p}) == 1 for p in _min_cost_buckets(lengths, 256, 10**6, 0))
    # a huge per-pass cost: as few passes as the caps allow
    assert len(_min_cost_buckets(lengths, 256, 10**6, 10**6)) == 1
    assert _min_cost_buckets([], 8, 100, 5) == []
    assert _min_cost_buckets([500, 3], 8, 100, 0) == [[0], [1]]  # one over-budget input alone


def test_min_cost_passes_give_the_same_vectors(encoder) -> None:
    texts = encoder.assemble(PROFILES) + [f"passage: hello {'paris ' * i}" for i in range(15)]
    plain = encoder.encode_texts(texts, batch_size=len(texts))
    split = encoder.encode_texts(texts, batch_size=len(texts), pass_overhead_tokens=4)
    np.testing.assert_allclose(split, plain, atol=1e-5)
    with pytest.raises(InvalidInputError, match="pass_overhead_tokens"):
        encoder.encode_texts(texts, pass_overhead_tokens=-1)


def test_save_load_round_trip(encoder, tmp_path) -> None:
    path = encoder.save(tmp_path / "enc")
    meta = json.loads((path / "embedding_version.json").read_text())
    assert meta == {
        "embedding_version": encoder.embedding_version,
        "dim": 32,
        "normalize": True,
        "base": encoder.base,
        "num_layers": 2,
        "format_version": 1,
    }
    assert AssemblyConfig.from_dict(json.loads((path / "assembly.json").read_text())) == (
        encoder.assembly
    )
    loaded = ProfileEncoder.load(path)
    assert loaded.embedding_version == encoder.embedding_version and loaded.num_layers == 2
    np.testing.assert_allclose(loaded.encode(PROFILES), encoder.encode(PROFILES), atol=1e-6)
    with pytest.raises(ArtifactError, match="not empty"):
        encoder.save(path)
    with pytest.raises(ArtifactError, match="missing"):
        ProfileEncoder.load(tmp_path / "nowhere")


def test_version_tracks_weights_tokenizer_and_assembly(tiny_base_dir, tmp_path) -> None:
    enc = ProfileEncoder.from_base(tiny_base_dir, num_layers=2)
    v0 = enc.embedding_version
    other = ProfileEncoder.from_base(
        tiny_base_dir, num_layers=2, assembly=AssemblyConfig(max_tokens=128)
    )
    assert other.embedding_version != v0
    links = ProfileEncoder.from_base(
        tiny_base_dir, num_layers=2, assembly=AssemblyConfig(link_hosts_only=True)
    )
    assert links.embedding_version not in (v0, other.embedding_version)
    with torch.no_grad():
        enc.transformer.auto_model.encoder.layer[0].output.dense.bias.add_(0.01)
    assert enc.embedding_version == v0  # cached: changing weights requires refresh_version()
    v1 = enc.refresh_version()
    assert v1 != v0 and enc.embedding_version == v1
    enc.tokenizer.add_tokens(["🇶🇦"])
    assert enc.refresh_version() not in (v0, v1)
    # save() always refreshes, so the stored version matches the weights saved
    with torch.no_grad():
        enc.transformer.auto_model.encoder.layer[1].output.dense.bias.add_(0.01)
    stale = enc.embedding_version
    enc.save(tmp_path / "fresh")
    stored = json.loads((tmp_path / "fresh" / "embedding_version.json").read_text())
    assert stored["embedding_version"] == enc.embedding_version != stale


def test_edited_artifacts_are_refused(encoder, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    def fresh(name: str):
        return encoder.save(tmp_path / name)

    path = fresh("assembly")
    data = json.loads((path / "assembly.json").read_text())
    (path / "assembly.json").write_text(json.dumps({**data, "bio_tokens": 32}))
    with pytest.raises(ArtifactError, match="does not match the stored embedding_version"):
        ProfileEncoder.load(path)

    path = fresh("weights")
    weights = load_file(path / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="edited or is corrupt"):
        ProfileEncoder.load(path)

    path = fresh("meta")
    meta = json.loads((path / "embedding_version.json").read_text())
    (path / "embedding_version.json").write_text(json.dumps({**meta, "embedding_version": "emb-0"}))
    with pytest.raises(ArtifactError, match="emb-0"):
        ProfileEncoder.load(path)

    path = fresh("format")
    (path / "embedding_version.json").write_text(json.dumps({**meta, "format_version": 9}))
    with pytest.raises(ArtifactError, match="format_version"):
        ProfileEncoder.load(path)


@pytest.mark.parametrize("numerics", ["bf16", "int8"])
def test_other_numerics_run(encoder, numerics) -> None:
    fast = ProfileEncoder(encoder.st_model, assembly=encoder.assembly, numerics=numerics, threads=1)
    assert fast.embedding_version == encoder.embedding_version
    out = fast.encode(PROFILES)
    ref = encoder.encode(PROFILES)
    assert out.shape == ref.shape and out.dtype == np.float32
    cosine = (out * ref).sum(axis=1)
    assert (cosine > 0.95).all()
    with pytest.raises(ValueError, match="numerics"):
        ProfileEncoder(encoder.st_model, assembly=encoder.assembly, numerics="fp8")


def test_with_numerics_shares_weights_and_version(encoder) -> None:
    fast = encoder.with_numerics("bf16", threads=1)
    assert fast.st_model is encoder.st_model and fast.numerics == "bf16" and fast.threads == 1
    assert fast.embedding_version == encoder.embedding_version
    assert encoder.with_numerics("int8").threads == encoder.threads
    with pytest.raises(ValueError, match="numerics"):
        encoder.with_numerics("fp8")
