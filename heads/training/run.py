"""One fine-tuning run, end to end: data -> encoder -> joint training ->
calibration -> evaluation -> an immutable model folder.

``train_model`` is what ``profile-embed train`` calls. The loop itself is ``heads.training.loop``.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embedder.errors import ArtifactError, InvalidInputError
from heads.training.config import TrainConfig
from heads.training.data import (
    MISSING,
    HeadTask,
    check_train_targets,
    check_val_targets,
    class_weights,
    encode_targets,
    file_sha256,
    label_counts,
    read_split,
    resolve_tasks,
)
from heads.training.loop import MultiTaskTrainer, resolve_device, seed_everything

logger = logging.getLogger(__name__)

TRAINING_FILE = "training.json"


@dataclass
class TrainResult:
    """What a run produced: the model folder and the facts recorded in ``training.json``."""

    model_dir: Path
    embedding_version: str
    info: dict[str, Any]


def fine_tuning_sample(n_rows: int, max_train: int | None, seed: int) -> np.ndarray:
    """The indices of the training rows fine-tuning reads (``max_train`` of them, seeded), in
    file order; all of them when ``max_train`` is None or not smaller."""
    if max_train is None or max_train >= n_rows:
        return np.arange(n_rows)
    if max_train < 1:
        raise InvalidInputError(f"max_train must be >= 1, got {max_train}", field="max_train")
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=max_train, replace=False))


def _subsample(rows: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or n >= len(rows):
        return rows
    return [rows[i] for i in fine_tuning_sample(len(rows), n, seed)]


def _targets(
    tasks: Sequence[HeadTask], train: list[Any], val: list[Any], paths: tuple[str, str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str]]]:
    y_train, y_val, val_missing = {}, {}, {}
    for task in tasks:
        y_train[task.name] = encode_targets(train, task, source=paths[0])
        check_train_targets(y_train[task.name], task, source=paths[0])
        y_val[task.name] = encode_targets(val, task, source=paths[1])
        val_missing[task.name] = check_val_targets(
            y_val[task.name], y_train[task.name], task, source=paths[1]
        )
    return y_train, y_val, val_missing


def build_encoder(config: TrainConfig) -> Any:
    """The student encoder: the base cut to the chosen layers, embeddings frozen on request."""
    from embedder.encoder import ProfileEncoder
    from embedder.vocab import prepare_base

    base = prepare_base(config.base, trim=config.trim_vocab, location_tokens=config.location_tokens)
    encoder = ProfileEncoder.from_base(base, num_layers=config.layers, assembly=config.assembly())
    if config.freeze_embeddings:
        encoder.transformer.auto_model.embeddings.word_embeddings.weight.requires_grad_(False)
    return encoder


def build_heads(tasks: Sequence[HeadTask], encoder: Any, config: TrainConfig) -> dict[str, Any]:
    """Fresh ``softmax_abstain`` heads, seeded, on the encoder's width.

    Joint fine-tuning trains the heads' torch modules (``logits_module``) with the encoder, so it
    builds softmax heads; a head of another kind (``knn``) is added afterwards with ``train-head
    --kind`` on the frozen embeddings.
    """
    from heads.registry import build_head

    return {
        task.name: build_head(
            "softmax_abstain",
            name=task.name,
            labels=task.labels,
            embedding_version=encoder.embedding_version,
            in_dim=encoder.dim,
            hidden=config.hidden,
            label_field=task.field,
            never_assign=tuple(lab for lab in config.never_assign if lab in task.labels),
            seed=config.loop.seed + i,
        )
        for i, task in enumerate(tasks)
    }


def rebind_head(head: Any, embedding_version: str) -> None:
    """Point a jointly trained head at the encoder's new ``embedding_version``."""
    head.config = replace(head.config, embedding_version=embedding_version)
    head.embedding_version = embedding_version


def _labels_of(y: np.ndarray, task: HeadTask) -> list[str]:
    return [task.labels[i] for i in y]


