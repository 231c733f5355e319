"""Labelled profiles on disk: JSONL, CSV and Parquet readers and writers, validation, splits.

A record is ``{"id", "username", "full_name", "biography", "captions": [newest first],
"country", "category", ...any other keys...}``. Text fields become a
:class:`~embedder.profile.Profile`; the label fields (:data:`LABEL_FIELDS`) are validated and kept
apart; every other key lands in ``Profile.extra`` and is never fed to the encoder.

Every problem in a user's file raises (or, with ``skip_invalid=True``, collects) an
:class:`~embedder.errors.InvalidInputError` naming the file, the line (JSONL/CSV: the physical line
where the record starts; Parquet: the 1-based row) and the field, with the value received and what
is allowed. Nothing valid is dropped silently: :class:`LoadResult` carries the counts.

Splits are decided per row by a salted SHA-256 of its id, so a row keeps its split when rows are
added (see :func:`split_rows` for how that squares with stratification).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from embedder.errors import InvalidInputError
from embedder.labels import CATEGORIES, OTHER, to_geo_label
from embedder.profile import TEXT_FIELDS, Profile

try:  # orjson parses 3-5x faster; stdlib json is the fallback with the same behaviour
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None
    _loads = json.loads

logger = logging.getLogger(__name__)

#: Record keys that are task labels: validated, kept in ``LabelledProfile.labels``, not in extra.
LABEL_FIELDS: tuple[str, ...] = ("country", "category")
#: The three split names, in order.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Default split fractions (train, val, test).
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
#: Default salt of the split hash; change it to draw an independent split.
DEFAULT_SALT = "profile-embeddings"
#: File suffixes each reader and writer accepts.
SUFFIXES: Mapping[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}

_CAPTION_COLUMN = re.compile(r"caption_(\d+)$")
_PARQUET_JSON_KEY = b"profile_embeddings.json_columns"
_COUNTRY_ALLOWED = "an ISO 3166-1 alpha-2 code such as 'FR' or 'us' (any case), or 'OTHER'"
_SCALARS = (str, bool, int, float)


@dataclass(frozen=True)
class LabelledProfile:
    """A profile and its task labels.

    Attributes:
        profile: the text fields and extras.
        labels: task name -> label, e.g. ``{"country": "FR", "category": "food"}``; an unlabelled
            task is absent. ``country`` holds the geolocation label (one of ``GEO_LABELS``).
    """

    profile: Profile
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """Return the on-disk record: text fields, then labels, then extras."""
        p = self.profile
        record: dict[str, Any] = {
            "id": p.id,
            "username": p.username,
            "full_name": p.full_name,
            "biography": p.biography,
            "captions": list(p.captions),
        }
        record.update(self.labels)
        for key, value in p.extra.items():
            record.setdefault(key, value)
        return record


@dataclass
class LoadResult:
    """What :func:`read_profiles` found.

    Attributes:
        rows: every valid row, in file order.
        errors: one error per invalid row (empty unless ``skip_invalid=True``).
        n_read: records read (blank lines not counted); ``n_read == len(rows) + len(errors)``.
        captions_dropped: captions beyond ``MAX_CAPTIONS`` cut from valid rows.
    """

    rows: list[LabelledProfile]
    errors: list[InvalidInputError]
    n_read: int
    captions_dropped: int

    @property
    def n_invalid(self) -> int:
        """Number of rows rejected."""
        return len(self.errors)

    def error_counts(self) -> dict[str, int]:
        """Rejected rows per offending field (``"<row>"`` when no single field is to blame)."""
        return dict(Counter(e.field or "<row>" for e in self.errors))

    def summary(self) -> str:
        """One line with the counts, for logs and CLI output."""
        text = (
            f"read {self.n_read} records: {len(self.rows)} valid, {self.n_invalid} invalid, "
            f"{self.captions_dropped} captions beyond the limit dropped"
        )
        if self.errors:
            text += f"; invalid by field: {self.error_counts()}"
        return text


# ----------------------------------------------------------------------------------- validation


@functools.cache
def _iso_codes() -> frozenset[str]:
    import pycountry

    return frozenset(c.alpha_2 for c in pycountry.countries)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _country(value: Any, where: dict[str, Any]) -> tuple[str, str]:
    """Validate a country code; return (geo label, upper-cased code)."""
    if not isinstance(value, str):
        raise InvalidInputError(
            f"must be a string, {_COUNTRY_ALLOWED}; got {type(value).__name__} {_short(value)}",
            field="country",
            **where,
        )
    code = value.strip().upper()
    if code != OTHER and code not in _iso_codes():
        raise InvalidInputError(
            f"unknown country code {_short(value)}; allowed: {_COUNTRY_ALLOWED}",
            field="country",
            **where,
        )
    return to_geo_label(code), code


def _category(value: Any, where: dict[str, Any]) -> str:
    name = value.strip().lower() if isinstance(value, str) else None
    if name not in CATEGORIES:
        got = f"{type(value).__name__} {_short(value)}" if name is None else _short(value)
        raise InvalidInputError(
            f"unknown category {got}; allowed: {', '.join(CATEGORIES)}", field="category", **where
        )
    return name


def _build_row(
    record: Any, source: str, line: int, require: Sequence[str]
) -> tuple[LabelledProfile, int]:
    """Validate one record; raise InvalidInputError naming source, line and field."""
    where: dict[str, Any] = {"source": source, "line": line}
    profile, dropped = Profile.from_dict(record, extra_exclude=LABEL_FIELDS, **where)
    labels: dict[str, str] = {}
    raw_country = record.get("country")
    if raw_country is not None and raw_country != "":
        labels["country"], code = _country(raw_country, where)
        if labels["country"] == OTHER and code != OTHER and "country_iso" not in profile.extra:
            profile = replace(profile, extra={**profile.extra, "country_iso": code})
    raw_category = record.get("category")
    if raw_category is not None and raw_category != "":
        labels["category"] = _category(raw_category, where)
    for name in require:
        if name not in labels:
            raise InvalidInputError(
                f"required label '{name}' is missing or empty", field=name, **where
            )
    return LabelledProfile(profile, labels), dropped


# ------------------------------------------------------------------------------------- reading


def read_profiles(
    path: str | Path, *, skip_invalid: bool = False, require: Sequence[str] = ()
) -> LoadResult:
    """Read labelled profiles from a ``.jsonl`` (``.ndjson``), ``.csv`` or ``.parquet`` file.

    JSONL is streamed line by line (blank lines skipped). CSV and Parquet give captions either as
    one ``captions`` column (CSV: a JSON array of strings; Parquet: ``list<string>``) or as
    ``caption_1``..``caption_N`` columns; empty CSV cells and Parquet nulls count as missing.

    Args:
        path: the file; its suffix picks the format.
        skip_invalid: False raises on the first invalid row; True collects every error in
            ``LoadResult.errors`` and keeps every valid row.
        require: label fields (from :data:`LABEL_FIELDS`) that every row must have, such as
            ``("country",)``.

    Returns:
        The valid rows with counts of rows read, rejected and captions dropped.

    Raises:
        InvalidInputError: on an unreadable file or unknown suffix, on a bad ``require`` entry, and
            (unless ``skip_invalid``) on the first invalid row: malformed JSON/CSV, a wrong type, an
            unknown country or category, a missing required label, or an id seen before.
    """
    path = Path(path)
    source = str(path)
    unknown = [name for name in require if name not in LABEL_FIELDS]
    if unknown:
        raise InvalidInputError(
            f"cannot require {unknown!r}; allowed label fields: {', '.join(LABEL_FIELDS)}",
            field="require",
        )
    kind = _format_of(path)
    if not path.is_file():
        raise InvalidInputError("file not found (or not a regular file)", source=source)
    records = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}[kind]
    start = time.perf_counter()
    result = LoadResult(rows=[], errors=[], n_read=0, captions_dropped=0)
    first_line: dict[str, int] = {}
    for line, record in records(path):
        result.n_read += 1
        try:
            if isinstance(record, InvalidInputError):
                raise record
            row, dropped = _build_row(record, source, line, require)
            pid = row.profile.id
            if pid in first_line:
                raise InvalidInputError(
                    f"duplicate id {_short(pid)}: first seen at line {first_line[pid]}; ids must "
                    "be unique within a file",
                    source=source,
                    line=line,
                    field="id",
                )
        except InvalidInputError as err:
            if not skip_invalid:
                raise
            result.errors.append(err)
            continue
        first_line[pid] = line
        result.rows.append(row)
        result.captions_dropped += dropped
    logger.info("%s: %s (%.2f s)", source, result.summary(), time.perf_counter() - start)
    if result.errors:
        logger.warning("%s: skipped %d invalid rows", source, len(result.errors))
    return result


def _format_of(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InvalidInputError(
            f"unsupported file type {path.suffix or '(no suffix)'!r}; allowed: "
            f"{', '.join(SUFFIXES)}",
            source=str(path),
        )
    return kind


def _jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    source = str(path)
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                yield line_no, _loads(raw if orjson is not None else raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                what = getattr(err, "msg", None) or str(err)
                col = getattr(err, "colno", None)
                at = f" at column {col}" if col else ""
                yield (
                    line_no,
                    InvalidInputError(
                        f"malformed JSON{at}: {what}; expected one JSON object per line",
                        source=source,
                        line=line_no,
                    ),
                )


def _csv_records(path: Path) -> Iterator[tuple[int, Any]]:
    source = str(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # Undecodable bytes become lone surrogates (surrogateescape), so a bad byte costs its row,
    # named by line, not the whole file.
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f, strict=True)  # a stray quote must not swallow rows
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        if (bad := _undecodable(header)) is not None:
            raise InvalidInputError(f"{bad} in the header", source=source, line=1)
        caption_cols = _check_header(header, source)
        prev = reader.line_num
        while True:
            start = prev + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                prev = reader.line_num
                yield (
                    start,
                    InvalidInputError(
                        f"malformed CSV ({err}); a field with commas, quotes or line breaks "
                        'must be in double quotes, with inner quotes doubled ("")',
                        source=source,
                        line=start,
                    ),
                )
                continue
            prev = reader.line_num
            if not cells:
                continue
            if (bad := _undecodable(cells)) is not None:
                yield start, InvalidInputError(bad, source=source, line=start)
                continue
            yield start, _csv_record(header, caption_cols, cells, source, start)


def _undecodable(cells: list[str]) -> str | None:
    """What is wrong when a cell holds bytes that were not UTF-8 (surrogateescape), else None."""
    for column, cell in enumerate(cells, 1):
        if cell.isascii():
            continue
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError as err:
            byte = ord(cell[err.start]) - 0xDC00
            return (
                f"not valid UTF-8 text (byte 0x{byte:02x} in column {column}); "
                "save the file as UTF-8"
            )
    return None


def _check_header(header: list[str], source: str) -> list[tuple[int, int]]:
    """Check a CSV/Parquet header; return (column index, N) of the caption_N columns, by N."""
    dupes = sorted(name for name, n in Counter(header).items() if n > 1)
    if dupes:
        raise InvalidInputError(
            f"duplicate column names {dupes}; each column must appear once", source=source, line=1
        )
    if "id" not in header:
        raise InvalidInputError(
            f"no 'id' column; header is {_short(header, 200)}", source=source, line=1, field="id"
        )
    caption_cols = sorted(
        ((i, int(m.group(1))) for i, h in enumerate(header) if (m := _CAPTION_COLUMN.match(h))),
        key=lambda item: item[1],
    )
    if caption_cols and "captions" in header:
        raise InvalidInputError(
            "both a 'captions' column and caption_N columns; use one of the two",
            source=source,
            line=1,
            field="captions",
        )
    return caption_cols


def _csv_record(
    header: list[str], caption_cols: list[tuple[int, int]], cells: list[str], source: str, line: int
) -> dict[str, Any] | InvalidInputError:
    if len(cells) > len(header):
        return InvalidInputError(
            f"row has {len(cells)} cells but the header has {len(header)} columns",
            source=source,
            line=line,
        )
    caption_idx = {i for i, _ in caption_cols}
    record: dict[str, Any] = {}
    for i, (name, cell) in enumerate(zip(header, cells, strict=False)):
        if cell == "" or i in caption_idx:
            continue
        if name == "captions":
            try:
                record[name] = json.loads(cell)
            except json.JSONDecodeError as err:
                return InvalidInputError(
                    f"malformed JSON array ({err.msg} at column {err.colno}); expected a JSON "
                    'array of strings such as ["newest", "older"], got ' + _short(cell),
                    source=source,
                    line=line,
                    field="captions",
                )
        elif name in TEXT_FIELDS or name in LABEL_FIELDS or name == "id":
            record[name] = cell
        elif (value := _decode_cell(cell)) is not None:
            record[name] = value
    if caption_cols:
        record["captions"] = [cells[i] for i, _ in caption_cols if i < len(cells) and cells[i]]
    return record


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _decode_cell(cell: str) -> Any:
    """An extra CSV cell: JSON when it parses as JSON (numbers, lists, quoted text), else text."""
    if cell[0] not in '[{"-0123456789tfn':
        return cell
    try:
        return json.loads(cell, parse_constant=_reject_constant)
    except ValueError:
        return cell


def _encode_cell(value: Any) -> str:
    """Inverse of :func:`_decode_cell`: text stays text unless it would be read back as JSON."""
    if isinstance(value, str):
        return value if value and _decode_cell(value) is value else json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    try:
        pfile = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InvalidInputError(f"not a readable Parquet file: {err}", source=source) from None
    names = [n.strip() for n in pfile.schema_arrow.names]
    caption_cols = _check_header(names, source)
    meta = pfile.schema_arrow.metadata or {}
    try:
        json_cols = set(json.loads(meta.get(_PARQUET_JSON_KEY, b"[]")))
    except (ValueError, TypeError) as err:
        raise InvalidInputError(
            f"the schema metadata {_PARQUET_JSON_KEY.decode()!r} is not a JSON list of column "
            f"names ({err}); rewrite the file without it",
            source=source,
        ) from None
    row_no = 0
    batches = pfile.iter_batches(batch_size=8192)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:
            raise InvalidInputError(
                f"unreadable Parquet data after row {row_no}: {err}", source=source
            ) from None
        if batch is None:
            return
        for raw in batch.to_pylist():
            row_no += 1
            yield row_no, _parquet_record(raw, caption_cols, names, json_cols, source, row_no)


def _parquet_record(
    raw: dict[str, Any],
    caption_cols: list[tuple[int, int]],
    names: list[str],
    json_cols: set[str],
    source: str,
    row: int,
) -> dict[str, Any] | InvalidInputError:
    record: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in json_cols and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                return InvalidInputError(
                    f"malformed JSON in a JSON-encoded column: {err.msg}", source=source, line=row,
                    field=key,
                )  # fmt: skip
        record[key.strip()] = value
    if caption_cols:
        cols = [names[i] for i, _ in caption_cols]
        record["captions"] = [record.pop(c) for c in cols if record.get(c) not in (None, "")]
        for c in cols:
            record.pop(c, None)
    return record


# ------------------------------------------------------------------------------------- writing


def write_profiles(path: str | Path, rows: Iterable[LabelledProfile]) -> int:
    """Write labelled profiles in the format given by the suffix; ``read_profiles`` reads them back.

    JSONL writes one object per line. CSV writes captions as a JSON-array ``captions`` column and
    each extra as a column (text as is, other values JSON-encoded; text that would read back as JSON
    is quoted). Parquet writes captions and list-of-text extras as ``list<string>``, extras of one
    scalar type as typed columns and any other extra JSON-encoded (named in the schema metadata).
    In CSV and Parquet a null extra is the same as an absent one. The file is written to a temporary
    name and moved into place, so a reader never sees half a file.

    Args:
        path: destination (``.jsonl``, ``.ndjson``, ``.csv`` or ``.parquet``); parent folders
            are created.
        rows: the rows, in order.

    Returns:
        Number of rows written.

    Raises:
        InvalidInputError: on an unsupported suffix.
    """
    path = Path(path)
    kind = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = {"jsonl": _write_jsonl, "csv": _write_csv, "parquet": _write_parquet}[kind]
    try:
        n = writer(tmp, rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %d rows to %s", n, path)
    return n


def _write_jsonl(path: Path, rows: Iterable[LabelledProfile]) -> int:
    n = 0
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row.to_record(), ensure_ascii=False) + "\n")
            n += 1
    return n


def _columns(records: list[dict[str, Any]]) -> list[str]:
    base = ["id", "username", "full_name", "biography", "captions"]
    seen = dict.fromkeys(base)
    for label in LABEL_FIELDS:
        if any(label in r for r in records):
            seen[label] = None
    for r in records:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _write_csv(path: Path, rows: Iterable[LabelledProfile]) -> int:
    records = [row.to_record() for row in rows]
    columns = _columns(records)
    fixed = {"id", "username", "full_name", "biography", *LABEL_FIELDS}
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in records:
            cells = []
            for name in columns:
                value = r.get(name)
                if name == "captions":
                    cells.append(json.dumps(value, ensure_ascii=False))
                elif value is None:
                    cells.append("")
                elif name in fixed:
                    cells.append(str(value))
                else:
                    cells.append(_encode_cell(value))
            writer.writerow(cells)
    return len(records)


def _write_parquet(path: Path, rows: Iterable[LabelledProfile]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [row.to_record() for row in rows]
    columns = _columns(records)
    arrays, json_cols = [], []
    for name in columns:
        values = [r.get(name) for r in records]
        if name == "captions":
            arrays.append(pa.array(values, type=pa.list_(pa.string())))
            continue
        types = {type(v) for v in values if v is not None}
        # ints beyond int64 (JSON has no limit) go the JSON way, like mixed columns
        wide = types == {int} and any(not -(2**63) <= v < 2**63 for v in values if v is not None)
        if len(types) <= 1 and types <= set(_SCALARS) and not wide:
            arrays.append(pa.array(values, type=None if types else pa.string()))
        elif types == {list} and all(isinstance(x, str) for v in values if v for x in v):
            arrays.append(pa.array(values, type=pa.list_(pa.string())))  # e.g. simulator "cues"
        else:
            json_cols.append(name)
            arrays.append(pa.array([None if v is None else json.dumps(v) for v in values]))
    schema_meta = {_PARQUET_JSON_KEY: json.dumps(json_cols).encode()}
    table = pa.Table.from_arrays(arrays, names=columns).replace_schema_metadata(schema_meta)
    pq.write_table(table, path)
    return len(records)


# -------------------------------------------------------------------------------------- splits


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if (
        len(values) != 3
        or any(not math.isfinite(f) or f < 0 for f in values)
        or not math.isclose(sum(values), 1.0, abs_tol=1e-9)
    ):
        raise InvalidInputError(
            f"split fractions must be three non-negative numbers (train, val, test) summing to 1, "
            f"got {tuple(fractions)!r}",
            field="fractions",
        )
    return values  # type: ignore[return-value]


def _hash_quantile(profile_id: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(
    profile_id: str,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = DEFAULT_SALT,
) -> str:
    """Pick a row's split from its id alone: ``sha256(f"{salt}:{id}")`` read as a quantile.

    The split depends only on the id, the fractions and the salt, never on the other rows, so a row
    keeps its split when rows are added or removed, on every machine and Python version.

    Args:
        profile_id: the row id (``Profile.id``).
        fractions: (train, val, test), non-negative, summing to 1.
        salt: changes the draw; keep it fixed for a dataset's lifetime.

    Returns:
        ``"train"``, ``"val"`` or ``"test"``.

    Raises:
        InvalidInputError: when the fractions are not three non-negative numbers summing to 1.
    """
    train, val, _ = _check_fractions(fractions)
    u = _hash_quantile(str(profile_id), salt)
    if u < train:
        return "train"
    return "val" if u < train + val else "test"


def split_rows(
    rows: Iterable[LabelledProfile],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    salt: str = DEFAULT_SALT,
    stratify: str = "country",
) -> dict[str, list[LabelledProfile]]:
    """Split rows into train/val/test: stable under additions, stratified by a label in expectation.

    Each row's split is decided by its own hash quantile (:func:`assign_split`). The hash does not
    depend on the label, so within every class the split shares are binomial around the targets:
    stable and approximately stratified. The trade-off: exact stratification (rank rows by hash
    inside each class and cut at the fractions) would make every class's shares exact to one row,
    but adding a row shifts the ranks and moves rows of that class across a cut, so a model could be
    evaluated on rows it was trained on before. Stability wins here; the price is sampling noise of
    about ``sqrt(f * (1 - f) / n)`` on a class of ``n`` rows (0.3 points of a 10% split at
    n = 10,000; a class with a few dozen rows may get no validation rows). Per-class counts are
    logged (debug) so the noise is visible; :func:`split_counts` returns them.

    Args:
        rows: the rows (ids unique).
        fractions: (train, val, test), non-negative, summing to 1.
        salt: the split hash salt.
        stratify: label field whose per-class shares are checked and logged (rows without it form
            their own group).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in input order.

    Raises:
        InvalidInputError: on bad fractions.
    """
    _check_fractions(fractions)
    out: dict[str, list[LabelledProfile]] = {name: [] for name in SPLITS}
    for row in rows:
        out[assign_split(row.profile.id, fractions, salt)].append(row)
    counts = split_counts(out, stratify)
    for label, per_split in sorted(counts.items()):
        logger.debug("split counts for %s=%s: %s", stratify, label, per_split)
    logger.info("split %s", {name: len(v) for name, v in out.items()})
    return out


def split_counts(
    splits: Mapping[str, Sequence[LabelledProfile]], by: str = "country"
) -> dict[str, dict[str, int]]:
    """Count rows per label and split: ``{label: {"train": n, "val": n, "test": n}}``.

    Args:
        splits: the output of :func:`split_rows`.
        by: label field to group by; rows without it count under ``"<none>"``.

    Returns:
        Per-label counts (every split name present, zeros included).
    """
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(splits, 0))
    for name, rows in splits.items():
        for row in rows:
            counts[row.labels.get(by, "<none>")][name] += 1
    return dict(counts)
