"""The landing zone (files users drop), its quarantine, and the ingested event history."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
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
    printable,
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
ATTEMPTS = "lake/attempts/"
GIVEN_UP = "lake/given-up/"
BY_USER = "lake/history-by-user/"
BY_USER_MANIFEST = BY_USER + "manifest.json"
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial")
ATTEMPT_TIMEOUT_S = 600.0
"""A micro-batch attempt not heard of for this long died (run monitoring and run retries
normally see to that sooner): the landing sensor asks for its files again."""
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
    modified_ns: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Refusal:
    """A landing entry that is never read: a link, a special file, a name that is not UTF-8."""

    name: str
    """Printable: bytes that are not UTF-8 shown as \\xNN."""
    size: int
    reason: str

    @property
    def key(self) -> str:
        """Its ledger key: by name, as it has no content of ours to hash."""
        return hashlib.sha256(f"refused:{self.name}".encode()).hexdigest()


@dataclass(frozen=True)
class HistorySnapshot:
    """A copy of the event history sorted by user: what the batch job trains on."""

    written_at: str
    """ISO-8601 UTC; every file the ledger records as ingested before it is in the copy."""
    location: str
    events: int
    users: int
    event_files: int


@dataclass(frozen=True)
class Attempt:
    """A micro-batch attempt at one version of a landing file."""

    file: str
    version: str
    """`FileInfo.version` of the file the attempt is at."""
    attempts: int
    """How many attempts at this version began, this one included."""
    error: str | None
    """What the previous attempt ended with; None when it never said (its process died)."""


@dataclass(frozen=True)
class LandingScan:
    files: list[FileInfo]
    """Event files to read, names relative to landing/."""
    refused: list[Refusal]
    unsupported: list[str]
    """Files with a suffix the contract does not name."""


class LandingZone(ConfigurableResource):
    """Folders in a file store: landing/, catalog/, quarantine/, lake/events/, lake/ingested/
    and served/ (the API's log).

    Every file is ingested once, keyed by its content hash, so a file copied in twice (or
    renamed) is recognised; the ledger entry is written last and marks the file as done.
    Nothing in landing/ is ever modified or deleted.
    """

    files: FileStore
    settle_s: float = 1.0
    """Ingest waits until a new file is this old, then takes it only if it is unchanged since
    it was listed: a file still being written waits for a later run."""
    unterminated_settle_s: float = 60.0
    """A CSV/JSONL file whose last line has no newline waits until it is this old."""
    lookback_days: int = 2
    """The landing sensor looks into dated folders (yyyy/mm/dd) of the last this many days
    (UTC) only, so its work does not grow with the years of files kept; batch_retrain
    lists everything."""
    max_attempts: int = 3
    """A file whose micro-batch attempts fail (or die) this often is given up: quarantined
    with the reason, left to batch_retrain."""
    retry_s: float = 30.0
    """How long after a failed micro-batch attempt, or one that left a file for later, the
    landing sensor asks for the file again."""

    def scan(self, since: date | None = None) -> LandingScan:
        """What the landing zone holds (any depth), in name order, without reading it. Names
        starting with "_" or "." (also of a folder on the way) or ending in .tmp, .part or
        .partial are files still being written elsewhere and are left out. With `since`,
        dated folders (`_dated_before`) wholly before that day are not looked into."""

        def skip(folder: str) -> bool:
            name = folder.removeprefix(LANDING)
            return _hidden(name) or (since is not None and _dated_before(name, since))

        return self._classify(self.files.entries(LANDING, skip))

    def scan_named(self, names: Collection[str]) -> LandingScan:
        """`scan` of just these landing files, each looked at on its own (no listing); names
        that are not there are left out."""
        found = (self.files.info(LANDING + name) for name in sorted(set(names)))
        return self._classify(entry for entry in found if entry is not None)

    def look_again(self, file: FileInfo) -> FileInfo | None:
        """A landing file's entry as it is now; None when it is gone."""
        found = self.files.info(LANDING + file.name)
        return None if found is None else replace(found, name=file.name)

    def recent(self, today: date) -> list[FileInfo]:
        """The event files of `scan` outside dated folders older than `lookback_days`."""
        return self.scan(since=today - timedelta(days=self.lookback_days)).files

    @staticmethod
    def _classify(entries: Iterable[FileInfo]) -> LandingScan:
        files, refused, unsupported = [], [], []
        for entry in entries:
            name = entry.name.removeprefix(LANDING)
            if _hidden(name) or PurePosixPath(name).suffix.lower() in TEMPORARY_SUFFIXES:
                continue
            if printable(name) != name:
                refused.append(Refusal(printable(name), entry.size, "file name is not valid UTF-8"))
            elif entry.kind == "symlink":
                refused.append(
                    Refusal(name, entry.size, "a symbolic link: not followed, its target not read")
                )
            elif entry.kind == "special":
                refused.append(
                    Refusal(name, entry.size, "not a regular file (a FIFO, socket or device)")
                )
            elif is_event_file(name):
                files.append(replace(entry, name=name))
            else:
                unsupported.append(name)
        return LandingScan(files, refused, unsupported)

    def landed(self) -> list[FileInfo]:
        """The event files of `scan`."""
        return self.scan().files

    def read_landed(self, file: FileInfo) -> LandingFile | None:
        """A landed file's bytes; None when it changed since it was listed."""
        data = self.files.read_if_unchanged(replace(file, name=LANDING + file.name))
        return None if data is None else LandingFile(file.name, data, file.modified_ns)

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
        """Ledger entries by content hash: the whole ledger, one read per file ever landed."""
        return {
            PurePosixPath(file.name).stem: json.loads(self.files.read(file.name))
            for file in self.files.list(LEDGER)
        }

    def ledger_entry(self, key: str) -> dict | None:
        """One file's ledger entry, by content hash (or a refusal's key): one small read."""
        return self._read_json(f"{LEDGER}{key}.json")

    def ledger_size(self) -> int:
        """How many files the ledger holds (a listing, no reads)."""
        return len(self.files.list(LEDGER))

    def awaiting_lists(self, digests: Iterable[str]) -> list[str]:
        """Those of these content hashes whose events are in the history but not yet in the
        live lists (no micro-batch wrote their users' lists), sorted."""
        return sorted(
            digest
            for digest in set(digests)
            if (entry := self.ledger_entry(digest)) is not None
            and entry["status"] == "ingested"
            and "lists" not in entry
        )

    def record_lists(self, digests: Iterable[str], version: str | None) -> None:
        """Mark these files handled: their users' lists were written into `version`, or, with
        None, are left to batch_retrain (nothing was live, or it ingested them itself)."""
        written = {"version": version, "at": datetime.now(UTC).isoformat()}
        for digest in digests:
            entry = self.ledger_entry(digest)
            if entry is not None:
                entry["lists"] = written
                self.files.write(f"{LEDGER}{digest}.json", json.dumps(entry).encode())

    def begin_attempt(self, file: FileInfo) -> Attempt | None:
        """Count a micro-batch attempt at this version of a landing file, durably and before
        the work starts, so that an attempt whose process is killed counts too. None when
        this version was given up."""
        key = _name_key(file.name)
        given_up = self._read_json(f"{GIVEN_UP}{key}.json")
        if given_up is not None and given_up["version"] == file.version:
            return None
        earlier = self._read_json(f"{ATTEMPTS}{key}.json")
        if earlier is None or earlier["version"] != file.version:
            earlier = {"attempts": 0, "error": None}
        attempt = Attempt(file.name, file.version, earlier["attempts"] + 1, earlier["error"])
        # Unless this attempt says otherwise, its process died: the sensor asks again then.
        self._write_attempt(replace(attempt, error=None), time.time() + ATTEMPT_TIMEOUT_S)
        return attempt

    def retry_later(self, attempt: Attempt, error: str | None, after_s: float) -> None:
        """Leave the file for a later attempt (the landing sensor asks for it after `after_s`),
        with what this one ended with."""
        self._write_attempt(replace(attempt, error=error), time.time() + after_s)

    def end_attempts(self, name: str) -> None:
        """The micro-batch is done with a landing file (handled, or gone)."""
        self.files.delete(f"{ATTEMPTS}{_name_key(name)}.json")

    def give_up(self, attempt: Attempt, file: FileInfo, reason: str) -> str:
        """Stop micro-batch attempts at this version of a file: a copy in quarantine/files/
        with the reason beside it (the reason alone when the file cannot be read), the file
        left to batch_retrain. Returns where the reason is."""
        try:
            landed = self.read_landed(file)
        except OSError:
            landed = None
        if landed is None:
            where = self._reason_note(_name_key(file.name), file.name, f"{file.name}: {reason}")
        else:
            entry = self.ledger_entry(landed.sha256)
            if entry is not None and entry["status"] == "ingested":
                reason += (
                    f"; its {entry['rows']} events stay in the history and reach the lists "
                    "at the next batch_retrain"
                )
            else:
                reason += "; the next batch_retrain ingests it"
            where = self._quarantine_copy(landed, reason) + ".reason.txt"
        key = _name_key(file.name)
        note = {**asdict(attempt), "error": reason}
        self.files.write(f"{GIVEN_UP}{key}.json", json.dumps(note).encode())
        self.files.delete(f"{ATTEMPTS}{key}.json")
        return where

    def due_attempts(self, now: float) -> list[Attempt]:
        """Landing files whose micro-batch was left for later (failed, died, or found the file
        not ready) and is due again at `now` (Unix seconds)."""
        due = []
        for listed in self.files.list(ATTEMPTS):
            note = self._read_json(listed.name)
            if note is not None and note.pop("retry_at") <= now:
                due.append(Attempt(**note))
        return due

    def _write_attempt(self, attempt: Attempt, retry_at: float) -> None:
        note = {**asdict(attempt), "retry_at": retry_at}
        self.files.write(f"{ATTEMPTS}{_name_key(attempt.file)}.json", json.dumps(note).encode())

    def _read_json(self, name: str) -> dict | None:
        try:
            return json.loads(self.files.read(name))
        except FileNotFoundError:
            return None

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
            text = printable(rejected.assign(source_file=file.name).to_csv(index=False))
            self.files.write(
                f"{QUARANTINE}rows/{_flat(file.name)}.{file.sha256[:12]}.csv", text.encode()
            )
        self._write_ledger(
            file.sha256,
            file.name,
            len(file.data),
            status="ingested",
            rows=len(events),
            rejected=len(rejected),
        )

    def quarantine_file(self, file: LandingFile, reason: str) -> str:
        """Keep a copy of a file that could not be read at all, with the reason beside it;
        returns where the copy is."""
        copy = self._quarantine_copy(file, reason)
        self._write_ledger(
            file.sha256,
            file.name,
            len(file.data),
            status="quarantined",
            rows=0,
            rejected=0,
            reason=reason,
        )
        return copy

    def _quarantine_copy(self, file: LandingFile, reason: str) -> str:
        copy = f"{QUARANTINE}files/{file.sha256[:12]}.{_flat(file.name)}"
        self.files.write(copy, file.data)
        self.files.write(copy + ".reason.txt", (reason + "\n").encode())
        return self.files.location(copy)

    def refuse(self, entry: Refusal) -> str:
        """Record why an entry is not read: a reason file, no copy; returns where it is."""
        note = self._reason_note(entry.key, entry.name, f"{entry.name}: {entry.reason}")
        self._write_ledger(
            entry.key,
            entry.name,
            entry.size,
            status="refused",
            rows=0,
            rejected=0,
            reason=entry.reason,
        )
        return note

    def _reason_note(self, key: str, name: str, text: str) -> str:
        note = f"{QUARANTINE}files/{key[:12]}.{_flat(name)}.reason.txt"
        self.files.write(note, (text + "\n").encode())
        return self.files.location(note)

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
                rows = read_table_file(file.name, self.files.read(file.name), ("item_id", "title"))
            except UnreadableFileError as error:
                problems.append(f"{file.name}: {error}")
                continue
            frames.append(rows.frame[["item_id", "title"]].astype("string"))
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
        return self._event_table(self._event_files(self.files_ingested_since(moment))).to_pandas()

    def files_not_listed_in(self, version: str, since: str) -> list[str]:
        """Content hashes of the files ingested at or after `since` (ISO-8601 UTC) whose
        users' lists were not written into `version`, sorted (a read of the whole ledger)."""
        return self._ingested_where(
            lambda entry: (
                entry["ingested_at"] >= since
                and (entry.get("lists") or {}).get("version") != version
            )
        )

    def files_ingested_since(self, moment: str) -> list[str]:
        """Content hashes of the files ingested after `moment` (an ISO-8601 UTC time), sorted."""
        return self._ingested_where(lambda entry: entry["ingested_at"] > moment)

    def events_of(self, digests: Iterable[str]) -> pd.DataFrame:
        """The validated events ingested from the files with these content hashes."""
        return self._event_table(self._event_files(sorted(digests))).to_pandas()

    def _ingested_where(self, wanted: Callable[[dict], bool]) -> list[str]:
        return sorted(
            digest
            for digest, entry in self.ingested().items()
            if entry["status"] == "ingested" and wanted(entry)
        )

    @staticmethod
    def _event_files(digests: list[str]) -> list[str]:
        return [f"{EVENTS}{digest}.parquet" for digest in digests]

    def compact_history(self) -> HistorySnapshot:
        """Write every ingested event sorted by user in small row groups (the previous copy
        kept for readers still on it), so that `user_history` reads a few users' events
        without scanning everyone's; the batch job's data snapshot (`snapshot_events`)."""
        # Taken before the listing: a file whose ledger entry is older is in the snapshot (its
        # events were written before its entry).
        written_at = datetime.now(UTC)
        names = [file.name for file in self.files.list(EVENTS)]
        events = self._event_table(names)
        snapshot = f"{BY_USER}{written_at:%Y%m%dT%H%M%S%f}/"
        buffer = io.BytesIO()
        # A stable sort: each user's events keep their order.
        pq.write_table(events.sort_by("user_id"), buffer, row_group_size=USERS_ROW_GROUP)
        self.files.write(snapshot + "events.parquet", buffer.getvalue())
        manifest = {
            "snapshot": snapshot + "events.parquet",
            "event_files": names,
            "written_at": written_at.isoformat(),
        }
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
        return HistorySnapshot(
            written_at.isoformat(),
            self.files.location(snapshot + "events.parquet"),
            events.num_rows,
            len(set(events["user_id"].to_pylist())),
            len(names),
        )

    def snapshot_events(self) -> pd.DataFrame:
        """The events of the latest user-sorted history (`compact_history`)."""
        manifest = self._snapshot_manifest()
        if manifest["snapshot"] is None:
            return EVENT_SCHEMA.empty_table().to_pandas()
        with self.files.open(manifest["snapshot"]) as source:
            return pq.read_table(source, schema=EVENT_SCHEMA).to_pandas()

    def user_history(self, user_ids: Collection[str]) -> pd.DataFrame:
        """Every ingested event of these users: their row groups of the user-sorted history,
        and the event files ingested since it was written."""
        wanted = sorted(set(user_ids))
        condition = pc.field("user_id").isin(pa.array(wanted, type=pa.string()))
        manifest = self._snapshot_manifest()
        tables = [self._event_table(self._since_snapshot(manifest), condition)]
        if manifest["snapshot"]:
            with self.files.open(manifest["snapshot"]) as source:
                snapshot = pq.ParquetFile(source)
                groups = _row_groups_holding(snapshot.metadata, wanted)
                tables.append(snapshot.read_row_groups(groups).filter(condition))
        return pa.concat_tables(tables).to_pandas()

    def snapshot_written_at(self) -> str | None:
        """When the latest user-sorted history was written (`HistorySnapshot.written_at`)."""
        return self._snapshot_manifest().get("written_at")

    def _snapshot_manifest(self) -> dict:
        try:
            return json.loads(self.files.read(BY_USER_MANIFEST))
        except FileNotFoundError:
            return {"snapshot": None, "event_files": []}

    def _since_snapshot(self, manifest: dict) -> list[str]:
        compacted = set(manifest["event_files"])
        return [file.name for file in self.files.list(EVENTS) if file.name not in compacted]

    def _event_table(self, names: list[str], condition: pc.Expression | None = None) -> pa.Table:
        """Event history files as one table in EVENT_SCHEMA."""
        tables = [
            pq.read_table(pa.BufferReader(self.files.read(name)), schema=EVENT_SCHEMA)
            for name in names
        ]
        events = pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()
        return events if condition is None else events.filter(condition)

    def _write_ledger(self, key: str, name: str, size: int, **entry: object) -> None:
        record = {
            "file": name,
            "size": size,
            "ingested_at": datetime.now(UTC).isoformat(),
            **entry,
        }
        self.files.write(f"{LEDGER}{key}.json", json.dumps(record).encode())


def _name_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def _hidden(name: str) -> bool:
    """Whether a path has a part starting with "_" or "." (a file or folder still being
    written, to be renamed when done)."""
    return any(part.startswith(("_", ".")) for part in PurePosixPath(name).parts)


DATED = re.compile(r"(?:^|/)((?:19|20)\d\d)(?:/(0[1-9]|1[0-2])(?:/(0[1-9]|[12]\d|3[01]))?)?/?$")
"""A folder path ending in a year, year/month or year/month/day (Event Hubs Capture's
`.../{yyyy}/{mm}/{dd}/{hh}/...`, or plainly `yyyy/mm/dd/`)."""


def _dated_before(folder: str, since: date) -> bool:
    """Whether a folder is a year, month or day (its name ends in yyyy, yyyy/mm or yyyy/mm/dd)
    that ends before `since`."""
    match = DATED.search(folder)
    if match is None:
        return False
    parts = tuple(int(part) for part in match.groups() if part is not None)
    return parts < (since.year, since.month, since.day)[: len(parts)]


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
