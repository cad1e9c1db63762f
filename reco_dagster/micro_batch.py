"""Micro-batch scoring: new landing files → the affected users' lists in the live version,
in seconds, without Spark and without retraining."""

import time

import pandas as pd
from dagster import Failure, OpExecutionContext, ResourceParam, in_process_executor, job, op

from resources.ingestion import IngestConfig, ingest_landed_files
from resources.landing_zone import LandingZone
from resources.live_lists import LiveVersionChangedError, refresh_live_users
from resources.model_archive import ModelArchive
from resources.store import RecommendationStore

MICRO_BATCH_TAGS = {"reco/run": "micro-batch"}


class MicroBatchConfig(IngestConfig):
    files: list[str] | None = None
    """Landing files to handle (the sensor names them); None: every file not ingested yet."""


@op
def score_new_events(
    context: OpExecutionContext,
    config: MicroBatchConfig,
    landing_zone: LandingZone,
    store: ResourceParam[RecommendationStore],
    archive: ModelArchive,
) -> None:
    """Validates and ingests the new files (the batch path's rules and quarantine), folds the
    affected users into the live model, re-ranks their unseen items, and writes their lists
    into the live version, atomically per user."""
    started = time.perf_counter()
    report = ingest_landed_files(
        landing_zone, config.rules(), context.log.warning, only=config.files or None
    )
    ingest_ms = round(1000 * (time.perf_counter() - started), 1)
    metadata = report.metadata(landing_zone)
    # The named files' events, also when an earlier attempt ingested them and then failed.
    if config.files:
        new_events = landing_zone.events_of(config.files)
    else:
        new_events = pd.concat(report.new_events) if report.new_events else pd.DataFrame()
    if new_events.empty:
        context.log.info("No new events in these files")
        context.add_output_metadata({**metadata, "users_refreshed": 0})
        return
    try:
        refresh = refresh_live_users(landing_zone, store, archive, new_events, context.log.warning)
    except LiveVersionChangedError as error:
        raise Failure(f"{error}; the sensor retries") from error
    if refresh.version is None:
        context.log.warning("No model is live: the events wait in the history for batch_retrain")
        context.add_output_metadata({**metadata, "users_refreshed": 0})
        return
    counts = refresh.counts
    context.log.info(
        f"Refreshed {counts['users_refreshed']} users in {refresh.version} from "
        f"{counts['events_applied']} events ({counts['unknown_item_events']} on unknown items)"
    )
    context.add_output_metadata(
        {
            **metadata,
            **counts,
            "model_version": refresh.version,
            "ingest_ms": ingest_ms,
            **refresh.stages_ms,
        }
    )


@job(executor_def=in_process_executor, tags=MICRO_BATCH_TAGS)
def micro_batch():
    """Refresh the lists of just the users with new events (launched by landing_zone_sensor)."""
    score_new_events()
