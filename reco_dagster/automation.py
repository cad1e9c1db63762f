"""Schedules and sensors: micro-batches for new files, retrains on a timetable and when the
data has moved, the catalog's publish when its files change, and a record of every failed
run."""

import json
import os
import time
import urllib.request
from dataclasses import asdict
from datetime import UTC, date, datetime
from hashlib import sha256
from pathlib import Path

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    ResourceParam,
    RunFailureSensorContext,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from reco_dagster.micro_batch import micro_batch
from resources.deployment import data_dir
from resources.event_history import EventHistory
from resources.files import FileInfo
from resources.landing_zone import LandingZone
from resources.model_archive import ModelArchive
from resources.store import RecommendationStore

BATCH_RETRAIN = "batch_retrain"
FORGET_USERS = "forget_users"
CATALOG_REFRESH = "catalog_refresh"
# Dagster's sensor daemon evaluates sensors at most every 5 s whatever is asked; asking for
# 1 s makes this sensor run on every daemon pass.
LANDING_POLL_S = 1
WATCH_POLL_S = 0.25
"""How often a watching landing sensor tick lists the landing zone again."""
CATALOG_POLL_S = 5


def new_landing_files(
    landing_zone: LandingZone, cursor: str | None, today: date
) -> tuple[list[FileInfo], str]:
    """Landing files to hand to a micro-batch, and the next cursor.

    A file is new when its identity (name and `FileInfo.version`) was not requested before,
    whatever its modification time and the order files arrive in. It is requested once it
    looks settled: last modified `settle_s` ago, or unchanged at a second look once it is
    (the sensor waits for that within the tick: waiting for the next tick would add the
    daemon's 5 s loop to every fresh file; one still changing is looked at again at the
    next tick). The cursor holds the identities requested of the files the listing still
    shows (`LandingZone.recent`: no dated folders past the look-back), so it stays as small
    as that listing. No ledger is read.
    """
    # A cursor of the earlier high-water-mark kind has neither key: every file counts as new.
    state = json.loads(cursor) if cursor else {}
    requested = set(state.get("requested", []))
    ready, still_requested, young = [], [], []
    for file in landing_zone.recent(today):
        if _identity(file) in requested:
            still_requested.append(_identity(file))
        elif _age_s(file) >= landing_zone.settle_s:
            ready.append(file)
        else:
            young.append(file)
    if young:
        time.sleep(max(0.0, landing_zone.settle_s - min(_age_s(file) for file in young)))
        for file in young:
            second_look = landing_zone.look_again(file)
            if second_look is not None and second_look.version == file.version:
                ready.append(file)
    still_requested += [_identity(file) for file in ready]
    return ready, json.dumps({"requested": sorted(still_requested)})


def _identity(file: FileInfo) -> str:
    return sha256(f"{file.name}\0{file.version}".encode()).hexdigest()[:16]


def _age_s(file: FileInfo) -> float:
    return (time.time_ns() - file.modified_ns) / 1e9


