"""Property-based tests: bad input gets a clear error and loses nothing.

Why properties and not more examples: the readers and validators face files and request bodies that
nobody wrote on purpose (exports from other tools, truncated uploads, JSON with "\\ud800" escapes).
Hypothesis throws arbitrary JSON values, text and bytes at them and checks the contract:
- row validation: every row is either clean or reported bad, exactly once, with the right 1-based row
  number and a field that names a column; clean rows have a valid title and a label in -1..6; the
  "error" mode stops at exactly the row the "skip" mode reports first;
- request validation: PredictRequest accepts exactly the non-empty, valid-Unicode texts;
- readers: any bytes under any suffix give a DataFrame or a DataValidationError that names the file,
  and well-formed files come back with every record.

Every test is derandomized (fixed examples, no example database) so CI runs the same cases every time.
No Ray, no Serve: the request schema (ynat_ray.serving.schema) imports neither.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ynat_ray.data.files import read_records
from ynat_ray.data.validation import COLUMNS, NO_LABEL, DataValidationError, _check_row, text_problem, validate_frame
from ynat_ray.labels import LABEL2ID, LABELS, NUM_LABELS

# One settings object for the module instead of a global profile: loading a profile here would change
# hypothesis' defaults for every other test module in the session. YNAT_HYPOTHESIS_EXAMPLES raises the
# example count for a longer local hunt (3000 passes in ~4 min); CI keeps the default, still derandomized.
PROPS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=int(os.environ.get("YNAT_HYPOTHESIS_EXAMPLES", "150")),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PSEUDO_FIELDS = {"<encoding>", "<json>", "<row>", "<csv>", "<parquet>"}

# ---------------------------------------------------------------------------------------------
# Strategies

# Every code point, surrogates included (hypothesis leaves category Cs out unless asked).
ANY_CHAR = st.characters(codec=None, categories=None)
NASTY_TEXTS = [
    "", " ", "\t\n", "\u3000", "\u200b", "\ufeff", "\u200d\u200b", "\x00", "\x1f", "\x85", "\u2028", "a\u2028b",
    "\ud800", "a\udfff", "제목\ud83d", "\ud83d\ude00", "😀", "제목", "  정상 제목  ", "NaN", "null", "IT과학",
]  # fmt: skip
TEXTS = st.one_of(st.text(ANY_CHAR, max_size=12), st.sampled_from(NASTY_TEXTS))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=NUM_LABELS + 1),
    st.floats(),
    st.sampled_from([float("nan"), math.inf, -0.0, 3.0, 2.5, 1e300]),
    TEXTS,
)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(ANY_CHAR, max_size=4), inner, max_size=3), max_leaves=6
)
GOOD_TITLES = st.one_of(
    st.sampled_from(["유튜브 내달 2일까지 크리에이터 지원 공간 운영", "손흥민 시즌 10호골", "x", " a ", "😀"]),
    st.text(min_size=1, max_size=10),
)
TITLES = st.one_of(GOOD_TITLES, TEXTS, JSON_VALUES)
LABEL_TEXTS = [*LABELS, f" {LABELS[3]} ", "0", " 3 ", "6", "7", "-1", "03", "+3", "3.0", "²", "٣", "9" * 5000, "연예", " ", ""]
LABEL_VALUES = st.one_of(
    st.integers(min_value=-1, max_value=NUM_LABELS),
    st.sampled_from(LABEL_TEXTS),
    st.sampled_from([float(i) for i in range(NUM_LABELS)]),
    JSON_VALUES,
)
META_VALUES = st.one_of(st.none(), st.text(max_size=6), JSON_VALUES)


@st.composite
def records(draw: st.DrawFn, text_column: str = "title", label_column: str = "label") -> dict[str, Any]:
    """A raw record as a reader produces it: any key may be absent, any value any JSON-like thing."""
    rec: dict[str, Any] = {}
    for key, values in ((text_column, TITLES), (label_column, LABEL_VALUES), ("guid", META_VALUES), ("url", META_VALUES)):
        if draw(st.integers(0, 5)):  # present five times in six
            rec[key] = draw(values)
    rec.update(draw(st.dictionaries(st.text(ANY_CHAR, max_size=4), JSON_VALUES, max_size=2)))
    return rec


def frame(recs: list[dict[str, Any]]) -> pd.DataFrame:
    """Records -> DataFrame the way read_records builds JSON frames: object columns, values untouched."""
    columns = pd.Index(list(dict.fromkeys(k for r in recs for k in r)), dtype=object)
    return pd.DataFrame(recs, columns=columns, dtype=object)


# ---------------------------------------------------------------------------------------------
# Oracles: the documented rules, written independently of ynat_ray.data


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def blank(text: str) -> bool:
    """Blank = nothing visible: only whitespace, controls (Cc) and format characters (Cf, e.g. U+200B)."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp") for ch in text)


