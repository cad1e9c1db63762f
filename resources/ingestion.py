"""Ingesting landing files: the one path the batch job's `raw_events` and the micro-batch
share. Good rows join the event history, bad rows go to quarantine with a reason each, and a
file that cannot be read at all is quarantined whole."""

import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import pandas as pd
from dagster import Config, ConfigurableResource, MetadataValue
from pydantic import Field, field_validator

from reco_dagster.domain.events import (
    UnreadableFileError,
    ValidationRules,
    checked_event_weights,
    event_types_weighed_by,
    printable,
    read_event_file,
    validate_events,
)
from reco_dagster.domain.forgetting import Forgotten, without_forgotten_rows
from resources.deployment import event_weights
from resources.event_history import EventHistory, Portable
from resources.files import FileInfo
from resources.landing_zone import QUARANTINE, LandingFile, LandingScan, LandingZone
from resources.store import RecommendationStore


class IngestConfig(Config):
    min_rating: float = 0.0
    max_rating: float = 5.0
    max_future_skew_s: float = 86_400.0

    def rules(self, event_types: Collection[str] = ValidationRules.event_types) -> ValidationRules:
        return ValidationRules(
            self.min_rating, self.max_rating, self.max_future_skew_s, frozenset(event_types)
        )


class EventWeights(ConfigurableResource):
    """What an event of each type (the contract's optional `event_type` column) says about a
    user's interest in the item, relative to the other types: only the ratios matter, the top
    weight counts like a top rating. A type not named here (nor `rating`, whose events count
    by their rating) is quarantined. Here rather than with the model settings: ingesting
    needs the types, and the streaming location loads no Spark."""

    weights: dict[str, float] = Field(
        default_factory=event_weights,
        description="Weight per event type; by default RECO_EVENT_WEIGHTS (JSON), which the "
        "API's POST /events validates with too.",
    )

    @field_validator("weights")
    @classmethod
    def _positive_and_lower_case(cls, weights: dict[str, float]) -> dict[str, float]:
        return checked_event_weights(weights)

    def event_types(self) -> frozenset[str]:
        """The types an event may carry."""
        return event_types_weighed_by(self.weights)


@dataclass
class IngestReport:
    ingested_files: list[str] = field(default_factory=list)
    repeated_files: list[str] = field(default_factory=list)
    quarantined_files: list[str] = field(default_factory=list)
    deferred_files: list[str] = field(default_factory=list)
    unsupported_files: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    contents: dict[str, str] = field(default_factory=dict)
    """Content hash of each landing file taken (ingested now or before, or quarantined), by
    name: the files not left for a later run."""
    forgotten_rows: int = 0
    """Rows of forgotten users left out: never in the history, never quarantined."""
    rows_ingested: int = 0

    def metadata(self, landing_zone: LandingZone) -> dict:
        return {
            "new_files": len(self.ingested_files),
            "rows_ingested": self.rows_ingested,
            "rows_quarantined": sum(self.reasons.values()),
            "files_quarantined": len(self.quarantined_files),
            "files_repeated": len(self.repeated_files),
            "files_deferred": len(self.deferred_files),
            "files_unsupported": len(self.unsupported_files),
            "forgotten_user_rows": self.forgotten_rows,
            "quarantine_reasons": MetadataValue.md(_reasons_table(self.reasons)),
            "quarantined_files": _listing(self.quarantined_files),
            "deferred_files": _listing(self.deferred_files),
            "unsupported_files": _listing(self.unsupported_files),
            "quarantine_dir": MetadataValue.path(landing_zone.where(QUARANTINE)),
        }


