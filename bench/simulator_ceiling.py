"""How well *any* model can do on a simulated corpus: an oracle reading the simulator's truth.

For profiles with planted location cues the oracle is right unless the label was replaced by
noise; for cue-free profiles the only evidence is the language, so the best guess is the most
common country of that language in the training split. Run on a corpus written by
``profile-embed simulate``::

    .venv/bin/python bench/simulator_ceiling.py data/sim-24000-5000-seed0

Prints JSON with the cue-free share, the oracle's accuracy on each part and overall: an upper bound
(slightly optimistic for cued profiles, which may carry misleading travel cues) to read model
accuracy against.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path


def read(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ceiling(train: list[dict], test: list[dict]) -> dict[str, float]:
    """The oracle's accuracy on ``test`` (see the module docstring)."""
    by_language: dict[str, Counter] = defaultdict(Counter)
    for row in train:
        by_language[row["language"]][row["country"]] += 1
    prior = Counter(row["country"] for row in train)
    free = [r for r in test if not r["cues"]]
    cued = [r for r in test if r["cues"]]
    ok_free = sum(
        by_language.get(r["language"], prior).most_common(1)[0][0] == r["country"] for r in free
    )
    ok_cued = sum(not r.get("label_noise") for r in cued)
    return {
        "n": len(test),
        "cue_free_share": len(free) / len(test),
        "oracle_accuracy_cue_free": ok_free / max(len(free), 1),
        "oracle_accuracy_cued": ok_cued / max(len(cued), 1),
        "oracle_accuracy": (ok_free + ok_cued) / len(test),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path, help="folder with train.jsonl and test.jsonl")
    args = parser.parse_args(argv)
    result = ceiling(read(args.corpus / "train.jsonl"), read(args.corpus / "test.jsonl"))
    print(json.dumps({k: round(v, 4) for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
