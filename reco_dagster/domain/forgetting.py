"""Forgotten users: how their ids are recognised once only a key of them is kept, and how
their rows are taken out of files in every format the landing zone reads."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reco_dagster.domain.events import (
    CsvRecord,
    RawRows,
    UnreadableFileError,
    csv_lines,
    csv_records,
    decompressed,
    file_format,
    read_event_file,
    validated_ids,
)


def user_key(user_id: str) -> str:
    """What a tombstone keeps of a user id: its SHA-256. Enough to recognise the user's events
    (and to confirm that a given id was forgotten), not to recover the id."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Forgotten:
    """The tombstones, as ingestion and the erasure use them."""

    keys: frozenset[str] = frozenset()
    """`user_key` of every forgotten user."""
    pending: dict[str, str] = field(default_factory=dict)
    """User id by key, while a user's erasure is pending: text that cannot be split into rows
    (a line that is not JSON, a file that cannot be read) is searched for these ids."""

    def __bool__(self) -> bool:
        return bool(self.keys)

    def mask(self, user_ids: pd.Series) -> pd.Series:
        """Whether each user id (as validation keeps it) is a forgotten user's; each distinct
        id is hashed once, none when nobody is forgotten."""
        if not self.keys:
            return pd.Series(False, index=user_ids.index)
        return user_ids.isin(self.among(user_ids.dropna().unique()).values())

    def among(self, user_ids: Iterable[str]) -> dict[str, str]:
        """The forgotten ones of these user ids, by key."""
        keyed = {user_key(str(user)): str(user) for user in set(user_ids)}
        return {key: user for key, user in keyed.items() if key in self.keys}

    def named_in(self, text: str) -> bool:
        """Whether text that is no row names a user whose erasure is pending."""
        return any(user_id in text for user_id in self.pending.values())

    def redacted(self, text: str) -> str:
        """Text (a note, a reason, a JSON record) with every pending user's id replaced, also
        as JSON writes it."""
        for user_id in self.pending.values():
            for form in {user_id, json.dumps(user_id)[1:-1]}:
                text = text.replace(form, REDACTED)
        return text


REDACTED = "[forgotten user]"


def without_forgotten_rows(rows: RawRows, forgotten: Forgotten) -> tuple[RawRows, dict[str, str]]:
    """A read file's rows without those of forgotten users (`doomed_rows`), and the
    forgotten users found by their id, by key."""
    doomed, found = doomed_rows(rows, forgotten)
    if not doomed:
        return rows, found
    kept = replace(
        rows,
        frame=rows.frame.drop(index=doomed, errors="ignore"),
        broken=rows.broken.drop(index=doomed, errors="ignore"),
        origin=rows.origin.drop(index=doomed, errors="ignore"),
    )
    return kept, found


def doomed_rows(rows: RawRows, forgotten: Forgotten) -> tuple[list[int], dict[str, str]]:
    """The row numbers of a read file's rows of forgotten users: by their user id, or, for
    rows that cannot be split into fields, by the text naming a pending one; and the
    forgotten users found by their id, by key."""
    if not forgotten:
        return [], {}
    users = validated_ids(rows.frame["user_id"])
    by_id = forgotten.mask(users)
    by_text = [
        number
        for number, text in rows.broken["offending_value"].items()
        if forgotten.named_in(str(text))
    ]
    found = forgotten.among(users[by_id])
    return sorted({*rows.frame.index[by_id.to_numpy()], *by_text}), found


@dataclass(frozen=True)
class Rewritten:
    data: bytes | None
    """The file's new bytes; None when none of its rows is left (delete it)."""
    removed: int
    """Rows taken out: 0 means `data` is the file as it was."""


def file_without(name: str, data: bytes, forgotten: Forgotten) -> Rewritten:
    """`event_file_without`, for a landing file or a copy of one in quarantine; a file that
    cannot be read cannot be edited: when its bytes (decompressed, where they can be) name a
    user whose erasure is pending, none of it is left."""
    try:
        return event_file_without(name, data, forgotten)
    except UnreadableFileError:
        kind, plain = file_format(name), data
        with suppress(UnreadableFileError):
            plain = decompressed(data, kind[1] if kind else None)
        named = forgotten.named_in(plain.decode("utf-8", "surrogateescape"))
        return Rewritten(None, 1) if named else Rewritten(data, 0)


def event_file_without(name: str, data: bytes, forgotten: Forgotten) -> Rewritten:
    """A landing file (any format and compression of the contract) without the rows of
    forgotten users (`doomed_rows`); every other row kept as it was (byte for byte in CSV and
    JSONL files, value for value in parquet and Capture files), compressed again as it was.
    UnreadableFileError when the file cannot be read."""
    kind = file_format(name)
    if kind is None:
        raise UnreadableFileError(f"unsupported file type {PurePosixPath(name).suffix!r}")
    suffix, compression = kind
    plain = decompressed(data, compression)
    rows = read_event_file(f"events{suffix}", plain)
    doomed = set(doomed_rows(rows, forgotten)[0])
    if suffix == ".csv":
        kept, removed = _csv_without(plain, doomed, forgotten)
    elif not doomed:
        return Rewritten(data, 0)
    elif suffix == ".jsonl":
        kept, removed = _jsonl_without(plain, doomed), len(doomed)
    elif suffix == ".parquet":
        kept, removed = _parquet_without(plain, doomed), len(doomed)
    else:
        kept, removed = _capture_without(plain, doomed), len(doomed)
    if not removed:
        return Rewritten(data, 0)
    return Rewritten(None if kept is None else _compressed(kept, compression), removed)


