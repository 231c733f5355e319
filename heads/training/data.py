"""Training data for heads: label encoding, the checks that make bad data a clear error, class
weights and length-bucketed batches.

A row without a head's label gets target ``-1`` for that head and contributes nothing to its loss.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedder.errors import InvalidInputError, UnknownHeadError
from embedder.labels import CATEGORIES, GEO_LABELS

logger = logging.getLogger(__name__)

#: Target value of a row that has no label for a head.
MISSING = -1


@dataclass(frozen=True)
class HeadTask:
    """What a head learns: its name, the data field holding its label, and its ordered label set."""

    name: str
    field: str
    labels: tuple[str, ...]


#: The heads this project knows how to train from the data files.
HEAD_TASKS: Mapping[str, HeadTask] = {
    "geolocation": HeadTask("geolocation", "country", GEO_LABELS),
    "category": HeadTask("category", "category", CATEGORIES),
}


def resolve_tasks(names: Sequence[str] | str) -> list[HeadTask]:
    """Map head names (a list or a comma-separated string) to their tasks.

    Raises:
        UnknownHeadError: naming the unknown head and the known ones.
        InvalidInputError: when no head or a duplicate head is named.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise InvalidInputError(f"no head named; choose from {sorted(HEAD_TASKS)}", field="heads")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"a head is named twice in {list(names)!r}", field="heads")
    unknown = [n for n in names if n not in HEAD_TASKS]
    if unknown:
        raise UnknownHeadError(f"unknown head {unknown[0]!r}; known heads are {sorted(HEAD_TASKS)}")
    return [HEAD_TASKS[n] for n in names]


def encode_targets(
    rows: Sequence[object], task: HeadTask, *, source: str | None = None
) -> np.ndarray:
    """Return int64 targets (index into ``task.labels``, ``MISSING`` where a row has no label).

    Args:
        rows: ``LabelledProfile``-like objects with ``.profile.id`` and ``.labels``.
        task: the head's task.
        source: file name for error messages.

    Raises:
        InvalidInputError: on a label value outside the head's label set (names the row and
            the allowed values).
    """
    index = {label: i for i, label in enumerate(task.labels)}
    out = np.full(len(rows), MISSING, dtype=np.int64)
    for i, row in enumerate(rows):
        value = row_label(row, task.field)
        if value is None:
            continue
        if value not in index:
            raise InvalidInputError(
                f"label {value!r} (profile id {row.profile.id!r}) is not in the label set of head "  # type: ignore[attr-defined]
                f"'{task.name}'; allowed: {', '.join(task.labels)}",
                source=source,
                line=i + 1,
                field=task.field,
            )
        out[i] = index[value]
    return out


def row_label(row: object, field: str) -> str | None:
    """A row's label for ``field``: a validated label (country, category) or, for any other task,
    the profile's extra field of that name (as text); None when absent or empty."""
    value = row.labels.get(field)  # type: ignore[attr-defined]
    if value is None:
        value = row.profile.extra.get(field)  # type: ignore[attr-defined]
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def task_for_field(name: str, field: str, rows: Sequence[object]) -> HeadTask:
    """A new task read from the data: head ``name`` learns the values of ``field`` in ``rows``.

    The label set is the sorted distinct values; a built-in head name keeps its own labels.

    Raises:
        InvalidInputError: when ``field`` holds fewer than 2 distinct values.
    """
    if name in HEAD_TASKS:
        return HEAD_TASKS[name]
    values = sorted({v for r in rows if (v := row_label(r, field)) is not None})
    if len(values) < 2:
        raise InvalidInputError(
            f"field '{field}' holds {len(values)} distinct value(s) {values[:3]} in the training "
            f"data; head '{name}' needs at least 2 classes",
            field=field,
        )
    return HeadTask(name, field, tuple(values))


def check_train_targets(y: np.ndarray, task: HeadTask, *, source: str | None = None) -> None:
    """Refuse training data a head cannot learn from: no labelled row, or a single class.

    Raises:
        InvalidInputError: naming the head, the field and what was found.
    """
    present = np.unique(y[y != MISSING])
    if present.size == 0:
        raise InvalidInputError(
            f"no training row has a '{task.field}' label, so head '{task.name}' cannot be trained",
            source=source,
            field=task.field,
        )
    if present.size == 1:
        raise InvalidInputError(
            f"every labelled training row has '{task.field}' = {task.labels[present[0]]!r}; head "
            f"'{task.name}' needs at least 2 classes",
            source=source,
            field=task.field,
        )


