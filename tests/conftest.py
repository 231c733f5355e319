"""Shared fixtures: tiny random models (hidden 32, 3 layers) so the suite runs on CPU in minutes."""

from __future__ import annotations

import os
import string
from pathlib import Path

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


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face folder: a tiny random BERT and an XLM-R-shaped tokenizer (a stand-in base)."""
    path = tmp_path_factory.mktemp("tiny_base")
    tok = build_tiny_tokenizer(path)
    build_tiny_bert(path, vocab_size=len(tok))
    return path
