"""Stage 1: landing files → validated event history, bad rows quarantined with reasons."""

from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import pandas as pd
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from reco_dagster.domain.events import (
    UnreadableFileError,
    ValidationRules,
    read_event_file,
    validate_events,
)
from resources.landing_zone import QUARANTINE, LandingZone


class IngestConfig(Config):
    min_rating: float = 0.0
    max_rating: float = 5.0
    max_future_skew_s: float = 86_400.0

    def rules(self) -> ValidationRules:
        return ValidationRules(self.min_rating, self.max_rating, self.max_future_skew_s)


@dataclass
class IngestReport:
    ingested_files: list[str] = field(default_factory=list)
    repeated_files: list[str] = field(default_factory=list)
    quarantined_files: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    new_events: list[pd.DataFrame] = field(default_factory=list)
    files_in_history: int = 0

    @property
    def rows_ingested(self) -> int:
        return sum(len(events) for events in self.new_events)

    def metadata(self, landing_zone: LandingZone) -> dict:
        return {
            "new_files": len(self.ingested_files),
            "rows_ingested": self.rows_ingested,
            "rows_quarantined": sum(self.reasons.values()),
            "files_quarantined": len(self.quarantined_files),
            "files_repeated": len(self.repeated_files),
            "files_in_history": self.files_in_history,
            "quarantine_reasons": MetadataValue.md(_reasons_table(self.reasons)),
            "quarantined_files": MetadataValue.md(
                "\n".join(f"- {line}" for line in self.quarantined_files) or "none"
            ),
            "quarantine_dir": MetadataValue.path(landing_zone.where(QUARANTINE)),
        }


def ingest_landed_files(
    landing_zone: LandingZone,
    rules: ValidationRules,
    warn: Callable[[str], None],
    only: Collection[str] | None = None,
) -> IngestReport:
    """Ingest every landing file (or those named in `only`) not ingested before: good rows
    join the event history, bad rows go to quarantine with a reason each, unreadable files
    are quarantined whole. The one ingest path for the batch and the micro-batch."""
    ledger = landing_zone.ingested()
    report = IngestReport()
    for file in landing_zone.landed_files(only):
        earlier = ledger.get(file.sha256)
        if earlier is not None:
            if earlier["file"] != file.name:
                warn(
                    f"{file.name} has the same content as {earlier['file']}, ingested "
                    f"{earlier['ingested_at']}; skipped"
                )
                report.repeated_files.append(file.name)
            continue
        try:
            frame = read_event_file(file.name, file.data)
        except UnreadableFileError as error:
            copy = landing_zone.quarantine_file(file, str(error))
            warn(f"Quarantined {file.name} whole: {error} (copy: {copy})")
            report.quarantined_files.append(f"{file.name}: {error}")
            continue
        validated = validate_events(frame, rules)
        landing_zone.record_events(file, validated.events, validated.rejected)
        ledger[file.sha256] = {"file": file.name}
        report.ingested_files.append(file.name)
        report.new_events.append(validated.events)
        if not validated.rejected.empty:
            file_reasons = Counter(validated.rejected["reason"])
            report.reasons.update(file_reasons)
            warn(
                f"{file.name}: {len(validated.rejected)} row(s) quarantined "
                f"({', '.join(f'{n}x {why}' for why, n in file_reasons.most_common())}); "
                f"{len(validated.events)} good row(s) ingested"
            )
    report.files_in_history = len(ledger)
    return report


@asset(group_name="ingest", kinds={"pandas"})
def raw_events(
    context: AssetExecutionContext, config: IngestConfig, landing_zone: LandingZone
) -> MaterializeResult:
    """Ingests every landing file not seen before: good rows join the event history, bad rows
    go to quarantine with a reason each, unreadable files are quarantined whole."""
    report = ingest_landed_files(landing_zone, config.rules(), context.log.warning)
    context.log.info(
        f"Ingested {report.rows_ingested} events from {len(report.ingested_files)} new "
        f"file(s); {sum(report.reasons.values())} row(s) and {len(report.quarantined_files)} "
        "file(s) quarantined"
    )
    return MaterializeResult(metadata=report.metadata(landing_zone))


def _reasons_table(reasons: Counter[str]) -> str:
    if not reasons:
        return "no rows quarantined"
    lines = ["| reason | rows |", "|---|---|"]
    lines += [f"| {why} | {n} |" for why, n in reasons.most_common()]
    return "\n".join(lines)