def ingest_landed_files(
    landing_zone: LandingZone,
    event_history: EventHistory,
    store: RecommendationStore,
    rules: ValidationRules,
    warn: Callable[[str], None],
    scan: LandingScan | None = None,
    spark: Any | None = None,
) -> IngestReport:
    """Ingest every file of `scan` (default: the whole landing zone) not ingested before:
    good rows join the event history, bad rows go to quarantine with a reason each,
    unreadable files are quarantined whole, files still being written wait for a later run.
    Links, special files and unusable names are refused. The ledger is looked up file by
    file, so the work follows the files at hand, not all files ever ingested. The one ingest
    path for the batch and the micro-batch. Each file's ledger entry in the event history is
    written last: it marks the file done, so a run that dies before it leaves the file to a
    later run.

    Files are read and validated on the driver, one after the other, or with a SparkSession
    `spark` on its executors, one file per task (`FileIngest.outcomes_on_spark`): the same
    code either way, and either way the driver writes the ledger from each file's
    `FileOutcome`.

    Rows of users with a tombstone in `store` are left out before validation (neither
    history nor quarantine), and their tombstones are pending again: the landing files still
    hold those rows, for the erasure to take out."""
    report = IngestReport()
    forgotten = store.forgotten()
    found: dict[str, str] = {}
    scan = landing_zone.scan() if scan is None else scan
    for entry in scan.refused:
        if event_history.ledger_entry(entry.key) is None:
            note = landing_zone.refuse(entry)
            event_history.record_refusal(entry)
            warn(f"Refused {entry.name}: {entry.reason} (reason: {note})")
            report.quarantined_files.append(f"{entry.name}: {entry.reason}")
    if scan.unsupported:
        report.unsupported_files = scan.unsupported
        warn(
            f"{len(scan.unsupported)} file(s) in the landing zone are not event files "
            f"(.csv, .jsonl, .parquet, .avro, each also .gz or .zst) and were left alone: "
            f"{', '.join(scan.unsupported[:20])}"
        )
    _wait_to_settle(scan.files, landing_zone.settle_s)
    ingest = FileIngest(landing_zone, event_history, rules, forgotten)
    outcomes = (
        ingest.outcomes_on_driver(scan.files)
        if spark is None
        else ingest.outcomes_on_spark(spark, scan.files)
    )
    for outcome in outcomes:
        found |= _record(event_history, report, warn, outcome)
    # A user forgotten while these files were read: out of what this run ingested, too.
    later = store.forgotten()
    if later.keys - forgotten.keys:
        for name in report.ingested_files:
            found |= event_history.forget_in_events(report.contents[name], later)
    if found:
        store.reopen_tombstones(found.values())
    return report


Status = Literal[
    "gone", "unreadable", "deferred", "read", "seen", "repeated", "quarantined", "ingested"
]


@dataclass(frozen=True)
class FileOutcome:
    """What became of one listed landing file: all the driver needs to write its ledger entry
    and report it, wherever the file was read."""

    name: str
    status: Status
    """gone: removed since the listing; unreadable: the store cannot open it; deferred: still
    being written; read: hashed, not looked into yet; seen, repeated: its content was taken
    before, under this name or another; quarantined: whole; ingested: its good rows joined
    the history."""
    sha256: str = ""
    size: int = 0
    reason: str = ""
    """Why the store cannot open it, why it waits, why it was quarantined whole, or which
    file had its content first."""
    copy: str = ""
    """Where the copy of a file quarantined whole is."""
    rows: int = 0
    """Good rows ingested."""
    rejected: dict[str, int] = field(default_factory=dict)
    """Rows quarantined, by reason."""
    forgotten_rows: int = 0
    """Rows of forgotten users left out."""
    forgotten_users: dict[str, str] = field(default_factory=dict)
    """Those users' ids, by key."""


