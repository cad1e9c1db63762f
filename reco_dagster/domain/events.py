"""The landing-zone event contract: reading files and sorting rows into good and quarantined."""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
EVENT_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "event_type")
RATING_EVENT = "rating"
"""The event type whose strength is its rating: always known, never given a weight."""
DEFAULT_EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
"""What each typed event says about a user's interest, relative to the others (the
deployment's `event_weights` resource sets them)."""


def checked_event_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """`weights` with their type names lower-cased and stripped, as events' types are; a
    ValueError for a weight on `rating`, names that collide or are empty, or weights that are
    not positive and finite."""
    named = {str(kind).strip().lower(): weight for kind, weight in weights.items()}
    if RATING_EVENT in named:
        raise ValueError(f"{RATING_EVENT!r} events count by their rating: give it no weight")
    if len(named) < len(weights) or not all(
        kind and isinstance(weight, int | float) and weight > 0 and math.isfinite(weight)
        for kind, weight in named.items()
    ):
        raise ValueError(
            "event weights need distinct, non-empty type names (compared lower-cased) "
            f"and positive finite weights: {dict(weights)}"
        )
    return named


def event_types_weighed_by(weights: Mapping[str, float]) -> frozenset[str]:
    """The types an event may carry: the weighed ones, and `rating`."""
    return frozenset({*weights, RATING_EVENT})


FORMATS = (".parquet", ".csv", ".jsonl", ".avro")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
MAX_EXPANDED_BYTES = 2 * 1024**3
"""A compressed landing file that expands past this is refused: a few kilobytes of zeros can
expand to gigabytes and take the run's memory with them."""
MAX_ID_LENGTH = 256
# Above 2^53 a float no longer holds every integer: 1e20 is many ids at once.
MAX_FLOAT_ID = 2**53
# Cc: NUL, tabs, newlines, escapes. An id that differs from another only by one of them would
# be merged with it (or split from it) by whatever strips or prints them downstream.
_CONTROL = r"[\x00-\x1f\x7f-\x9f]"
# Lone surrogates: bytes that were not UTF-8 (decoded with surrogateescape).
_NOT_UTF8 = r"[\ud800-\udfff]"
_SECONDS_PER = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_NO_BROKEN_ROWS = pd.DataFrame({"reason": [], "offending_value": []}, dtype="string")
_NO_ORIGIN = pd.DataFrame()


QUARANTINE_COLUMNS = ("row_number", "reason", "offending_value", "source_file")
"""What a quarantined row carries besides the file's own columns."""


class UnreadableFileError(ValueError):
    """A landing file that yields no rows at all; it is quarantined whole."""


@dataclass(frozen=True)
class ValidationRules:
    min_rating: float = 0.0
    max_rating: float = 5.0
    # Clocks disagree a little; a timestamp further ahead than this is a unit or parsing bug.
    max_future_skew_s: float = 86_400.0
    event_types: frozenset[str] = event_types_weighed_by(DEFAULT_EVENT_WEIGHTS)
    """The `event_type` values an event may carry (compared lower-cased and stripped)."""


@dataclass(frozen=True)
class RawRows:
    """A file as read, before validation."""

    frame: pd.DataFrame
    """The rows split into fields, indexed by row number: the line a CSV/JSONL row starts on
    (a CSV header is line 1), the 1-based position of a parquet row, of an event in an Avro
    file (see `capture_rows`)."""
    broken: pd.DataFrame = field(default_factory=lambda: _NO_BROKEN_ROWS)
    """Rows that could not be split into fields (reason, offending_value), by row number."""
    origin: pd.DataFrame = field(default_factory=lambda: _NO_ORIGIN)
    """Where each row, good or broken, came from when its row number alone does not say (an
    Avro record's partition and sequence number), by row number; no columns otherwise.
    Quarantined rows carry these columns."""
    unterminated: bool = False
    """A text file whose last line has no newline: its writer may not be done."""


