"""Micro-batch scoring: new landing files → the affected users' lists in the live version,
in seconds, without Spark and without retraining."""

import time
from collections.abc import Callable

from dagster import (
    Failure,
    OpExecutionContext,
    ResourceParam,
    RetryPolicy,
    in_process_executor,
    job,
    op,
)

from resources.event_history import EventHistory
from resources.files import FileInfo
from resources.ingestion import EventWeights, IngestConfig, IngestReport, ingest_landed_files
from resources.landing_zone import ATTEMPT_TIMEOUT_S, Attempt, LandingScan, LandingZone
from resources.live_lists import LiveVersionChangedError, refresh_live_users
from resources.model_archive import ModelArchive
from resources.store import RecommendationStore

MICRO_BATCH_TAGS = {
    "reco/run": "micro-batch",
    # With run monitoring on (dagster.yaml), a run whose process vanished with its code
    # server is failed after this long, and run retries start it again; until then it would
    # hold the one micro-batch slot.
    "dagster/max_runtime": str(int(ATTEMPT_TIMEOUT_S)),
}


class MicroBatchConfig(IngestConfig):
    files: list[str] | None = None
    """Landing files to handle (the sensor names them); None: every landing file."""


@op(retry_policy=RetryPolicy(max_retries=2, delay=1))
def score_new_events(
    context: OpExecutionContext,
    config: MicroBatchConfig,
    landing_zone: LandingZone,
    event_history: EventHistory,
    event_weights: EventWeights,
    store: ResourceParam[RecommendationStore],
    archive: ModelArchive,
) -> None:
    """Validates and ingests the new files (the batch path's rules and quarantine), folds the
    affected users into the live model, re-ranks their unseen items, and writes their lists
    into the live version, atomically per user. A file is done once its users' lists are
    written (the ledger says so); each attempt at it is counted first, and a file whose
    attempts keep failing is given up after `max_attempts` (quarantined with the reason)."""
    if config.files is None:
        scan = landing_zone.scan()
    else:
        scan = landing_zone.scan_named(config.files)
        # A name that is gone (or not an event file) has nothing left to attempt.
        for name in set(config.files) - {file.name for file in scan.files}:
            landing_zone.end_attempts(name)
    attempts = _begin_attempts(landing_zone, event_history, scan.files, context.log.warning)
    try:
        report = _score(
            context,
            config,
            landing_zone,
            event_history,
            event_weights,
            store,
            archive,
            LandingScan([file for file, _ in attempts], scan.refused, scan.unsupported),
        )
    except Exception as error:
        left = _after_failure(
            landing_zone, event_history, attempts, repr(error), context.log.warning
        )
        if not left:
            raise Failure(
                f"{error!r}; every file of this run was given up (see quarantine/files/)",
                allow_retries=False,
            ) from error
        raise
    for file, attempt in attempts:
        if file.name in report.contents:
            landing_zone.end_attempts(file.name)
        else:
            # Left for later (still being written, unreadable): the sensor asks again once
            # it could be taken.
            wait_s = landing_zone.unterminated_settle_s - (time.time_ns() - file.modified_ns) / 1e9
            landing_zone.retry_later(
                attempt, _why_left(report, file.name), max(landing_zone.retry_s, wait_s)
            )


def _begin_attempts(
    landing_zone: LandingZone,
    event_history: EventHistory,
    files: list[FileInfo],
    warn: Callable[[str], None],
) -> list[tuple[FileInfo, Attempt]]:
    """The files to attempt now, each attempt counted; files given up are left out, and a
    file whose earlier attempts all died is given up here."""
    attempts = []
    for file in files:
        attempt = landing_zone.begin_attempt(file)
        if attempt is None:
            continue
        if attempt.attempts > landing_zone.max_attempts:
            last = attempt.error or "ended without a word (its process died)"
            where = landing_zone.give_up(
                attempt,
                file,
                f"gave up after {landing_zone.max_attempts} micro-batch attempts; the last {last}",
                event_history.ledger_entry,
            )
            warn(f"Gave up on {file.name}: see {where}")
            continue
        attempts.append((file, attempt))
    return attempts


def _after_failure(
    landing_zone: LandingZone,
    event_history: EventHistory,
    attempts: list[tuple[FileInfo, Attempt]],
    error: str,
    warn: Callable[[str], None],
) -> list[str]:
    """Give up the files that had their last attempt, leave the others for another one;
    returns the names left."""
    left = []
    for file, attempt in attempts:
        if attempt.attempts >= landing_zone.max_attempts:
            where = landing_zone.give_up(
                attempt,
                file,
                f"gave up after {attempt.attempts} micro-batch attempts; the last failed: {error}",
                event_history.ledger_entry,
            )
            warn(f"Gave up on {file.name}: see {where}")
        else:
            landing_zone.retry_later(attempt, f"failed: {error}", landing_zone.retry_s)
            left.append(file.name)
    return left


def _why_left(report: IngestReport, name: str) -> str:
    prefix = f"{name}: "
    lines = report.deferred_files + report.quarantined_files
    why = next((line.removeprefix(prefix) for line in lines if line.startswith(prefix)), None)
    return f"left it: {why or 'it vanished while being read'}"


def _score(
    context: OpExecutionContext,
    config: MicroBatchConfig,
    landing_zone: LandingZone,
    event_history: EventHistory,
    event_weights: EventWeights,
    store: RecommendationStore,
    archive: ModelArchive,
    scan: LandingScan,
) -> IngestReport:
    started = time.perf_counter()
    report = ingest_landed_files(
        landing_zone,
        event_history,
        store,
        config.rules(event_weights.event_types()),
        context.log.warning,
        scan,
    )
    ingest_ms = round(1000 * (time.perf_counter() - started), 1)
    metadata = report.metadata(landing_zone)
    # Also files an earlier attempt (or batch_retrain) ingested whose lists were not written.
    awaiting = event_history.awaiting_lists(report.contents.values())
    new_events = event_history.events_of(awaiting)
    if new_events.empty:
        context.log.info("No new events in these files")
        event_history.record_lists(awaiting, None)
        context.add_output_metadata({**metadata, "users_refreshed": 0})
        return report
    try:
        refresh = refresh_live_users(
            landing_zone,
            event_history,
            store,
            archive,
            new_events,
            event_weights.weights,
            context.log.warning,
        )
    except LiveVersionChangedError as error:
        raise Failure(f"{error}; retried") from error
    event_history.record_lists(awaiting, refresh.version)
    if refresh.version is None:
        context.log.warning("No model is live: the events wait in the history for batch_retrain")
        context.add_output_metadata({**metadata, "users_refreshed": 0})
        return report
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
    return report


@job(executor_def=in_process_executor, tags=MICRO_BATCH_TAGS)
def micro_batch():
    """Refresh the lists of just the users with new events (launched by landing_zone_sensor)."""
    score_new_events()