@dataclass(frozen=True)
class FileIngest:
    """Reading, validating and writing one landing file at a time, as the driver or a Spark
    executor does it; the ledger is the driver's."""

    landing_zone: LandingZone
    event_history: EventHistory
    rules: ValidationRules
    forgotten: Forgotten

    def outcomes_on_driver(self, files: list[FileInfo]) -> Iterator[FileOutcome]:
        """Each file's outcome, one file after the other on the driver. Lazy: the caller
        writes a file's ledger entry before the next file is looked up, so that the second of
        two equal files is a repeat."""
        for listed in files:
            file = self._take(listed)
            if isinstance(file, FileOutcome):
                yield file
            else:
                yield self._taken_before(file.name, file.sha256) or self._ingest(file)

    def outcomes_on_spark(self, spark: Any, files: list[FileInfo]) -> list[FileOutcome]:
        """Each file's outcome, in `files`' order, worked out on Spark's executors in two
        passes of one file per task: the first hashes the files, so that files ingested
        before, and the second of two equal files, are known before anything is written; the
        second ingests the others, each checked to be what was hashed. Only outcomes reach
        the driver."""
        outcomes: dict[str, FileOutcome] = {}
        first_with: dict[str, str] = {}
        hashed = _per_file_on_spark(spark, self, [(file, "") for file in files], FileIngest._hash)
        for outcome in hashed:
            if outcome.status == "read":
                first = first_with.setdefault(outcome.sha256, outcome.name)
                outcome = self._taken_before(outcome.name, outcome.sha256) or (
                    outcome
                    if first == outcome.name
                    else replace(outcome, status="repeated", reason=f"{first}, taken in this run")
                )
            outcomes[outcome.name] = outcome
        new = [
            (file, outcomes[file.name].sha256)
            for file in files
            if outcomes[file.name].status == "read"
        ]
        for outcome in _per_file_on_spark(spark, self, new, FileIngest._ingest_hashed):
            outcomes[outcome.name] = outcome
        return [outcomes[file.name] for file in files]

    def _take(self, listed: FileInfo) -> LandingFile | FileOutcome:
        """A listed file's bytes, or why there are none to ingest."""
        try:
            file = self.landing_zone.read_landed(listed)
        except FileNotFoundError:  # removed since the listing: nothing to ingest
            return FileOutcome(listed.name, "gone")
        except OSError as error:
            return FileOutcome(listed.name, "unreadable", reason=str(error))
        return _changed(listed.name) if file is None else file

    def _hash(self, listed: FileInfo, _: str) -> FileOutcome:
        file = self._take(listed)
        if isinstance(file, FileOutcome):
            return file
        return FileOutcome(file.name, "read", file.sha256, len(file.data))

    def _ingest_hashed(self, listed: FileInfo, sha256: str) -> FileOutcome:
        file = self._take(listed)
        if isinstance(file, FileOutcome):
            return file
        return self._ingest(file) if file.sha256 == sha256 else _changed(file.name)

    def _taken_before(self, name: str, sha256: str) -> FileOutcome | None:
        """A repeat when the ledger has this content already (None: it has not)."""
        earlier = self.event_history.ledger_entry(sha256)
        if earlier is None:
            return None
        if earlier["file"] == name:
            return FileOutcome(name, "seen", sha256)
        return FileOutcome(
            name, "repeated", sha256, reason=f"{earlier['file']}, ingested {earlier['ingested_at']}"
        )

    def _ingest(self, file: LandingFile) -> FileOutcome:
        """A new file's good rows into the history and its bad rows into quarantine, or the
        file quarantined whole."""
        taken = FileOutcome(file.name, "ingested", file.sha256, len(file.data))
        try:
            rows = read_event_file(file.name, file.data)
            settle_s = self.landing_zone.unterminated_settle_s
            if rows.unterminated and _age_s(file.modified_ns) < settle_s:
                return replace(taken, status="deferred", reason="its last line has no newline yet")
            kept, forgotten_users = without_forgotten_rows(rows, self.forgotten)
            validated = validate_events(kept, self.rules)
        except Exception as error:
            # Whatever in one file trips the reader (names, encodings, types), the others go on.
            why = printable(str(error) if isinstance(error, UnreadableFileError) else repr(error))
            copy = self.landing_zone.quarantine_file(file, why)
            return replace(taken, status="quarantined", reason=why, copy=copy)
        self.landing_zone.quarantine_rows(file, validated.rejected)
        self.event_history.write_events(file, validated.events)
        return replace(
            taken,
            rows=len(validated.events),
            rejected=dict(Counter(validated.rejected["reason"])),
            forgotten_rows=len(rows.frame) + len(rows.broken) - len(kept.frame) - len(kept.broken),
            forgotten_users=forgotten_users,
        )