def encodable(text: str) -> bool:
    return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def expected_label(value: Any, require_label: bool) -> int | None:
    """The id a label value must map to, or None when the row must be rejected for its label."""
    if is_missing(value) or (isinstance(value, str) and not value.strip()):
        return None if require_label else NO_LABEL
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < NUM_LABELS else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and 0 <= value < NUM_LABELS else None
    if isinstance(value, str):
        name = value.strip()
        if name in LABEL2ID:
            return LABEL2ID[name]
        if re.fullmatch(r"-?[0-9]+", name) and len(name) < 100:  # the strategies make no long zero-padded ids
            return int(name) if 0 <= int(name) < NUM_LABELS else None
    return None


def first_bad_field(rec: dict[str, Any], require_label: bool, text_column: str = "title", label_column: str = "label") -> str | None:
    """The field a row must be rejected for (text first, then label, then guid/url/date), or None if it is clean."""
    title = rec.get(text_column)
    if not isinstance(title, str) or blank(title) or not encodable(title):
        return text_column
    if expected_label(rec.get(label_column), require_label) is None:
        return label_column
    for key in ("guid", "url", "date"):
        value = rec.get(key)
        if not is_missing(value) and value != "" and not encodable(value if isinstance(value, str) else str(value)):
            return key
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def check_error(err: DataValidationError, path: str) -> None:
    """The contract every DataValidationError keeps: its message names the file, row and field, and prints."""
    assert type(err) is DataValidationError
    assert str(err) == f"{path}: row {err.row}: field '{err.field}': {err.reason}"
    assert err.source == path and err.row >= 0 and err.reason.strip()
    str(err).encode("utf-8")  # printable: no lone surrogate from the input leaks into the message


# ---------------------------------------------------------------------------------------------
# 1. Row validation


@PROPS
@given(st.one_of(TEXTS, st.text(ANY_CHAR, max_size=40)))
@example("\u200b")
@example("\ufeff \u2060")
@example("\x00\x01")
@example("\ud800")
@example("a\udc80")
def test_text_problem_is_blank_or_surrogate_exactly(text: str) -> None:
    """text_problem refuses exactly blank text and lone surrogates, and says which."""
    problem = text_problem(text)
    if not encodable(text) and text.strip():
        assert problem is not None and problem.startswith("not valid Unicode: lone surrogate U+")
    elif blank(text):
        assert problem == "empty"
    else:
        assert problem is None


