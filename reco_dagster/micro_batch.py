"""Micro-batch scoring: new landing files → the affected users' lists in the live version,
in seconds, without Spark and without retraining."""

import time

import pandas as pd
from dagster import Failure, OpExecutionContext, in_process_executor, job, op
from threadpoolctl import threadpool_limits

from assets.ingest import IngestConfig, ingest_landed_files
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.lists import PUBLISHED_DEPTH, ranked_lists, titles_by_item
from reco_dagster.domain.models import FactorModel
from reco_dagster.domain.ranking import fill_short_lists
from resources.landing_zone import LandingZone
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
    store: RecommendationStore,
    archive: ModelArchive,
) -> None:
    """Validates and ingests the new files (the batch path's rules and quarantine), folds the
    affected users into the live model, re-ranks their unseen items, and writes their lists
    into the live version, atomically per user."""
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[f"{stage}_ms"] = round(1000 * (now - clock), 1)
        clock = now

    report = ingest_landed_files(
        landing_zone, config.rules(), context.log.warning, only=config.files or None
    )
    lap("ingest")
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
    users = new_events["user_id"].unique()
    events = landing_zone.user_history(users)
    history, _ = build_interactions(events)
    metadata["first_time_users"] = _first_time_users(events, new_events)
    catalog, _ = landing_zone.item_catalog()
    titles = titles_by_item(catalog)
    lap("read_history")
    # A publish may switch the live version while we score; the store refuses to write into
    # a version that is no longer live, and the users are scored again against the new one.
    for _ in range(2):
        version = store.live_version()
        if version is None:
            context.log.warning(
                "No model is live: the events wait in the history for batch_retrain"
            )
            context.add_output_metadata({**metadata, "users_refreshed": 0})
            return
        model = archive.load(version)
        lap("load_model")
        # Many small matrices: BLAS threads only fight the API for the same cores.
        with threadpool_limits(limits=1):
            refreshed, counts = _rerank(model, history, new_events, _cold_start(store, version))
        lap("fold_in_and_rank")
        if store.update_live_users(version, list(ranked_lists(refreshed, "user_id", titles))):
            lap("write")
            break
        context.log.warning(f"{version} stopped being live during the micro-batch; scoring again")
    else:
        raise Failure("the live version changed twice during one micro-batch; the sensor retries")
    context.log.info(
        f"Refreshed {counts['users_refreshed']} users in {version} from "
        f"{counts['events_applied']} events ({counts['unknown_item_events']} on unknown items)"
    )
    context.add_output_metadata({**metadata, **counts, "model_version": version, **stages})


def _cold_start(store: RecommendationStore, version: str) -> pd.DataFrame:
    """The version's cold-start list, which continues lists that run short."""
    found = store.lookup("", PUBLISHED_DEPTH, version=version, popular_only=True)
    return pd.DataFrame(found.items if found else [], columns=["item_id", "score"])


def _rerank(
    model: FactorModel, history: pd.DataFrame, new_events: pd.DataFrame, cold_start: pd.DataFrame
):
    """Fold the new events' users into `model` from their whole history (interactions) and
    rank their unseen items, exactly as the batch job ranks a user with that history."""
    refolded = fold_in(model, history)
    personal = refolded.user_factors.any(axis=1)
    ranked = refolded.recommend(seen=history, k=PUBLISHED_DEPTH)
    ranked = ranked[ranked["user_id"].isin(refolded.user_ids[personal])]
    ranked = fill_short_lists(ranked, cold_start, history, PUBLISHED_DEPTH)
    known_items = new_events["item_id"].isin(model.item_ids)
    return ranked, {
        "users_refreshed": int(personal.sum()),
        "users_without_known_items": int((~personal).sum()),
        "events_applied": int(known_items.sum()),
        "unknown_item_events": int((~known_items).sum()),
    }


def _first_time_users(history: pd.DataFrame, new_events: pd.DataFrame) -> int:
    """Users all of whose events are these new ones."""
    ever = history["user_id"].value_counts()
    now = new_events["user_id"].value_counts()
    return int((ever.reindex(now.index) == now).sum())


@job(executor_def=in_process_executor, tags=MICRO_BATCH_TAGS)
def micro_batch():
    """Refresh the lists of just the users with new events (launched by landing_zone_sensor)."""
    score_new_events()