@dataclass(frozen=True)
class ValidatedEvents:
    events: pd.DataFrame
    """user_id, item_id (str), rating (float, NaN = implicit event), timestamp (int64 Unix s),
    event_type (str, lower-case; NA = untyped, as every event of a file without the
    column)."""
    rejected: pd.DataFrame
    """The offending rows as they were read, plus `row_number`, `reason`, `offending_value`."""


def file_format(name: str) -> tuple[str, str | None] | None:
    """(format, compression) of a landing file by its name (`x.csv.gz`: (".csv", "gzip")), or
    None for a file the contract does not name."""
    suffixes = [suffix.lower() for suffix in PurePosixPath(name).suffixes[-2:]]
    if suffixes and suffixes[-1] in FORMATS:
        return suffixes[-1], None
    if len(suffixes) == 2 and suffixes[0] in FORMATS and suffixes[1] in COMPRESSIONS:
        return suffixes[0], COMPRESSIONS[suffixes[1]]
    return None


def printable(text: str) -> str:
    """`text` with its lone surrogates (bytes that were not UTF-8, read with surrogateescape)
    shown as \\xNN, so that it can be written as UTF-8."""
    return re.sub(_NOT_UTF8, _escape_surrogate, text)


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def is_event_file(name: str) -> bool:
    return file_format(name) is not None


def read_table_file(name: str, data: bytes, required: tuple[str, ...]) -> RawRows:
    """Parse one landing file; raise UnreadableFileError when nothing in it can be used.
    Damage confined to some rows (a line that is not JSON, a CSV row with extra fields)
    leaves those rows in `broken` and the others readable."""
    kind = file_format(name)
    if kind is None:
        raise UnreadableFileError(f"unsupported file type {PurePosixPath(name).suffix!r}")
    suffix, compression = kind
    data = decompressed(data, compression)
    if not data.strip():
        raise UnreadableFileError("file is empty")
    try:
        if suffix == ".parquet":
            rows = RawRows(_parquet_frame(data))
        elif suffix == ".avro":
            # Imported here: fastavro is the pipeline's, and the API imports this module too.
            from reco_dagster.domain.capture import capture_rows

            # Judged record by record, so none of the whole-file checks below apply.
            return capture_rows(name, data, required)
        else:
            text = data.decode("utf-8-sig", errors="surrogateescape")
            rows = _csv_rows(text) if suffix == ".csv" else _jsonl_rows(text)
    except UnreadableFileError:
        raise
    except Exception as error:
        raise UnreadableFileError(f"cannot parse as {suffix[1:]}: {error}") from error
    repeated = sorted({str(c) for c in rows.frame.columns[rows.frame.columns.duplicated()]})
    if repeated:
        raise UnreadableFileError(f"column(s) named twice: {', '.join(repeated)}")
    missing = [column for column in required if column not in rows.frame.columns]
    if missing:
        raise UnreadableFileError(
            f"missing required column(s): {', '.join(missing)} "
            f"(found: {', '.join(map(str, rows.frame.columns))})"
        )
    if rows.frame.empty and rows.broken.empty:
        raise UnreadableFileError("file has a header but no rows")
    return rows


def decompressed(data: bytes, compression: str | None) -> bytes:
    """A landing file's bytes as its format reads them (`file_format`'s compression undone);
    UnreadableFileError when they cannot be, or expand past MAX_EXPANDED_BYTES."""
    if compression is None:
        return data
    try:
        stream = pa.input_stream(pa.py_buffer(data), compression=compression)
        data = stream.read(MAX_EXPANDED_BYTES + 1)
    except Exception as error:
        raise UnreadableFileError(f"cannot decompress ({compression}): {error}") from error
    if len(data) > MAX_EXPANDED_BYTES:
        raise UnreadableFileError(
            f"expands past {MAX_EXPANDED_BYTES:,} bytes ({compression}); "
            "split it into smaller files"
        )
    return data


def read_event_file(name: str, data: bytes) -> RawRows:
    return read_table_file(name, data, REQUIRED_COLUMNS)


