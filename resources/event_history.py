"""The ingested event history: the ingest ledger, the validated events of every ingested
landing file, and the copy sorted by user that the batch job trains on."""

import io
import json
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Generic, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import ConfigurableResource, ResourceDependency

from reco_dagster.domain.forgetting import Forgotten
from resources.files import FileInfo, FileStore
from resources.lake_tables import LakeTable
from resources.landing_zone import LandingFile, Refusal

EVENTS = "lake/events/"
LEDGER = "lake/ingested/"
BY_USER = "lake/history-by-user/"
BY_USER_MANIFEST = BY_USER + "manifest.json"
USERS_ROW_GROUP = 4096
"""Rows per row group of the user-sorted history: a few users' events are a few small reads."""
PART_BYTES = 16 * 1024**2
"""Event-file bytes per part of a user-sorted history written on Spark: an executor holds its
part whole while writing it (about 1.5M events)."""
BYTES_PER_EVENT = 10
"""A new landing file's events are estimated from its size at the history's bytes per event;
before anything was ingested, at this many: about parquet's (bench/scale.py's events take
9.5 bytes each as parquet, 27 as CSV), so that a first run overestimates rather than keeps
too many events on the driver."""

Resource = TypeVar("Resource", bound=ConfigurableResource)

EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
        # Null: an untyped event (and every event of a file stored before types existed).
        ("event_type", pa.string()),
        ("source_file", pa.string()),
    ]
)


@dataclass(frozen=True)
class HistorySnapshot:
    """A copy of the event history sorted by user: what the batch job trains on."""

    written_at: str
    """ISO-8601 UTC; every file the ledger records as ingested before it is in the copy."""
    location: str
    events: int
    users: int
    event_files: int