def calibrate_heads(
    heads: dict[str, Any],
    tasks: Sequence[HeadTask],
    val_emb: np.ndarray,
    y_val: dict[str, np.ndarray],
    y_train: dict[str, np.ndarray],
    target: float,
) -> dict[str, Any]:
    """Fit temperature and per-class thresholds of each head on its labelled validation rows."""
    out = {}
    for task in tasks:
        y, yt = y_val[task.name], y_train[task.name]
        mask = y != MISSING
        sel = heads[task.name].calibrate(
            val_emb[mask],
            _labels_of(y[mask], task),
            target=target,
            missing_classes="abstain",
            train_labels=_labels_of(yt[yt != MISSING], task),
        )
        out[task.name] = {
            "temperature": heads[task.name].temperature_,
            "unreachable": list(sel.unreachable),
        }
    return out


def check_output(out_dir: Path) -> None:
    """Refuse an existing output folder (artifacts are immutable)."""
    if out_dir.exists():
        raise ArtifactError(
            f"output folder {out_dir} already exists; model folders are never overwritten "
            "(choose a new -o)"
        )


def train_model(
    train_path: str | Path,
    val_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    test_path: str | Path | None = None,
    resume: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    skip_invalid: bool = False,
    report: Callable[[str, Any], None] | None = None,
    progress: bool = True,
    embedding_cache: str | Path | None = "",
) -> TrainResult:
    """Fine-tune encoder + heads, calibrate, evaluate and write a new model folder.

    Args:
        train_path: training profiles (.jsonl/.csv/.parquet with label columns).
        val_path: validation profiles (early stopping, calibration, report).
        out_dir: the model folder to create; must not exist.
        config: the run's settings.
        test_path: optional test profiles, evaluated into ``report/test``.
        resume: a checkpoint folder (``epoch-NNN`` or a checkpoint root) to continue from.
        checkpoint_dir: where epoch checkpoints go (default ``<out_dir>.checkpoints``).
        skip_invalid: skip invalid rows of every file (counted in ``training.json`` under
            ``data.<split>.rows_invalid``) instead of raising on the first one.
        report: called as ``report(path, load_result)`` after each file is read (the CLI lists
            the skipped rows with it).
        progress: progress bars (the epochs, embedding the test split).
        embedding_cache: where the test split's embeddings go, and the validation rows' when
            the saved encoder reads the text differently from fine-tuning
            (``"ignore_names_after_fine_tuning"`` and the like: they are computed again the
            way they will be served); a later ``train_head`` or report on this model and
            these files finds them there (``""``: no cache; None:
            ``heads.training.head.default_cache_path()``).

    Returns:
        The model folder, its embedding_version and the recorded facts.

    Raises:
        ArtifactError: the output folder exists, or the checkpoint does not match this run.
        InvalidInputError: bad data (an invalid row unless ``skip_invalid``, unknown label, no
            labels, one class, empty validation).
        UnknownHeadError: an unknown head name.
    """
    wall = time.perf_counter()
    out_dir = Path(out_dir)
    check_output(out_dir)
    tasks = resolve_tasks(list(config.heads))
    paths = (str(train_path), str(val_path))
    opts: dict[str, Any] = {"skip_invalid": skip_invalid, "report": report}
    train, train_bad = read_split(train_path, "training", **opts)
    train = _subsample(train, config.max_train, config.loop.seed)
    n_profiles = len(train)
    if config.place_snippets:
        from embedder.simulator.places import place_snippets

        train = [*train, *place_snippets(config.place_snippets, seed=config.loop.seed)]
    val, val_bad = read_split(val_path, "validation", **opts)
    test, test_bad = read_split(test_path, "test", **opts) if test_path is not None else (None, 0)
    y_train, y_val, val_missing = _targets(tasks, train, val, paths)
    data_info = {
        "train": {
            "path": paths[0],
            "sha256": file_sha256(train_path),
            "rows_used": n_profiles,
            "place_snippets": len(train) - n_profiles,
            "rows_invalid": train_bad,
        },
        "val": {
            "path": paths[1],
            "sha256": file_sha256(val_path),
            "rows": len(val),
            "rows_invalid": val_bad,
        },
    }
    if test_path is not None:
        data_info["test"] = {
            "path": str(test_path),
            "sha256": file_sha256(test_path),
            "rows_invalid": test_bad,
        }
    device = resolve_device(config.device)
    seed_everything(config.loop.seed)
    encoder = build_encoder(config)
    start_version = encoder.embedding_version
    seed_everything(config.loop.seed)
    heads = build_heads(tasks, encoder, config)
    ckpt = (
        Path(checkpoint_dir) if checkpoint_dir else out_dir.with_name(out_dir.name + ".checkpoints")
    )
    weights = {t.name: class_weights(y_train[t.name], len(t.labels)) for t in tasks}
    probe = None
    if config.probe_first:
        from heads.training.probe import probe_heads

        n_probe = min(config.probe_first, n_profiles)
        probe = probe_heads(
            encoder,
            {name: h.logits_module() for name, h in heads.items()},
            [r.profile for r in train[:n_probe]],
            {name: y[:n_probe] for name, y in y_train.items()},
            weights,
            progress=progress,
        )
    saved_assembly = config.saved_assembly()
    reread = saved_assembly != encoder.assembly
    trainer = MultiTaskTrainer(
        encoder.st_model,
        encoder.assemble,
        {name: h.logits_module() for name, h in heads.items()},
        [r.profile for r in train],
        y_train,
        [r.profile for r in val],
        y_val,
        class_weights=weights,
        config=config.loop,
        device=device,
        checkpoint_dir=ckpt,
        run_info={
            "data": {k: v["sha256"] for k, v in data_info.items()},
            "heads": [t.name for t in tasks],
            "config": config.to_dict(),
        },
        first_stage=(
            np.arange(len(train)) >= n_profiles
            if config.snippets_first and config.place_snippets
            else None
        ),
        progress=progress,
        # Read another way after fine-tuning: the validation rows are embedded again below, so
        # a one-epoch run's own validation pass (reading them as fine-tuning did) would only
        # fill the history.
        validate_unopposed_last_epoch=not reread,
    )
    if resume is not None:
        trainer.resume(resume)
    history = trainer.fit()
    trainer.net.to("cpu")
    trainer.device = torch.device("cpu")
    encoder.st_model.eval()
    if reread:
        # From here on (calibration, the test split, the saved encoder) the text is read the
        # way it will be served.
        encoder.assembly = saved_assembly
    version = encoder.refresh_version()
    for name, head in heads.items():
        rebind_head(head, version)
        head.logits_module().eval()
        # The loss weighted classes to learn the small ones; the served posteriors must not be.
        head.undo_class_weights(weights[name])
    if reread:
        from heads.training.head import cached_embeddings

        # The serving path (encoder.encode), so the build's re-fitted heads (train_head) read
        # these vectors from the cache instead of embedding the validation rows once more.
        (val_emb,), _ = cached_embeddings(
            encoder, [trainer.val_profiles], embedding_cache, show_progress=progress
        )
    elif trainer.best_epoch == trainer.epoch and trainer.last_val_embeddings is not None:
        val_emb = trainer.last_val_embeddings  # the final weights are the best: reuse
    else:
        val_emb, _ = trainer.predict_logits(trainer.val_profiles, trainer.val_lengths)
    calibration = calibrate_heads(heads, tasks, val_emb, y_val, y_train, config.target_precision)
    info = {
        "format_version": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "embedding_version": version,
        "start_embedding_version": start_version,
        "data": data_info,
        "label_counts": {
            t.name: {
                "train": label_counts(y_train[t.name], t),
                "val": label_counts(y_val[t.name], t),
            }
            for t in tasks
        },
        "val_missing_classes": val_missing,
        "config": config.to_dict(),
        "probe": probe,
        "history": history,
        "best_epoch": trainer.best_epoch,
        "calibration": calibration,
        "throughput": {
            "train_seconds": round(trainer.train_seconds, 1),
            "profiles_per_s": round(trainer.rows_seen / max(trainer.train_seconds, 1e-9), 2),
            "tokens_per_s": round(trainer.tokens_seen / max(trainer.train_seconds, 1e-9), 1),
            "tokens_seen": trainer.tokens_seen,
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
        "versions": _versions(),
    }
    from heads.training.output import write_model

    info["wall_seconds_before_write"] = round(time.perf_counter() - wall, 1)
    write_model(
        out_dir,
        encoder,
        heads,
        tasks,
        info,
        val=(val, val_emb),
        test=test,
        training_file=TRAINING_FILE,
        progress=progress,
        embedding_cache=embedding_cache,
    )
    info["wall_seconds"] = round(time.perf_counter() - wall, 1)
    logger.info("model %s written to %s in %.0f s", version, out_dir, info["wall_seconds"])
    return TrainResult(out_dir, version, info)


def _versions() -> dict[str, str]:
    import sentence_transformers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
    }