def _parquet_frame(data: bytes) -> pd.DataFrame:
    table = pq.read_table(pa.BufferReader(data))
    frame = pd.DataFrame({n: _arrow_column(column) for n, column in enumerate(table.columns)})
    # Set after building: repeated names must stay visible to the caller's check.
    frame.columns = table.column_names
    frame.index = pd.RangeIndex(1, table.num_rows + 1)
    return frame


def _arrow_column(column: pa.ChunkedArray) -> pd.Series:
    """A parquet column as its type says: text as text, integers exact (also with nulls),
    timestamps and dates as Unix seconds; anything else as Python values, judged per row."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        return _arrow_column(column.cast(kind.value_type))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.to_pandas().astype("string")
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        # Bytes that are not UTF-8 become lone surrogates, rejected in the rows holding them.
        text = [
            None if v is None else v.decode("utf-8", "surrogateescape") for v in column.to_pylist()
        ]
        return pd.Series(text, dtype="string")
    if pa.types.is_integer(kind):
        return column.to_pandas(types_mapper=pd.ArrowDtype).astype("string")
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return column.cast(pa.float64()).to_pandas()
    if pa.types.is_date(kind):
        return _arrow_column(column.cast(pa.timestamp("s")))
    if pa.types.is_timestamp(kind):
        # The stored integer is UTC in the column's unit, whatever time zone it names.
        ticks = column.cast(pa.int64())
        seconds = np.floor_divide(ticks.fill_null(0).to_numpy(), _SECONDS_PER[kind.unit])
        return pd.Series(seconds.astype("float64")).where(~ticks.is_null().to_numpy())
    return pd.Series(column.to_pylist(), dtype=object)


@dataclass(frozen=True)
class CsvRecord:
    lines: slice
    """Where it is among the text's lines (as `csv_lines` splits them), its start + 1 being
    its row number."""
    fields: list[str] | None
    error: str | None = None
    """Why the record is no CSV row (then `fields` is None)."""


def csv_lines(text: str) -> list[str]:
    """A CSV text's lines, each with its ending, as the CSV reader counts them."""
    return io.StringIO(text, newline="").readlines()


def csv_records(lines: list[str]) -> Iterator[CsvRecord]:
    """The records of a CSV text's lines (`csv_lines`), each with the lines it spans: a
    quoted field may hold line breaks."""
    reader = csv.reader(iter(lines))
    last_line = 0
    while True:
        start = last_line
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            last_line = reader.line_num
            yield CsvRecord(slice(start, last_line), None, f"not a CSV row: {error}")
            continue
        last_line = reader.line_num
        yield CsvRecord(slice(start, last_line), fields)


def _csv_rows(text: str) -> RawRows:
    header: list[str] | None = None
    numbers, rows, broken = [], [], {}
    for record in csv_records(csv_lines(text)):
        start, fields = record.lines.start + 1, record.fields
        if fields is None:
            broken[start] = (record.error, "")
            continue
        if not fields:
            continue
        if header is None:
            header = fields
        elif len(fields) > len(header):
            broken[start] = (
                f"row has {len(fields)} fields, the header {len(header)}",
                ",".join(fields),
            )
        else:
            numbers.append(start)
            rows.append(fields + [None] * (len(header) - len(fields)))
    if header is None:
        raise UnreadableFileError("file is empty")
    frame = pd.DataFrame(rows, columns=header, index=numbers, dtype="string")
    return RawRows(frame, broken_rows(broken), unterminated=_unterminated(text))


def _jsonl_rows(text: str) -> RawRows:
    numbers, records, broken = [], [], {}
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            broken[number] = (f"line is not JSON: {error}", line)
            continue
        if not isinstance(record, dict):
            broken[number] = ("line is not a JSON object", line)
            continue
        numbers.append(number)
        records.append(record)
    if not records:
        number, (why, _) = next(iter(broken.items()), (0, ("no JSON objects", "")))
        raise UnreadableFileError(f"cannot parse as jsonl: line {number}: {why}")
    # Objects, not inferred dtypes: an integer column with a gap would turn into floats.
    frame = pd.DataFrame(records, index=numbers, dtype=object)
    return RawRows(frame, broken_rows(broken), unterminated=_unterminated(text))


