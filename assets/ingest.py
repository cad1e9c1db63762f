"""Stage 1: landing files → validated event history, bad rows quarantined with reasons."""

from dagster import AssetExecutionContext, MaterializeResult, ResourceParam, asset

from resources.event_history import EventHistory
from resources.ingestion import EventWeights, IngestConfig, ingest_landed_files
from resources.landing_zone import LandingZone
from resources.store import RecommendationStore


@asset(group_name="ingest", kinds={"pandas"})
def raw_events(
    context: AssetExecutionContext,
    config: IngestConfig,
    landing_zone: LandingZone,
    event_history: EventHistory,
    event_weights: EventWeights,
    store: ResourceParam[RecommendationStore],
) -> MaterializeResult:
    """Ingests every landing file not seen before: good rows join the event history, bad rows
    go to quarantine with a reason each, unreadable files are quarantined whole; forgotten
    users' rows are left out (`forgotten_user_rows`)."""
    rules = config.rules(event_weights.event_types())
    report = ingest_landed_files(landing_zone, event_history, store, rules, context.log.warning)
    # This retrain's lists hold these events: no micro-batch needs to write them.
    event_history.record_lists([report.contents[name] for name in report.ingested_files], None)
    context.log.info(
        f"Ingested {report.rows_ingested} events from {len(report.ingested_files)} new "
        f"file(s); {sum(report.reasons.values())} row(s) and {len(report.quarantined_files)} "
        "file(s) quarantined"
    )
    return MaterializeResult(
        metadata={**report.metadata(landing_zone), "files_in_history": event_history.ledger_size()}
    )
