"""Convert public real-data sources to the project's labelled-profile JSONL (issue 15).

The repository holds these converters, never the text: bring each source with the ``fetch`` tool
into a scratch folder outside the repository, then

    python bench/real_sources.py multilang  RAW/all_annotated.tsv      -o REAL/multilang.jsonl
    python bench/real_sources.py nadi       RAW/DA_train_labeled.tsv   -o REAL/nadi.jsonl
    python bench/real_sources.py tass       RAW/tass/train             -o REAL/tass.jsonl
    python bench/real_sources.py bios       RAW/people.csv             -o REAL/bios.jsonl

Each row becomes one profile in the project schema, ``country`` as ISO 3166-1 alpha-2 (outside the
36 labels -> ``OTHER`` when read, with the code kept in ``country_iso``), ``source`` naming the set,
and any other real label (``sentiment`` for TASS) as an extra field. The first three sources are
single posts (the post is the profile's only caption); ``bios`` is whole profile headers: username,
display name and bio, labelled by the location the user typed (``bench/place_names.py``), which is
not part of the profile.

Reserved rows are dropped *before* a row is parsed (``multilang``: only tweet ids with
``sha256(id) % 10 < 3`` are read; ``tass``: only the ``train/`` folder is accepted; ``bios``: only
usernames with ``sha256(username) % 10 < 7``), so reserved text never reaches a report, a model or
this process's memory beyond the line reader.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

csv.field_size_limit(10_000_000)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bench/place_names and embedder/ import from here
    sys.path.insert(0, str(ROOT))

#: Where each source came from; written into docs/REAL_DATA.md.
SOURCES: dict[str, dict[str, str]] = {
    "multilang": {
        "repo": "somii-i/Multi-Lang-v02",
        "path": "data/all_annotated.tsv",
        "commit": "b629b123618de310b8d1b13ac4eddaf71161ad18",
        "licence": "no licence file in the repository; public tweets, used for evaluation only",
        "label": "the `Country` column (country of the tweet's geotag), mapped to ISO alpha-2",
        "rows": "only tweet ids with int(sha256(id).hexdigest(), 16) % 10 < 3; others reserved",
    },
    "nadi": {
        "repo": "OmarSayedMostafa/Nuanced-Arabic-Dialect-Identification",
        "path": "data/DA_train_labeled.tsv",
        "commit": "09a7a7d513998b7576b6baee0b5a566a7802d43b",
        "licence": "MIT (repository); NADI 2020 shared-task tweets",
        "label": "`#3_country_label` (the NADI annotators' country of the user, from account "
        "location), mapped to ISO alpha-2; Arabic-speaking countries outside the 36 -> OTHER",
        "rows": "the training file only",
    },
    "tass": {
        "repo": "git-lu/lit-analysis",
        "path": "pysentimiento/data/Task1-train-dev.zip (train/ only)",
        "commit": "eb4f69bd7333f3c68e1d268a21bbe80b290ad2b2",
        "licence": "TASS 2020 task 1 corpus (research use); repository without a licence file",
        "label": "the file's country (es/cr/mx/pe/uy.tsv -> ES, CR, MX, PE, UY); the third "
        "column is the tweet's sentiment (P/N/NEU/NONE), kept as `sentiment`",
        "rows": "train/ only; dev/ is reserved and never opened",
    },
    "bios": {
        "repo": "i5m/i5m.github.io",
        "path": "projects/twitter/data/in_parts/10/people.csv",
        "commit": "c959c8869d8fca07ead3772692a36656132d8664",
        "licence": "no licence file in the repository; public Twitter profiles collected in "
        "November 2019, used for evaluation only",
        "label": "the profile's typed location, read as one country by bench/place_names.py "
        "(profiles whose location names no single country are dropped); the location itself "
        "is not part of the profile",
        "rows": "only usernames with int(sha256(lower-case username).hexdigest(), 16) % 10 < 7 "
        "and a non-empty bio; the other 30% are reserved for independent checks",
    },
}

#: NADI's country names -> ISO alpha-2.
_NADI = {
    "Algeria": "DZ", "Bahrain": "BH", "Djibouti": "DJ", "Egypt": "EG", "Iraq": "IQ",
    "Jordan": "JO", "Kuwait": "KW", "Lebanon": "LB", "Libya": "LY", "Mauritania": "MR",
    "Morocco": "MA", "Oman": "OM", "Palestine": "PS", "Qatar": "QA", "Saudi_Arabia": "SA",
    "Somalia": "SO", "Sudan": "SD", "Syria": "SY", "Tunisia": "TN",
    "United_Arab_Emirates": "AE", "Yemen": "YE",
}  # fmt: skip
#: Codes in use that ISO 3166-1 (and so pycountry) does not list.
_NOT_IN_ISO = {"XK": "OTHER"}
_TASS_FILES = {"es": "ES", "cr": "CR", "mx": "MX", "pe": "PE", "uy": "UY"}
_TASS_SENTIMENT = {"P": "positive", "N": "negative", "NEU": "neutral", "NONE": "none"}


class SourceError(ValueError):
    """A source file that is not what its converter expects (names the file and line)."""


def _tenth(key: str) -> int:
    """A stable 0-9 from a row's key: sha256 of its text, modulo 10."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10