def broken_rows(rows: dict[int, tuple[str, str]]) -> pd.DataFrame:
    if not rows:
        return _NO_BROKEN_ROWS
    frame = pd.DataFrame.from_dict(
        rows, orient="index", columns=["reason", "offending_value"], dtype="string"
    )
    return frame.sort_index()


def _unterminated(text: str) -> bool:
    return not text.endswith(("\n", "\r"))


def validate_events(
    raw: RawRows, rules: ValidationRules, now_s: float | None = None
) -> ValidatedEvents:
    """Split a parsed file into clean events and rejected rows, one reason per rejected row."""
    now_s = time.time() if now_s is None else now_s
    frame = raw.frame
    reason = pd.Series(pd.NA, index=frame.index, dtype="string")
    value = pd.Series(pd.NA, index=frame.index, dtype="string")

    def reject(mask: pd.Series, why: str | pd.Series, offending: pd.Series | None = None) -> None:
        fresh = mask & reason.isna()
        reason[fresh] = why if isinstance(why, str) else why[fresh]
        if offending is not None:
            value[fresh] = offending[fresh].astype("string")

    ids = {}
    for column in ("user_id", "item_id"):
        text, wrong_type = _as_id_strings(frame[column], column)
        reject(wrong_type.notna(), wrong_type, frame[column])
        reject(text.str.contains(_NOT_UTF8), f"{column} is not valid UTF-8", text)
        reject(text.str.contains(_CONTROL), f"{column} holds a control character", text)
        text = text.str.strip()
        reject(text == "", f"{column} is empty or null")
        reject(
            text.str.len() > MAX_ID_LENGTH, f"{column} is longer than {MAX_ID_LENGTH} characters"
        )
        ids[column] = text
    if "rating" in frame.columns:
        given = frame["rating"].notna() & (frame["rating"].astype("string").str.strip() != "")
        rating = _as_numbers(frame["rating"])
        reject(given & rating.isna(), "rating is not a finite number", frame["rating"])
        outside = rating.notna() & ~rating.between(rules.min_rating, rules.max_rating)
        reject(outside, f"rating is outside [{rules.min_rating:g}, {rules.max_rating:g}]", rating)
    else:
        rating = pd.Series(np.nan, index=frame.index)
    event_type = _event_types(frame, rating, rules, reject)
    timestamp = _as_unix_seconds(frame["timestamp"])
    reject(timestamp.isna(), "timestamp is neither Unix seconds nor ISO-8601", frame["timestamp"])
    reject(timestamp < 0, "timestamp is before 1970", frame["timestamp"])
    reject(
        timestamp > now_s + rules.max_future_skew_s,
        "timestamp is in the future (milliseconds instead of seconds?)",
        frame["timestamp"],
    )

    events = pd.DataFrame(
        {**ids, "rating": rating, "timestamp": timestamp, "event_type": event_type}
    )
    repeated = events[reason.isna()].duplicated(keep="first")
    reject(
        repeated.reindex(frame.index, fill_value=False),
        "exact duplicate of an earlier row in the same file",
    )
    good = reason.isna()
    notes = pd.concat(
        [pd.DataFrame({"reason": reason[~good], "offending_value": value[~good]}), raw.broken]
    ).sort_index()
    # A file's own column named like a quarantine or origin column is kept under another name.
    taken = {*QUARANTINE_COLUMNS, *raw.origin.columns}
    as_read = frame.loc[~good].astype("string").reindex(notes.index)
    as_read.columns = [f"{c} (in file)" if c in taken else c for c in as_read.columns]
    notes.insert(0, "row_number", notes.index)
    origin = raw.origin.reindex(notes.index)
    rejected = pd.concat([as_read, origin, notes], axis=1).reset_index(drop=True)
    clean = events.loc[good].astype({"timestamp": "int64"}).reset_index(drop=True)
    return ValidatedEvents(events=clean, rejected=rejected)


