"""Corpus statistics (``stats.json``) and the readable ``SUMMARY.md``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from embedder.data import LabelledProfile
from embedder.labels import COUNTRIES, GEO_LABELS
from embedder.simulator.scripts import dominant_script


def _quantiles(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    at = {
        f"p{q}": float(s[min(len(s) - 1, int(q / 100 * len(s)))]) for q in (10, 25, 50, 75, 90, 99)
    }
    return {"mean": round(sum(s) / len(s), 2), "max": float(s[-1]), **at}


def _shares(counter: Counter[str], n: int) -> dict[str, float]:
    return {k: round(v / n, 4) for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))}


def corpus_stats(splits: Mapping[str, Sequence[LabelledProfile]]) -> dict[str, Any]:
    """Compute the statistics of a corpus.

    Args:
        splits: split name -> rows.

    Returns:
        A JSON-ready dict: per-split class counts, and over all rows the class/category shares,
        top-12
        share, language and script mix, cue rates, cue-free share, label-noise share and length
        distributions.
    """
    rows = [r for part in splits.values() for r in part]
    n = max(1, len(rows))
    labels, cats, langs, scripts, cue_types, others = (Counter[str]() for _ in range(6))
    cue_free = noisy = single = 0
    bio_len: list[int] = []
    cap_len: list[int] = []
    n_caps: Counter[str] = Counter()
    for r in rows:
        p, ex = r.profile, r.profile.extra
        labels[r.labels["country"]] += 1
        cats[r.labels["category"]] += 1
        langs[str(ex.get("language"))] += 1
        scripts[dominant_script(" ".join((p.biography, *p.captions))) or "NONE"] += 1
        types = list(ex.get("cues", ()))
        cue_types.update(set(types))
        cue_free += not types
        noisy += bool(ex.get("label_noise"))
        single += not p.biography and len(p.captions) == 1
        if r.labels["country"] == "OTHER":
            others[str(ex.get("country_iso"))] += 1
        if p.biography:
            bio_len.append(len(p.biography))
        cap_len.extend(len(c) for c in p.captions)
        n_caps[str(len(p.captions))] += 1
    top12 = sum(sorted((labels[c] for c in COUNTRIES), reverse=True)[:12])
    return {
        "n": len(rows),
        "splits": {
            name: {
                "n": len(part),
                "country": dict(sorted(Counter(r.labels["country"] for r in part).items())),
            }
            for name, part in splits.items()
        },
        "country_share": {lb: round(labels[lb] / n, 4) for lb in GEO_LABELS},
        "top12_share": round(top12 / n, 4),
        "other_countries_top": dict(others.most_common(15)),
        "category_share": _shares(cats, n),
        "language_share": _shares(langs, n),
        "n_languages": len(langs),
        "script_share": _shares(scripts, n),
        "cue_rates": _shares(cue_types, n),
        "cue_free_share": round(cue_free / n, 4),
        "label_noise_share": round(noisy / n, 4),
        "single_post_share": round(single / n, 4),
        "captions_per_profile": dict(sorted(n_caps.items())),
        "bio_chars": _quantiles(bio_len),
        "caption_chars": _quantiles(cap_len),
    }


def summary_markdown(stats: Mapping[str, Any], *, seed: int, command: str) -> str:
    """Render ``stats`` as a short Markdown report."""
    lines = [
        "# Simulated profile corpus",
        "",
        f"Made by `{command}` (seed {seed}). **Simulated data: accuracy measured on it is not "
        "real-world accuracy.** See docs/SIMULATOR.md for what is modelled.",
        "",
        "| split | profiles |",
        "|---|---|",
        *[f"| {k} | {v['n']:,} |" for k, v in stats["splits"].items()],
        "",
        f"- top-12 countries: {stats['top12_share']:.1%} of profiles; "
        f"cue-free: {stats['cue_free_share']:.1%}; label noise: {stats['label_noise_share']:.1%}; "
        f"single short post without bio: {stats['single_post_share']:.1%}",
        f"- languages: {stats['n_languages']}; scripts: {len(stats['script_share'])}",
        "",
        "## Country shares",
        "",
        "| label | share |",
        "|---|---|",
        *[f"| {lb} | {stats['country_share'][lb]:.2%} |" for lb in (*COUNTRIES, "OTHER")],
        "",
        "## Cue rates (share of all profiles carrying each cue type)",
        "",
        *[f"- {k}: {v:.1%}" for k, v in stats["cue_rates"].items()],
        "",
        "## Language mix (top 20)",
        "",
        *[f"- {k}: {v:.1%}" for k, v in list(stats["language_share"].items())[:20]],
        "",
        "## Scripts",
        "",
        *[f"- {k}: {v:.1%}" for k, v in stats["script_share"].items() if v >= 0.001],
        "",
        "## Lengths",
        "",
        f"- bio characters: {stats['bio_chars']}",
        f"- caption characters: {stats['caption_chars']}",
        f"- captions per profile: {stats['captions_per_profile']}",
        "",
    ]
    return "\n".join(lines)