@PROPS
@given(
    recs=st.lists(records(), max_size=8),
    first_row=st.integers(min_value=1, max_value=10**6),
    require_label=st.booleans(),
)
@example(recs=[{"title": "x", "label": 1, "url": ["a", "b"]}], first_row=1, require_label=True)
@example(recs=[{"title": "x", "label": 1, "guid": "\ud800"}], first_row=1, require_label=True)
@example(recs=[{"title": "x", "label": "²"}, {"title": "\u200b", "label": 1}], first_row=5, require_label=False)
def test_skip_mode_puts_every_row_in_exactly_one_place(recs: list[dict[str, Any]], first_row: int, require_label: bool) -> None:
    """on_bad_rows='skip': clean + bad == all rows; bad rows carry their row number and the first bad field."""
    df = frame(recs)
    if "title" not in df.columns and len(df):
        # A file without the text column is a configuration error, reported once for the file, not per row.
        with pytest.raises(DataValidationError) as info:
            validate_frame(df, "in.jsonl", first_row=first_row, require_label=require_label, on_bad_rows="skip")
        check_error(info.value, "in.jsonl")
        assert (info.value.row, info.value.field) == (first_row, "title")
        return
    clean, bad = validate_frame(df, "in.jsonl", first_row=first_row, require_label=require_label, on_bad_rows="skip")
    assert len(clean) + len(bad) == len(df)
    assert list(clean.columns) == list(COLUMNS) and str(clean["label"].dtype) == "int64"
    expected = {first_row + i: first_bad_field(rec, require_label) for i, rec in enumerate(recs)}
    assert {b.row: b.field for b in bad} == {row: f for row, f in expected.items() if f is not None}
    assert [b.row for b in bad] == sorted({b.row for b in bad})  # each once, in file order
    for b in bad:
        assert b.source == "in.jsonl" and b.reason and _same(b.record, df.iloc[b.row - first_row].to_dict())
        assert b.field in set(df.columns) | {"title", "label"}  # a real column, or the expected one that is absent
        b.to_json()  # the quarantine line can be built for any record
    clean_rows = [row for row, f in expected.items() if f is None]
    for row, out in zip(clean_rows, clean.to_dict("records"), strict=True):
        rec = recs[row - first_row]
        assert out["title"] == rec["title"] and text_problem(out["title"]) is None
        assert out["label"] == expected_label(rec.get("label"), require_label) and NO_LABEL <= out["label"] < NUM_LABELS
        assert out["guid"] == (str(rec["guid"]) if not is_missing(rec.get("guid")) and rec.get("guid") != "" else f"in.jsonl:{row}")
        url = rec.get("url")
        # pandas 3 keeps an absent url as NaN in its str column
        assert is_missing(out["url"]) if is_missing(url) or url == "" else out["url"] == str(url)


@PROPS
@given(recs=st.lists(records(), max_size=8), first_row=st.integers(min_value=1, max_value=1000), require_label=st.booleans())
def test_error_mode_stops_at_the_first_bad_row(recs: list[dict[str, Any]], first_row: int, require_label: bool) -> None:
    """on_bad_rows='error' raises for exactly the row and field 'skip' reports first, or returns the same clean rows."""
    df = frame(recs)
    kwargs = {"first_row": first_row, "require_label": require_label}
    try:
        clean, bad = validate_frame(df, "in.json", **kwargs, on_bad_rows="skip")
    except DataValidationError:
        clean, bad = None, []
    try:
        strict, none = validate_frame(df, "in.json", **kwargs, on_bad_rows="error")
    except DataValidationError as err:
        check_error(err, "in.json")
        if clean is not None:  # else: the missing-column error, which both modes raise
            assert bad and (err.row, err.field, err.reason) == (bad[0].row, bad[0].field, bad[0].reason)
        return
    assert clean is not None and not bad and not none
    pd.testing.assert_frame_equal(strict, clean)


@PROPS
@given(
    rec=st.dictionaries(st.text(ANY_CHAR, max_size=5), JSON_VALUES, max_size=5) | records("headline", "topic"),
    text_column=st.sampled_from(["title", "headline", "", "\ud800"]),
    label_column=st.sampled_from(["label", "topic", "guid"]),
    require_label=st.booleans(),
)
def test_check_row_never_raises(rec: dict[str, Any], text_column: str, label_column: str, require_label: bool) -> None:
    """_check_row answers every dict with a row or a (field, reason); no TypeError/KeyError/ValueError escapes."""
    result = _check_row(rec, text_column, label_column, require_label)
    if isinstance(result, tuple):
        field, reason = result
        assert field in {text_column, label_column, "guid", "url", "date"} and isinstance(reason, str) and reason
    else:
        assert set(result) == set(COLUMNS) and text_problem(result["title"]) is None
        assert isinstance(result["label"], int) and NO_LABEL <= result["label"] < NUM_LABELS
        assert all(result[k] is None or (isinstance(result[k], str) and encodable(result[k])) for k in ("guid", "url", "date"))


# ---------------------------------------------------------------------------------------------
# 2. Request validation


