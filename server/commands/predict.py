"""``profile-embed predict``: label every profile of a file with every (or the chosen) head."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from embedder.errors import InvalidInputError
from server.commands.config_flags import add_device_flag
from server.commands.invalid_rows import add_skip_invalid
from server.commands.outputs import atomic_text, check_output, positive

if TYPE_CHECKING:
    from heads.base import Prediction

DEFAULT_MODEL = "models/default"


def register(subparsers: Any) -> None:
    """Add the ``predict`` subcommand."""
    p = subparsers.add_parser(
        "predict",
        help="predict every head for each profile of a file (JSONL out, input order)",
        description=(
            "Read profiles (.jsonl/.csv/.parquet), run the model's heads and write one JSON object "
            'per valid input row: {"id": ..., "<head>": {"label": ... | null, "argmax": ..., '
            '"score": ..., "reason": null | "no_threshold_for_class" | "below_threshold" | '
            '"out_of_distribution", "probabilities": {...}}}. An invalid row stops the command '
            "with an error naming file, line and field; with --skip-invalid invalid rows are "
            "listed as file:line on stderr and skipped, every valid row is written, and the "
            "command exits 1 at the end."
        ),
    )
    p.add_argument("input", help="profiles file")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output .jsonl, or - for standard output (Parquet columns per head: `profile-embed "
        "batch`)",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder (default {DEFAULT_MODEL})")
    p.add_argument("--heads", default=None, help="comma-separated head names (default: all)")
    p.add_argument(
        "--batch-size", type=positive(int), default=64, help="profiles per encoder batch"
    )
    p.add_argument("--chunk", type=positive(int), default=1024, help="profiles per write chunk")
    add_device_flag(p)
    add_skip_invalid(p)
    p.set_defaults(func=run)


def prediction_record(
    profile_id: str,
    predictions: Mapping[str, Prediction],
    labels: Mapping[str, Sequence[str]],
) -> dict[str, Any]:
    """The JSON object ``predict`` and ``client predict`` write for one profile.

    Args:
        profile_id: the profile's id.
        predictions: head name -> its prediction, in the order the heads are written.
        labels: head name -> the head's labels (the order of ``probabilities``).

    Returns:
        ``{"id": ..., "<head>": Prediction.to_dict(labels), ...}``.
    """
    record: dict[str, Any] = {"id": profile_id}
    for name, prediction in predictions.items():
        record[name] = prediction.to_dict(labels[name])
    return record


def parse_heads(text: str | None) -> list[str] | None:
    """Split ``--heads a,b`` into names (None when not given).

    Raises:
        InvalidInputError: the flag was given but names no head (``--heads ,``).
    """
    if text is None:
        return None
    names = [h.strip() for h in text.split(",") if h.strip()]
    if not names:
        raise InvalidInputError(
            f"--heads {text!r} names no head; give comma-separated head names, or leave the flag "
            "out for every head"
        )
    return names


def run(args: argparse.Namespace) -> int:
    """Run ``predict``; return 1 when input rows were skipped (``--skip-invalid``)."""
    from tqdm import tqdm

    from embedder.devices import choose_device
    from heads.model import ProfileModel
    from server.commands.invalid_rows import load_profiles

    names = parse_heads(args.heads)
    check_output(args.output, inputs=(args.input,), suffixes=(".jsonl", ".ndjson"))
    device = choose_device(args.device, field="--device")
    loaded = load_profiles(args.input, skip_invalid=args.skip_invalid)
    model = ProfileModel.load(args.model, heads=names, device=device)
    names = names or model.head_names
    profiles = [r.profile for r in loaded.rows]
    with (
        atomic_text(args.output) as out,
        tqdm(total=len(profiles), desc="predict", unit="profile", file=sys.stderr) as bar,
    ):
        for start in range(0, len(profiles), args.chunk):
            chunk = profiles[start : start + args.chunk]
            preds = model.predict(chunk, heads=names, batch_size=args.batch_size)
            labels = {name: model.heads[name].labels for name in names}
            for i, profile in enumerate(chunk):
                record = prediction_record(
                    profile.id, {name: preds[name][i] for name in names}, labels
                )
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            bar.update(len(chunk))
    print(
        json.dumps(
            {"written": len(profiles), "invalid": len(loaded.errors), "output": args.output}
        ),
        file=sys.stderr,
    )
    return 1 if loaded.errors else 0
