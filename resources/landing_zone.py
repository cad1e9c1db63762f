"""The landing zone: the files users drop, the item catalog, quarantine, and the micro-batch's
attempts at landing files."""

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import date, timedelta
from pathlib import PurePosixPath

import pandas as pd
from dagster import ConfigurableResource, ResourceDependency

from reco_dagster.domain.catalog import catalog_table
from reco_dagster.domain.events import (
    UnreadableFileError,
    is_event_file,
    printable,
    read_table_file,
)
from reco_dagster.domain.forgetting import (
    Forgotten,
    Rewritten,
    file_without,
    quarantined_rows_without,
)
from resources.files import FileInfo, FileStore

LANDING = "landing/"
CATALOG = "catalog/"
QUARANTINE = "quarantine/"
ATTEMPTS = "lake/attempts/"
GIVEN_UP = "lake/given-up/"
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial")
ATTEMPT_TIMEOUT_S = 600.0
"""A micro-batch attempt not heard of for this long died (run monitoring and run retries
normally see to that sooner): the landing sensor asks for its files again."""


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
    """Folders in a file store: landing/ (the files users drop, any depth), catalog/ (item
    metadata), quarantine/ (bad rows, unreadable files, refusals, files given up) and the
    micro-batch's attempts at landing files (lake/attempts/, lake/given-up/).

    Nothing in landing/ is ever modified or deleted but by the erasure of forgotten users
    (`forget_in_landed`); what became of each file is in the event history's ledger
    (`EventHistory`).
    """

    files: ResourceDependency[FileStore]
    settle_s: float = 1.0
    """Ingest waits until a new file is this old, then takes it only if it is unchanged since
    it was listed: a file still being written waits for a later run."""
    watch_s: float = 4.0
    """How long a landing sensor tick keeps looking for new files before it hands the daemon's
    loop back: the daemon evaluates sensors at most every 5 s, and a file that lands while a
    tick watches is requested at the next look (WATCH_POLL_S), not at the next tick."""
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

    def begin_attempt(self, file: FileInfo) -> Attempt | None:
        """Count a micro-batch attempt at this version of a landing file, durably and before
        the work starts, so that an attempt whose process is killed counts too. None when
        this version was given up."""
        key = _name_key(file.name)
        given_up = self.files.read_json(f"{GIVEN_UP}{key}.json")
        if given_up is not None and given_up["version"] == file.version:
            return None
        earlier = self.files.read_json(f"{ATTEMPTS}{key}.json")
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

    def give_up(
        self,
        attempt: Attempt,
        file: FileInfo,
        reason: str,
        ledger_entry: Callable[[str], dict | None],
    ) -> str:
        """Stop micro-batch attempts at this version of a file: a copy in quarantine/files/
        with the reason beside it (the reason alone when the file cannot be read), the file
        left to batch_retrain. `ledger_entry` (`EventHistory.ledger_entry`) tells whether its
        events are in the history already. Returns where the reason is."""
        try:
            landed = self.read_landed(file)
        except OSError:
            landed = None
        if landed is None:
            where = self._reason_note(_name_key(file.name), file.name, f"{file.name}: {reason}")
        else:
            entry = ledger_entry(landed.sha256)
            if entry is not None and entry["status"] == "ingested":
                reason += (
                    f"; its {entry['rows']} events stay in the history and reach the lists "
                    "at the next batch_retrain"
                )
            else:
                reason += "; the next batch_retrain ingests it"
            where = self.quarantine_file(landed, reason) + ".reason.txt"
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
            note = self.files.read_json(listed.name)
            if note is not None and note.pop("retry_at") <= now:
                due.append(Attempt(**note))
        return due

    def _write_attempt(self, attempt: Attempt, retry_at: float) -> None:
        note = {**asdict(attempt), "retry_at": retry_at}
        self.files.write(f"{ATTEMPTS}{_name_key(attempt.file)}.json", json.dumps(note).encode())

    def quarantine_rows(self, file: LandingFile, rejected: pd.DataFrame) -> None:
        """A file's bad rows, each with its reason, into quarantine/rows/ (none: nothing)."""
        if not rejected.empty:
            text = printable(rejected.assign(source_file=file.name).to_csv(index=False))
            self.files.write(
                f"{QUARANTINE}rows/{_flat(file.name)}.{file.sha256[:12]}.csv", text.encode()
            )

    def quarantine_file(self, file: LandingFile, reason: str) -> str:
        """Keep a copy of a file in quarantine/files/, with the reason beside it; returns
        where the copy is."""
        copy = f"{QUARANTINE}files/{file.sha256[:12]}.{_flat(file.name)}"
        self.files.write(copy, file.data)
        self.files.write(copy + ".reason.txt", (reason + "\n").encode())
        return self.files.location(copy)

    def refuse(self, entry: Refusal) -> str:
        """Record why an entry is not read: a reason file, no copy; returns where it is."""
        return self._reason_note(entry.key, entry.name, f"{entry.name}: {entry.reason}")

    def _reason_note(self, key: str, name: str, text: str) -> str:
        note = f"{QUARANTINE}files/{key[:12]}.{_flat(name)}.reason.txt"
        self.files.write(note, (text + "\n").encode())
        return self.files.location(note)

    def forget_in_landed(self, name: str, forgotten: Forgotten) -> tuple[str, Rewritten] | None:
        """A landing file rewritten without forgotten users' rows (`file_without`), deleted
        when none of its rows is left: the content hash it had, and what became of it; None
        when there is no such file."""
        try:
            data = self.files.read(LANDING + name)
        except FileNotFoundError:
            return None
        rewritten = self._rewrite(LANDING + name, file_without(name, data, forgotten))
        return hashlib.sha256(data).hexdigest(), rewritten

    def forget_in_quarantine(self, forgotten: Forgotten) -> tuple[Counter[str], set[str]]:
        """Forgotten users out of quarantine: their rows from quarantine/rows/, their rows from
        the copies of files in quarantine/files/ (a copy that cannot be read, whole when it
        names one), their ids from the reasons. Returns what it took out, and the landing
        files the rows taken from quarantine/rows/ came from (they hold them still)."""
        taken: Counter[str] = Counter()
        sources: set[str] = set()
        for file in self.files.list(QUARANTINE):
            if file.name.endswith(".reason.txt"):
                taken["quarantine_notes_redacted"] += self.redact(file.name, forgotten)
                continue
            data = self.files.read(file.name)
            if file.name.startswith(f"{QUARANTINE}rows/"):
                kept, came_from = quarantined_rows_without(data.decode(), forgotten)
                rewritten = Rewritten(None if kept is None else kept.encode(), len(came_from))
                sources.update(came_from)
            else:
                rewritten = file_without(file.name, data, forgotten)
            self._rewrite(file.name, rewritten)
            taken["quarantined_rows_removed"] += rewritten.removed
            taken["quarantine_files_deleted"] += rewritten.removed > 0 and rewritten.data is None
        return taken, sources

    def redact(self, name: str, forgotten: Forgotten) -> bool:
        """Forgotten users' ids out of a note (a reason, a JSON record); whether it named one."""
        try:
            text = self.files.read(name).decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return False
        redacted = forgotten.redacted(text)
        if redacted != text:
            self.files.write(name, redacted.encode("utf-8", "surrogateescape"))
        return redacted != text

    def _rewrite(self, name: str, rewritten: Rewritten) -> Rewritten:
        if rewritten.removed and rewritten.data is None:
            self.files.delete(name)
        elif rewritten.removed:
            self.files.write(name, rewritten.data)
        return rewritten

    def add_catalog(self, name: str, data: bytes) -> str:
        self.files.write(CATALOG + name, data)
        return self.files.location(CATALOG + name)

    def catalog_files(self) -> list[FileInfo]:
        """The files of `catalog/` (any depth), in name order, the order they apply in; as in
        landing/, names starting with "_" or "." (files still being written) are left out."""
        return [
            file
            for file in self.files.list(CATALOG)
            if is_event_file(file.name) and not _hidden(file.name.removeprefix(CATALOG))
        ]

    def item_catalog(self) -> tuple[pd.DataFrame, list[str]]:
        """The item catalog (`catalog_table`: item_id, title, categories, available,
        attributes) from `catalog/` files; unreadable files and ignored values are listed.
        `attrs["read_at"]` is when the files were listed (Unix seconds): the store keeps a
        catalog only over one read earlier."""
        read_at = time.time()
        files, problems = [], []
        for file in self.catalog_files():
            try:
                rows = read_table_file(file.name, self.files.read(file.name), ("item_id",))
            except UnreadableFileError as error:
                problems.append(f"{file.name}: {error}")
                continue
            files.append((file.name, rows.frame))
        catalog, ignored = catalog_table(files)
        catalog.attrs["read_at"] = read_at
        return catalog, problems + ignored


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