def check_val_targets(
    y_val: np.ndarray, y_train: np.ndarray, task: HeadTask, *, source: str | None = None
) -> list[str]:
    """Check validation targets: error when empty, warn for each trained class it lacks.

    Returns:
        The labels present in training but absent from validation (their thresholds cannot be
        validated and are set to assign nothing by calibration).

    Raises:
        InvalidInputError: when no validation row has this head's label.
    """
    if not np.any(y_val != MISSING):
        raise InvalidInputError(
            f"no validation row has a '{task.field}' label; head '{task.name}' cannot be "
            "validated or calibrated",
            source=source,
            field=task.field,
        )
    missing = sorted(
        set(y_train[y_train != MISSING].tolist()) - set(y_val[y_val != MISSING].tolist())
    )
    names = [task.labels[i] for i in missing]
    for name in names:
        logger.warning(
            "head %s: class %s has training rows but none in validation; its threshold cannot be "
            "validated",
            task.name,
            name,
        )
    return names


def class_weights(y: np.ndarray, n_classes: int, *, power: float = 0.5) -> np.ndarray:
    """Inverse-frequency class weights ``count ** -power`` (default inverse square root).

    Weights are scaled so the labelled rows' mean weight is 1; classes without rows get weight 0.
    """
    counts = np.bincount(y[y != MISSING], minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    seen = counts > 0
    weights[seen] = counts[seen] ** -power
    mean = float((weights * counts).sum() / max(counts.sum(), 1.0))
    return (weights / mean).astype(np.float32) if mean > 0 else weights.astype(np.float32)


def label_counts(y: np.ndarray, task: HeadTask) -> dict[str, int]:
    """Labelled rows per class (classes with zero rows included) plus ``"<missing>"``."""
    counts = np.bincount(y[y != MISSING], minlength=len(task.labels))
    out = {label: int(c) for label, c in zip(task.labels, counts, strict=True)}
    out["<missing>"] = int((y == MISSING).sum())
    return out


def bucketed_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    *,
    pool: int = 50,
) -> list[np.ndarray]:
    """Shuffle, then sort by length inside pools of ``pool * batch_size`` rows, and cut batches.

    Batches hold rows of similar length (little padding) yet differ from epoch to epoch; batch
    order is shuffled so long and short batches alternate.

    Args:
        lengths: a length proxy per row (token count).
        batch_size: rows per batch.
        rng: the epoch's generator.
        pool: pool size in batches.

    Returns:
        Index arrays, one per batch.
    """
    order = rng.permutation(len(lengths))
    lens = np.asarray(lengths)
    batches: list[np.ndarray] = []
    step = pool * batch_size
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        chunk = chunk[np.argsort(lens[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def staged_batches(
    lengths: Sequence[int],
    batch_size: int,
    rng: np.random.Generator,
    first: np.ndarray,
    *,
    pool: int = 50,
) -> list[np.ndarray]:
    """``bucketed_batches`` over the rows in ``first``, then over the others.

    Each stage's batches are bucketed and shuffled on their own, so the two never share a batch.

    Args:
        lengths: a length proxy per row.
        batch_size: rows per batch.
        rng: the epoch's generator.
        first: boolean mask, True for the rows trained before the rest.
        pool: pool size in batches.

    Returns:
        Index arrays (into ``lengths``), one per batch, first stage first.
    """
    first = np.asarray(first, dtype=bool)
    lens = np.asarray(lengths)
    out: list[np.ndarray] = []
    for rows in (np.flatnonzero(first), np.flatnonzero(~first)):
        out.extend(rows[b] for b in bucketed_batches(lens[rows], batch_size, rng, pool=pool))
    return out


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_split(
    path: str | Path,
    label: str,
    *,
    skip_invalid: bool = False,
    report: Callable[[str, Any], None] | None = None,
) -> tuple[list[Any], int]:
    """Read one split's rows (training, validation, test, calibration); return them and the
    number of invalid rows skipped.

    Without ``skip_invalid`` the first invalid row raises (``embedder.data.read_profiles``);
    ``report(path, load_result)`` is called once the file is read, before any training.
    """
    from embedder.data import read_profiles

    loaded = read_profiles(path, skip_invalid=skip_invalid)
    if report is not None:
        report(str(path), loaded)
    if not loaded.rows:
        what = "no valid rows" if loaded.errors else "no rows"
        raise InvalidInputError(f"the {label} file has {what}", source=str(path))
    return loaded.rows, loaded.n_invalid
