"""Stage 1: forgotten users erased from every file, then landing files → validated event
history, bad rows quarantined with reasons."""

from dagster import AssetExecutionContext, MaterializeResult, ResourceParam, asset
from dagster_pyspark import LazyPySparkResource

from resources.erasure import erase_forgotten_users
from resources.event_history import EventHistory
from resources.ingestion import EventWeights, IngestConfig, ingest_landed_files
from resources.landing_zone import LandingZone
from resources.served_log import ServedListLog
from resources.settings import DataEngine
from resources.store import RecommendationStore


@asset(group_name="ingest", kinds={"pandas"})
def erasure(
    context: AssetExecutionContext,
    landing_zone: LandingZone,
    event_history: EventHistory,
    served_log: ServedListLog,
    store: ResourceParam[RecommendationStore],
) -> MaterializeResult:
    """Takes the users whose erasure is pending (DELETE /users/{user_id}, or their events
    arriving again) out of every file, in place: the landing files holding their rows (each
    rewritten without them, or deleted when nothing else is left), the event history and its
    user-sorted copies (raw_events, history_by_user), quarantine, the served-list log, the
    lake's tables and models (interactions, the splits, the ranked lists, the fitted models'
    user side), the reasons in bookkeeping notes; then marks their tombstones erased, keeping
    only the key of each id. First in batch_retrain, and alone in forget_users."""
    taken = erase_forgotten_users(landing_zone, event_history, served_log, store, context.log.info)
    return MaterializeResult(metadata={name: int(count) for name, count in sorted(taken.items())})


@asset(group_name="ingest", kinds={"pandas", "spark"}, deps=[erasure])
def raw_events(
    context: AssetExecutionContext,
    config: IngestConfig,
    landing_zone: LandingZone,
    event_history: EventHistory,
    event_weights: EventWeights,
    store: ResourceParam[RecommendationStore],
    data_engine: DataEngine,
    pyspark: LazyPySparkResource,
) -> MaterializeResult:
    """Ingests every landing file not seen before: good rows join the event history, bad rows
    go to quarantine with a reason each, unreadable files are quarantined whole; forgotten
    users' rows are left out (`forgotten_user_rows`). Files are read on the driver, or on
    Spark's executors when the history grows large (`data_engine`)."""
    rules = config.rules(event_weights.event_types())
    scan = landing_zone.scan()
    events = event_history.estimated_events(scan.files)
    spark = data_engine.spark_to_prepare(events, pyspark)
    report = ingest_landed_files(
        landing_zone, event_history, store, rules, context.log.warning, scan, spark
    )
    # This retrain's lists hold these events: no micro-batch needs to write them.
    event_history.record_lists([report.contents[name] for name in report.ingested_files], None)
    context.log.info(
        f"Ingested {report.rows_ingested} events from {len(report.ingested_files)} new "
        f"file(s); {sum(report.reasons.values())} row(s) and {len(report.quarantined_files)} "
        "file(s) quarantined"
    )
    return MaterializeResult(
        metadata={
            **report.metadata(landing_zone),
            "files_in_history": event_history.ledger_size(),
            **data_engine.metadata(events, spark),
        }
    )
