"""Shared fixtures: tiny random models (hidden 32, 3 layers) so the suite runs on CPU in minutes.

Each tiny artifact is built once per session and shared by every module: the base folder
(``tiny_base_dir``), the encoder (``tiny_encoder``), the encoder with two fitted heads
(``tiny_model``), that model saved (``tiny_model_dir``) and the folder ``train`` writes before any
head is fitted (``encoder_only_model_dir``). They are read-only: after every test each one that
exists is fingerprinted again, and a test that changed one fails (``_shared_fixtures_unchanged``).
A test that writes into a model folder takes ``writable_model_dir`` (its own copy) or copies one
with ``copy_model_dir``. File permissions cannot do this job: the suite may run as root.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import string
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Words the tiny tokenizer knows whole; everything else falls back to single characters.
TINY_WORDS = (
    "hola hello bonjour berlin paris lyon london tokyo são paulo rio madrid roma milano istanbul "
    "mumbai jakarta manila seoul bangkok cairo warsaw kyiv lima sydney lagos dubai lisboa "
    "love food travel gym music coffee beach based in from bio post passage"
).split()


def build_tiny_tokenizer(path: Path):
    """Save an XLM-R-shaped tokenizer (unigram + Metaspace + ``<s> $A </s>``) with a tiny vocab."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    chars = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + "@#:!.,'-|/")
    pieces = [(s, 0.0) for s in specials]
    pieces += [("▁" + w, -5.0) for w in TINY_WORDS]
    pieces += [("▁", -6.0)] + [(c, -8.0) for c in chars] + [("▁" + c, -9.0) for c in chars]
    pieces += [(e, -7.0) for e in ("📍", "🏠", "✈️", "❤️", "🇫🇷", "🇧🇷", "🇯🇵")]
    raw = Tokenizer(Unigram(pieces, unk_id=3, byte_fallback=False))
    raw.normalizer = normalizers.Sequence(
        [normalizers.Replace("\u200d", " "), normalizers.NFKC(), normalizers.Lowercase()]
    )
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=512,
    )
    tok.save_pretrained(path)
    return tok


def build_tiny_bert(path: Path, vocab_size: int, *, layers: int = 3, seed: int = 0):
    """Save a random BERT (hidden 32, 4 heads) beside the tokenizer in ``path``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=512,
        pad_token_id=1,
    )
    model = BertModel(config, add_pooling_layer=False)
    model.save_pretrained(path)
    return model


# ------------------------------------------------------------------ guards on shared fixtures
#: name -> (fingerprint function, fingerprint when the fixture was built).
_GUARDED: dict[str, tuple[Callable[[], str], str]] = {}


def _guard(name: str, fingerprint: Callable[[], str]) -> None:
    _GUARDED[name] = (fingerprint, fingerprint())


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root`` (links followed)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def encoder_digest(encoder: Any) -> str:
    """sha256 over an encoder's weights and the settings that change what it computes."""
    h = hashlib.sha256()
    for name, tensor in encoder.st_model.state_dict().items():
        h.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    settings = (encoder.assembly, encoder.numerics, encoder.threads, encoder.max_batch_tokens)
    h.update(repr(settings).encode() + encoder.embedding_version.encode())
    return h.hexdigest()


def heads_digest(heads: dict[str, Any]) -> str:
    """sha256 over each head's config (thresholds included) and learned arrays."""
    h = hashlib.sha256()
    for name in sorted(heads):
        head = heads[name]
        h.update(name.encode() + json.dumps(head.to_config(), sort_keys=True, default=str).encode())
        for key, array in sorted(head._tensors().items()):
            h.update(key.encode() + array.tobytes())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def _shared_fixtures_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test that changed a shared fixture, naming it (the next tests would see it)."""
    yield
    changed = [name for name, (fingerprint, want) in _GUARDED.items() if fingerprint() != want]
    for name in changed:  # blame this test only, not every later one
        fingerprint, _ = _GUARDED[name]
        _GUARDED[name] = (fingerprint, fingerprint())
    if changed:
        pytest.fail(
            f"{request.node.nodeid} changed the shared session fixture(s) {changed}; they are "
            "read-only: copy them first (writable_model_dir, copy_model_dir, copy.deepcopy)"
        )


def copy_model_dir(src: Path, dst: Path) -> Path:
    """A private, writable copy of a model folder (``dst`` must not exist)."""
    return Path(shutil.copytree(src, dst))


# ------------------------------------------------------------------------ shared fixtures
@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face folder: a tiny random BERT and an XLM-R-shaped tokenizer (a stand-in base)."""
    path = tmp_path_factory.mktemp("tiny_base")
    tok = build_tiny_tokenizer(path)
    build_tiny_bert(path, vocab_size=len(tok))
    _guard("tiny_base_dir", lambda: tree_digest(path))
    return path


@pytest.fixture(scope="session")
def tiny_encoder(tiny_base_dir: Path) -> Any:
    """``ProfileEncoder.from_base(tiny_base_dir, num_layers=2, threads=1)``, shared: read-only."""
    from embedder.encoder import ProfileEncoder

    encoder = ProfileEncoder.from_base(tiny_base_dir, num_layers=2, threads=1)
    _guard("tiny_encoder", lambda: encoder_digest(encoder))
    return encoder


@pytest.fixture(scope="session")
def tiny_model(tiny_encoder: Any) -> SimpleNamespace:
    """``tiny_encoder`` with fitted ``geolocation`` and ``category`` heads (``.encoder``,
    ``.heads``), shared: ``copy.deepcopy`` a head before changing it."""
    from server_helpers import fit_tiny_heads

    model = SimpleNamespace(encoder=tiny_encoder, heads=fit_tiny_heads(tiny_encoder))
    # Also fails a test that adds, drops or swaps a head, or the encoder, of the shared object.
    _guard("tiny_model", lambda: heads_digest(model.heads) + str(model.encoder is tiny_encoder))
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_model`` saved as a model folder (``save_model``), shared: never write into it."""
    from heads.model import save_model

    path = save_model(tmp_path_factory.mktemp("tiny_model") / "model", tiny_model.encoder,
                      tiny_model.heads)  # fmt: skip
    _guard("tiny_model_dir", lambda: tree_digest(path))
    return path


@pytest.fixture(scope="session")
def encoder_only_model_dir(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as ``train`` writes it (encoder + unfitted geolocation head), shared."""
    from server_helpers import save_encoder_only_model

    path = save_encoder_only_model(tiny_base_dir, tmp_path_factory.mktemp("enc_only") / "model")
    _guard("encoder_only_model_dir", lambda: tree_digest(path))
    return path


@pytest.fixture
def writable_model_dir(encoder_only_model_dir: Path, tmp_path: Path) -> Path:
    """This test's own copy of ``encoder_only_model_dir``, for commands that add heads."""
    return copy_model_dir(encoder_only_model_dir, tmp_path / "model")


@pytest.fixture(scope="session")
def load_bench() -> Callable[[str], ModuleType]:
    """Import a ``bench/`` script by name (``load_bench("real_eval")``), once per session.

    The scripts are not a package; the repository root goes on ``sys.path`` first because they
    import ``embedder``, ``heads`` and each other from there.
    """
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            path = root / "bench" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
            assert spec is not None and spec.loader is not None, path
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load
