"""Tests for embedder.data: round trips, validation error paths, skip_invalid counts, splits."""

from __future__ import annotations

import csv
import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedder.data import (
    LABEL_FIELDS,
    LabelledProfile,
    LoadResult,
    assign_split,
    read_profiles,
    split_counts,
    split_rows,
    write_profiles,
)
from embedder.errors import InvalidInputError
from embedder.labels import CATEGORIES, GEO_LABELS, OTHER
from embedder.profile import MAX_CAPTIONS, Profile

FORMATS = ("jsonl", "csv", "parquet")


def _row(pid, *, captions=(), labels=None, extra=None, **texts) -> LabelledProfile:
    profile = Profile(id=pid, captions=tuple(captions), extra=extra or {}, **texts)
    return LabelledProfile(profile, labels or {})


def _records(rows):
    return [r.to_record() for r in rows]


def _write_jsonl(path: Path, lines) -> Path:
    path.write_text(
        "".join(
            (x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines
        ),
        encoding="utf-8",
    )
    return path


def _write_csv(path: Path, header, rows) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


RICH_ROWS = [
    _row(
        "u1",
        username="ana.sp",
        full_name="Ana Souza 🇧🇷",
        biography='📍 São Paulo\nfood, "quotes", commas; R$ 10\r\n#foodie @amigo https://ana.com.br',
        captions=("Almoço 🍲 hoje", "", "line1\nline2", "東京 ✈️ 🇯🇵", "مرحبا بالعالم"),
        labels={"country": "BR", "category": "food"},
        extra={
            "language": "pt",
            "cues": ["city", "flag"],
            "meta": {"a": 1, "b": [True, None]},
            "followers": 1200,
            "score": 0.25,
            "verified": True,
            "zip": "01234",
            "looks_json": "123",
            "looks_list": "[not json",
            "quoted": '"hi"',
            "empty_text": "",
            "null_word": "null",
        },
    ),
    _row("u2", labels={"country": "OTHER"}, extra={"country_iso": "NZ", "language": "en"}),
    _row("u3"),  # no labels, no text, no captions
    _row("u4", biography="only a bio", labels={"category": "travel"}, extra={"followers": 7}),
]


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_every_field(tmp_path, fmt):
    path = tmp_path / f"rows.{fmt}"
    assert write_profiles(path, RICH_ROWS) == len(RICH_ROWS)
    result = read_profiles(path)
    assert (result.n_read, result.errors, result.captions_dropped) == (4, [], 0)
    assert _records(result.rows) == _records(RICH_ROWS)
    # the second trip writes identical bytes: nothing drifts
    again = tmp_path / f"again.{fmt}"
    write_profiles(again, result.rows)
    if fmt != "parquet":
        assert again.read_bytes() == path.read_bytes()
    assert _records(read_profiles(again).rows) == _records(RICH_ROWS)


@pytest.mark.parametrize("src", FORMATS)
@pytest.mark.parametrize("dst", FORMATS)
def test_cross_format_conversion(tmp_path, src, dst):
    a, b = tmp_path / f"a.{src}", tmp_path / f"b.{dst}"
    write_profiles(a, RICH_ROWS)
    write_profiles(b, read_profiles(a).rows)
    assert _records(read_profiles(b).rows) == _records(RICH_ROWS)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.tuples(_text, _text, _text), min_size=1, max_size=4),
    captions=st.lists(st.lists(_text, max_size=MAX_CAPTIONS), min_size=4, max_size=4),
    extra_text=_text,
)
def test_round_trip_arbitrary_unicode(texts, captions, extra_text):
    rows = [
        _row(f"id{i}", username=u, full_name=n, biography=b, captions=captions[i],
             labels={"country": "JP"}, extra={"note": extra_text})
        for i, (u, n, b) in enumerate(texts)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            path = Path(tmp) / f"rows.{fmt}"
            write_profiles(path, rows)
            assert _records(read_profiles(path).rows) == _records(rows), fmt


def test_write_refuses_unknown_suffix_and_leaves_no_temp_file(tmp_path):
    with pytest.raises(InvalidInputError, match=r"unsupported file type '\.txt'.*\.jsonl"):
        write_profiles(tmp_path / "rows.txt", RICH_ROWS)
    assert list(tmp_path.iterdir()) == []


def test_write_creates_parent_folders_and_overwrites_atomically(tmp_path):
    path = tmp_path / "a" / "b" / "rows.jsonl"
    write_profiles(path, RICH_ROWS)
    write_profiles(path, RICH_ROWS[:1])
    assert len(read_profiles(path).rows) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]


