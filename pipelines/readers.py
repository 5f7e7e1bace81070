"""One entry point that reads any supported log format into the same typed frame.

Every reader returns the columns ``line`` (1-based position in the file, for error messages), ``user_id``,
``item_id``, and ``timestamp`` (Int64) / ``rating`` (Float64) when the spec names them. Text formats are read
with every column as a string and parsed here, so the schema is declared rather than guessed from the first
rows, and a bad value is reported with its file and line instead of as a parser panic.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipelines.columns import FORMATS, ITEM_ID, LINE, RATING, TIMESTAMP, USER_ID
from recsys.errors import InputError, first_line

DEFAULT_SEPARATORS = {"csv": ",", "tsv": "\t"}
_ID_COLUMNS = (USER_ID, ITEM_ID)
_TEXT = "_text"  # a raw line of a text file
_EXPECTED = {
    "csv": "a CSV text file",
    "tsv": "a TSV text file",
    "parquet": "a Parquet file",
    "jsonl": "a JSON Lines text file (one JSON object per line)",
    "lightgcn": "a LightGCN text file ('user item item ...' per line)",
}
_SNIFF_BYTES = 8192
_PARQUET_MAGIC = b"PAR1"
# Files often handed to a text format by mistake: what they are, and what to do.
_SIGNATURES = {
    _PARQUET_MAGIC: "not a text file: it is a Parquet file (use --format parquet)",
    b"\x1f\x8b": "not a text file: it is gzip-compressed (decompress it first)",
    b"PK\x03\x04": "not a text file: it is a zip archive, e.g. an .xlsx workbook (export the sheet as CSV)",
    b"\xff\xfe": "UTF-16 text, not UTF-8 (save it as UTF-8)",
    b"\xfe\xff": "UTF-16 text, not UTF-8 (save it as UTF-8)",
}


@dataclass(frozen=True)
class LogSpec:
    """How to read one log file.

    Args:
        format: One of ``csv``, ``tsv``, ``parquet``, ``jsonl``, ``lightgcn``.
        user_col: Column holding the raw user id.
        item_col: Column holding the raw item id.
        time_col: Optional column with the event time: epoch numbers or date-time strings.
        rating_col: Optional column with a numeric rating.
        separator: Field separator for csv/tsv; may be several characters (MovieLens ``::``).
        has_header: Whether the first line of a csv/tsv holds the column names.
        names: Column names for a header-less csv/tsv; ``column_1..n`` when not given.
    """

    format: str
    user_col: str = USER_ID
    item_col: str = ITEM_ID
    time_col: str | None = None
    rating_col: str | None = None
    separator: str | None = None
    has_header: bool = True
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            msg = f"unknown format {self.format!r}; expected one of {', '.join(FORMATS)}"
            raise InputError(msg)
        if self.format == "lightgcn" and (self.time_col or self.rating_col):
            msg = "the lightgcn format has no time or rating column; drop --time-col/--rating-col"
            raise InputError(msg)

    @property
    def field_separator(self) -> str:
        """The separator actually used for csv/tsv."""
        return self.separator or DEFAULT_SEPARATORS.get(self.format, ",")


def read_log(path: Path, spec: LogSpec) -> pl.DataFrame:
    """Read and type one log file.

    Raises:
        InputError: the path is missing, a directory, empty, or not a file of ``spec.format`` (binary data
            for a text format); a named column is absent; a line is malformed or not UTF-8; or a timestamp
            or rating cannot be parsed. The message names the file and, where it can, the line.
    """
    path = Path(path)
    _check_file(path, spec)
    try:
        if spec.format == "lightgcn":
            return _read_lightgcn(path)
        return _parse_table(path, spec, _scan_table(path, spec))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(_locate_parse_error(path, spec, exc)) from exc


def _check_file(path: Path, spec: LogSpec) -> None:
    """Fail in one line on a path that cannot hold the log, before a parser turns it into a stranger error.

    Only the first bytes are read: a NUL byte there (or a known binary signature) means a text format got a
    binary file, whose bytes would otherwise come back as "columns found".
    """
    expected = f"--format {spec.format} expects {_EXPECTED[spec.format]}"
    if path.is_dir():
        msg = f"{path}: is a directory, not a file; {expected}"
        raise InputError(msg)
    if not path.exists():
        msg = f"{path}: no such file"
        raise InputError(msg)
    if not path.is_file():
        msg = f"{path}: not a regular file; {expected}"
        raise InputError(msg)
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        msg = f"{path}: cannot read the file: {first_line(exc)}"
        raise InputError(msg) from exc
    if not head:
        msg = f"{path}: the file is empty"
        raise InputError(msg)
    nul = head.find(b"\0")
    if spec.format == "parquet":
        if not head.startswith(_PARQUET_MAGIC):
            hint = "" if nul >= 0 else "; it looks like text: use --format csv, tsv, jsonl or lightgcn"
            msg = f"{path}: not a Parquet file (it does not start with the magic bytes PAR1){hint}"
            raise InputError(msg)
        return
    known = next((what for magic, what in _SIGNATURES.items() if head.startswith(magic)), None)
    if known is not None or nul >= 0:
        what = known or f"not a text file: it holds binary data (a NUL byte at offset {nul})"
        msg = f"{path}: {what}; {expected}"
        raise InputError(msg)


def _scan_table(path: Path, spec: LogSpec) -> pl.LazyFrame:
    """Lazy frame with ``line`` plus the spec's columns renamed to the canonical names, untyped."""
    if spec.format == "parquet":
        lf = pl.scan_parquet(path, row_index_name=LINE, row_index_offset=1)
    elif spec.format == "jsonl":
        lf = pl.scan_ndjson(path, row_index_name=LINE, row_index_offset=1, infer_schema_length=1000)
    elif len(spec.field_separator) == 1:
        lf = pl.scan_csv(
            path,
            separator=spec.field_separator,
            has_header=spec.has_header,
            new_columns=list(spec.names) if spec.names else None,
            infer_schema=False,
            row_index_name=LINE,
            row_index_offset=2 if spec.has_header else 1,
        )
    else:
        lf = _scan_multichar_separated(path, spec)
    found = [c for c in lf.collect_schema().names() if c != LINE]
    wanted = {
        USER_ID: spec.user_col,
        ITEM_ID: spec.item_col,
        TIMESTAMP: spec.time_col,
        RATING: spec.rating_col,
    }
    for canonical, col in wanted.items():
        if col is not None and col not in found:
            option = {USER_ID: "--user-col", ITEM_ID: "--item-col", TIMESTAMP: "--time-col"}.get(
                canonical, "--rating-col"
            )
            msg = f"{path}: column {col!r} ({option}) not found; columns found: {', '.join(found)}"
            raise InputError(msg)
    return lf.select(
        pl.col(LINE).cast(pl.Int64), *(pl.col(col).alias(name) for name, col in wanted.items() if col)
    )