def _csv_without(plain: bytes, doomed: set[int], forgotten: Forgotten) -> tuple[bytes | None, int]:
    """The doomed CSV records left out, and also the records the CSV reader could not read
    (which `doomed_rows` sees no text of) that name a pending user."""
    text, bom = _text(plain)
    lines = csv_lines(text)
    kept, removed, rows_left, header_seen = [], 0, 0, False
    for record in csv_records(lines):
        raw = "".join(lines[record.lines])
        if record.fields and not header_seen:
            header_seen = True
        elif record.lines.start + 1 in doomed or (
            record.fields is None and forgotten.named_in(raw)
        ):
            removed += 1
            continue
        elif record.fields:
            rows_left += 1
        kept.append(raw)
    return (_bytes("".join(kept), bom) if rows_left else None), removed


def _jsonl_without(plain: bytes, doomed: set[int]) -> bytes | None:
    text, bom = _text(plain)
    lines = text.split("\n")
    kept = [line for number, line in enumerate(lines, start=1) if number not in doomed]
    if not any(line.strip() for line in kept):
        return None
    return _bytes("\n".join(kept), bom)


def _parquet_without(plain: bytes, doomed: set[int]) -> bytes | None:
    table = pq.read_table(pa.BufferReader(plain))
    keep = np.ones(table.num_rows, dtype=bool)
    keep[[number - 1 for number in doomed]] = False
    if not keep.any():
        return None
    buffer = io.BytesIO()
    pq.write_table(table.filter(pa.array(keep)), buffer)
    return buffer.getvalue()


def _capture_without(plain: bytes, doomed: set[int]) -> bytes | None:
    """A Capture file's records without the doomed events, numbered as `capture_rows` numbers
    them: an array body keeps its other events (written again as JSON), a record left without
    events goes."""
    import fastavro

    from reco_dagster.domain.capture import UnreadableBodyError, body_events

    reader = fastavro.reader(io.BytesIO(plain))
    schema, codec = reader.writer_schema, reader.codec
    metadata = {k: v for k, v in reader.metadata.items() if not k.startswith("avro.")}
    kept, number = [], 0
    for record in reader:
        try:
            events = body_events(record["Body"])
        except UnreadableBodyError:
            number += 1
            if number not in doomed:
                kept.append(record)
            continue
        left = [event for n, event in enumerate(events, start=number + 1) if n not in doomed]
        number += len(events)
        if len(left) == len(events):
            kept.append(record)
        elif left:  # only an array body holds more than one event
            kept.append(record | {"Body": json.dumps(left).encode()})
    if not kept:
        return None
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(schema), kept, codec=codec, metadata=metadata)
    return buffer.getvalue()


def _text(plain: bytes) -> tuple[str, bool]:
    """A text file as ingestion decodes it, and whether it starts with a byte order mark."""
    return plain.decode("utf-8-sig", "surrogateescape"), plain.startswith(codecs.BOM_UTF8)


def _bytes(text: str, bom: bool) -> bytes:
    return (codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8", "surrogateescape")


def _compressed(data: bytes, compression: str | None) -> bytes:
    if compression is None:
        return data
    sink = pa.BufferOutputStream()
    stream = pa.output_stream(sink, compression=compression)
    stream.write(data)
    stream.close()
    return sink.getvalue().to_pybytes()


def quarantined_rows_without(text: str, forgotten: Forgotten) -> tuple[str | None, list[str]]:
    """A quarantine/rows/ file (CSV: the rows as read, each with its reason, value and
    source_file) without the rows of forgotten users: by their user_id, or by naming a pending
    one anywhere (a row is quarantined because something in it is wrong, maybe its id). The
    text left (None when no row is), and the source_file of each row taken out: the landing
    files that still hold them."""
    lines = csv_lines(text)
    records = [record for record in csv_records(lines) if record.fields != []]
    if not records or not records[0].fields:
        return text, []
    header, rows = records[0].fields, records[1:]

    def field(record: CsvRecord, name: str) -> str:
        at = header.index(name) if name in header else None
        fields = record.fields or []
        return fields[at] if at is not None and at < len(fields) else ""

    users = pd.Series([field(record, "user_id") for record in rows], dtype="string")
    by_id = forgotten.mask(users.str.strip()).to_numpy()
    raws = ["".join(lines[record.lines]) for record in rows]
    doomed = [hit or forgotten.named_in(raw) for raw, hit in zip(raws, by_id, strict=True)]
    if not any(doomed):
        return text, []
    kept = "".join(lines[records[0].lines]) + "".join(
        raw for raw, gone in zip(raws, doomed, strict=True) if not gone
    )
    sources = [
        field(record, "source_file") for record, gone in zip(rows, doomed, strict=True) if gone
    ]
    return (kept if not all(doomed) else None), sources
