"""End-to-end recipes for the shipped model: base weights -> simulate -> fine-tune -> calibrate ->
evaluate -> an immutable, versioned model folder that ``models/default`` points at.

Recipes are data: one JSON file each in ``heads/data/recipes/``. ``profile-embed build-default``
runs :func:`build_model` with ``default.json`` (sized to finish on a 2-core CPU inside the first
``make serve``); ``make train-full`` runs ``full.json`` (the seed's 140k / 30k, 3 epochs, full
sequence budget; a GPU when one is present); ``--recipe PATH.json`` runs any other file (the tests
run ``tests/data/toy_recipe.json``, the same code path at a size that takes seconds).

A recipe file is read into the frozen :class:`Recipe` (unknown fields are refused), so what a model
was built with is recorded verbatim in its ``training.json`` and ``build.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from embedder.errors import ArtifactError, InvalidInputError
from embedder.simulator.config import SimulatorConfig
from heads.training.augment import AugmentConfig
from heads.training.config import LoopConfig, TrainConfig

logger = logging.getLogger(__name__)

BUILD_FILE = "build.json"


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How to build a model from nothing but packages.

    Attributes:
        name: the recipe's name (``default``, ``full``, ...); the model folder is
            ``<name>-<embedding_version[:12]>``.
        simulate_n: simulated train + validation profiles (split 140:30, as the seed's corpus).
        test_n: simulated profiles of the independent test stream (the report's test split).
        sim_seed: simulator seed; the same seed gives the same corpus bytes.
        simulator: settings of ``SimulatorConfig`` that differ from its defaults (numbers only,
            e.g. ``{"real_name_share": 0.8}``); a corpus with any is written to its own folder.
        max_val: validation rows used for early stopping and calibration (None = all).
        train: the fine-tuning settings (base, layers, sequence budget, epochs, heads...).
        numerics_candidates: faster inference numerics to check; those whose geolocation
            accuracy stays within ``numerics_tolerance`` of fp32 on ``numerics_check_rows`` test
            profiles are recorded in ``numerics.json``, and each serving machine picks the
            fastest of them (``heads.evaluation.numerics_check``, ``embedder.numerics_choice``).
        numerics_check_rows: test profiles used for that check.
        numerics_tolerance: largest accuracy loss allowed (0.005 = half a point).
        refit_heads: heads re-fitted after fine-tuning as a linear head on the final encoder's
            embeddings of the training profiles (``heads.training.head.train_head``: L-BFGS, no
            class weighting, calibrated on the validation rows), added as the head's next
            version. On emb-9f15c699ba70 this took real accuracy from 0.543 / 0.327 / 0.202 (the
            jointly trained head, class weighting undone) to 0.557 / 0.537 / 0.213 (multilang /
            nadi / tass, ``make real-eval``), simulated test 0.696 -> 0.704.
        refit_language_evidence: ``alpha`` of the re-fitted geolocation head's language evidence
            (``heads.language_evidence``; 0 = none). Alone it moved real accuracy +5.3 / -2.4 /
            0.0 points on multilang / nadi / tass at 0.5 (docs/TRAINING_EXPERIMENTS.md,
            "Language evidence"); with class biases fitted after it, at 0.25 it raised France's
            threshold above an obvious Lyon bio. The default recipe: 0.5, English only, weighted
            by P(en | x) squared, after calibration (the settings below; "Seventeenth session",
            "Nineteenth session").
        refit_language_evidence_only: the languages that evidence speaks for (empty = all;
            ``HeadTrainConfig.language_evidence_only``).
        refit_language_evidence_power: how sharply a post's language must be recognised for
            the evidence to count (``HeadTrainConfig.language_evidence_power``; the default
            recipe: 2, which gave tass back most of what English evidence cost it,
            docs/TRAINING_EXPERIMENTS.md, "Nineteenth session").
        refit_language_evidence_after_calibration: add that evidence after the temperature and
            class biases are fitted, then select the thresholds again
            (``HeadTrainConfig.language_evidence_after_calibration``).
        refit_class_bias: calibrate the re-fitted geolocation head with one bias per class as
            well as its temperature (``HeadTrainConfig.class_bias``) on the validation rows (the
            default recipe's choice: real accuracy +0.1 / +3.0 / +0.9 points on multilang / nadi /
            tass, docs/TRAINING_EXPERIMENTS.md, "Language evidence and class biases together").
        refit_extra_rows: the re-fitted heads also read this many training profiles that
            fine-tuning did not (those after the first ``train.max_train`` rows that its seeded
            sample skipped, in file order; :func:`refit_rows`). The default recipe's 16,000
            gained on every real set (bios / multilang / nadi / tass +4.7 / +0.8 / +1.7 / +1.9
            points together with the name-free encoder) and let Germany prove its precision
            (docs/TRAINING_EXPERIMENTS.md, "Twenty-fifth session"); each extra profile is
            embedded once more at build time.
        description: one line for ``--help`` and the build record.
        notes: why the recipe is sized as it is (JSON has no comments).
    """

    name: str
    simulate_n: int
    test_n: int
    sim_seed: int = 0
    simulator: dict[str, float] = field(default_factory=dict)
    max_val: int | None = None
    train: TrainConfig
    numerics_candidates: tuple[str, ...] = (
        "bf16", "int8", "onnx-fp32", "onnx-int8", "openvino", "openvino-int8", "ct2-int8"
    )  # fmt: skip
    numerics_check_rows: int = 2000
    numerics_tolerance: float = 0.005
    refit_heads: tuple[str, ...] = ("geolocation",)
    refit_language_evidence: float = 0.0
    refit_language_evidence_only: tuple[str, ...] = ()
    refit_language_evidence_power: float = 1.0
    refit_language_evidence_after_calibration: bool = False
    refit_class_bias: bool = False
    refit_extra_rows: int = 0
    description: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        self.simulator_config()  # refuses an unknown setting or a bad value now, not mid-build
        if self.refit_extra_rows < 0:
            raise ValueError(f"refit_extra_rows must be >= 0, got {self.refit_extra_rows}")
        if self.refit_extra_rows and self.train.max_train is None:
            raise ValueError(
                "refit_extra_rows needs rows fine-tuning did not read, but train.max_train is "
                "null (fine-tuning reads every training row); set train.max_train as well"
            )
        if not (1.0 <= self.refit_language_evidence_power < float("inf")):
            raise ValueError(
                "refit_language_evidence_power must be a number >= 1, got "
                f"{self.refit_language_evidence_power}"
            )
        if self.refit_language_evidence == 0:  # else the build would silently ignore them
            uses = {
                "refit_language_evidence_only": bool(self.refit_language_evidence_only),
                "refit_language_evidence_power": self.refit_language_evidence_power != 1.0,
                "refit_language_evidence_after_calibration": (
                    self.refit_language_evidence_after_calibration
                ),
            }
            for name, used in uses.items():
                if used:
                    raise ValueError(
                        f"{name} applies to language evidence, which is off "
                        "(refit_language_evidence 0); set refit_language_evidence > 0 as well"
                    )

    def simulator_config(self) -> SimulatorConfig:
        """The simulator settings of this recipe's corpus."""
        allowed = {f.name for f in fields(SimulatorConfig) if f.type in ("float", "int")}
        for key, value in self.simulator.items():
            if key not in allowed:
                raise ValueError(
                    f"simulator.{key} is not a numeric SimulatorConfig setting; allowed: "
                    f"{', '.join(sorted(allowed))}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"simulator.{key} must be a number, got {value!r}")
        try:
            settings: dict[str, Any] = dict(self.simulator)
            return SimulatorConfig(**settings)
        except InvalidInputError as err:  # named as the recipe file names it
            raise ValueError(str(err).replace("SimulatorConfig.", "simulator.", 1)) from None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready recipe."""
        out = asdict(self)
        out["train"] = self.train.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe") -> Recipe:
        """The recipe :meth:`to_dict` wrote (or a hand-written subset of it: defaults fill in).

        Raises:
            InvalidInputError: an unknown or missing field, or a value its setting refuses; the
                message names ``source`` and the field's path (``train.loop.lr``).
        """
        return _dataclass_from(cls, data, source, "")


#: Recipe fields that shape only the heads re-fitted after fine-tuning: a recipe that changes
#: nothing else builds the same encoder, so a built model gets new head versions instead.
HEAD_FIELDS = (
    "refit_heads",
    "refit_language_evidence",
    "refit_language_evidence_only",
    "refit_language_evidence_power",
    "refit_language_evidence_after_calibration",
    "refit_class_bias",
    "refit_extra_rows",
)
#: Words about a recipe, not settings.
PROSE_FIELDS = ("description", "notes")

#: The shipped recipes, one JSON file each (``default.json`` -> ``--recipe default``).
RECIPE_DIR = Path(__file__).resolve().parents[1] / "data" / "recipes"


def recipe_names() -> tuple[str, ...]:
    """The shipped recipes' names (the JSON files in :data:`RECIPE_DIR`)."""
    return tuple(sorted(p.stem for p in RECIPE_DIR.glob("*.json")))


def get_recipe(name_or_path: str | Path, **train_overrides: Any) -> Recipe:
    """A shipped recipe by name, or a recipe JSON file, with ``TrainConfig`` fields replaced.

    Args:
        name_or_path: ``default``, ``full``, ... (:func:`recipe_names`) or the path of a JSON
            file in the same format (``Recipe.to_dict``; fields left out take their defaults).
        train_overrides: ``TrainConfig`` fields to replace (e.g. ``base=``, ``device=``); None
            values are ignored.

    Raises:
        InvalidInputError: an unknown name, or a file that is not a valid recipe (the message
            names the file and the field).
    """
    path = Path(name_or_path)
    if str(name_or_path) in recipe_names():
        path = RECIPE_DIR / f"{name_or_path}.json"
    elif not (path.suffix == ".json" and path.is_file()):
        raise InvalidInputError(
            f"unknown recipe {str(name_or_path)!r}; known: {', '.join(recipe_names())}, "
            "or the path of a recipe .json file",
            field="recipe",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        message = f"{path}: not a readable JSON recipe: {err}"
        raise InvalidInputError(message, field="recipe") from err
    recipe = Recipe.from_dict(data, source=str(path))
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    if overrides:
        recipe = replace(recipe, train=replace(recipe.train, **overrides))
    return recipe


def _dataclass_from(cls: Any, data: Any, source: str, where: str) -> Any:
    """Build the (nested) frozen dataclass ``cls`` from JSON data; tuples from lists."""
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"{source}: {where or 'the recipe'} must be a JSON object, got {type(data).__name__}",
            field=where or "recipe",
        )
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidInputError(
            f"{source}: unknown field(s) {', '.join(where + k for k in unknown)}; allowed: "
            f"{', '.join(known)}",
            field=where + unknown[0],
        )
    nested = {"train": TrainConfig, "loop": LoopConfig, "augment": AugmentConfig}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested and cls in (Recipe, TrainConfig, LoopConfig):
            value = _dataclass_from(nested[key], value, source, f"{where}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        name = where.rstrip(".") or "recipe"
        raise InvalidInputError(f"{source}: {name}: {err}", field=name) from err


@dataclass
class BuildResult:
    """What :func:`build_model` made."""

    model_dir: Path
    link: Path | None
    embedding_version: str
    summary: dict[str, Any] = field(default_factory=dict)


def corpus_dir(data_root: Path, recipe: Recipe) -> Path:
    """Where the recipe's simulated corpus lives (reused when already complete); simulator
    settings off their defaults add a short hash of them, so a corpus is never reused for
    another simulator."""
    name = f"sim-{recipe.simulate_n}-{recipe.test_n}-seed{recipe.sim_seed}"
    if recipe.simulator:
        key = json.dumps(recipe.simulator, sort_keys=True)
        name += "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return data_root / name


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
            config=recipe.simulator_config(),
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
    from heads.evaluation.numerics_check import check_numerics_accuracy
    from heads.training.run import train_model

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
        progress=progress,
        embedding_cache=None,  # the shared cache, which refit_heads reads
    )
    final = models_root / f"{recipe.name}-{result.embedding_version.removeprefix('emb-')[:12]}"
    if final.exists():
        # The same recipe on the same packages gives the same weights: keep the first copy,
        # with new head versions where the recipe's head settings changed since it was built.
        logger.info("%s already exists (identical embedding_version); keeping it", final)
        _remove_tree(partial)
        changed = recipe_changes(read_build(final).get("recipe"), recipe)
        if changed and set(changed) <= set(HEAD_FIELDS):
            logger.info("re-fitting its heads: the recipe changed %s", ", ".join(changed))
            update_heads(final, recipe, data_root=data_root, progress=progress)
    else:
        refit = refit_heads(partial, corpus / "train.jsonl", val, recipe, progress=progress)
        served = (
            report_served_heads(partial, corpus / "test.jsonl", progress=progress)
            if refit
            else None
        )
        logger.info("[4/5] checking which inference numerics keep the accuracy")
        numerics = check_numerics_accuracy(
            partial,
            corpus / "test.jsonl",
            rows=recipe.numerics_check_rows,
            tolerance=recipe.numerics_tolerance,
            candidates=recipe.numerics_candidates,
        )
        summary = {
            "embedding_version": result.embedding_version,
            "recipe": recipe.to_dict(),
            "build_seconds": round(time.perf_counter() - start, 1),
            "metrics": result.info.get("metrics", {}),
            "numerics": numerics,
            "refit_heads": refit,
        }
        if served is not None:
            summary["served"] = served
        (partial / BUILD_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        os.replace(partial, final)
    _remove_tree(partial.with_name(partial.name + ".checkpoints"))
    logger.info("[5/5] model written to %s", final)
    if link is not None:
        point_link(link, final)
        logger.info("%s -> %s", link, final.name)
    return BuildResult(final, link, result.embedding_version, read_build(final))


def refit_heads(
    model_dir: Path, train_path: Path, val_path: Path, recipe: Recipe, *, progress: bool = True
) -> dict[str, Any]:
    """Re-fit ``recipe.refit_heads`` on the fine-tuned encoder's embeddings (see ``Recipe``).

    Uses the first ``train.max_train`` rows of ``train_path`` (fine-tuning read a seeded sample
    of that many, which shares about a fifth of them on the default corpus) and
    ``recipe.refit_extra_rows`` more (:func:`refit_rows`), and the same validation file; the
    jointly trained head stays as version 1.

    Returns:
        ``{head: train_head summary}``.
    """
    from heads.training.config import HeadTrainConfig
    from heads.training.head import train_head

    if not recipe.refit_heads:
        return {}
    rows_path = model_dir.with_name(model_dir.name + ".refit-train.jsonl")
    rows = refit_rows(train_path, recipe)
    rows_path.write_text("".join(rows), encoding="utf-8")
    logger.info("[3/5] re-fitting on %d training profiles", len(rows))
    out = {}
    try:
        for name in recipe.refit_heads:
            logger.info("[3/5] re-fitting the %s head on the fine-tuned embeddings", name)
            geo = name == "geolocation"
            never = tuple(recipe.train.never_assign) if geo else ()
            alpha = recipe.refit_language_evidence if geo else 0.0
            summary = train_head(
                model_dir,
                name,
                rows_path,
                val_path,
                # calibrated on the validation rows only, as the jointly trained head: out-of-fold
                # training rows would double the fitting time for a set that is already 8,000 rows
                config=HeadTrainConfig(
                    cross_fit=0,
                    never_assign=never,
                    language_evidence=alpha,
                    language_evidence_only=recipe.refit_language_evidence_only if alpha else (),
                    language_evidence_power=recipe.refit_language_evidence_power if alpha else 1.0,
                    language_evidence_after_calibration=bool(
                        alpha and recipe.refit_language_evidence_after_calibration
                    ),
                    class_bias=geo and recipe.refit_class_bias,
                ),
                progress=progress,
            )
            out[name] = {k: summary[k] for k in ("head_version", "val", "seconds") if k in summary}
    finally:
        rows_path.unlink(missing_ok=True)
    return out


def report_served_heads(
    model_dir: Path, test_path: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Score the heads the model serves (the latest version of each) on the test split and write
    ``report/test/`` for them.

    Fine-tuning wrote that report for the jointly trained version 1; after :func:`refit_heads`
    the re-fitted versions are what is served, so the folder's report (and the summary
    ``build-default`` prints) would otherwise describe heads nobody gets. The test split's
    embeddings come from the shared cache, where fine-tuning put them.

    Returns:
        ``{"heads": {name: version}, "test": {name: metrics}}`` (as ``build.json``'s).
    """
    from embedder.data import read_profiles
    from heads.evaluation.metrics import evaluate_model
    from heads.evaluation.report import write_report
    from heads.model import ProfileModel
    from heads.training.head import default_cache_path
    from heads.training.output import core_metrics

    model = ProfileModel.load(model_dir, numerics="fp32", cache=default_cache_path())
    try:
        versions = {name: model.heads[name].head_version for name in model.head_names}
        evaluations = evaluate_model(
            model,
            read_profiles(test_path).rows,
            source=str(test_path),
            info={"split": "test"},
            show_progress=progress,
            skip_unlabelled=True,
        )
    finally:
        model.close()
    listed = ", ".join(f"{name} v{v}" for name, v in versions.items())
    write_report(
        model_dir / "report" / "test",
        evaluations,
        title="Test report",
        notes=f"The heads this model serves ({listed}) on `{test_path}`. The jointly trained "
        "version 1's figures are in `training.json` (`metrics`).",
    )
    return {"heads": versions, "test": {ev.name: core_metrics(ev.metrics) for ev in evaluations}}


def refit_rows(train_path: Path, recipe: Recipe) -> list[str]:
    """The training file's lines the re-fitted heads read: the first ``train.max_train`` (all
    when it is null), then the first ``recipe.refit_extra_rows`` of the rest that fine-tuning's
    seeded sample (``heads.training.run.fine_tuning_sample``) did not read. Blank lines do not
    count, as when fine-tuning reads the file."""
    from heads.training.run import fine_tuning_sample

    with open(train_path, encoding="utf-8") as src:
        lines = [line if line.endswith("\n") else line + "\n" for line in src if line.strip()]
    limit = recipe.train.max_train
    rows = list(lines[:limit] if limit is not None else lines)
    if recipe.refit_extra_rows:
        read = set(fine_tuning_sample(len(lines), limit, recipe.train.loop.seed).tolist())
        unread = (i for i in range(len(rows), len(lines)) if i not in read)
        rows += [lines[i] for _, i in zip(range(recipe.refit_extra_rows), unread, strict=False)]
    return rows


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def read_build(model_dir: str | Path) -> dict[str, Any]:
    """The build record of a model folder made by :func:`build_model` (empty when absent)."""
    path = Path(model_dir) / BUILD_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def recipe_changes(recorded: Any, recipe: Recipe) -> list[str] | None:
    """The settings in which ``recipe`` differs from the recipe a model was built with (its
    ``build.json`` record), as dotted paths (``refit_class_bias``, ``train.loop.lr``);
    ``description`` and ``notes`` do not count, and fields the record predates take their
    defaults. None when the record is missing or no longer a valid recipe."""
    if not isinstance(recorded, dict):
        return None
    try:
        old = Recipe.from_dict(recorded, source=BUILD_FILE).to_dict()
    except InvalidInputError:
        return None
    new = json.loads(json.dumps(recipe.to_dict()))
    old = json.loads(json.dumps(old))
    changes: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and where != "simulator.":
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{where}{key}.")
        elif a != b:
            changes.append(where.rstrip("."))

    walk(old, new, "")
    return [c for c in changes if c not in PROSE_FIELDS]


def update_heads(
    model_dir: Path, recipe: Recipe, *, data_root: str | Path = "data", progress: bool = True
) -> dict:
    """Re-fit a built model's heads for a recipe that changed only in :data:`HEAD_FIELDS`: the
    encoder stays, the heads are added as new versions (served from now on, the old ones kept),
    and ``build.json`` records the new recipe and each update. The corpus is reused from
    ``data_root`` or simulated again (the same bytes)."""
    corpus = simulate_corpus(corpus_dir(Path(data_root), recipe), recipe, progress=False)
    val = _head_rows(corpus / "val.jsonl", recipe.max_val)
    start = time.perf_counter()
    refit = refit_heads(model_dir, corpus / "train.jsonl", val, recipe, progress=progress)
    record = read_build(model_dir)
    if refit:
        record["served"] = report_served_heads(model_dir, corpus / "test.jsonl", progress=progress)
    record.setdefault("head_updates", []).append(
        {
            "changed": recipe_changes(record.get("recipe"), recipe),
            "refit_heads": refit,
            "seconds": round(time.perf_counter() - start, 1),
        }
    )
    record["recipe"] = recipe.to_dict()
    tmp = model_dir / (BUILD_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, model_dir / BUILD_FILE)
    return refit