def _valid_inputs(value: Any) -> bool:
    def ok(text: Any) -> bool:
        return isinstance(text, str) and encodable(text) and not blank(text)

    return ok(value) or (isinstance(value, list) and bool(value) and all(ok(t) for t in value))


INPUTS = st.one_of(TEXTS, GOOD_TITLES, st.lists(st.one_of(TEXTS, GOOD_TITLES), max_size=4), JSON_VALUES)
BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {"inputs": INPUTS},
        optional={
            "parameters": st.one_of(
                st.fixed_dictionaries({}, optional={"top_k": SCALARS, "function_to_apply": st.sampled_from(["softmax", "none", "x"])}),
                JSON_VALUES,
            ),
            "raw_scores": SCALARS,
            "truncate": SCALARS,
            "extra": JSON_VALUES,
        },
    ),
)


@pytest.fixture(scope="module")
def predict_request() -> type:
    from ynat_ray.serving.schema import PredictRequest

    return PredictRequest


@PROPS
@given(body=BODIES)
@example(body={"inputs": "\u200b"})
@example(body={"inputs": ["ok", "\ufeff"]})
@example(body={"inputs": "\ud83d\ude00"})
def test_predict_request_accepts_exactly_valid_texts(predict_request: type, body: Any) -> None:
    """model_validate either yields non-empty valid-Unicode text(s) or raises pydantic.ValidationError."""
    try:
        req = predict_request.model_validate(body)
    except pydantic.ValidationError as err:
        if isinstance(body, dict) and set(body) == {"inputs"}:
            assert not _valid_inputs(body["inputs"]), err  # a body of valid texts alone is never refused
        str(err)
        return
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    assert isinstance(req.inputs, (str, list)) and texts
    assert all(isinstance(t, str) and text_problem(t) is None for t in texts)
    assert _valid_inputs(body["inputs"]) and req.inputs == body["inputs"]


@PROPS
@given(
    before=st.text(max_size=5),
    surrogate=st.integers(min_value=0xD800, max_value=0xDFFF).map(chr),
    after=st.text(max_size=5),
    as_list=st.booleans(),
)
def test_lone_surrogate_escape_in_json_body_is_rejected(
    predict_request: type, before: str, surrogate: str, after: str, as_list: bool
) -> None:
    """A "\\udXXX" escape that json.loads (what FastAPI uses) turns into a lone surrogate is a 422 naming it."""
    text = before + surrogate + after  # `before`/`after` hold no surrogates, so no pair can form
    raw = json.dumps({"inputs": ["fine", text] if as_list else text}).encode("ascii")  # ensure_ascii: "\\udxxx" escapes
    body = json.loads(raw)  # what Starlette's Request.json() does with the bytes
    assert not encodable(body["inputs"][1] if as_list else body["inputs"])
    with pytest.raises(pydantic.ValidationError) as info:
        predict_request.model_validate(body)
    assert "lone surrogate" in str(info.value) and ("item 1" in str(info.value)) == as_list


def test_surrogate_pair_escape_in_json_body_is_one_valid_character(predict_request: type) -> None:
    """The counterpart: a high+low escape pair is a real character (U+1F600) and must be accepted."""
    body = json.loads(b'{"inputs": ["\\ud83d\\ude00 \\uc81c\\ubaa9"]}')
    assert predict_request.model_validate(body).inputs == ["\U0001f600 \uc81c\ubaa9"]


# ---------------------------------------------------------------------------------------------
# 3. Readers: random bytes, random text, and well-formed files with arbitrary cells

