"""Ingesting landing files: the one path the batch job's `raw_events` and the micro-batch
share. Good rows join the event history, bad rows go to quarantine with a reason each, and a
file that cannot be read at all is quarantined whole."""

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

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
from reco_dagster.domain.forgetting import without_forgotten_rows
from resources.deployment import event_weights
from resources.event_history import EventHistory
from resources.files import FileInfo
from resources.landing_zone import QUARANTINE, LandingScan, LandingZone
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
) -> IngestReport:
    """Ingest every file of `scan` (default: the whole landing zone) not ingested before:
    good rows join the event history, bad rows go to quarantine with a reason each,
    unreadable files are quarantined whole, files still being written wait for a later run.
    Links, special files and unusable names are refused. The ledger is looked up file by
    file, so the work follows the files at hand, not all files ever ingested. The one ingest
    path for the batch and the micro-batch. Each file's ledger entry in the event history is
    written last: it marks the file done, so a run that dies before it leaves the file to a
    later run.

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
    for listed in scan.files:
        try:
            file = landing_zone.read_landed(listed)
        except FileNotFoundError:  # removed since the listing: nothing to ingest
            continue
        except OSError as error:
            # Not recorded in the ledger: a permission fixed later lets a later run read it.
            warn(f"Cannot read {listed.name}: {error}")
            report.quarantined_files.append(f"{listed.name}: cannot be read: {error}")
            continue
        if file is None:
            _defer(report, warn, listed.name, "it changed while being read")
            continue
        earlier = event_history.ledger_entry(file.sha256)
        if earlier is not None:
            if earlier["file"] != file.name:
                warn(
                    f"{file.name} has the same content as {earlier['file']}, ingested "
                    f"{earlier['ingested_at']}; skipped"
                )
                report.repeated_files.append(file.name)
            report.contents[file.name] = file.sha256
            continue
        try:
            rows = read_event_file(file.name, file.data)
            if rows.unterminated and _age_s(file.modified_ns) < landing_zone.unterminated_settle_s:
                _defer(report, warn, file.name, "its last line has no newline yet")
                continue
            kept, forgotten_users = without_forgotten_rows(rows, forgotten)
            validated = validate_events(kept, rules)
        except Exception as error:
            # Whatever in one file trips the reader (names, encodings, types), the others go on.
            why = printable(str(error) if isinstance(error, UnreadableFileError) else repr(error))
            copy = landing_zone.quarantine_file(file, why)
            event_history.record_quarantined(file, why)
            warn(f"Quarantined {file.name} whole: {why} (copy: {copy})")
            report.quarantined_files.append(f"{file.name}: {why}")
        else:
            landing_zone.quarantine_rows(file, validated.rejected)
            left_out = len(rows.frame) + len(rows.broken) - len(kept.frame) - len(kept.broken)
            event_history.record_events(file, validated.events, len(validated.rejected), left_out)
            report.forgotten_rows += left_out
            found |= forgotten_users
            report.ingested_files.append(file.name)
            report.rows_ingested += len(validated.events)
            if not validated.rejected.empty:
                file_reasons = Counter(validated.rejected["reason"])
                report.reasons.update(file_reasons)
                warn(
                    f"{file.name}: {len(validated.rejected)} row(s) quarantined "
                    f"({', '.join(f'{n}x {why}' for why, n in file_reasons.most_common())}); "
                    f"{len(validated.events)} good row(s) ingested"
                )
        report.contents[file.name] = file.sha256
    # A user forgotten while these files were read: out of what this run ingested, too.
    later = store.forgotten()
    if later.keys - forgotten.keys:
        for name in report.ingested_files:
            found |= event_history.forget_in_events(report.contents[name], later)
    if found:
        store.reopen_tombstones(found.values())
    return report


def _age_s(modified_ns: int) -> float:
    return (time.time_ns() - modified_ns) / 1e9


def _wait_to_settle(files: list[FileInfo], settle_s: float) -> None:
    """Sleep until the youngest file is `settle_s` old: the read that follows is the second
    look, and a file changed since the listing waits for a later run. A modification time in
    the future (another machine's clock) is no reason to wait."""
    ages = [_age_s(file.modified_ns) for file in files]
    time.sleep(max((settle_s - age for age in ages if 0 <= age < settle_s), default=0.0))


def _defer(report: IngestReport, warn: Callable[[str], None], name: str, why: str) -> None:
    warn(f"{name} is still being written ({why}); a later run reads it")
    report.deferred_files.append(f"{name}: {why}")


def _listing(lines: list[str]) -> MetadataValue:
    return MetadataValue.md("\n".join(f"- {line}" for line in lines) or "none")


def _reasons_table(reasons: Counter[str]) -> str:
    if not reasons:
        return "no rows quarantined"
    lines = ["| reason | rows |", "|---|---|"]
    lines += [f"| {why} | {n} |" for why, n in reasons.most_common()]
    return "\n".join(lines)