def multilang_kept(tweet_id: str) -> bool:
    """The issue's rule: only these Multi-Lang-v02 rows may be used; the others are reserved."""
    return _tenth(tweet_id) < 3


def bios_kept(username: str) -> bool:
    """This project's rule for the bios source: these usernames may be used, the rest are
    reserved for independent checks (decided on the username alone, before the row is read)."""
    return _tenth(username.lower()) < 7


def _country_code(name: str) -> str | None:
    """A country name as the sources write it -> ISO alpha-2 (None when it names no country)."""
    import pycountry

    name = name.strip()
    if not name:
        return None
    if name.upper() in _NOT_IN_ISO:
        return _NOT_IN_ISO[name.upper()]
    if len(name) == 2 and pycountry.countries.get(alpha_2=name.upper()):
        return name.upper()
    try:
        return pycountry.countries.lookup(name).alpha_2
    except LookupError:
        pass
    try:
        return pycountry.countries.search_fuzzy(name)[0].alpha_2
    except LookupError:
        return None


def multilang(path: Path) -> Iterator[dict[str, Any]]:
    """Geotagged tweets of Multi-Lang-v02 (kept rows only)."""
    codes: dict[str, str | None] = {}
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        try:
            i_id, i_country, i_text = (header.index(c) for c in ("Tweet ID", "Country", "Tweet"))
        except ValueError as err:
            raise SourceError(f"{path}: line 1: expected columns Tweet ID, Country, Tweet") from err
        for row in reader:
            if len(row) <= max(i_id, i_country, i_text):
                continue
            tweet_id = row[i_id].strip()
            # The reserve check comes first: a reserved row is never looked at further.
            if not tweet_id or not multilang_kept(tweet_id):
                continue
            name = row[i_country]
            if name not in codes:
                codes[name] = _country_code(name)
            code = codes[name]
            text = row[i_text].strip()
            if code is None or not text:
                continue
            yield {"id": f"ml-{tweet_id}", "captions": [text], "country": code}