SUFFIXES = [".json", ".jsonl", ".csv", ".parquet"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module: hypothesis runs many examples per test, and function fixtures don't reset between them."""
    return tmp_path_factory.mktemp("props")


def read_bytes(workdir: Path, suffix: str, raw: bytes) -> pd.DataFrame | None:
    """Write `raw` as data<suffix>, read it; a DataValidationError must name the file. None when it raised."""
    path = str(workdir / f"data{suffix}")
    with open(path, "wb") as fh:
        fh.write(raw)
    try:
        df = read_records(path)
    except DataValidationError as err:
        check_error(err, path)
        assert err.field in PSEUDO_FIELDS, err
        return None
    assert isinstance(df, pd.DataFrame)
    return df


def valid_file(records_: list[dict[str, Any]], suffix: str) -> bytes:
    """A well-formed file of string cells (CSV's and Parquet's own text type)."""
    if suffix == ".csv":
        out = io.StringIO()
        # "\r\n" lines: Python's writer quotes a cell holding "\r" only when "\r" is part of the line terminator.
        writer = csv.DictWriter(out, fieldnames=["guid", "title", "label"], lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(records_)
        return out.getvalue().encode("utf-8")
    if suffix == ".parquet":
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records_, schema=pa.schema([(k, pa.string()) for k in ("guid", "title", "label")])), out)
        return out.getvalue()
    if suffix == ".json":
        return json.dumps(records_, ensure_ascii=False).encode("utf-8")
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records_).encode("utf-8")


CELL_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
STRING_ROWS = st.lists(
    st.fixed_dictionaries({"guid": CELL_TEXT, "title": CELL_TEXT, "label": CELL_TEXT | st.sampled_from(LABEL_TEXTS[:12])}), max_size=6
)


@PROPS
@given(suffix=st.sampled_from(SUFFIXES), raw=st.binary(max_size=200))
@example(suffix=".csv", raw=b"")
@example(suffix=".parquet", raw=b"PAR1\x00PAR1")
@example(suffix=".csv", raw=b"title,label\nx,1,extra\n")
@example(suffix=".jsonl", raw=b"[" * 5000)
@example(suffix=".json", raw=b"1" * 5000)
@example(suffix=".csv", raw=b"\xef\xbb\xbftitle\n\xff\n")
@example(suffix=".csv", raw="title,label\n제목\x00,1\n".encode())
@example(suffix=".json", raw=b'"not an array"')
def test_any_bytes_give_a_frame_or_a_named_error(workdir: Path, suffix: str, raw: bytes) -> None:
    """Arbitrary bytes under every suffix: a DataFrame or DataValidationError(file, row, pseudo-field)."""
    read_bytes(workdir, suffix, raw)


JSON_TOKENS = list('{}[]",:0123456789-.eE ntrufalsNIy\\\n\r\t') + ["\\ud800", "\u2028", "제"]
JSONISH = st.lists(st.sampled_from(JSON_TOKENS), max_size=60).map("".join)
CSVISH = st.lists(st.sampled_from(list(',"\n\r ab1\t;') + ["title", "label", "\u2028", "\x85"]), max_size=60).map("".join)


@PROPS
@given(suffix=st.sampled_from(SUFFIXES), text=st.one_of(st.text(max_size=80), JSONISH, CSVISH))
def test_any_utf8_text_gives_a_frame_or_a_named_error(workdir: Path, suffix: str, text: str) -> None:
    """Valid UTF-8 of any shape (weighted towards JSON and CSV syntax) gets past decoding into every parser."""
    df = read_bytes(workdir, suffix, text.encode("utf-8"))
    if df is not None and suffix in (".json", ".jsonl") and len(df):
        # What came back can be validated without any other exception type.
        try:
            validate_frame(df, "x", on_bad_rows="skip")
        except DataValidationError as err:
            assert err.field == "title"


@PROPS
@given(suffix=st.sampled_from(SUFFIXES), rows=STRING_ROWS, cut=st.integers(min_value=0, max_value=400), flip=st.integers(0, 255))
def test_damaged_files_give_a_frame_or_a_named_error(workdir: Path, suffix: str, rows: list[dict[str, Any]], cut: int, flip: int) -> None:
    """A valid file truncated, or with one byte changed, still gives a frame or a named error (Parquet included)."""
    raw = valid_file(rows, suffix)
    pos = cut % (len(raw) + 1)
    read_bytes(workdir, suffix, raw[:pos])
    if pos < len(raw):
        read_bytes(workdir, suffix, raw[:pos] + bytes([raw[pos] ^ (flip or 1)]) + raw[pos + 1 :])