# ------------------------------------------------------------------------ input variants


def test_jsonl_blank_lines_skipped_bom_and_physical_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": 1, "country": "fr"}\n\n   \n{"id": "2", "country": "XX"}\n'
    )
    with pytest.raises(InvalidInputError) as info:
        read_profiles(path)
    assert info.value.line == 4
    result = read_profiles(path, skip_invalid=True)
    assert result.n_read == 2 and [r.profile.id for r in result.rows] == ["1"]
    assert result.rows[0].labels == {"country": "FR"}


def test_csv_caption_columns_in_numeric_order_with_empty_cells_missing(tmp_path):
    header = ["id", "caption_10", "caption_2", "caption_1", "country", "username", "followers"]
    path = _write_csv(tmp_path / "rows.csv", header, [["a", "tenth", "", "first", "", "", "12"]])
    (row,) = read_profiles(path).rows
    assert row.profile.captions == ("first", "tenth")
    assert (
        row.labels == {} and row.profile.username == "" and row.profile.extra == {"followers": 12}
    )


def test_csv_more_than_five_caption_columns_counts_dropped(tmp_path):
    header = ["id", *(f"caption_{i}" for i in range(1, 8))]
    path = _write_csv(tmp_path / "rows.csv", header, [["a", *"1234567"], ["b", *"12345", "", ""]])
    result = read_profiles(path)
    assert [r.profile.captions for r in result.rows] == [tuple("12345")] * 2
    assert result.captions_dropped == 2


def test_csv_captions_as_json_array_column(tmp_path):
    path = _write_csv(
        tmp_path / "rows.csv", ["id", "captions"], [["a", json.dumps(["x", "y 🎉"] + ["z"] * 5)]]
    )
    result = read_profiles(path)
    assert result.rows[0].profile.captions == ("x", "y 🎉", "z", "z", "z")
    assert result.captions_dropped == 2


def test_parquet_list_and_caption_columns(tmp_path):
    listed = tmp_path / "list.parquet"
    pq.write_table(
        pa.table({
            "id": [1, 2],
            "captions": pa.array([["a", "b"], None], type=pa.list_(pa.string())),
            "country": pa.array(["de", None]).dictionary_encode(),
        }),
        listed,
    )  # fmt: skip
    rows = read_profiles(listed).rows
    assert [(r.profile.id, r.profile.captions, dict(r.labels)) for r in rows] == [
        ("1", ("a", "b"), {"country": "DE"}),
        ("2", (), {}),
    ]
    columns = tmp_path / "columns.parquet"
    pq.write_table(
        pa.table(
            {"id": ["x"], "caption_2": ["second"], "caption_1": ["first"], "caption_3": [None]}
        ),
        columns,
    )
    (row,) = read_profiles(columns).rows
    assert row.profile.captions == ("first", "second") and row.profile.extra == {}


def test_captions_beyond_limit_counted_in_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "captions": list("abcdefgh")}])
    result = read_profiles(path)
    assert result.rows[0].profile.captions == tuple("abcde") and result.captions_dropped == 3


# ----------------------------------------------------------------------- label validation


@pytest.mark.parametrize(
    ("raw", "label", "iso"),
    [("FR", "FR", None), ("fr", "FR", None), (" us ", "US", None), ("nz", OTHER, "NZ"),
     ("OTHER", OTHER, None), ("other", OTHER, None)],
)  # fmt: skip
def test_country_codes_map_to_geo_labels(tmp_path, raw, label, iso):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "country": raw}])
    (row,) = read_profiles(path).rows
    assert row.labels["country"] == label and label in GEO_LABELS
    assert row.profile.extra.get("country_iso") == iso
    assert "country" not in row.profile.extra


def test_existing_country_iso_is_kept(tmp_path):
    path = _write_jsonl(
        tmp_path / "r.jsonl", [{"id": "a", "country": "OTHER", "country_iso": "KE"}]
    )
    assert read_profiles(path).rows[0].profile.extra == {"country_iso": "KE"}


