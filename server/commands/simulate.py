"""``profile-embed simulate``: write a simulated, labelled profile corpus (train/val/test + stats).

Prints one JSON object with the output folder and the headline statistics to stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand."""
    p = subparsers.add_parser(
        "simulate",
        help="write a simulated multilingual profile corpus (train/val/test JSONL + stats)",
        description="Simulate labelled Instagram-like profiles from real gazetteer and language "
        "data. Simulated accuracy is not real-world accuracy; see docs/SIMULATOR.md.",
    )
    p.add_argument(
        "--n", type=int, default=170_000, help="train + val profiles, split 140:30 (default 170000)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)"
    )
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--test-n", type=int, default=5000, help="extra test profiles (default 5000)")
    p.add_argument(
        "--audience", action="store_true", help="also write followers.jsonl + audience_truth.json"
    )
    p.add_argument(
        "--influencers", type=int, default=20, help="influencers in --audience mode (default 20)"
    )
    p.add_argument(
        "--followers-per", type=int, default=500, help="followers per influencer (default 500)"
    )
    p.add_argument(
        "--cue-free-share", type=float, default=None, help="share of profiles without cues"
    )
    p.add_argument(
        "--label-noise", type=float, default=None, help="share of randomly relabelled profiles"
    )
    p.add_argument(
        "--real-name-share",
        type=float,
        default=None,
        help="share of profiles named (display name, username) from real names of their country "
        "(names-dataset, the [names] extra; default 0)",
    )
    p.add_argument(
        "--name-mention-share",
        type=float,
        default=None,
        help="share of @mentions that are a friend's real name from the profile's country "
        "(default 0)",
    )
    p.add_argument(
        "--foreign-name-share",
        type=float,
        default=None,
        help="share of real names drawn from a country drawn from the prior instead of the "
        "profile's own (default 0; 1: names say nothing about the label)",
    )
    p.add_argument(
        "--same-language-name-share",
        type=float,
        default=None,
        help="share of real names drawn from the country of a random profile in the same main "
        "language (default 0)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier corpus in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate the corpus and print a JSON summary."""
    from tqdm import tqdm

    from embedder.simulator import SimulatorConfig, write_corpus

    settings = (
        "cue_free_share",
        "label_noise",
        "real_name_share",
        "name_mention_share",
        "foreign_name_share",
        "same_language_name_share",
    )
    overrides = {k: getattr(args, k) for k in settings if getattr(args, k) is not None}
    config = SimulatorConfig(**overrides)
    total = args.n + args.test_n
    with tqdm(total=total, unit="profile", disable=args.no_progress, file=sys.stderr) as bar:
        stats = write_corpus(
            args.out,
            n=args.n,
            seed=args.seed,
            test_n=args.test_n,
            config=config,
            audience=(args.influencers, args.followers_per) if args.audience else None,
            overwrite=args.overwrite,
            progress=bar.update,
            command="profile-embed " + shlex.join(sys.argv[1:]),
        )
    print(
        json.dumps(
            {
                "out": str(args.out),
                "splits": {k: v["n"] for k, v in stats["splits"].items()},
                "top12_share": stats["top12_share"],
                "cue_free_share": stats["cue_free_share"],
                "n_languages": stats["n_languages"],
                "audience": stats.get("audience"),
            }
        )
    )
    return 0
