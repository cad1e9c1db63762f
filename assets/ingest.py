"""Stage 1: landing files → validated event history, bad rows quarantined with reasons."""

from collections import Counter

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from reco_dagster.domain.events import (
    UnreadableFileError,
    ValidationRules,
    read_event_file,
    validate_events,
)
from resources.landing_zone import LandingZone


class IngestConfig(Config):
    min_rating: float = 0.0
    max_rating: float = 5.0
    max_future_skew_s: float = 86_400.0


@asset(group_name="ingest", kinds={"pandas"})
def raw_events(
    context: AssetExecutionContext, config: IngestConfig, landing_zone: LandingZone
) -> MaterializeResult:
    """Ingests every landing file not seen before: good rows join the event history, bad rows
    go to quarantine with a reason each, unreadable files are quarantined whole."""
    rules = ValidationRules(config.min_rating, config.max_rating, config.max_future_skew_s)
    ledger = landing_zone.ingested()
    ingested_files, repeated_files, quarantined_files = [], [], []
    rows_ingested, reasons = 0, Counter[str]()
    for file in landing_zone.landed_files():
        earlier = ledger.get(file.sha256)
        if earlier is not None:
            if earlier["file"] != file.name:
                context.log.warning(
                    f"{file.name} has the same content as {earlier['file']}, ingested "
                    f"{earlier['ingested_at']}; skipped"
                )
                repeated_files.append(file.name)
            continue
        try:
            frame = read_event_file(file.name, file.data)
        except UnreadableFileError as error:
            copy = landing_zone.quarantine_file(file, str(error))
            context.log.warning(f"Quarantined {file.name} whole: {error} (copy: {copy})")
            quarantined_files.append(f"{file.name}: {error}")
            continue
        validated = validate_events(frame, rules)
        landing_zone.record_events(file, validated.events, validated.rejected)
        ledger[file.sha256] = {"file": file.name}
        ingested_files.append(file.name)
        rows_ingested += len(validated.events)
        if not validated.rejected.empty:
            file_reasons = Counter(validated.rejected["reason"])
            reasons.update(file_reasons)
            context.log.warning(
                f"{file.name}: {len(validated.rejected)} row(s) quarantined "
                f"({', '.join(f'{n}x {why}' for why, n in file_reasons.most_common())}); "
                f"{len(validated.events)} good row(s) ingested"
            )
    rows_quarantined = sum(reasons.values())
    context.log.info(
        f"Ingested {rows_ingested} events from {len(ingested_files)} new file(s); "
        f"{rows_quarantined} row(s) and {len(quarantined_files)} file(s) quarantined"
    )
    return MaterializeResult(
        metadata={
            "new_files": len(ingested_files),
            "rows_ingested": rows_ingested,
            "rows_quarantined": rows_quarantined,
            "files_quarantined": len(quarantined_files),
            "files_repeated": len(repeated_files),
            "files_in_history": len(ledger),
            "quarantine_reasons": MetadataValue.md(_reasons_table(reasons)),
            "quarantined_files": MetadataValue.md(
                "\n".join(f"- {line}" for line in quarantined_files) or "none"
            ),
            "quarantine_dir": MetadataValue.path(str(landing_zone.quarantine_dir)),
        }
    )


def _reasons_table(reasons: Counter[str]) -> str:
    if not reasons:
        return "no rows quarantined"
    lines = ["| reason | rows |", "|---|---|"]
    lines += [f"| {why} | {n} |" for why, n in reasons.most_common()]
    return "\n".join(lines)