def test_category_is_case_insensitive(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "category": " Food "}])
    assert read_profiles(path).rows[0].labels == {"category": "food"}


def test_label_fields_constant():
    assert LABEL_FIELDS == ("country", "category")


# ----------------------------------------------------------------- every error path (JSONL)

JSONL_ERRORS = [
    ('{"id": "a", "country": ', None, ["malformed JSON", "column"]),
    ("[1, 2]", None, ["expected a JSON object", "list"]),
    ('"just text"', None, ["expected a JSON object"]),
    ({"username": "x"}, "id", ["'id' must be", "None"]),
    ({"id": ["a"]}, "id", ["'id' must be", "['a']"]),
    ({"id": True}, "id", ["'id' must be"]),
    ({"id": ""}, "id", ["'id' must be"]),
    ({"id": "a", "username": 5}, "username", ["must be a string", "int 5"]),
    ({"id": "a", "full_name": {"x": 1}}, "full_name", ["must be a string", "dict"]),
    ({"id": "a", "biography": ["b"]}, "biography", ["must be a string", "list"]),
    ({"id": "a", "captions": "one caption"}, "captions", ["must be a list of strings", "str"]),
    ({"id": "a", "captions": ["ok", 3]}, "captions[1]", ["must be a string", "int 3"]),
    ({"id": "a", "country": "XX"}, "country", ["unknown country code 'XX'", "ISO 3166-1 alpha-2"]),
    ({"id": "a", "country": "FRA"}, "country", ["'FRA'", "alpha-2", "'OTHER'"]),
    ({"id": "a", "country": "France"}, "country", ["'France'", "alpha-2"]),
    ({"id": "a", "country": 33}, "country", ["must be a string", "int 33"]),
    ({"id": "a", "category": "cooking"}, "category", ["'cooking'", ", ".join(CATEGORIES)]),
    ({"id": "a", "category": 3}, "category", ["int 3", "fashion"]),
    # Python's json reads "\ud800" as a lone surrogate: not text, no tokenizer takes it
    (json.dumps({"id": "a", "biography": "x\ud800"}), "biography", ["lone surrogate", "char"]),
    (json.dumps({"id": "a", "captions": ["ok", "\udc80"]}), "captions[1]", ["lone surrogate"]),
    (json.dumps({"id": "\ud800"}), "id", ["lone surrogate"]),
]


@pytest.mark.parametrize(("bad", "field", "needles"), JSONL_ERRORS)
def test_jsonl_error_names_file_line_field_value(tmp_path, bad, field, needles):
    path = _write_jsonl(tmp_path / "rows.jsonl", [{"id": "ok", "country": "BR"}, bad])
    with pytest.raises(InvalidInputError) as info:
        read_profiles(path)
    err = info.value
    message = str(err)
    assert (err.source, err.line, err.field) == (str(path), 2, field)
    assert message.startswith(f"{path}, line 2")
    if field is not None:
        assert f"field '{field}'" in message
    for needle in needles:
        assert needle in message
    result = read_profiles(path, skip_invalid=True)
    assert (len(result.rows), result.n_invalid, result.n_read) == (1, 1, 2)


def test_jsonl_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b\xff"}\n{"id": "c"}\n')
    with pytest.raises(InvalidInputError) as info:
        read_profiles(path)
    assert info.value.line == 2 and "malformed JSON" in str(info.value)
    assert [r.profile.id for r in read_profiles(path, skip_invalid=True).rows] == ["a", "c"]


def test_required_label_missing(tmp_path):
    path = _write_jsonl(
        tmp_path / "r.jsonl",
        [{"id": "a", "country": "BR"}, {"id": "b", "country": ""}, {"id": "c"}],
    )
    assert len(read_profiles(path).rows) == 3
    with pytest.raises(InvalidInputError) as info:
        read_profiles(path, require=("country",))
    assert (info.value.line, info.value.field) == (2, "country")
    assert "required label 'country' is missing" in str(info.value)
    result = read_profiles(path, require=("country",), skip_invalid=True)
    assert [r.profile.id for r in result.rows] == ["a"] and result.error_counts() == {"country": 2}


