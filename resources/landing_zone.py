"""The landing zone (files users drop), its quarantine, and the ingested event history."""

from __future__ import annotations

import hashlib
import io
import json
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

import msgspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import ConfigurableResource

from reco_dagster.domain.events import (
    UnreadableFileError,
    is_event_file,
    read_table_file,
)
from reco_dagster.domain.online import SERVED_COLUMNS
from resources.files import FileInfo, FileStore

LANDING = "landing/"
CATALOG = "catalog/"
QUARANTINE = "quarantine/"
SERVED = "served/"
EVENTS = "lake/events/"
LEDGER = "lake/ingested/"
BY_USER = "lake/history-by-user/"
BY_USER_MANIFEST = BY_USER + "manifest.json"
USERS_ROW_GROUP = 4096
"""Rows per row group of the user-sorted history: a few users' events are a few small reads."""

EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
        ("source_file", pa.string()),
    ]
)


@dataclass(frozen=True)
class LandingFile:
    name: str
    """Path relative to the landing zone, with forward slashes."""
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class LandingZone(ConfigurableResource):
    """Folders in a file store: landing/, catalog/, quarantine/, lake/events/, lake/ingested/
    and served/ (the API's log).

    Every file is ingested once, keyed by its content hash, so a file copied in twice (or
    renamed) is recognised; the ledger entry is written last and marks the file as done.
    Nothing in landing/ is ever modified or deleted.
    """

    files: FileStore

    def landed(self) -> list[FileInfo]:
        """Event files in the landing zone (any depth), in name order, without reading them;
        names are relative to landing/."""
        return [
            FileInfo(file.name.removeprefix(LANDING), file.size, file.modified_ns)
            for file in self.files.list(LANDING)
            if is_event_file(file.name) and not PurePosixPath(file.name).name.startswith(".")
        ]

    def landed_files(self, only: Collection[str] | None = None) -> Iterator[LandingFile]:
        """Event files with their bytes, in name order; `only` names a subset."""
        for file in self.landed():
            if only is None or file.name in only:
                yield LandingFile(name=file.name, data=self.files.read(LANDING + file.name))

    def land(self, name: str, data: bytes) -> str:
        """Put a file into the landing zone; returns where it went."""
        self.files.write(LANDING + name, data)
        return self.files.location(LANDING + name)

    def is_empty(self) -> bool:
        return not self.landed()

    def where(self, folder: str) -> str:
        """Where a user finds one of the zone's folders (landing/, quarantine/...)."""
        return self.files.location(folder)

    def ingested(self) -> dict[str, dict]:
        """Ledger entries by content hash."""
        return {
            PurePosixPath(file.name).stem: json.loads(self.files.read(file.name))
            for file in self.files.list(LEDGER)
        }

    def record_events(
        self, file: LandingFile, events: pd.DataFrame, rejected: pd.DataFrame
    ) -> None:
        """Good rows into the history, bad rows into quarantine, then mark the file done."""
        table = pa.Table.from_pandas(
            events.assign(source_file=file.name), schema=EVENT_SCHEMA, preserve_index=False
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.files.write(f"{EVENTS}{file.sha256}.parquet", buffer.getvalue())
        if not rejected.empty:
            rows = rejected.assign(source_file=file.name).to_csv(index=False).encode()
            self.files.write(f"{QUARANTINE}rows/{_flat(file.name)}.{file.sha256[:12]}.csv", rows)
        self._write_ledger(file, status="ingested", rows=len(events), rejected=len(rejected))

    def quarantine_file(self, file: LandingFile, reason: str) -> str:
        """Keep a copy of a file that could not be read at all, with the reason beside it;
        returns where the copy is."""
        copy = f"{QUARANTINE}files/{file.sha256[:12]}.{_flat(file.name)}"
        self.files.write(copy, file.data)
        self.files.write(copy + ".reason.txt", (reason + "\n").encode())
        self._write_ledger(file, status="quarantined", rows=0, rejected=0, reason=reason)
        return self.files.location(copy)

    def add_catalog(self, name: str, data: bytes) -> str:
        self.files.write(CATALOG + name, data)
        return self.files.location(CATALOG + name)

    def item_catalog(self) -> tuple[pd.DataFrame, list[str]]:
        """Item titles from `catalog/` files (item_id, title); unreadable files are listed."""
        frames, problems = [], []
        for file in self.files.list(CATALOG):
            if not is_event_file(file.name):
                continue
            try:
                frame = read_table_file(file.name, self.files.read(file.name), ("item_id", "title"))
            except UnreadableFileError as error:
                problems.append(f"{file.name}: {error}")
                continue
            frames.append(frame[["item_id", "title"]].astype("string"))
        if not frames:
            return pd.DataFrame({"item_id": [], "title": []}, dtype="string"), problems
        catalog = pd.concat(frames).dropna().drop_duplicates("item_id", keep="last")
        return catalog.reset_index(drop=True), problems

    def event_history(self) -> pd.DataFrame:
        """Every validated event ingested so far, with its source file."""
        return self._event_table([file.name for file in self.files.list(EVENTS)]).to_pandas()

    def served_lists(self, chunk_rows: int = 20_000) -> Iterator[pd.DataFrame]:
        """The API's log of served lists (time, user_id, variant, version, items), oldest hour
        first, in frames of at most `chunk_rows` lists: the log can outgrow memory (a list
        of 100 item ids is about 40 times its line's size as Python objects)."""
        decode = msgspec.json.Decoder(tuple).decode
        for file in self.files.list(SERVED):
            if not (file.name.endswith(".jsonl") and file.size):
                continue
            rows: list[tuple] = []
            with self.files.open(file.name) as source:
                for line in source:
                    if not line.endswith(b"\n"):
                        break  # the API is appending this line right now
                    rows.append(decode(line))
                    if len(rows) == chunk_rows:
                        yield pd.DataFrame(rows, columns=SERVED_COLUMNS)
                        rows = []
            if rows:
                yield pd.DataFrame(rows, columns=SERVED_COLUMNS)

    def ingested_since(self, moment: str) -> pd.DataFrame:
        """The validated events of files ingested after `moment` (an ISO-8601 UTC time)."""
        return self._events_where(lambda entry: entry["ingested_at"] > moment)

    def events_of(self, names: Collection[str]) -> pd.DataFrame:
        """The validated events ingested from these landing files (any earlier run too)."""
        return self._events_where(lambda entry: entry["file"] in names)

    def _events_where(self, wanted: Callable[[dict], bool]) -> pd.DataFrame:
        names = [
            f"{EVENTS}{digest}.parquet"
            for digest, entry in self.ingested().items()
            if entry["status"] == "ingested" and wanted(entry)
        ]
        return self._event_table(names).to_pandas()

    def compact_history(self) -> pd.DataFrame:
        """Every ingested event, as `event_history`; also written sorted by user in small row
        groups (the previous copy kept for readers still on it), so that `user_history` reads
        a few users' events without scanning everyone's."""
        names = [file.name for file in self.files.list(EVENTS)]
        events = self._event_table(names)
        snapshot = f"{BY_USER}{datetime.now(UTC):%Y%m%dT%H%M%S%f}/"
        buffer = io.BytesIO()
        # A stable sort: each user's events keep their order.
        pq.write_table(events.sort_by("user_id"), buffer, row_group_size=USERS_ROW_GROUP)
        self.files.write(snapshot + "events.parquet", buffer.getvalue())
        manifest = {"snapshot": snapshot + "events.parquet", "event_files": names}
        self.files.write(BY_USER_MANIFEST, json.dumps(manifest).encode())
        snapshots = sorted(
            {
                PurePosixPath(file.name).relative_to(BY_USER).parts[0]
                for file in self.files.list(BY_USER)
            }
            - {"manifest.json"}
        )
        for stale in snapshots[:-2]:
            self.files.delete_folder(f"{BY_USER}{stale}/")
        return events.to_pandas()

    def user_history(self, user_ids: Collection[str]) -> pd.DataFrame:
        """Every ingested event of these users: their row groups of the user-sorted history,
        and the event files ingested since it was written."""
        wanted = sorted(set(user_ids))
        condition = pc.field("user_id").isin(pa.array(wanted, type=pa.string()))
        try:
            manifest = json.loads(self.files.read(BY_USER_MANIFEST))
        except FileNotFoundError:
            manifest = {"snapshot": None, "event_files": []}
        compacted = set(manifest["event_files"])
        recent = [file.name for file in self.files.list(EVENTS) if file.name not in compacted]
        tables = [self._event_table(recent, condition)]
        if manifest["snapshot"]:
            with self.files.open(manifest["snapshot"]) as source:
                snapshot = pq.ParquetFile(source)
                groups = _row_groups_holding(snapshot.metadata, wanted)
                tables.append(snapshot.read_row_groups(groups).filter(condition))
        return pa.concat_tables(tables).to_pandas()

    def _event_table(self, names: list[str], condition: pc.Expression | None = None) -> pa.Table:
        """Event history files as one table in EVENT_SCHEMA."""
        tables = [
            pq.read_table(pa.BufferReader(self.files.read(name)), schema=EVENT_SCHEMA)
            for name in names
        ]
        events = pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()
        return events if condition is None else events.filter(condition)

    def _write_ledger(self, file: LandingFile, **entry: object) -> None:
        record = {
            "file": file.name,
            "size": len(file.data),
            "ingested_at": datetime.now(UTC).isoformat(),
            **entry,
        }
        self.files.write(f"{LEDGER}{file.sha256}.json", json.dumps(record).encode())


def _flat(name: str) -> str:
    return name.replace("/", "__")


def _row_groups_holding(metadata: pq.FileMetaData, wanted: list[str]) -> list[int]:
    """The row groups of a file sorted by user_id whose range of users holds one of `wanted`
    (sorted); a group without statistics is always read."""
    groups = []
    for index in range(metadata.num_row_groups):
        users = metadata.row_group(index).column(0).statistics
        if (
            users is None
            or not users.has_min_max
            or bisect_left(wanted, users.min) < bisect_right(wanted, users.max)
        ):
            groups.append(index)
    return groups