def _scan_multichar_separated(path: Path, spec: LogSpec) -> pl.LazyFrame:
    """Split lines on a separator polars' csv reader cannot take (it accepts one byte only)."""
    sep = spec.field_separator
    lines = pl.scan_lines(path, name=_TEXT, row_index_name=LINE, row_index_offset=1).filter(
        pl.col(_TEXT).str.strip_chars() != ""
    )
    if spec.has_header:
        first = lines.head(1).collect()
        names = first[_TEXT][0].split(sep)
        lines = lines.slice(1)
    else:
        width = lines.head(1).collect()[_TEXT].str.split(sep).list.len()[0]
        names = list(spec.names) if spec.names else [f"column_{i + 1}" for i in range(width)]
    fields = pl.col(_TEXT).str.split(sep)
    bad = lines.filter(fields.list.len() != len(names)).head(1).collect()
    if bad.height:
        got = len(bad[_TEXT][0].split(sep))
        msg = f"{path}, line {bad[LINE][0]}: expected {len(names)} fields separated by {sep!r}, found {got}"
        raise InputError(msg)
    return lines.select(pl.col(LINE), *(fields.list.get(i).alias(name) for i, name in enumerate(names)))


def _parse_table(path: Path, spec: LogSpec, raw: pl.LazyFrame) -> pl.DataFrame:
    """Type the raw columns in one pass; flag values that do not parse and report the first one."""
    schema = raw.collect_schema()
    parsed: dict[str, pl.Expr] = {name: _id_expr(name, schema[name]) for name in _ID_COLUMNS}
    expected = {TIMESTAMP: "epoch numbers or date-times like 2024-01-31 12:00:00", RATING: "a number"}
    if TIMESTAMP in schema:
        sample = raw.select(TIMESTAMP).drop_nulls().head(1000).collect()[TIMESTAMP]
        parsed[TIMESTAMP] = _timestamp_expr(schema[TIMESTAMP], sample)
    if RATING in schema:
        parsed[RATING] = pl.col(RATING).cast(pl.Float64, strict=False)
    checked = [c for c in (TIMESTAMP, RATING) if c in schema]
    typed = (
        raw.with_columns(expr.alias(f"_parsed_{c}") for c, expr in parsed.items())
        .with_columns(
            (pl.col(c).is_not_null() & pl.col(f"_parsed_{c}").is_null()).alias(f"_bad_{c}") for c in checked
        )
        .select(LINE, *(pl.col(f"_parsed_{c}").alias(c) for c in parsed), *(f"_bad_{c}" for c in checked))
    )
    # Disabling projection pushdown makes the csv reader parse every field, so a line with too many
    # fields raises instead of being silently truncated.
    opts = (
        pl.QueryOptFlags(projection_pushdown=False) if spec.format in ("csv", "tsv") else pl.QueryOptFlags()
    )
    df = typed.collect(engine="streaming", optimizations=opts)
    for column in checked:
        if df[f"_bad_{column}"].any():
            first = df.filter(pl.col(f"_bad_{column}")).head(1)[LINE][0]
            value = raw.filter(pl.col(LINE) == first).select(column).collect()[column][0]
            source = spec.time_col if column == TIMESTAMP else spec.rating_col
            msg = f"{path}, line {first}: column {source!r} value {value!r} is not {expected[column]}"
            raise InputError(msg)
    return df.drop([f"_bad_{c}" for c in checked])