@PROPS
@given(suffix=st.sampled_from(SUFFIXES), rows=STRING_ROWS, on_bad_rows=st.sampled_from(["skip", "error"]))
def test_well_formed_files_lose_no_record(workdir: Path, suffix: str, rows: list[dict[str, Any]], on_bad_rows: str) -> None:
    """Every record of a well-formed file comes back cell for cell, and validation accounts for each one."""
    df = read_bytes(workdir, suffix, valid_file(rows, suffix))
    assert df is not None
    assert len(df) == len(rows)
    if rows:
        assert df[["guid", "title", "label"]].to_dict("records") == rows
    path = str(workdir / f"data{suffix}")
    try:
        clean, bad = validate_frame(df, path, on_bad_rows=on_bad_rows)
    except DataValidationError as err:
        check_error(err, path)
        assert on_bad_rows == "error" and first_bad_field(rows[err.row - 1], True) == err.field
        return
    assert len(clean) + len(bad) == len(rows)
    assert [b.row for b in bad] == [i for i, r in enumerate(rows, 1) if first_bad_field(r, True)]


JSON_RECORDS = st.lists(st.dictionaries(st.text(ANY_CHAR, max_size=4), JSON_VALUES, max_size=4), max_size=5)


@PROPS
@given(suffix=st.sampled_from([".json", ".jsonl"]), recs=JSON_RECORDS, ascii_only=st.booleans(), blank_lines=st.booleans())
@example(suffix=".jsonl", recs=[{"title": "a\u2028b\x85c"}], ascii_only=False, blank_lines=False)
@example(suffix=".jsonl", recs=[{"\ud800": "\udfff"}], ascii_only=True, blank_lines=False)
def test_json_records_round_trip_exactly(
    workdir: Path, suffix: str, recs: list[dict[str, Any]], ascii_only: bool, blank_lines: bool
) -> None:
    """Any JSON objects written by json.dumps come back as the same values, one row each (U+2028, surrogates, big ints)."""
    dump: Callable[[Any], str] = lambda v: json.dumps(v, ensure_ascii=ascii_only)  # noqa: E731
    text = dump(recs) if suffix == ".json" else ("\n\n" if blank_lines else "\n").join(dump(r) for r in recs)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # ensure_ascii=False keeps lone surrogates as-is: not writable as UTF-8
        raw = (json.dumps(recs) if suffix == ".json" else "\n".join(json.dumps(r) for r in recs)).encode("utf-8")
    df = read_bytes(workdir, suffix, raw)
    assert df is not None and len(df) == len(recs)
    for i, rec in enumerate(recs):
        for key in df.columns:
            cell = df.iloc[i][key]
            assert _same(cell, rec[key]) if key in rec else is_missing(cell)


PARQUET_COLUMNS = {
    "int": (st.integers(-(2**63), 2**63 - 1) | st.none(), pa.int64()),
    "small": (st.integers(-1, 8) | st.none(), pa.int8()),
    "float": (st.floats(), pa.float64()),
    "text": (st.text(max_size=6) | st.none(), pa.string()),
    "bool": (st.booleans() | st.none(), pa.bool_()),
    "bytes": (st.binary(max_size=4) | st.none(), pa.binary()),
    "list": (st.lists(st.text(max_size=3), max_size=3) | st.none(), pa.list_(pa.string())),
    "struct": (st.fixed_dictionaries({"a": st.integers(0, 9)}) | st.none(), pa.struct([("a", pa.int64())])),
}


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    """A table whose title/label/guid/url columns each get one arbitrary Arrow type (and arbitrary values)."""
    n = draw(st.integers(0, 5))
    columns = {}
    for name in ("title", "label", "guid", "url"):
        if name == "title" or draw(st.integers(0, 4)):  # title always: a file without it is one whole-file error
            values, typ = PARQUET_COLUMNS[draw(st.sampled_from(sorted(PARQUET_COLUMNS)))]
            columns[name] = pa.array(draw(st.lists(values, min_size=n, max_size=n)), typ)
    return pa.table(columns)