def nadi(path: Path) -> Iterator[dict[str, Any]]:
    """NADI 2020 training tweets (Arabic, country of the user)."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:3] != ["#1_tweetid", "#2_tweet", "#3_country_label"]:
            raise SourceError(f"{path}: line 1: not the NADI training header: {header[:3]}")
        for line, row in enumerate(reader, start=2):
            if len(row) < 3:
                continue
            code = _NADI.get(row[2].strip())
            if code is None:
                raise SourceError(f"{path}: line {line}: unknown NADI country {row[2]!r}")
            text = row[1].strip()
            if text:
                yield {"id": f"nadi-{row[0].strip()}", "captions": [text], "country": code}


def tass(folder: Path) -> Iterator[dict[str, Any]]:
    """TASS 2020 task 1 training tweets (Spanish by country, with sentiment)."""
    if folder.name != "train":
        raise SourceError(
            f"{folder}: give the train/ folder; dev/ is reserved for independent checks"
        )
    for stem, code in _TASS_FILES.items():
        path = folder / f"{stem}.tsv"
        with path.open(encoding="utf-8", newline="") as f:
            for line, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if len(row) < 3:
                    continue
                sentiment = _TASS_SENTIMENT.get(row[2].strip())
                if sentiment is None:
                    raise SourceError(f"{path}: line {line}: unknown polarity {row[2]!r}")
                text = row[1].strip()
                if text:
                    yield {
                        "id": f"tass-{stem}-{row[0].strip()}",
                        "captions": [text],
                        "country": code,
                        "sentiment": sentiment,
                    }


#: people.csv's columns (the file has no header row): handle, display name, avatar URL, bio,
#: "Joined <month year>", tweets, following, followers, likes, typed location, (empty).
_BIOS_COLUMNS = 11
_BIOS_USERNAME, _BIOS_NAME, _BIOS_BIO, _BIOS_JOINED, _BIOS_LOCATION = 0, 1, 3, 4, 9


def bios(path: Path) -> Iterator[dict[str, Any]]:
    """Twitter profile headers (username, display name, bio) labelled by their typed location."""
    from bench.place_names import resolve_location

    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if len(row) != _BIOS_COLUMNS or not row[_BIOS_USERNAME].startswith("/"):
                raise SourceError(
                    f"{path}: line {line}: expected {_BIOS_COLUMNS} columns starting with "
                    f"'/username', got {len(row)} columns starting {row[:1]!r}"
                )
            username = row[_BIOS_USERNAME].strip().lstrip("/")
            # The reserve check comes first: a reserved row is never looked at further.
            if not username or not bios_kept(username):
                continue
            if row[_BIOS_JOINED] and not row[_BIOS_JOINED].startswith("Joined"):
                raise SourceError(
                    f"{path}: line {line}: column 5 should read 'Joined <month year>', "
                    f"got {row[_BIOS_JOINED][:40]!r}"
                )
            bio = row[_BIOS_BIO].replace("\xa0", " ").strip()
            country = resolve_location(row[_BIOS_LOCATION])
            if not bio or country is None:
                continue
            yield {
                "id": f"tw-{username}",
                "username": username,
                "full_name": row[_BIOS_NAME].strip(),
                "biography": bio,
                "country": country,
            }


CONVERTERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    "multilang": multilang,
    "nadi": nadi,
    "tass": tass,
    "bios": bios,
}

_WS = re.compile(r"\s+")


def convert(name: str, src: Path, out: Path) -> Counter[str]:
    """Write one source as JSONL (duplicate ids and texts dropped); return the label counts."""
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    counts: Counter[str] = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in CONVERTERS[name](src):
            text = [record.get(k, "") for k in ("username", "full_name", "biography")]
            key = _WS.sub(" ", " ".join(text + list(record.get("captions", ())))).lower()
            if record["id"] in seen_ids or key in seen_texts:
                continue
            seen_ids.add(record["id"])
            seen_texts.add(key)
            record["source"] = name
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[record["country"]] += 1
    tmp.replace(out)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=sorted(CONVERTERS))
    parser.add_argument("path", type=Path, help="the source file (or TASS's train/ folder)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .jsonl")
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"error: {args.path}: not found", file=sys.stderr)
        return 2
    try:
        counts = convert(args.source, args.path, args.out)
    except SourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = sum(counts.values())
    top = ", ".join(f"{c} {n}" for c, n in counts.most_common(12))
    print(f"{args.out}: {total} profiles, {len(counts)} countries ({top}, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