@sensor(
    job=micro_batch,
    minimum_interval_seconds=LANDING_POLL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def landing_zone_sensor(context: SensorEvaluationContext, landing_zone: LandingZone):
    """Launches a micro-batch for landing files it has not requested (cursor), and one for
    files whose micro-batch left them for later and is due again; run keys make each launch
    once, also across daemon restarts. A tick that finds neither keeps looking for
    `landing_zone.watch_s`, so a file is picked up within a look, not at the next tick."""
    watched_until = time.monotonic() + landing_zone.watch_s
    while True:
        fresh, cursor = new_landing_files(landing_zone, context.cursor, datetime.now(UTC).date())
        due = landing_zone.due_attempts(time.time())
        if fresh or due or time.monotonic() >= watched_until:
            break
        time.sleep(WATCH_POLL_S)
    batches = [
        ([file.name for file in fresh], [[file.name, file.version] for file in fresh]),
        # A note changes with every attempt: one launch per attempt left for later.
        ([attempt.file for attempt in due], [asdict(attempt) for attempt in due]),
    ]
    requests = [
        RunRequest(
            run_key=sha256(json.dumps(identities).encode()).hexdigest()[:20],
            run_config={"ops": {"score_new_events": {"config": {"files": names}}}},
        )
        for names, identities in batches
        if names
    ]
    if not requests:
        return SensorResult(
            skip_reason=SkipReason("no new landing files, and none due for another attempt"),
            cursor=cursor,
        )
    return SensorResult(run_requests=requests, cursor=cursor)


@sensor(
    job_name=CATALOG_REFRESH,
    minimum_interval_seconds=CATALOG_POLL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def catalog_sensor(context: SensorEvaluationContext, landing_zone: LandingZone):
    """Publishes the item catalog (`catalog_refresh`) whenever the files in catalog/ change
    (one added, rewritten or removed) and every one of them is `settle_s` old: categories and
    availability reach the API without a retrain."""
    files = landing_zone.catalog_files()
    state = json.loads(context.cursor) if context.cursor else {}
    if not files and not state:
        return SkipReason("catalog/ holds no files")
    settling = [file.name for file in files if _age_s(file) < landing_zone.settle_s]
    if settling:
        return SkipReason(f"{settling[0]} is still being written")
    listing = sha256("\n".join(_identity(file) for file in files).encode()).hexdigest()[:16]
    if listing == state.get("listing"):
        return SkipReason("catalog/ is as it was at the last publish")
    # Counted, so a listing that comes back (a file added, then removed) publishes again.
    requests = state.get("requests", 0) + 1
    return SensorResult(
        run_requests=[RunRequest(run_key=f"catalog-{requests}-{listing}")],
        cursor=json.dumps({"listing": listing, "requests": requests}),
    )


def retrain_reason(
    store: RecommendationStore,
    event_history: EventHistory,
    archive: ModelArchive,
    min_new_fraction: float,
    max_unknown_item_events: int,
) -> str | SkipReason:
    """Why a full retrain is due, or a SkipReason saying why not."""
    live = store.version(store.live_version() or "")
    if live is None:
        return "no model is live yet"
    new_events = event_history.ingested_since(live.created_at)
    trained_on = live.info.get("training_rows") or 1
    fraction = len(new_events) / trained_on
    unknown = int((~new_events["item_id"].isin(archive.load(live.version).item_ids)).sum())
    if fraction >= min_new_fraction:
        return f"{len(new_events)} new events are {fraction:.1%} of the live model's training set"
    if unknown > max_unknown_item_events:
        return f"{unknown} new events name items the live model does not know"
    return SkipReason(
        f"{len(new_events)} new events ({fraction:.1%} of {trained_on}; retrain at "
        f"{min_new_fraction:.0%}) and {unknown} on unknown items (retrain above "
        f"{max_unknown_item_events}) since {live.version} was trained"
    )


@sensor(
    job_name=BATCH_RETRAIN,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
)
def retrain_on_new_data(
    context: SensorEvaluationContext,
    store: ResourceParam[RecommendationStore],
    event_history: EventHistory,
    archive: ModelArchive,
):
    """Launches batch_retrain once enough has changed since the live model was trained:
    RECO_RETRAIN_NEW_FRACTION (0.1) of its training set in new events, or more than
    RECO_RETRAIN_UNKNOWN_ITEMS (100) events on items it does not know."""
    reason = retrain_reason(
        store,
        event_history,
        archive,
        float(os.environ.get("RECO_RETRAIN_NEW_FRACTION", "0.1")),
        int(os.environ.get("RECO_RETRAIN_UNKNOWN_ITEMS", "100")),
    )
    if isinstance(reason, SkipReason):
        return reason
    return RunRequest(
        run_key=retrain_run_key(store, event_history), tags={"reco/retrain-reason": reason[:200]}
    )


def retrain_run_key(store: RecommendationStore, event_history: EventHistory) -> str:
    """The live version and the files ingested since it was trained: a retrain that failed is
    not asked for again until more data has come in."""
    live = store.version(store.live_version() or "")
    since = event_history.files_ingested_since(live.created_at) if live else []
    data = sha256("".join(since).encode()).hexdigest()[:16]
    return f"after-{live.version if live else None}-{data}"


@sensor(
    job_name=FORGET_USERS,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
)
def erasure_pending(context: SensorEvaluationContext, store: ResourceParam[RecommendationStore]):
    """Launches forget_users while a forgotten user's erasure is pending (a deletion, or their
    events arriving again): once per set of pending tombstones and UTC day, so a run that
    failed is asked for again the next day, or sooner when another user is forgotten (the
    nightly retrain erases first, too)."""
    pending = [tombstone for tombstone in store.tombstones() if tombstone.state == "pending"]
    if not pending:
        return SkipReason("no forgotten user's erasure is pending")
    marks = "".join(f"{tombstone.user_key}{tombstone.pending_since}" for tombstone in pending)
    digest = sha256(marks.encode()).hexdigest()[:20]
    return RunRequest(run_key=f"erase-{datetime.now(UTC):%Y%m%d}-{digest}")


nightly_retrain = ScheduleDefinition(
    name="nightly_retrain",
    job_name=BATCH_RETRAIN,
    cron_schedule=os.environ.get("RECO_RETRAIN_CRON", "0 2 * * *"),
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="The full batch retrain; RECO_RETRAIN_CRON changes the timetable (UTC).",
)


# Every location's runs: the micro-batches are the streaming location's.
@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING, monitor_all_code_locations=True)
def record_failed_runs(context: RunFailureSensorContext) -> None:
    """Appends every failed run to $RECO_DATA_DIR/failed_runs.jsonl and, when
    RECO_FAILURE_WEBHOOK_URL is set, posts the same record there as JSON."""
    record = {
        "run_id": context.dagster_run.run_id,
        "job": context.dagster_run.job_name,
        "failed_at": datetime.now(UTC).isoformat(),
        "message": context.failure_event.message,
    }
    log = Path(data_dir()) / "failed_runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    webhook = os.environ.get("RECO_FAILURE_WEBHOOK_URL")
    if webhook:
        request = urllib.request.Request(
            webhook,
            data=json.dumps(record).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