@PROPS
@given(table=parquet_tables(), require_label=st.booleans())
def test_parquet_of_any_column_types_validates_every_row(workdir: Path, table: pa.Table, require_label: bool) -> None:
    """Parquet cells of any Arrow type (ints with nulls, bytes, lists, structs) become clean or bad rows, never a crash."""
    out = io.BytesIO()
    pq.write_table(table, out)
    df = read_bytes(workdir, ".parquet", out.getvalue())
    assert df is not None and len(df) == table.num_rows
    clean, bad = validate_frame(df, "t.parquet", require_label=require_label, on_bad_rows="skip")
    assert len(clean) + len(bad) == table.num_rows
    for row in clean.to_dict("records"):
        assert text_problem(row["title"]) is None and NO_LABEL <= row["label"] < NUM_LABELS
    for b in bad:
        assert b.field in ("title", "label", "guid", "url") and b.reason


@pytest.mark.parametrize(
    ("suffix", "raw", "row", "field", "reason"),
    [
        (".jsonl", b'{"title": "a", "label": 1}\n\xff\n', 2, "<encoding>", "not valid UTF-8 at byte 27"),
        (".csv", b"\xef\xbb\xbftitle,label\nx,1\n\xc3\n", 3, "<encoding>", "not valid UTF-8 at byte 19"),
        (".csv", b"t\x00i\x00t\x00l\x00e\x00", 1, "<encoding>", "NUL byte at byte 1"),
        (".csv", b"title,label\nx,1,extra\n", 2, "<csv>", "more fields than the header"),
        (".csv", b"title,label\nx,1\n\ny,2,extra\n", 4, "<csv>", "Expected 2 fields in line 4, saw 3"),
        (".csv", b'title,label\nx,1\n"y,2\n', 3, "<csv>", "EOF inside string"),
        (".parquet", b"PAR1 not really PAR1", 0, "<parquet>", "not a readable Parquet file"),
        (".jsonl", b'{"title": "a"}\n\n[1]\n', 3, "<row>", "expected a JSON object, got list"),
        (".json", b'[{"title": "a"},\n 5]', 2, "<row>", "expected a JSON object, got int"),
        (".json", b'[{"title": "a"},\n {]', 2, "<json>", "invalid JSON"),
        (".json", b"[" * 100_000, 1, "<json>", "nested too deeply"),
        (".jsonl", b'{"label": ' + b"1" * 5000 + b"}", 1, "<json>", "Exceeds the limit (4300 digits)"),
    ],
)
def test_whole_file_problems_name_the_line(workdir: Path, suffix: str, raw: bytes, row: int, field: str, reason: str) -> None:
    """The minimal failing examples hypothesis found, pinned with the row and pseudo-field each reports."""
    path = str(workdir / f"pinned{suffix}")
    Path(path).write_bytes(raw)
    with pytest.raises(DataValidationError) as info:
        read_records(path)
    check_error(info.value, path)
    assert (info.value.row, info.value.field) == (row, field) and reason in info.value.reason, str(info.value)


@pytest.mark.parametrize(
    ("suffix", "raw"), [*((suffix, b"") for suffix in SUFFIXES), (".json", b"\n \n"), (".jsonl", b"\n\r\n"), (".csv", b" \n\n")]
)
def test_empty_files_are_zero_records(workdir: Path, suffix: str, raw: bytes) -> None:
    """An empty file is 0 records in every format (Parquet included: 0 bytes, not a Parquet error)."""
    df = read_bytes(workdir, suffix, raw)
    assert df is not None and len(df) == 0
    clean, bad = validate_frame(df, "e", on_bad_rows="error")
    assert len(clean) == 0 and not bad and list(clean.columns) == list(COLUMNS)


def test_quarantine_keeps_a_row_with_a_lone_surrogate(workdir: Path) -> None:
    """'Loses nothing' includes the quarantine: a row skipped for a lone surrogate must be written, escape intact."""
    from ynat_ray.data.quarantine import write_quarantine

    path = workdir / "surrogate.jsonl"
    path.write_text('{"title": "\\ud800", "label": 1}\n', encoding="utf-8")
    _, bad = validate_frame(read_records(str(path)), str(path), on_bad_rows="skip")
    out = workdir / "quarantine.jsonl"
    assert write_quarantine(bad, str(out)) == 1
    assert json.loads(out.read_text(encoding="utf-8"))["record"]["title"] == "\ud800"
