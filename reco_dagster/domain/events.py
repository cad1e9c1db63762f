"""The landing-zone event contract: reading files and sorting rows into good and quarantined."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")
EVENT_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
SUPPORTED_SUFFIXES = (".parquet", ".csv", ".jsonl")
MAX_ID_LENGTH = 256


class UnreadableFileError(ValueError):
    """A landing file that yields no rows at all; it is quarantined whole."""


@dataclass(frozen=True)
class ValidationRules:
    min_rating: float = 0.0
    max_rating: float = 5.0
    # Clocks disagree a little; a timestamp further ahead than this is a unit or parsing bug.
    max_future_skew_s: float = 86_400.0


@dataclass(frozen=True)
class ValidatedEvents:
    events: pd.DataFrame
    """user_id, item_id (str), rating (float, NaN = implicit event), timestamp (int64 Unix s)."""
    rejected: pd.DataFrame
    """The offending rows as they were read, plus `row_number`, `reason`, `offending_value`."""


def is_event_file(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in SUPPORTED_SUFFIXES


def read_table_file(name: str, data: bytes, required: tuple[str, ...]) -> pd.DataFrame:
    """Parse one landing file; raise UnreadableFileError when nothing in it can be used."""
    if not data.strip():
        raise UnreadableFileError("file is empty")
    suffix = PurePosixPath(name).suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(io.BytesIO(data))
        elif suffix == ".csv":
            # Everything as text: ids like "007" must keep their zeros, and bad cells must
            # reach validation instead of failing the whole file.
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
        elif suffix == ".jsonl":
            frame = pd.read_json(io.BytesIO(data), lines=True, dtype=False, convert_dates=False)
        else:
            raise UnreadableFileError(f"unsupported file type {suffix!r}")
    except UnreadableFileError:
        raise
    except Exception as error:
        raise UnreadableFileError(f"cannot parse as {suffix[1:]}: {error}") from error
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise UnreadableFileError(
            f"missing required column(s): {', '.join(missing)} "
            f"(found: {', '.join(map(str, frame.columns))})"
        )
    if frame.empty:
        raise UnreadableFileError("file has a header but no rows")
    return frame


def read_event_file(name: str, data: bytes) -> pd.DataFrame:
    return read_table_file(name, data, REQUIRED_COLUMNS)


def validate_events(
    raw: pd.DataFrame, rules: ValidationRules, now_s: float | None = None
) -> ValidatedEvents:
    """Split a parsed file into clean events and rejected rows, one reason per rejected row."""
    now_s = time.time() if now_s is None else now_s
    user_id = _as_id_strings(raw["user_id"])
    item_id = _as_id_strings(raw["item_id"])
    rating = _as_ratings(raw["rating"]) if "rating" in raw.columns else _no_ratings(len(raw))
    timestamp = _as_unix_seconds(raw["timestamp"])

    reason = pd.Series(pd.NA, index=raw.index, dtype="string")
    value = pd.Series(pd.NA, index=raw.index, dtype="string")

    def reject(mask: pd.Series, why: str, offending: pd.Series | None = None) -> None:
        fresh = mask & reason.isna()
        reason[fresh] = why
        if offending is not None:
            value[fresh] = offending[fresh].astype("string")

    for column, ids in (("user_id", user_id), ("item_id", item_id)):
        reject(ids == "", f"{column} is empty or null")
        reject(ids.str.len() > MAX_ID_LENGTH, f"{column} is longer than {MAX_ID_LENGTH} characters")
    if "rating" in raw.columns:
        given = raw["rating"].notna() & (raw["rating"].astype("string").str.strip() != "")
        reject(given & rating.isna(), "rating is not a finite number", raw["rating"])
        outside = rating.notna() & ~rating.between(rules.min_rating, rules.max_rating)
        reject(outside, f"rating is outside [{rules.min_rating:g}, {rules.max_rating:g}]", rating)
    reject(timestamp.isna(), "timestamp is neither Unix seconds nor ISO-8601", raw["timestamp"])
    reject(timestamp < 0, "timestamp is before 1970", raw["timestamp"])
    reject(
        timestamp > now_s + rules.max_future_skew_s,
        "timestamp is in the future (milliseconds instead of seconds?)",
        raw["timestamp"],
    )

    events = pd.DataFrame(
        {"user_id": user_id, "item_id": item_id, "rating": rating, "timestamp": timestamp}
    )
    repeated = events[reason.isna()].duplicated(keep="first")
    reject(
        repeated.reindex(raw.index, fill_value=False),
        "exact duplicate of an earlier row in the same file",
    )
    good = reason.isna()
    rejected = (
        raw.loc[~good]
        .astype("string")
        .assign(
            row_number=np.flatnonzero(~good.to_numpy()) + 1,
            reason=reason[~good],
            offending_value=value[~good],
        )
    )
    clean = events.loc[good].astype({"timestamp": "int64"}).reset_index(drop=True)
    return ValidatedEvents(events=clean, rejected=rejected.reset_index(drop=True))


def _as_id_strings(values: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(values):
        # Parquet writers turn integer columns with nulls into floats; 196.0 is user "196".
        whole = values.notna() & (values % 1 == 0)
        text = values.astype("string")
        text[whole] = values[whole].astype("int64").astype("string")
    else:
        text = values.astype("string")
    return text.str.strip().fillna("")


def _as_ratings(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    return numbers.where(np.isfinite(numbers))


def _no_ratings(length: int) -> pd.Series:
    return pd.Series(np.full(length, np.nan))


def _as_unix_seconds(values: pd.Series) -> pd.Series:
    """Unix seconds (numbers or numeric text) or ISO-8601 text; NaN where neither parses."""
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    textual = numbers.isna() & values.notna()
    if textual.any():
        parsed = pd.to_datetime(
            values[textual].astype("string"), utc=True, format="ISO8601", errors="coerce"
        )
        seconds = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
        numbers[textual] = seconds.astype("float64")
    return numbers.where(np.isfinite(numbers)).floordiv(1)
