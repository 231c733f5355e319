"""Location tokens and vocabulary trimming on the tiny XLM-R-shaped base from conftest."""

from __future__ import annotations

import json

import pytest
import torch

from embedder.labels import COUNTRIES
from embedder.vocab import (
    ID_MAP_FILE,
    add_location_tokens,
    country_flags,
    location_emoji,
    measure_trim,
    prepare_base,
    trim_vocabulary,
)

PLAIN = ["hola paris", "based in london, love food", "bonjour lyon! music|travel", "tokyo 2024"]


@pytest.fixture()
def tiny(tiny_base_dir):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(tiny_base_dir), AutoTokenizer.from_pretrained(tiny_base_dir)


def _content(tok, text):
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])


def test_flags_and_location_emoji_become_single_tokens(tiny):
    model, tok = tiny
    before = {t: _content(tok, t) for t in PLAIN}
    new_tok, added = add_location_tokens(model, tok)
    flags = country_flags()
    assert set(COUNTRIES) <= set(flags) and len(flags) > 200  # from pycountry + emoji, not typed
    for iso2 in COUNTRIES:
        assert _content(new_tok, f"from {flags[iso2]}")[-1] == flags[iso2], iso2
    pin = _content(new_tok, "📍Lyon 🇫🇷")
    assert pin[:2] == ["▁", "📍"] and pin[-2:] == ["▁", "🇫🇷"]
    assert pin[2:-2] == _content(tok, "📍Lyon")[2:]  # the word around is unchanged
    love = _content(new_tok, "I love 🇧🇷 Brasil")
    at = love.index("🇧🇷")
    assert love[at - 1] == "▁" and love[at + 1 :] == _content(tok, "Brasil")
    assert _content(new_tok, "🇺🇸🇬🇧🇩🇪")[1:] == [flags["US"], flags["GB"], flags["DE"]]
    for char in location_emoji():
        assert _content(new_tok, char) == ["▁", char], char
    for text, tokens in before.items():  # plain text tokenizes as before
        assert _content(new_tok, text) == tokens
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] >= len(new_tok)
    # rows are not random: the flag row is the mean of its names' token rows, 'Q' row is 'q''s
    ri_q = chr(0x1F1E6 + 16)
    assert ri_q in added
    q_ids = new_tok(chr(0x51), add_special_tokens=False)["input_ids"]
    q_ids = [i for i in q_ids if i != new_tok.convert_tokens_to_ids("▁")]
    assert torch.allclose(emb[new_tok.convert_tokens_to_ids(ri_q)], emb[q_ids].mean(0))


@pytest.mark.slow  # two fresh interpreters (hash seeds 1 and 2), each loading transformers
def test_added_pieces_do_not_depend_on_the_hash_seed(tiny_base_dir):
    # The order of added pieces fixes their ids and so the embedding_version: two builds of the
    # same recipe must agree, whatever PYTHONHASHSEED each process drew.
    import os
    import subprocess
    import sys

    code = (
        "import sys, json; from transformers import AutoModel, AutoTokenizer;"
        "from embedder.vocab import add_location_tokens;"
        f"d = {str(tiny_base_dir)!r};"
        "m, t = AutoModel.from_pretrained(d), AutoTokenizer.from_pretrained(d);"
        "_, added = add_location_tokens(m, t);"
        "print(json.dumps(added))"
    )
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1] and len(runs[0]) > 200


def test_trim_keeps_used_pieces_and_maps_ids(tiny):
    model, tok = tiny
    new_tok, added = add_location_tokens(model, tok)
    old_emb = model.get_input_embeddings().weight.detach().clone()
    corpus = ["hola paris lyon", "love food"]
    model, trimmed, id_map = trim_vocabulary(model, new_tok, corpus, keep=added)
    assert len(trimmed) < len(new_tok)
    assert "▁hola" in trimmed.get_vocab() and "▁madrid" not in trimmed.get_vocab()
    for text in ["hola paris lyon", "📍 🇫🇷 🇶🇦", "zzz qq"]:  # kept words and chars: same tokens
        assert _content(trimmed, text) == _content(new_tok, text)
    ids_old = new_tok("hola 🇫🇷")["input_ids"]
    assert [id_map[i] for i in ids_old] == trimmed("hola 🇫🇷")["input_ids"]
    new_emb = model.get_input_embeddings().weight
    for old, new in id_map.items():
        assert torch.equal(new_emb[new], old_emb[old])
    assert model.config.vocab_size == len(trimmed) == len(id_map)
    assert trimmed.pad_token_id == id_map[tok.pad_token_id]
    report = measure_trim(new_tok, trimmed, ["madrid berlin", "hola paris"])
    assert report["unk_rate_after"] == report["unk_rate_before"] == 0.0
    assert report["changed_texts"] == 50.0  # "madrid berlin" now spelled out
    out = model(**trimmed(["madrid hola 🇧🇷"], return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 32


def test_prepare_base_is_cached_and_loadable(tiny_base_dir, tmp_path, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    import embedder.vocab as vocab

    monkeypatch.setattr(vocab, "trim_corpus", lambda: ["hola paris", "love food"])
    out = prepare_base(tiny_base_dir, home=tmp_path)
    assert out.parent == tmp_path / "prepared"
    assert prepare_base(tiny_base_dir, home=tmp_path) == out
    assert prepare_base(tiny_base_dir, trim=False, location_tokens=False) == tiny_base_dir
    id_map = json.loads((out / ID_MAP_FILE).read_text())
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModel.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(id_map)
    assert _content(tok, "hola 🇫🇷") == ["▁hola", "▁", "🇫🇷"]