def test_require_unknown_label_field(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a"}])
    with pytest.raises(
        InvalidInputError, match=r"cannot require \['language'\].*country, category"
    ):
        read_profiles(path, require=("language",))


def test_duplicate_id_names_first_line(tmp_path):
    path = _write_jsonl(
        tmp_path / "r.jsonl",
        [{"id": "a", "biography": "first"}, {"id": "b"}, "", {"id": "a", "biography": "again"},
         {"id": 7}, {"id": "7"}],
    )  # fmt: skip
    with pytest.raises(InvalidInputError) as info:
        read_profiles(path)
    err = info.value
    assert (err.line, err.field) == (4, "id")
    assert "duplicate id 'a'" in str(err) and "first seen at line 1" in str(err)
    result = read_profiles(path, skip_invalid=True)
    assert [(r.profile.id, r.profile.biography) for r in result.rows] == [
        ("a", "first"), ("b", ""), ("7", "")
    ]  # fmt: skip
    assert [e.line for e in result.errors] == [4, 6]


def test_invalid_first_occurrence_does_not_block_a_valid_second(tmp_path):
    path = _write_jsonl(tmp_path / "r.jsonl", [{"id": "a", "country": "ZZ"}, {"id": "a"}])
    result = read_profiles(path, skip_invalid=True)
    assert [e.line for e in result.errors] == [1] and len(result.rows) == 1


# ------------------------------------------------------------------- error paths (CSV, Parquet)


def test_csv_errors_name_file_line_field(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(
        'id,biography,captions,country\n'
        'a,"multi\nline bio","[""x""]",FR\n'      # lines 2-3, valid
        'b,,"[not json",FR\n'                      # line 4: captions JSON
        'c,,"""just text""",FR\n'                  # line 5: captions not a list
        'd,,,Atlantis\n'                           # line 6: unknown country
        'e,,,FR,extra cell\n'                      # line 7: too many cells
        'f,bad "quote,,FR\n'                       # line 8: valid (a quote inside a bare field)
        'g,"x"y,,FR\n'                             # line 9: malformed quoting
        'h,,,fr\n',                                # line 10: valid
        encoding="utf-8",
    )  # fmt: skip
    result = read_profiles(path, skip_invalid=True)
    assert [r.profile.id for r in result.rows] == ["a", "f", "h"]
    got = [(e.line, e.field) for e in result.errors]
    assert got == [(4, "captions"), (5, "captions"), (6, "country"), (7, None), (9, None)]
    messages = [str(e) for e in result.errors]
    assert all(m.startswith(f"{path}, line ") for m in messages)
    assert "malformed JSON array" in messages[0] and "'[not json'" in messages[0]
    assert "must be a list of strings" in messages[1]
    assert "'Atlantis'" in messages[2] and "alpha-2" in messages[2]
    assert "5 cells but the header has 4 columns" in messages[3]
    assert "malformed CSV" in messages[4]
    assert result.n_read == 8
    with pytest.raises(InvalidInputError, match=r"line 4, field 'captions'"):
        read_profiles(path)


def test_csv_unclosed_quote_is_reported_not_swallowed(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('id,biography\na,"never closed\nb,x\nc,y\n', encoding="utf-8")
    result = read_profiles(path, skip_invalid=True)
    assert result.n_invalid == 1 and "malformed CSV" in str(result.errors[0])
    assert result.errors[0].line == 2


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (["username", "country"], "no 'id' column"),
        (["id", "country", "country"], "duplicate column names ['country']"),
        (["id", "captions", "caption_1"], "both a 'captions' column and caption_N"),
    ],
)
def test_csv_header_errors(tmp_path, header, needle):
    path = _write_csv(tmp_path / "rows.csv", header, [["x"] * len(header)])
    with pytest.raises(InvalidInputError) as info:
        read_profiles(path, skip_invalid=True)  # a bad header is never skippable
    assert info.value.line == 1 and needle in str(info.value) and str(path) in str(info.value)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes("id,biography\na,café\nb,ok\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="not valid UTF-8") as info:
        read_profiles(path)
    # one bad byte costs its row, named by line and column, not the whole file
    assert info.value.line == 2 and "byte 0xe9 in column 2" in str(info.value)
    result = read_profiles(path, skip_invalid=True)
    assert [r.profile.id for r in result.rows] == ["b"] and result.n_invalid == 1
    header = tmp_path / "header.csv"
    header.write_bytes("id,biograf\xeda\na,x\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="in the header"):
        read_profiles(header, skip_invalid=True)


def test_csv_empty_file_has_no_rows(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("", encoding="utf-8")
    assert read_profiles(path).n_read == 0


def test_parquet_errors_name_row_and_field(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({
            "id": ["a", "b", "c", "a"],
            "username": ["x", "y", "z", "w"],
            "country": ["FR", "QQ", None, "BR"],
            "category": ["food", None, "knitting", None],
        }),
        path,
    )  # fmt: skip
    result = read_profiles(path, skip_invalid=True)
    assert [r.profile.id for r in result.rows] == ["a"]
    assert [(e.line, e.field) for e in result.errors] == [
        (2, "country"),
        (3, "category"),
        (4, "id"),
    ]
    assert str(result.errors[0]).startswith(f"{path}, line 2, field 'country'")
    wrong_type = tmp_path / "types.parquet"
    pq.write_table(pa.table({"id": ["a"], "username": [42]}), wrong_type)
    with pytest.raises(InvalidInputError, match=r"line 1, field 'username': must be a string.*42"):
        read_profiles(wrong_type)


def test_parquet_corrupt_and_missing_id(tmp_path):
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(InvalidInputError, match="not a readable Parquet file"):
        read_profiles(corrupt)
    no_id = tmp_path / "noid.parquet"
    pq.write_table(pa.table({"username": ["x"]}), no_id)
    with pytest.raises(InvalidInputError, match="no 'id' column"):
        read_profiles(no_id)
    # a readable footer over damaged pages: the damage is found while reading rows
    damaged = tmp_path / "damaged.parquet"
    table = pa.table({"id": [f"r{i}" for i in range(2000)], "biography": ["x" * 50] * 2000})
    pq.write_table(table, damaged, compression="snappy", row_group_size=500)
    data = bytearray(damaged.read_bytes())
    for i in range(2000, 6000):
        data[i] ^= 0x5A
    damaged.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="unreadable Parquet data after row"):
        read_profiles(damaged, skip_invalid=True)
    bad_meta = tmp_path / "meta.parquet"
    pq.write_table(
        pa.table({"id": ["a"]}).replace_schema_metadata(
            {"profile_embeddings.json_columns": "not json"}
        ),
        bad_meta,
    )
    with pytest.raises(InvalidInputError, match="json_columns"):
        read_profiles(bad_meta)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match=r"unsupported file type '\.xlsx'"):
        read_profiles(tmp_path / "rows.xlsx")
    with pytest.raises(InvalidInputError, match="file not found") as info:
        read_profiles(tmp_path / "missing.jsonl")
    assert info.value.source == str(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- skip_invalid


def test_skip_invalid_keeps_every_valid_row_and_counts(tmp_path):
    lines, valid = [], []
    for i in range(200):
        if i % 7 == 3:
            lines.append({"id": f"r{i}", "country": "??"})
        elif i % 11 == 5:
            lines.append("{broken")
        elif i % 13 == 6:
            lines.append({"id": f"r{i}", "captions": "oops"})
        else:
            lines.append({"id": f"r{i}", "country": "br", "captions": ["c"] * (i % 8)})
            valid.append(i)
    path = _write_jsonl(tmp_path / "mixed.jsonl", lines)
    result = read_profiles(path, skip_invalid=True)
    assert isinstance(result, LoadResult)
    assert [r.profile.id for r in result.rows] == [f"r{i}" for i in valid]
    assert result.n_read == 200 == len(result.rows) + result.n_invalid
    assert result.captions_dropped == sum(max(0, i % 8 - MAX_CAPTIONS) for i in valid)
    expected = Counter(
        "country" if i % 7 == 3 else "<row>" if i % 11 == 5 else "captions"
        for i in range(200)
        if i not in set(valid)
    )
    assert result.error_counts() == dict(expected)
    assert f"{len(valid)} valid, {200 - len(valid)} invalid" in result.summary()


# ---------------------------------------------------------------------------------- splits


def test_assign_split_is_pinned_and_deterministic():
    # pinned: these must never change, or every dataset's splits would move
    got = [assign_split(f"user{i}") for i in range(24)]
    assert got == PINNED_SPLITS
    assert assign_split("user0", salt="other-salt") in {"train", "val", "test"}
    assert [assign_split(f"user{i}") for i in range(24)] == got


PINNED_SPLITS = [
    "train", "test", "test", "train", "train", "train", "train", "train", "train", "train", "train",
    "train", "train", "train", "test", "train", "train", "test", "test", "train", "train", "train",
    "val", "test",
]  # fmt: skip


@pytest.mark.parametrize(
    "fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1), (math.nan, 0, 1)]
)
def test_bad_fractions(fractions):
    with pytest.raises(InvalidInputError, match="three non-negative numbers"):
        assign_split("a", fractions)
    with pytest.raises(InvalidInputError):
        split_rows([], fractions)


def test_degenerate_fractions():
    ids = [str(i) for i in range(500)]
    assert {assign_split(i, (1.0, 0.0, 0.0)) for i in ids} == {"train"}
    assert {assign_split(i, (0.0, 0.0, 1.0)) for i in ids} == {"test"}


def test_split_shares_close_to_fractions():
    counts = Counter(assign_split(f"id-{i}", (0.7, 0.2, 0.1)) for i in range(20000))
    for name, frac in zip(("train", "val", "test"), (0.7, 0.2, 0.1), strict=True):
        sigma = math.sqrt(frac * (1 - frac) / 20000)
        assert abs(counts[name] / 20000 - frac) < 5 * sigma


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True),
    added=st.lists(st.text(min_size=1, max_size=12), max_size=60, unique=True),
    salt=st.text(max_size=8),
)
def test_split_stable_when_rows_are_added(ids, added, salt):
    base = [_row(i, labels={"country": "US"}) for i in ids]
    extra = [_row(i, labels={"country": "FR"}) for i in added if i not in set(ids)]
    before = split_rows(base, salt=salt)
    after = split_rows(extra[: len(extra) // 2] + base + extra[len(extra) // 2 :], salt=salt)
    where_before = {r.profile.id: name for name, rows in before.items() for r in rows}
    where_after = {r.profile.id: name for name, rows in after.items() for r in rows}
    assert all(where_after[i] == where_before[i] for i in ids)
    assert sum(len(v) for v in after.values()) == len(base) + len(extra)


def test_split_rows_stratified_within_tolerance():
    rows = []
    sizes = {label: 300 + 100 * k for k, label in enumerate(GEO_LABELS)}
    for label, n in sizes.items():
        rows += [_row(f"{label}-{i}", labels={"country": label}) for i in range(n)]
    splits = split_rows(rows, (0.8, 0.1, 0.1))
    assert [r.profile.id for r in splits["val"]] == [
        r.profile.id for r in rows if assign_split(r.profile.id) == "val"
    ]
    counts = split_counts(splits)
    assert set(counts) == set(GEO_LABELS)
    for label, per_split in counts.items():
        n = sizes[label]
        assert sum(per_split.values()) == n
        for name, frac in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            sigma = math.sqrt(frac * (1 - frac) / n)
            assert abs(per_split[name] / n - frac) < 4.5 * sigma, (label, name, per_split)


def test_split_counts_groups_unlabelled_rows():
    splits = split_rows([_row("a"), _row("b", labels={"country": "FR"})], (1.0, 0.0, 0.0))
    assert split_counts(splits) == {
        "<none>": {"train": 1, "val": 0, "test": 0},
        "FR": {"train": 1, "val": 0, "test": 0},
    }


def test_ints_beyond_int64_round_trip_through_parquet(tmp_path):
    rows = [
        LabelledProfile(Profile(id="a", extra={"big": 2**63, "small": 1})),
        LabelledProfile(Profile(id="b", extra={"big": 3, "small": 2})),
    ]
    path = tmp_path / "rows.parquet"
    write_profiles(path, rows)  # OverflowError from pyarrow before
    back = [dict(r.profile.extra) for r in read_profiles(path).rows]
    assert back == [{"big": 2**63, "small": 1}, {"big": 3, "small": 2}]


def test_parquet_column_types(tmp_path):
    path = tmp_path / "rows.parquet"
    write_profiles(path, RICH_ROWS)
    schema = pq.read_schema(path)
    assert schema.field("captions").type == pa.list_(pa.string())
    assert schema.field("cues").type == pa.list_(pa.string())
    assert schema.field("followers").type == pa.int64()
    assert schema.field("meta").type == pa.string()  # JSON-encoded, named in the metadata
    assert json.loads(schema.metadata[b"profile_embeddings.json_columns"]) == ["meta"]
