"""Azure Event Hubs Capture files: the Avro files Capture writes to Blob Storage, one record
(`EventData`) per Event Hubs event, whose `Body` holds the landing contract's events as JSON."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime

import fastavro
import pandas as pd

from reco_dagster.domain.events import RawRows, UnreadableFileError, broken_rows

CAPTURE_FIELDS = ("SequenceNumber", "EnqueuedTimeUtc", "Body")
"""The fields of Capture's `EventData` record that events are read from."""
ORIGIN_COLUMNS = ("partition", "sequence_number")
# Capture's default blob name: {namespace}/{eventhub}/{partition}/{yyyy}/{mm}/{dd}/{hh}/{mm}/{ss}.
_CAPTURE_NAME = re.compile(r"(?:^|/)([^/]+)/\d{4}(?:/\d\d){5}\.avro$", re.IGNORECASE)
# .NET's invariant DateTime text, in which Capture writes EnqueuedTimeUtc: 6/12/2020 6:32:34 PM.
_DOTNET_TIME = "%m/%d/%Y %I:%M:%S %p"


class UnreadableBodyError(ValueError):
    """A record's body that holds no events: the record is one quarantined row."""


def capture_rows(name: str, data: bytes, required: tuple[str, ...]) -> RawRows:
    """The events of a Capture file, numbered in the file's order (each event of an array body
    a row of its own, a body that cannot be read one row), with the partition (`partition_of`)
    and sequence number of the record each row came from. A body without a `timestamp` takes
    its record's EnqueuedTimeUtc, the time Event Hubs accepted it. A file with no records is a
    capture window without events: no rows, no damage."""
    reader = fastavro.reader(io.BytesIO(data))
    missing = [field for field in CAPTURE_FIELDS if field not in _field_names(reader.writer_schema)]
    if missing:
        raise UnreadableFileError(
            f"not an Event Hubs Capture file: its records have no {', '.join(missing)}"
        )
    # Read whole before any row is judged: a file cut short is unreadable, not a few rows.
    records = list(reader)
    partition = partition_of(name)
    numbers, events, broken, origin = [], [], {}, {}
    for record in records:
        where = (partition, record["SequenceNumber"])
        try:
            events_of_body = body_events(record["Body"])
        except UnreadableBodyError as error:
            number = len(origin) + 1
            broken[number] = (str(error), _as_text(record["Body"]))
            origin[number] = where
            continue
        for event in events_of_body:
            number = len(origin) + 1
            if event.get("timestamp") is None:
                event["timestamp"] = enqueued_seconds(record["EnqueuedTimeUtc"])
            numbers.append(number)
            events.append(event)
            origin[number] = where
    # Objects, not inferred dtypes: an integer field with a gap would turn into floats.
    frame = pd.DataFrame(events, index=numbers, dtype=object)
    # Each body is a message of its own: one without a required field is one bad row.
    absent = [column for column in required if column not in frame.columns]
    frame = frame.reindex(columns=[*frame.columns, *absent])
    return RawRows(
        frame,
        broken_rows(broken),
        origin=pd.DataFrame.from_dict(origin, orient="index", columns=list(ORIGIN_COLUMNS)),
    )


def partition_of(name: str) -> str:
    """The Event Hubs partition a Capture file holds: the folder above its date and time in
    Capture's default layout (`…/{partition}/{yyyy}/{mm}/{dd}/{hh}/{mm}/{ss}.avro`); "" for a
    file named otherwise (the partition is not in the records)."""
    match = _CAPTURE_NAME.search(name)
    return "" if match is None else match.group(1)


def enqueued_seconds(text: str) -> int | str:
    """EnqueuedTimeUtc as Unix seconds; text in any other form is passed on as it is, for
    validation to accept (ISO-8601) or reject."""
    try:
        moment = datetime.strptime(text, _DOTNET_TIME).replace(tzinfo=UTC)
    except ValueError:
        return text
    return int(moment.timestamp())


def _field_names(schema: object) -> set[str]:
    fields = schema.get("fields", []) if isinstance(schema, dict) else []
    return {field["name"] for field in fields}


def body_events(body: bytes | None) -> list[dict]:
    if body is None:
        raise UnreadableBodyError("record has no body")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnreadableBodyError(
            f"body is not UTF-8: byte {error.start} ({error.reason})"
        ) from None
    try:
        parsed = json.loads(text)
    except ValueError as error:
        raise UnreadableBodyError(f"body is not JSON: {error}") from None
    events = parsed if isinstance(parsed, list) else [parsed]
    if not all(isinstance(event, dict) for event in events):
        raise UnreadableBodyError("body is not a JSON object or an array of objects")
    return events


def _as_text(body: bytes | None) -> str:
    """A body as quarantine shows it: bytes that are not UTF-8 as lone surrogates (`printable`
    writes them as \\xNN)."""
    return "" if body is None else body.decode("utf-8", "surrogateescape")
