"""Write a simulated corpus folder: train/val/test JSONL, stats.json, SUMMARY.md (+ audience
files)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embedder.data import write_profiles
from embedder.errors import InvalidInputError
from embedder.simulator.audience import simulate_audience
from embedder.simulator.config import SimulatorConfig
from embedder.simulator.core import Simulator
from embedder.simulator.stats import corpus_stats, summary_markdown

logger = logging.getLogger(__name__)

#: The seed's split: 140k train / 30k validation out of 170k.
VAL_FRACTION = 30 / 170


def split_sizes(n: int) -> tuple[int, int]:
    """Return (train, val) sizes for ``n`` profiles (the seed's 140/30 ratio)."""
    n_val = round(n * VAL_FRACTION)
    return n - n_val, n_val


def write_corpus(
    out_dir: str | Path,
    *,
    n: int,
    seed: int,
    test_n: int = 5000,
    config: SimulatorConfig | None = None,
    audience: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    command: str = "simulate_profiles",
) -> dict[str, Any]:
    """Simulate and write a corpus folder.

    Args:
        out_dir: destination folder (created).
        n: profiles in train + val (split 140:30).
        seed: random seed; the same arguments give the same bytes.
        test_n: extra profiles of an independent "test" stream.
        config: simulator knobs.
        audience: (influencers, followers_per) to also write followers.jsonl + audience_truth.json.
        overwrite: replace files of an earlier run in ``out_dir``.
        progress: called with the number of profiles just made.
        command: the command line recorded in SUMMARY.md.

    Returns:
        The statistics written to stats.json.

    Raises:
        InvalidInputError: on negative sizes, or when ``out_dir`` already holds a corpus and
            ``overwrite`` is false.
    """
    if n < 0 or test_n < 0:
        raise InvalidInputError(f"--n and --test-n must be >= 0, got {n} and {test_n}")
    out = Path(out_dir)
    if (out / "stats.json").exists() and not overwrite:
        raise InvalidInputError(
            f"{out} already holds a simulated corpus (stats.json); pass --overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    sim = Simulator(config)
    n_train, n_val = split_sizes(n)
    plan = {
        "train": ("main", 0, n_train),
        "val": ("main", n_train, n_val),
        "test": ("test", 0, test_n),
    }
    splits = {}
    for name, (stream, start, count) in plan.items():
        rows = []
        for row in sim.iter_profiles(count, seed, stream, start):
            rows.append(row)
            if progress is not None and len(rows) % 1000 == 0:
                progress(1000)
        if progress is not None:
            progress(len(rows) % 1000)
        write_profiles(out / f"{name}.jsonl", rows)
        splits[name] = rows
    stats = corpus_stats(splits)
    stats["seed"] = seed
    if audience is not None:
        followers, truth = simulate_audience(sim, seed, *audience)
        write_profiles(out / "followers.jsonl", followers)
        (out / "audience_truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
        stats["audience"] = {
            "influencers": audience[0],
            "followers_per": audience[1],
            "n": len(followers),
        }
    (out / "stats.json").write_text(
        json.dumps(stats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "SUMMARY.md").write_text(
        summary_markdown(stats, seed=seed, command=command), encoding="utf-8"
    )
    logger.info("simulated %d profiles into %s", stats["n"], out)
    return stats