def parse_time(text: str | None, option: str) -> int | None:
    """Parse a time given on the command line exactly as the time column is parsed (epoch or date-time)."""
    if text is None:
        return None
    sample = pl.Series(TIMESTAMP, [text])
    value = sample.to_frame().select(_timestamp_expr(pl.String(), sample))[TIMESTAMP][0]
    if value is None:
        msg = f"{option} {text!r} is not an epoch number or a date-time like 2024-01-31 12:00:00"
        raise InputError(msg)
    return int(value)


def _id_expr(name: str, dtype: pl.DataType) -> pl.Expr:
    """Integer ids stay Int64; anything else becomes a string id."""
    if dtype.is_integer():
        return pl.col(name).cast(pl.Int64)
    return pl.col(name).cast(pl.String)


def _timestamp_expr(dtype: pl.DataType, sample: pl.Series) -> pl.Expr:
    """Epoch numbers are kept as given (seconds, ms, ...); date-times become epoch seconds.

    For text columns the kind of value (integer, decimal or date-time) is decided once from ``sample``, the
    first non-null values: parsing every row every way would cost several times the whole read. A row of
    another kind then fails to parse and is reported with its line.
    """
    col = pl.col(TIMESTAMP)
    if dtype.is_integer() or dtype.is_float():
        return col.cast(pl.Int64)
    if dtype in (pl.Datetime, pl.Date):
        return col.cast(pl.Datetime).dt.epoch("s")
    text = col.cast(pl.String).str.strip_chars()
    parsers = {
        "int": lambda e: e.cast(pl.Int64, strict=False),
        "float": lambda e: e.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False),
        "datetime": lambda e: e.str.to_datetime(strict=False).dt.epoch("s"),
    }
    values = sample.cast(pl.String).str.strip_chars().to_frame(TIMESTAMP)
    # The kind that parses most of the sample wins; ties go to the simplest kind (dict order).
    parsed = {
        kind: values.select(parse(col.cast(pl.String)).is_not_null().sum()).item()
        for kind, parse in parsers.items()
    }
    best = max(parsers, key=lambda kind: parsed[kind])
    return parsers[best](text)


def _locate_parse_error(path: Path, spec: LogSpec, exc: Exception) -> str:
    """Turn a parser failure into a message with the line and the reason, when one can be found.

    The checks below run only after the fast reader failed, so they may read the file again.
    """
    if spec.format != "parquet" and "utf" in str(exc).lower():
        found = _locate_invalid_utf8(path)
        if found:
            return found
    if spec.format in ("csv", "tsv"):
        with contextlib.suppress(pl.exceptions.PolarsError):  # a second failure: fall through to the first
            found = _locate_extra_fields(path, spec)
            if found:
                return found
    if spec.format == "jsonl":
        found = _locate_jsonl_error(path)
        if found:
            return found
    return f"{path}: cannot parse the file: {first_line(exc)}"


