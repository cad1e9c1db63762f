"""The landing zone (files users drop), its quarantine, and the ingested event history."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from dagster import ConfigurableResource

from reco_dagster.domain.events import (
    UnreadableFileError,
    is_event_file,
    read_table_file,
)

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
    """Local-disk layout under `data_dir`: landing/, quarantine/, lake/events/, lake/ingested/.

    Every file is ingested once, keyed by its content hash, so a file copied in twice (or
    renamed) is recognised; the ledger entry is written last and marks the file as done.
    Nothing in landing/ is ever modified or deleted.
    """

    data_dir: str

    @property
    def landing_dir(self) -> Path:
        return Path(self.data_dir) / "landing"

    @property
    def quarantine_dir(self) -> Path:
        return Path(self.data_dir) / "quarantine"

    @property
    def catalog_dir(self) -> Path:
        return Path(self.data_dir) / "catalog"

    @property
    def _events_dir(self) -> Path:
        return Path(self.data_dir) / "lake" / "events"

    @property
    def _ledger_dir(self) -> Path:
        return Path(self.data_dir) / "lake" / "ingested"

    def landed_files(self, only: Collection[str] | None = None) -> Iterator[LandingFile]:
        """Event files in the landing zone (any depth), in name order; `only` names a subset."""
        for name in self.landed_names():
            if only is None or name in only:
                yield LandingFile(name=name, data=(self.landing_dir / name).read_bytes())

    def landed_names(self) -> list[str]:
        """Event file names, in name order, without reading them."""
        if not self.landing_dir.exists():
            return []
        return [
            path.relative_to(self.landing_dir).as_posix()
            for path in sorted(self.landing_dir.rglob("*"))
            if path.is_file() and is_event_file(path.name) and not path.name.startswith(".")
        ]

    def stat(self, name: str) -> tuple[int, int]:
        """(size in bytes, modification time in ns) of a landing file."""
        info = (self.landing_dir / name).stat()
        return info.st_size, info.st_mtime_ns

    def is_empty(self) -> bool:
        return not self.landed_names()

    def ingested(self) -> dict[str, dict]:
        """Ledger entries by content hash."""
        if not self._ledger_dir.exists():
            return {}
        return {path.stem: json.loads(path.read_text()) for path in self._ledger_dir.glob("*.json")}

    def record_events(
        self, file: LandingFile, events: pd.DataFrame, rejected: pd.DataFrame
    ) -> None:
        """Good rows into the history, bad rows into quarantine, then mark the file done."""
        self._events_dir.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(
            events.assign(source_file=file.name), schema=EVENT_SCHEMA, preserve_index=False
        )
        pq.write_table(table, self._events_dir / f"{file.sha256}.parquet")
        if not rejected.empty:
            rows_dir = self.quarantine_dir / "rows"
            rows_dir.mkdir(parents=True, exist_ok=True)
            rejected.assign(source_file=file.name).to_csv(
                rows_dir / f"{_flat(file.name)}.{file.sha256[:12]}.csv", index=False
            )
        self._write_ledger(file, status="ingested", rows=len(events), rejected=len(rejected))

    def quarantine_file(self, file: LandingFile, reason: str) -> Path:
        """Keep a copy of a file that could not be read at all, with the reason beside it."""
        files_dir = self.quarantine_dir / "files"
        files_dir.mkdir(parents=True, exist_ok=True)
        copy = files_dir / f"{file.sha256[:12]}.{_flat(file.name)}"
        copy.write_bytes(file.data)
        copy.with_name(copy.name + ".reason.txt").write_text(reason + "\n")
        self._write_ledger(file, status="quarantined", rows=0, rejected=0, reason=reason)
        return copy

    def item_catalog(self) -> tuple[pd.DataFrame, list[str]]:
        """Item titles from `catalog/` files (item_id, title); unreadable files are listed."""
        frames, problems = [], []
        for path in sorted(self.catalog_dir.glob("*")) if self.catalog_dir.exists() else []:
            if not is_event_file(path.name):
                continue
            try:
                frame = read_table_file(path.name, path.read_bytes(), ("item_id", "title"))
            except UnreadableFileError as error:
                problems.append(f"{path.name}: {error}")
                continue
            frames.append(frame[["item_id", "title"]].astype("string"))
        if not frames:
            return pd.DataFrame({"item_id": [], "title": []}, dtype="string"), problems
        catalog = pd.concat(frames).dropna().drop_duplicates("item_id", keep="last")
        return catalog.reset_index(drop=True), problems

    def event_history(self) -> pd.DataFrame:
        """Every validated event ingested so far, with its source file."""
        return self._read_events(self._events_dir)

    def served_lists(self) -> pd.DataFrame:
        """The API's log of served lists: time, user_id, variant, version, items."""
        columns = ["time", "user_id", "variant", "version", "items"]
        logs = sorted((Path(self.data_dir) / "served").glob("served-*.jsonl"))
        frames = [
            pd.read_json(path, lines=True, dtype=False) for path in logs if path.stat().st_size
        ]
        if not frames:
            return pd.DataFrame(columns=columns)
        return pd.concat(frames, ignore_index=True).set_axis(columns, axis=1)

    def ingested_since(self, moment: str) -> pd.DataFrame:
        """The validated events of files ingested after `moment` (an ISO-8601 UTC time)."""
        return self._events_where(lambda entry: entry["ingested_at"] > moment)

    def events_of(self, names: Collection[str]) -> pd.DataFrame:
        """The validated events ingested from these landing files (any earlier run too)."""
        return self._events_where(lambda entry: entry["file"] in names)

    def _events_where(self, wanted: Callable[[dict], bool]) -> pd.DataFrame:
        return self._read_events(
            [
                self._events_dir / f"{digest}.parquet"
                for digest, entry in self.ingested().items()
                if entry["status"] == "ingested" and wanted(entry)
            ]
        )

    def user_history(self, user_ids: Collection[str]) -> pd.DataFrame:
        """Every ingested event of these users."""
        users = pa.array(list(user_ids), type=pa.string())
        return self._read_events(self._events_dir, pads.field("user_id").isin(users))

    @staticmethod
    def _read_events(source: Path | list[Path], condition: pads.Expression | None = None):
        """Event history files (a folder or a list) as one frame in EVENT_SCHEMA."""
        if not (source if isinstance(source, list) else source.exists()):
            return EVENT_SCHEMA.empty_table().to_pandas()
        events = pads.dataset(source, schema=EVENT_SCHEMA, format="parquet")
        return events.to_table(filter=condition).to_pandas()

    def _write_ledger(self, file: LandingFile, **entry: object) -> None:
        self._ledger_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "file": file.name,
            "size": len(file.data),
            "ingested_at": datetime.now(UTC).isoformat(),
            **entry,
        }
        (self._ledger_dir / f"{file.sha256}.json").write_text(json.dumps(record))


def _flat(name: str) -> str:
    return name.replace("/", "__")