def _event_types(
    frame: pd.DataFrame,
    rating: pd.Series,
    rules: ValidationRules,
    reject: Callable[[pd.Series, str, pd.Series], None],
) -> pd.Series:
    """Each row's event type, lower-cased and stripped (sources differ in case and padding,
    not in meaning); NA where the file has no such column or the row leaves it blank: an
    untyped event, weighed as every event was before types existed."""
    if "event_type" not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    given = frame["event_type"]
    is_text = given.map(lambda value: isinstance(value, str) or _is_null(value)).astype(bool)
    reject(~is_text, "event_type is not text", given)
    kind = given.where(is_text).astype("string").str.strip().str.lower()
    kind = kind.mask(kind == "")
    known = ", ".join(sorted(rules.event_types))
    unknown = kind.notna() & ~kind.isin(rules.event_types)
    reject(unknown, f"unknown event type (configured: {known})", given)
    rated_type = kind.eq(RATING_EVENT).fillna(False).astype(bool)
    reject(rated_type & rating.isna(), "a rating event has no rating", given)
    return kind


def validated_ids(values: pd.Series) -> pd.Series:
    """Ids as validation keeps them, stripped; "" where a row has none it would accept."""
    text, wrong_type = _as_id_strings(values, "id")
    return text.mask(wrong_type.notna(), "").str.strip()


def _as_id_strings(values: pd.Series, column: str) -> tuple[pd.Series, pd.Series]:
    """Ids as text ("" for null), and why a value is no id (NA where it is one): ids are text
    or integers, and floats that hold an integer exactly (parquet writers turn integer columns
    with nulls into floats: 196.0 is user "196"); nothing else is coerced."""
    if pd.api.types.is_string_dtype(values) and not pd.api.types.is_object_dtype(values):
        return values.fillna(""), pd.Series(pd.NA, index=values.index, dtype="string")
    pairs = values.astype(object).map(lambda value: _id_text(value, column))
    text = pd.Series([pair[0] for pair in pairs], index=values.index, dtype="string")
    why = pd.Series([pair[1] for pair in pairs], index=values.index, dtype="string")
    return text, why


def _is_null(value: object) -> bool:
    return (
        value is None
        or value is pd.NA
        or (isinstance(value, float | np.floating) and np.isnan(value))
    )


def _id_text(value: object, column: str) -> tuple[str, str | None]:
    if _is_null(value):
        return "", None
    if isinstance(value, str):
        return value, None
    if _is_bool(value):
        return "", f"{column} is a boolean"
    if isinstance(value, numbers.Integral):
        return str(int(value)), None
    if isinstance(value, numbers.Real):
        if float(value).is_integer() and abs(value) < MAX_FLOAT_ID:
            return str(int(value)), None
        return "", f"{column} is a float that is not an integer below 2^53"
    return "", f"{column} is a {type(value).__name__}, not text or an integer"


def _is_bool(value: object) -> bool:
    return isinstance(value, bool | np.bool_)


def _as_numbers(values: pd.Series) -> pd.Series:
    """Finite numbers (or numeric text); NaN elsewhere, also for booleans and containers."""
    if pd.api.types.is_object_dtype(values):
        values = values.map(
            lambda v: v if isinstance(v, str | numbers.Real) and not _is_bool(v) else None
        )
    numbers_ = pd.to_numeric(values.astype(object), errors="coerce").astype("float64")
    return numbers_.where(np.isfinite(numbers_))


def _as_unix_seconds(values: pd.Series) -> pd.Series:
    """Unix seconds (numbers or numeric text) or ISO-8601 text; NaN where neither parses."""
    seconds = _as_numbers(values)
    textual = seconds.isna() & values.map(lambda v: isinstance(v, str))
    if textual.any():
        parsed = pd.to_datetime(
            values[textual].astype("string"), utc=True, format="ISO8601", errors="coerce"
        )
        seconds[textual] = ((parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype(
            "float64"
        )
    return seconds.where(np.isfinite(seconds)).floordiv(1)