def _locate_invalid_utf8(path: Path) -> str | None:
    """The first line that is not UTF-8, with the offending byte."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return (
                    f"{path}, line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                    f"{err.start + 1}); save the file as UTF-8"
                )
    return None


def _locate_extra_fields(path: Path, spec: LogSpec) -> str | None:
    """The first unquoted line with more separators than the header."""
    if not spec.has_header:
        return None
    sep = spec.field_separator
    lines = pl.scan_lines(path, name=_TEXT, row_index_name=LINE, row_index_offset=1)
    expected = lines.head(1).collect()[_TEXT].str.count_matches(sep, literal=True)[0]
    # Quoted fields may hold the separator; only lines without quotes are judged.
    bad = (
        lines.filter(
            ~pl.col(_TEXT).str.contains('"', literal=True)
            & (pl.col(_TEXT).str.count_matches(sep, literal=True) > expected)
        )
        .head(1)
        .collect()
    )
    if not bad.height:
        return None
    found = bad[_TEXT].str.count_matches(sep, literal=True)[0] + 1
    return f"{path}, line {bad[LINE][0]}: expected {expected + 1} fields, found {found}"


def _locate_jsonl_error(path: Path) -> str | None:
    """The first JSON Lines record polars cannot read, and why: not JSON, not an object, or a type clash.

    polars infers one type per field over the lines. Numbers mix with numbers, arrays with arrays, objects
    with objects (field by field), and anything with strings (the field becomes text); any other mix fails
    with an error such as "failed to determine supertype of struct[2] and struct[2]" that names no line.
    """
    first: dict[tuple[str, ...], dict[str, int]] = {}  # field path -> kind -> first line with that kind
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                return f"{path}, line {number}: invalid JSON ({err.msg} at column {err.colno})"
            if not isinstance(record, dict):
                return f"{path}, line {number}: expected a JSON object, found {_json_kind(record)}"
            for field, kind in _json_fields(record, ()):
                seen = first.setdefault(field, {})
                seen.setdefault(kind, number)
                if len(seen) > 1 and not any(_STRING in first[field[:n]] for n in range(1, len(field) + 1)):
                    other, where = next((k, n) for k, n in seen.items() if k != kind)
                    name = "".join(key if key == "[]" else f".{key}" for key in field).lstrip(".")
                    return (
                        f"{path}, line {number}: field {name!r} is {kind} here but {other} on line {where}; "
                        "a field needs the same JSON type on every line"
                    )
    return None


_STRING = "a string"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return _STRING
    return "an array" if isinstance(value, list) else "an object"


def _json_fields(
    value: dict[str, Any] | list[Any], field: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every non-null value's field path and kind, a container before its contents (``[]``: an element)."""
    items = value.items() if isinstance(value, dict) else (("[]", item) for item in value)
    for key, item in items:
        if item is None:
            continue
        path = (*field, key)
        yield path, _json_kind(item)
        if isinstance(item, dict | list):
            yield from _json_fields(item, path)


def _read_lightgcn(path: Path) -> pl.DataFrame:
    """Read the LightGCN text format: one line per user, ``user item item ...`` separated by spaces."""
    tokens = (
        pl.scan_lines(path, name=_TEXT, row_index_name=LINE, row_index_offset=1)
        .with_columns(pl.col(_TEXT).str.replace_all(r"\s+", " ").str.strip_chars().str.split(" "))
        .filter(pl.col(_TEXT).list.first() != "")
        .select(
            pl.col(LINE).cast(pl.Int64),
            pl.col(_TEXT).list.first().alias(USER_ID),
            pl.col(_TEXT).list.slice(1).alias(ITEM_ID),
        )
        .explode(ITEM_ID)
        .collect(engine="streaming")
    )
    typed = tokens.with_columns(pl.col(USER_ID, ITEM_ID).cast(pl.Int64, strict=False).name.suffix("_int"))
    bad = typed.filter(
        (pl.col(f"{USER_ID}_int").is_null())
        | (pl.col(ITEM_ID).is_not_null() & pl.col(f"{ITEM_ID}_int").is_null())
    ).head(1)
    if bad.height:
        row = bad.row(0, named=True)
        value = row[USER_ID] if row[f"{USER_ID}_int"] is None else row[ITEM_ID]
        msg = f"{path}, line {row[LINE]}: {value!r} is not an integer id (expected 'user item item ...')"
        raise InputError(msg)
    # A line holding only a user id is a user without interactions: nothing to keep.
    return typed.filter(pl.col(ITEM_ID).is_not_null()).select(
        LINE, pl.col(f"{USER_ID}_int").alias(USER_ID), pl.col(f"{ITEM_ID}_int").alias(ITEM_ID)
    )