class EventHistory(ConfigurableResource):
    """Folders in a file store: lake/ingested/ (the ledger: one entry per landing file taken,
    ingested, quarantined or refused), lake/events/ (each ingested file's validated events)
    and lake/history-by-user/ (the copy sorted by user the batch job trains on).

    Every file is ingested once, keyed by its content hash, so a file copied in twice (or
    renamed) is recognised; the ledger entry is written last and marks the file as done.
    """

    files: ResourceDependency[FileStore]

    def ingested(self) -> dict[str, dict]:
        """Ledger entries by content hash: the whole ledger, one read per file ever landed."""
        return {
            PurePosixPath(file.name).stem: json.loads(self.files.read(file.name))
            for file in self.files.list(LEDGER)
        }

    def ledger_entry(self, key: str) -> dict | None:
        """One file's ledger entry, by content hash (or a refusal's key): one small read."""
        return self.files.read_json(f"{LEDGER}{key}.json")

    def ledger_size(self) -> int:
        """How many files the ledger holds (a listing, no reads)."""
        return len(self.files.list(LEDGER))

    def estimated_events(self, landed: Iterable[FileInfo]) -> int:
        """How many events the history holds once these landing files are ingested: the
        ledger's count, plus the files it does not name (by name and size) at the history's
        bytes per event so far (`BYTES_PER_EVENT` before anything was ingested)."""
        entries = list(self.ingested().values())
        ingested = [entry for entry in entries if entry["status"] == "ingested"]
        held = sum(entry["rows"] for entry in ingested)
        taken = {(entry["file"], entry["size"]) for entry in entries}
        new_bytes = sum(file.size for file in landed if (file.name, file.size) not in taken)
        per_event = sum(entry["size"] for entry in ingested) / held if held else BYTES_PER_EVENT
        return held + round(new_bytes / per_event)

    def write_events(self, file: LandingFile, events: pd.DataFrame) -> None:
        """A file's good rows into the history (`record_ingested` then marks it done)."""
        table = pa.Table.from_pandas(
            events.assign(source_file=file.name), schema=EVENT_SCHEMA, preserve_index=False
        )
        self._write_events(file.sha256, table)

    def record_ingested(
        self, digest: str, name: str, size: int, rows: int, rejected: int, forgotten_rows: int
    ) -> None:
        """Mark a file whose good rows are in the history ingested; `forgotten_rows` of
        forgotten users were left out (the landing file still holds them: the erasure looks
        for files whose entry counts any)."""
        self._write_ledger(
            digest,
            name,
            size,
            status="ingested",
            rows=rows,
            rejected=rejected,
            **({"forgotten_rows": forgotten_rows} if forgotten_rows else {}),
        )

    def _write_events(self, digest: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.files.write(f"{EVENTS}{digest}.parquet", buffer.getvalue())

    def forget_in_events(self, digest: str, forgotten: Forgotten) -> dict[str, str]:
        """Take forgotten users' events out of one ingested file's events, and count them in
        its ledger entry as `forgotten_rows` (its landing file still holds them); returns
        the users found, by key."""
        (name,) = self._event_files([digest])
        events = self._read_events(name)
        doomed = forgotten.mask(events["user_id"].to_pandas().astype("string")).to_numpy()
        if not doomed.any():
            return {}
        found = forgotten.among(events.filter(pa.array(doomed))["user_id"].to_pylist())
        self._write_events(digest, events.filter(pa.array(~doomed)))
        removed = int(doomed.sum())
        self._amend_ledger(
            digest,
            lambda entry: entry | {"forgotten_rows": entry.get("forgotten_rows", 0) + removed},
        )
        return found

    def files_holding(self, user_ids: Collection[str]) -> list[str]:
        """Content hashes of the ingested files with events of these users, sorted."""
        names = set(self.user_history(user_ids)["source_file"])
        return self._ingested_where(lambda entry: entry["file"] in names)

    def record_rewritten(self, digest: str, rewritten: LandingFile) -> None:
        """An ingested landing file (content hash `digest`), rewritten without forgotten
        users' rows: its new content is recorded as done, never to be ingested again."""
        self._write_ledger(
            rewritten.sha256,
            rewritten.name,
            len(rewritten.data),
            status="rewritten",
            rows=0,
            rejected=0,
            of=digest,
        )

    def landing_file_erased(self, digest: str) -> None:
        """The landing file of an ingested file holds no forgotten users' rows any more."""
        self._amend_ledger(
            digest, lambda entry: {k: v for k, v in entry.items() if k != "forgotten_rows"}
        )

    def forget_in_snapshots(self, forgotten: Forgotten) -> int:
        """Forgotten users' events out of every user-sorted copy (a reader may still be on
        the previous one), still sorted; returns the events taken out."""
        removed = 0
        for file in self.files.list(BY_USER):
            if not file.name.endswith(".parquet"):
                continue
            with self.files.open(file.name) as source:
                events = pq.read_table(source, schema=EVENT_SCHEMA)
            doomed = forgotten.mask(events["user_id"].to_pandas().astype("string")).to_numpy()
            if doomed.any():
                self._write_part(file.name, events.filter(pa.array(~doomed)))
                removed += int(doomed.sum())
        return removed

    def _amend_ledger(self, digest: str, change: Callable[[dict], dict]) -> None:
        entry = self.ledger_entry(digest)
        if entry is not None:
            self.files.write(f"{LEDGER}{digest}.json", json.dumps(change(entry)).encode())

    def record_quarantined(self, digest: str, name: str, size: int, reason: str) -> None:
        """Mark a file that could not be read at all done: quarantined, with the reason."""
        self._write_ledger(
            digest,
            name,
            size,
            status="quarantined",
            rows=0,
            rejected=0,
            reason=reason,
        )

    def record_refusal(self, entry: Refusal) -> None:
        """Mark a landing entry that is never read done: refused, with the reason."""
        self._write_ledger(
            entry.key,
            entry.name,
            entry.size,
            status="refused",
            rows=0,
            rejected=0,
            reason=entry.reason,
        )

    def _write_ledger(self, key: str, name: str, size: int, **entry: object) -> None:
        record = {
            "file": name,
            "size": size,
            "ingested_at": datetime.now(UTC).isoformat(),
            **entry,
        }
        self.files.write(f"{LEDGER}{key}.json", json.dumps(record).encode())

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
            self._amend_ledger(digest, lambda entry: entry | {"lists": written})

    def all_events(self) -> pd.DataFrame:
        """Every validated event ingested so far, with its source file."""
        return self._event_table([file.name for file in self.files.list(EVENTS)]).to_pandas()

    def events_from(self, timestamp: int) -> pd.DataFrame:
        """The validated events that happened at or after `timestamp` (epoch seconds), each
        file filtered as it is read: as much memory as those events take, not the history."""
        names = [file.name for file in self.files.list(EVENTS)]
        since = pc.field("timestamp") >= pa.scalar(timestamp, pa.int64())
        return self._event_table(names, since).to_pandas()

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

    def compact_history(self, spark: Any | None = None) -> HistorySnapshot:
        """Write every ingested event sorted by user in small row groups (the previous copy
        kept for readers still on it), so that `user_history` reads a few users' events
        without scanning everyone's; the batch job's data snapshot (`snapshot_events`). On the
        driver as one file, or with a SparkSession `spark` on its executors as parts, each
        holding a range of users (`_sorted_on_spark`). Either way each user's events keep
        their order: by file, then by row."""
        # Taken before the listing: a file whose ledger entry is older is in the snapshot (its
        # events were written before its entry).
        written_at = datetime.now(UTC)
        listed = self.files.list(EVENTS)
        names = [file.name for file in listed]
        folder = f"{BY_USER}{written_at:%Y%m%dT%H%M%S%f}/"
        if spark is None:
            # A stable sort: each user's events keep their order.
            events = self._event_table(names).sort_by("user_id")
            parts = [self._write_part(folder + "events.parquet", events)]
        else:
            parts = self._sorted_on_spark(spark, listed, folder)
        manifest = {
            "parts": [part["part"] for part in parts],
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
            self.files.location(folder),
            sum(part["events"] for part in parts),
            # A user's events are all in one part.
            sum(part["users"] for part in parts),
            len(names),
        )

    def _sorted_on_spark(self, spark: Any, listed: list[FileInfo], folder: str) -> list[dict]:
        """The event files read on Spark's executors through the file store, range-partitioned
        by user, each partition sorted by user, file and row and written by its executor as
        one part; only each part's name and counts reach the driver."""
        from pyspark.sql.pandas.types import from_arrow_schema

        if not listed:
            return []
        numbered = EVENT_SCHEMA.append(pa.field("file", pa.int32())).append(
            pa.field("row", pa.int64())
        )
        shipped = Portable.of(self)

        def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            history = shipped.build()
            for batch in batches:
                for file in batch.to_pylist():
                    events = history._read_events(file["name"])
                    rows = events.num_rows
                    yield from (
                        events.append_column(
                            "file", pa.array(np.full(rows, file["index"], np.int32))
                        )
                        .append_column("row", pa.array(np.arange(rows)))
                        .to_batches()
                    )

        def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            from pyspark import TaskContext

            batches = [batch for batch in batches if batch.num_rows]
            if batches:
                history = shipped.build()
                name = f"{folder}part-{TaskContext.get().partitionId():05d}.parquet"
                events = pa.Table.from_batches(batches).cast(EVENT_SCHEMA)
                yield pa.RecordBatch.from_pylist([history._write_part(name, events)])

        names = list(enumerate(file.name for file in listed))
        files = spark.createDataFrame(
            spark.sparkContext.parallelize(names, len(names)), "index int, name string"
        )
        parts = max(
            spark.sparkContext.defaultParallelism,
            math.ceil(sum(file.size for file in listed) / PART_BYTES),
        )
        by_user = (
            files.mapInArrow(read, from_arrow_schema(numbered))
            .repartitionByRange(parts, "user_id")
            .sortWithinPartitions("user_id", "file", "row")
            .drop("file", "row")
        )
        written = by_user.mapInArrow(write, "part string, events long, users long").collect()
        return sorted((row.asDict() for row in written), key=lambda part: part["part"])

    def _write_part(self, name: str, events: pa.Table) -> dict:
        """Events sorted by user as one parquet file of small row groups; its name and counts."""
        buffer = io.BytesIO()
        pq.write_table(events, buffer, row_group_size=USERS_ROW_GROUP)
        self.files.write(name, buffer.getvalue())
        users = pc.count_distinct(events["user_id"]).as_py()
        return {"part": name, "events": events.num_rows, "users": users}

    def snapshot_events(self) -> pd.DataFrame:
        """The events of the latest user-sorted history (`compact_history`), in user order."""
        tables = []
        for part in _parts(self._snapshot_manifest()):
            with self.files.open(part) as source:
                tables.append(pq.read_table(source, schema=EVENT_SCHEMA))
        return (pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()).to_pandas()

    def snapshot_on_spark(self, spark: Any) -> Any:
        """The events of the latest user-sorted history as a Spark DataFrame, each part read
        by an executor."""
        from pyspark.sql.pandas.types import from_arrow_schema

        parts = tuple(_parts(self._snapshot_manifest()))
        schema = from_arrow_schema(EVENT_SCHEMA).json()
        return LakeTable(self.files, parts, schema).to_spark(spark)

    def user_history(self, user_ids: Collection[str]) -> pd.DataFrame:
        """Every ingested event of these users: their row groups of the user-sorted history
        (each part's row-group statistics say which), and the event files ingested since it
        was written."""
        wanted = sorted(set(user_ids))
        condition = pc.field("user_id").isin(pa.array(wanted, type=pa.string()))
        manifest = self._snapshot_manifest()
        tables = [self._event_table(self._since_snapshot(manifest), condition)]
        for part in _parts(manifest):
            with self.files.open(part) as source:
                snapshot = pq.ParquetFile(source)
                groups = _row_groups_holding(snapshot.metadata, wanted)
                if groups:
                    read = snapshot.read_row_groups(groups).filter(condition)
                    tables.append(_in_event_schema(read))
        return pa.concat_tables(tables).to_pandas()

    def snapshot_written_at(self) -> str | None:
        """When the latest user-sorted history was written (`HistorySnapshot.written_at`)."""
        return self._snapshot_manifest().get("written_at")

    def _snapshot_manifest(self) -> dict:
        return self.files.read_json(BY_USER_MANIFEST) or {"parts": [], "event_files": []}

    def _since_snapshot(self, manifest: dict) -> list[str]:
        compacted = set(manifest["event_files"])
        return [file.name for file in self.files.list(EVENTS) if file.name not in compacted]

    def _event_table(self, names: list[str], condition: pc.Expression | None = None) -> pa.Table:
        """Event history files as one table in EVENT_SCHEMA, only the rows meeting
        `condition`: each file is filtered as it is read (its row groups by their statistics
        first), so the table takes the memory of those rows alone."""
        tables = [self._read_events(name, condition) for name in names]
        return pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()

    def _read_events(self, name: str, condition: pc.Expression | None = None) -> pa.Table:
        return pq.read_table(
            pa.BufferReader(self.files.read(name)), schema=EVENT_SCHEMA, filters=condition
        )


@dataclass(frozen=True)
class Portable(Generic[Resource]):
    """A resource as its class and configured values, which Spark's executors build again
    (`build`): a resource itself does not pickle (it holds Dagster's config schema, and in a
    run the run's context)."""

    kind: type[Resource]
    values: dict[str, Any]

    @classmethod
    def of(cls, resource: Resource) -> "Portable[Resource]":
        values = {name: getattr(resource, name) for name in type(resource).model_fields}
        return cls(
            type(resource),
            {
                name: cls.of(value) if isinstance(value, ConfigurableResource) else value
                for name, value in values.items()
            },
        )

    def build(self) -> Resource:
        return self.kind(
            **{
                name: value.build() if isinstance(value, Portable) else value
                for name, value in self.values.items()
            }
        )


def _parts(manifest: dict) -> list[str]:
    """The files of a user-sorted history, in user order; a manifest written before the
    history came in parts names its one file `snapshot`."""
    if "parts" in manifest:
        return manifest["parts"]
    return [manifest["snapshot"]] if manifest["snapshot"] else []


def _in_event_schema(table: pa.Table) -> pa.Table:
    """`table` with EVENT_SCHEMA's columns, those a file written before them lacks null (a
    row-group read, unlike `read_table`, takes no schema to fill them in)."""
    return pa.table(
        [
            table[field.name]
            if field.name in table.column_names
            else pa.nulls(len(table), field.type)
            for field in EVENT_SCHEMA
        ],
        schema=EVENT_SCHEMA,
    )


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
