"""Typed profile locations read as one country (bench/place_names.py), and the bios source that
uses them (bench/real_sources.py); all rows here are made up."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def places(load_bench):
    return load_bench("place_names")


@pytest.mark.parametrize(
    ("typed", "country"),
    [
        ("Brooklyn, NY", "US"),  # a state code after a comma
        ("London, Ontario", "CA"),  # the province outranks the larger London
        ("London", "GB"),  # 8.9M against London, Ontario's 0.4M
        ("Manchester", "GB"),  # an old alternate name of Richmond, VA does not count
        ("Paris, Texas", "US"),
        ("Santiago, Chile", "CL"),
        ("Bogotá, D.C., Colombia", "CO"),
        ("Mérida Yucatán", "MX"),  # no comma: read word by word
        ("Los Angeles CA", "US"),
        ("Calgary, AB", "CA"),
        ("Atlanta, Georgia", "US"),  # the state, not the country
        ("🇧🇷", "BR"),
        ("España", "ES"),  # CLDR's Spanish name
        ("NYC", "US"),
        ("Earth", None),
        ("she/her", None),
        ("London/Brooklyn", None),  # two countries at the deciding level
        ("Ludlow", None),  # small towns named alone are not read
        ("tambourine man", None),  # no subdivision searched inside a phrase
        ("", None),
    ],
)
def test_typed_locations_read_as_one_country_or_none(places, typed, country):
    assert places.resolve_location(typed) == country


def _write_people(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)


def _person(username: str, bio: str, location: str) -> list[str]:
    return [f"/{username}", username.title(), "https://x/img.jpg", bio, "Joined May 2010",
            "10", "2", "3", "4", location, ""]  # fmt: skip


def test_bios_keeps_unreserved_profiles_labelled_by_their_typed_location(load_bench, tmp_path):
    sources = load_bench("real_sources")
    names = [f"user{i}" for i in range(60)]
    kept = [n for n in names if sources.bios_kept(n)]
    assert 25 < len(kept) < 55  # about 7 in 10
    rows = [_person(n, f"bio of {n} 🌻", "Lyon, France") for n in names]
    no_bio = next(n for n in (f"quiet{i}" for i in range(40)) if sources.bios_kept(n))
    rows.append(_person(no_bio, "", "Paris"))  # a profile without a bio is not a bio
    src = tmp_path / "people.csv"
    _write_people(src, rows)
    counts = sources.convert("bios", src, tmp_path / "bios.jsonl")
    out = [json.loads(x) for x in (tmp_path / "bios.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [f"tw-{n}" for n in kept]
    assert counts == {"FR": len(kept)}
    first = out[0]
    assert first["username"] == kept[0] and first["full_name"] == kept[0].title()
    assert first["biography"] == f"bio of {kept[0]} 🌻" and first["source"] == "bios"
    # the typed location labels the profile and is not part of it
    assert "Lyon" not in json.dumps(out) and "captions" not in first


def test_bios_drops_profiles_whose_location_names_no_one_country(load_bench, tmp_path):
    sources = load_bench("real_sources")
    kept = [n for n in (f"u{i}" for i in range(40)) if sources.bios_kept(n)][:3]
    src = tmp_path / "people.csv"
    _write_people(src, [_person(kept[0], "hi", "Earth"), _person(kept[1], "hola", "Madrid"),
                        _person(kept[2], "yo", "London/Brooklyn")])  # fmt: skip
    sources.convert("bios", src, tmp_path / "bios.jsonl")
    out = [json.loads(x) for x in (tmp_path / "bios.jsonl").read_text().splitlines()]
    assert [(r["username"], r["country"]) for r in out] == [(kept[1], "ES")]


def test_bios_refuses_a_file_of_another_layout_naming_the_line(load_bench, tmp_path):
    sources = load_bench("real_sources")
    src = tmp_path / "people.csv"
    kept = next(n for n in (f"v{i}" for i in range(40)) if sources.bios_kept(n))
    _write_people(src, [_person(kept, "ok", "Paris"), ["username", "bio", "location"]])
    with pytest.raises(sources.SourceError, match=r"people\.csv: line 2: expected 11 columns"):
        sources.convert("bios", src, tmp_path / "bios.jsonl")
