"""Place snippets: short, labelled, location-only training rows from the simulator's cue writers."""

from __future__ import annotations

from embedder.labels import GEO_LABELS
from embedder.simulator.places import place_snippets


def test_snippets_are_short_deterministic_and_labelled_with_the_home_country():
    rows = list(place_snippets(300, seed=3))
    assert 290 <= len(rows) <= 300  # a country without cities may draw nothing to say
    assert [r.profile.biography for r in rows] == [
        r.profile.biography for r in place_snippets(300, seed=3)
    ]
    assert [r.profile.biography for r in rows] != [
        r.profile.biography for r in place_snippets(300, seed=4)
    ]
    for r in rows:
        assert r.profile.biography and not r.profile.captions
        assert len(r.profile.biography) < 120
        assert set(r.labels) == {"country"} and r.labels["country"] in GEO_LABELS
        iso = r.profile.extra["country_iso"]
        assert r.labels["country"] in (iso, "OTHER")
        assert set(r.profile.extra["cues"]) <= {"city", "pattern", "region", "country_name", "flag"}
    # The flag of a snippet is the home country's own.
    flags = [r for r in rows if r.profile.extra["cues"] == ["flag"]]
    for r in flags:
        iso = r.profile.extra["country_iso"]
        assert "".join(chr(0x1F1E6 + ord(c) - ord("A")) for c in iso) in r.profile.biography