def _per_file_on_spark(
    spark: Any,
    ingest: FileIngest,
    files: list[tuple[FileInfo, str]],
    step: Callable[[FileIngest, FileInfo, str], FileOutcome],
) -> list[FileOutcome]:
    """`step` of `ingest` on each (file, content hash) on Spark's executors, one file per task
    (mapInPandas over a DataFrame of their names), in `files`' order; each outcome travels
    as JSON."""
    if not files:
        return []
    zone, history = Portable.of(ingest.landing_zone), Portable.of(ingest.event_history)
    rules, forgotten = ingest.rules, ingest.forgotten
    rows = [(json.dumps(asdict(file)), digest) for file, digest in files]
    names = spark.createDataFrame(
        spark.sparkContext.parallelize(rows, len(rows)), "file string, sha256 string"
    )

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        here = FileIngest(zone.build(), history.build(), rules, forgotten)
        for batch in batches:
            outcomes = [
                step(here, FileInfo(**json.loads(file)), digest)
                for file, digest in zip(batch["file"], batch["sha256"], strict=True)
            ]
            yield pd.DataFrame({"outcome": [json.dumps(asdict(done)) for done in outcomes]})

    return [
        FileOutcome(**json.loads(row.outcome))
        for row in names.mapInPandas(run, "outcome string").collect()
    ]


def _changed(name: str) -> FileOutcome:
    return FileOutcome(name, "deferred", reason="it changed while being read")


def _record(
    event_history: EventHistory,
    report: IngestReport,
    warn: Callable[[str], None],
    outcome: FileOutcome,
) -> dict[str, str]:
    """A file's outcome into the ledger (last: it marks the file done) and the report; returns
    the forgotten users whose rows it held, by key."""
    name, status = outcome.name, outcome.status
    if status == "unreadable":
        # Not recorded in the ledger: a permission fixed later lets a later run read it.
        warn(f"Cannot read {name}: {outcome.reason}")
        report.quarantined_files.append(f"{name}: cannot be read: {outcome.reason}")
    elif status == "deferred":
        warn(f"{name} is still being written ({outcome.reason}); a later run reads it")
        report.deferred_files.append(f"{name}: {outcome.reason}")
    elif status == "repeated":
        warn(f"{name} has the same content as {outcome.reason}; skipped")
        report.repeated_files.append(name)
    elif status == "quarantined":
        event_history.record_quarantined(outcome.sha256, name, outcome.size, outcome.reason)
        warn(f"Quarantined {name} whole: {outcome.reason} (copy: {outcome.copy})")
        report.quarantined_files.append(f"{name}: {outcome.reason}")
    elif status == "ingested":
        rejected = sum(outcome.rejected.values())
        event_history.record_ingested(
            outcome.sha256, name, outcome.size, outcome.rows, rejected, outcome.forgotten_rows
        )
        report.forgotten_rows += outcome.forgotten_rows
        report.ingested_files.append(name)
        report.rows_ingested += outcome.rows
        if rejected:
            reasons = Counter(outcome.rejected)
            report.reasons.update(reasons)
            warn(
                f"{name}: {rejected} row(s) quarantined "
                f"({', '.join(f'{n}x {why}' for why, n in reasons.most_common())}); "
                f"{outcome.rows} good row(s) ingested"
            )
    if status in ("seen", "repeated", "quarantined", "ingested"):
        report.contents[name] = outcome.sha256
    return outcome.forgotten_users


def _age_s(modified_ns: int) -> float:
    return (time.time_ns() - modified_ns) / 1e9


def _wait_to_settle(files: list[FileInfo], settle_s: float) -> None:
    """Sleep until the youngest file is `settle_s` old: the read that follows is the second
    look, and a file changed since the listing waits for a later run. A modification time in
    the future (another machine's clock) is no reason to wait."""
    ages = [_age_s(file.modified_ns) for file in files]
    time.sleep(max((settle_s - age for age in ages if 0 <= age < settle_s), default=0.0))


def _listing(lines: list[str]) -> MetadataValue:
    return MetadataValue.md("\n".join(f"- {line}" for line in lines) or "none")


def _reasons_table(reasons: Counter[str]) -> str:
    if not reasons:
        return "no rows quarantined"
    lines = ["| reason | rows |", "|---|---|"]
    lines += [f"| {why} | {n} |" for why, n in reasons.most_common()]
    return "\n".join(lines)
