"""``profile-embed numerics``: which numerics a model allows, and which one this machine runs.

``numerics check`` measures every numerics against fp32 on labelled profiles and records the
accurate ones in ``M/numerics.json`` (the build does this too). ``numerics choose`` shows what
``serve``, ``batch`` and ``embed`` will run on this CPU: the probe (or its cached result) with
profiles/s per candidate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from embedder.numerics import NUMERICS

DEFAULT_MODEL = "models/default"


def register(subparsers: Any) -> None:
    """Add ``numerics check`` and ``numerics choose``."""
    p = subparsers.add_parser(
        "numerics",
        help="check which encoder numerics keep a model's accuracy; show this machine's choice",
        description=(
            f"The numerics ({', '.join(NUMERICS)}) are chosen on the machine that serves: the "
            "fastest one this CPU runs among those the model's accuracy check allows. 'check' "
            "writes that accuracy check (numerics.json) into a model folder; 'choose' prints "
            "what this machine picks and why."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="measure accuracy per numerics; write numerics.json")
    check.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL), help="model folder")
    check.add_argument(
        "--data",
        type=Path,
        required=True,
        help="profiles with labels.country (.jsonl/.csv/.parquet), e.g. the build's test.jsonl",
    )
    check.add_argument("--rows", type=int, default=2000, help="profiles to check on")
    check.add_argument(
        "--tolerance", type=float, default=0.005, help="largest accuracy loss allowed (0.005)"
    )
    check.add_argument(
        "--min-agreement",
        type=float,
        default=0.97,
        help="smallest share of profiles whose argmax must match fp32's (0.97)",
    )
    check.set_defaults(func=run_check)
    choose = actions.add_parser("choose", help="show the numerics this machine runs and why")
    choose.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL), help="model folder")
    choose.add_argument("--threads", type=int, default=None, help="encoder threads")
    choose.set_defaults(func=run_choose)


def run_check(args: argparse.Namespace) -> int:
    """Run the accuracy check and print its record as JSON."""
    from embedder.errors import InvalidInputError
    from heads.evaluation.numerics_check import check_numerics_accuracy

    if args.rows < 1:
        raise InvalidInputError(f"got {args.rows}; allowed: an integer >= 1", field="--rows")
    if not 0.0 <= args.tolerance < 1.0:
        raise InvalidInputError(
            f"got {args.tolerance}; allowed: a number in [0, 1)", field="--tolerance"
        )
    if not 0.0 <= args.min_agreement <= 1.0:
        raise InvalidInputError(
            f"got {args.min_agreement}; allowed: a number in [0, 1]", field="--min-agreement"
        )
    record = check_numerics_accuracy(
        args.model,
        args.data,
        rows=args.rows,
        tolerance=args.tolerance,
        min_agreement=args.min_agreement,
    )
    print(json.dumps(record, indent=1))
    return 0


def run_choose(args: argparse.Namespace) -> int:
    """Load the encoder as the server would and print the choice as JSON."""
    from heads.model import load_encoder

    options = {} if args.threads is None else {"threads": args.threads}
    encoder = load_encoder(args.model, None, **options)
    print(json.dumps(encoder.numerics_choice, indent=1))
    return 0
