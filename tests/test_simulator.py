"""Simulator: determinism, shape of the corpus, planted cues, scripts, audience truth, stats."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embedder.data import read_profiles
from embedder.errors import InvalidInputError
from embedder.labels import CATEGORIES, COUNTRIES, GEO_LABELS, OTHER
from embedder.simulator import (
    Simulator,
    SimulatorConfig,
    simulate_audience,
    simulate_profiles,
    write_corpus,
)
from embedder.simulator.scripts import text_scripts
from server.cli import main as cli_main

N = 1500


@pytest.fixture(scope="module")
def rows():
    return simulate_profiles(N, seed=7)


def _text(row) -> str:
    p = row.profile
    return "\n".join((p.biography, *p.captions))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        argv = ["simulate", "--n", "340", "--test-n", "40", "--seed", str(seed), "-o", str(out)]
        assert cli_main([*argv, "--no-progress"]) == 0
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()


def test_profile_does_not_depend_on_corpus_size(rows):
    small = simulate_profiles(20, seed=7)
    assert [r.profile.to_dict() for r in small] == [r.profile.to_dict() for r in rows[:20]]


def test_labels_and_class_imbalance(rows):
    counts = Counter(r.labels["country"] for r in rows)
    assert set(counts) <= set(GEO_LABELS)
    assert {r.labels["category"] for r in rows} <= set(CATEGORIES)
    top12 = sum(sorted((counts[c] for c in COUNTRIES), reverse=True)[:12]) / N
    assert 0.58 < top12 < 0.74
    assert counts["US"] > counts["SE"] * 5
    assert 0.05 < counts[OTHER] / N < 0.16
    noisy = 0
    for r in rows:
        iso = r.profile.extra["country_iso"]
        truth = iso if iso in COUNTRIES else OTHER
        noisy += r.profile.extra["label_noise"]
        assert r.labels["country"] == truth or r.profile.extra["label_noise"]
    assert 0.005 < noisy / N < 0.04


def test_cue_free_share_follows_config(rows):
    share = sum(not r.profile.extra["cues"] for r in rows) / N
    assert abs(share - 1 / 3) < 0.05
    low = simulate_profiles(600, seed=1, config=SimulatorConfig(cue_free_share=0.1))
    assert abs(sum(not r.profile.extra["cues"] for r in low) / 600 - 0.1) < 0.05


def test_every_planted_cue_is_in_the_text(rows):
    seen = Counter()
    for r in rows:
        ex = r.profile.extra
        assert len(ex["cues"]) == len(ex["cue_text"])
        for kind, fragment in zip(ex["cues"], ex["cue_text"], strict=True):
            assert fragment and fragment in _text(r), (kind, fragment)
            seen[kind] += 1
    assert {"city", "flag", "country_name", "pattern", "region", "travel"} <= set(seen)


def test_flag_cue_is_the_flag_of_the_true_country(rows):
    for r in rows:
        ex = r.profile.extra
        if "flag" in ex["cues"]:
            iso = ex["country_iso"]
            flag = "".join(chr(0x1F1E6 + ord(ch) - ord("A")) for ch in iso)
            assert flag in ex["cue_text"][ex["cues"].index("flag")]


def test_instagram_limits_and_shapes(rows):
    assert all(len(r.profile.biography) <= 150 for r in rows)
    assert all(len(r.profile.captions) <= 5 for r in rows)
    assert all(r.profile.biography or r.profile.captions for r in rows)
    single = sum(not r.profile.biography and len(r.profile.captions) == 1 for r in rows) / N
    assert single > 0.12
    lengths = sorted(len(c) for r in rows for c in r.profile.captions)
    assert lengths[len(lengths) // 4] < 60 and lengths[-1] > 400  # many short, some long
    text = "\n".join(_text(r) for r in rows)
    for marker in ("#", "@", "\n", "http", ".com"):
        assert marker in text


@pytest.mark.parametrize(
    ("lang", "scripts"),
    [("ru", {"CYRILLIC"}), ("ar", {"ARABIC"}), ("ko", {"HANGUL"}),
     ("ja", {"HIRAGANA", "KATAKANA", "CJK"}), ("hi", {"DEVANAGARI"}), ("th", {"THAI"}),
     ("pt", {"LATIN"})],
)  # fmt: skip
def test_scripts_match_language(lang: str, scripts: set[str]):
    iso = {"ru": "RU", "ar": "EG", "ko": "KR", "ja": "JP", "hi": "IN", "th": "TH", "pt": "BR"}[lang]
    sim = Simulator(SimulatorConfig(code_switch_rate=0.0, english_rate={iso: 0.0}))
    picked = [
        r
        for r in (sim.profile(0, "s", i, iso=iso) for i in range(60))
        if r.profile.extra["language"] == lang
    ]
    assert len(picked) >= 10
    counts = Counter()
    for r in picked:
        words = " ".join((*r.profile.captions, r.profile.biography)).split()
        # hashtags, handles and links are ASCII on Instagram whatever the language
        counts.update(text_scripts(" ".join(w for w in words if w[0] not in "#@" and "." not in w)))
    assert sum(counts[s] for s in scripts) / sum(counts.values()) > 0.6, counts.most_common(4)


def test_audience_truth_is_respected():
    sim = Simulator(SimulatorConfig(label_noise=0.0))
    followers, truth = simulate_audience(sim, seed=5, influencers=3, followers_per=400)
    assert len(followers) == 1200 and len(truth) == 3
    for inf_id, mix in truth.items():
        assert set(mix) == set(GEO_LABELS) and abs(sum(mix.values()) - 1) < 1e-4
        mine = [r for r in followers if r.profile.extra["influencer_id"] == inf_id]
        emp = Counter(r.labels["country"] for r in mine)
        tv = 0.5 * sum(abs(emp[lb] / len(mine) - mix[lb]) for lb in GEO_LABELS)
        assert tv < 0.12, (inf_id, tv)
        home = max(mix, key=mix.get)
        assert emp.most_common(1)[0][0] == home


def test_written_corpus_matches_stats(tmp_path: Path):
    out = tmp_path / "sim"
    stats = write_corpus(out, n=340, seed=2, test_n=30, audience=(2, 50))
    assert stats["splits"]["train"]["n"] == 280 and stats["splits"]["val"]["n"] == 60
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["cue_free_share"] == stats["cue_free_share"]
    for split in ("train", "val", "test"):
        loaded = read_profiles(out / f"{split}.jsonl")
        assert not loaded.errors
        assert len(loaded.rows) == on_disk["splits"][split]["n"]
        assert (
            dict(Counter(r.labels["country"] for r in loaded.rows))
            == on_disk["splits"][split]["country"]
        )
    all_rows = [r for s in ("train", "val", "test") for r in read_profiles(out / f"{s}.jsonl").rows]
    cue_free = sum(not r.profile.extra["cues"] for r in all_rows) / len(all_rows)
    assert round(cue_free, 4) == on_disk["cue_free_share"]
    followers = read_profiles(out / "followers.jsonl").rows
    truth = json.loads((out / "audience_truth.json").read_text())
    assert {r.profile.extra["influencer_id"] for r in followers} == set(truth)
    assert "not real-world accuracy" in (out / "SUMMARY.md").read_text()
    with pytest.raises(InvalidInputError, match="overwrite"):
        write_corpus(out, n=10, seed=2, test_n=0)


def test_bad_config_is_refused():
    with pytest.raises(InvalidInputError, match="cue_free_share"):
        SimulatorConfig(cue_free_share=1.5)
    with pytest.raises(InvalidInputError, match="unknown cue types"):
        SimulatorConfig(cue_rates={"zipcode": 0.1})
    with pytest.raises(InvalidInputError, match="sum to <= 100"):
        _ = Simulator(SimulatorConfig(prior_percent={"US": 120.0})).prior


def test_default_simulator_never_reads_names(monkeypatch):
    # The defaults keep the corpus as it was: not one draw goes to names.
    import embedder.simulator.core as core

    def refuse(*_args):
        raise AssertionError("names drawn with real_name_share = name_mention_share = 0")

    monkeypatch.setattr(core, "names_for", refuse)
    assert len(simulate_profiles(200, seed=3)) == 200


def _made_of(handle: str, parts: set[str]) -> bool:
    """Whether a handle is one or two of ``parts`` with the handle maker's separators, digits
    and prefixes."""
    for prefix in ("official.", "the", "its", "real"):
        if handle.startswith(prefix) and handle[len(prefix) :]:
            handle = handle[len(prefix) :]
            break
    core = handle.rstrip("0123456789._").replace(".", "").replace("_", "")
    return core in parts or any(core[:i] in parts and core[i:] in parts for i in range(len(core)))


def test_real_names_come_from_the_profiles_country():
    from embedder.simulator.names import BORROWED, name_table
    from embedder.simulator.text import ascii_word

    table = name_table()
    assert {"US", "BR", "JP", "EG", "ID"} <= set(table)
    assert "Silva" in table["BR"].last[:20] and "Tanaka" in table["JP"].last[:50]
    cfg = SimulatorConfig(real_name_share=1.0, name_mention_share=1.0)
    named = mentions = mention_hits = 0
    for row in simulate_profiles(400, seed=3, config=cfg):
        p = row.profile
        iso = p.extra["country_iso"]
        names = table.get(iso) or table.get(BORROWED.get(iso, ""))
        if names is None:
            continue
        if p.full_name:
            named += 1
            assert any(p.full_name.lower().startswith(n.lower()) for n in names.first), p
        parts = {ascii_word(n) for n in (*names.first, *names.last)} - {""}
        for token in " ".join((p.biography, *p.captions)).split():
            if token.startswith("@") and len(token) > 1:
                mentions += 1
                mention_hits += _made_of(token[1:], parts)
    assert named > 150
    # Most mentions are friends' names (the rest: a name only in another script, or words
    # glued to digits the check cannot split).
    assert mentions > 50 and mention_hits / mentions > 0.8


def test_foreign_names_say_nothing_about_the_label():
    from embedder.simulator.names import BORROWED, name_table

    table = name_table()

    def own_country_share(cfg: SimulatorConfig) -> float:
        own = named = 0
        for row in simulate_profiles(400, seed=5, config=cfg):
            p = row.profile
            names = table.get(p.extra["country_iso"]) or table.get(
                BORROWED.get(p.extra["country_iso"], "")
            )
            if names is None or not p.full_name:
                continue
            named += 1
            own += any(p.full_name.lower().startswith(n.lower()) for n in names.first)
        assert named > 150
        return own / named

    assert own_country_share(SimulatorConfig(real_name_share=1.0)) == 1.0
    # Drawn from the prior, a name is the profile's own country's only as often as that
    # country's share of the prior (plus first names several countries share).
    assert own_country_share(SimulatorConfig(real_name_share=1.0, foreign_name_share=1.0)) < 0.5
    with pytest.raises(InvalidInputError, match=r"foreign_name_share must be in \[0, 1\]"):
        SimulatorConfig(foreign_name_share=2.0)


def test_same_language_names_come_from_that_languages_writers():
    from embedder.simulator.core import Simulator

    sim = Simulator(SimulatorConfig())
    assert sim.writers_of("ja") == (("JP",), (1.0,))
    isos, cum = sim.writers_of("pt")
    shares = dict(zip(isos, np.diff((0.0, *cum)), strict=True))
    assert max(shares, key=shares.__getitem__) == "BR" and "PT" in shares and "JP" not in shares
    isos, _ = sim.writers_of("en")
    assert {"US", "GB", "IN", "PH", "NG"} <= set(isos)
    # every profile is named from a country whose profiles write its language
    cfg = SimulatorConfig(real_name_share=1.0, same_language_name_share=1.0)
    from embedder.simulator.names import name_table

    table = name_table()
    japanese = [
        row.profile
        for row in simulate_profiles(600, seed=4, config=cfg)
        if row.profile.extra["language"] == "ja" and row.profile.full_name
    ]
    assert japanese
    for p in japanese:
        assert any(p.full_name.lower().startswith(n.lower()) for n in table["JP"].first), p
    with pytest.raises(InvalidInputError, match="at most one of foreign_name_share"):
        SimulatorConfig(foreign_name_share=0.5, same_language_name_share=0.5)


def test_names_without_their_package_are_a_clear_error(monkeypatch):
    from importlib import metadata

    import embedder.simulator.names as names

    real_version = metadata.version

    def version(package: str) -> str:
        if package == "names-dataset":
            raise metadata.PackageNotFoundError(package)
        return real_version(package)

    names.name_table.cache_clear()
    monkeypatch.setattr(names.metadata, "version", version)
    try:
        with pytest.raises(InvalidInputError, match=r"need the names-dataset package.*\[names\]"):
            simulate_profiles(5, seed=0, config=SimulatorConfig(name_mention_share=0.5))
    finally:
        names.name_table.cache_clear()


def test_simulate_cli_names_flags(tmp_path: Path, capsys):
    out = tmp_path / "named"
    argv = ["simulate", "--n", "40", "--test-n", "0", "--no-progress", "-o", str(out)]
    assert cli_main([*argv, "--real-name-share", "1", "--name-mention-share", "1"]) == 0
    for flag in ("--foreign-name-share", "--same-language-name-share"):
        assert cli_main([*argv, "--overwrite", "--real-name-share", "1", flag, "0.5"]) == 0
    rows = read_profiles(out / "train.jsonl").rows
    assert sum(bool(r.profile.full_name) for r in rows) > 10
    assert cli_main([*argv, "--overwrite", "--real-name-share", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "real_name_share must be in [0, 1], got 1.5" in err and "Traceback" not in err
