"""Stage 2: event history → one row per (user, item) → per-user train/test split."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetOut,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
    multi_asset,
)
from dagster_pyspark import LazyPySparkResource

from assets.ingest import raw_events
from reco_dagster.domain.interactions import build_interactions
from resources.event_history import EventHistory
from resources.ingestion import EventWeights
from resources.landing_zone import LANDING, LandingZone
from resources.settings import DataEngine, EvaluationProtocol
from resources.store import RecommendationStore


@asset(group_name="prepare", deps=[raw_events], kinds={"parquet", "spark"})
def history_by_user(
    event_history: EventHistory, data_engine: DataEngine, pyspark: LazyPySparkResource
) -> MaterializeResult:
    """The event history sorted by user, in small row groups: the batch job's data snapshot,
    and where a micro-batch reads a few users' whole histories without scanning everyone's.
    Files ingested after it are what the models of this run have not seen: a switch folds
    their users in (`live_model`). Sorted on the driver, or on Spark's executors when the
    history is large (`data_engine`)."""
    events = event_history.estimated_events([])
    spark = data_engine.spark_to_prepare(events, pyspark)
    snapshot = event_history.compact_history(spark)
    return MaterializeResult(
        metadata={
            "dagster/row_count": snapshot.events,
            "users": snapshot.users,
            "event_files": snapshot.event_files,
            "path": MetadataValue.path(snapshot.location),
            **data_engine.metadata(events, spark),
        }
    )


@asset(group_name="prepare", deps=[history_by_user], kinds={"pandas"})
def interactions(
    context: AssetExecutionContext,
    landing_zone: LandingZone,
    event_history: EventHistory,
    event_weights: EventWeights,
    store: ResourceParam[RecommendationStore],
) -> Output[pd.DataFrame]:
    """Deduplicated interactions, one row per (user, item), with dense integer indices and
    the weight of their typed events, from the snapshot `history_by_user` wrote; users
    forgotten since it was written (their erasure still to come) left out."""
    events = event_history.snapshot_events()
    forgotten = store.forgotten().mask(events["user_id"].astype("string"))
    events = events[~forgotten.to_numpy()]
    if events.empty:
        raise Failure(
            f"No events have been ingested: put event files in {landing_zone.where(LANDING)} "
            "(or run `python -m reco_dagster.datasets movielens-100k`) and materialize raw_events."
        )
    table, duplicates = build_interactions(events, event_weights.weights)
    users, items = table["user_id"].nunique(), table["item_id"].nunique()
    return Output(
        table,
        metadata={
            "events": len(events),
            "forgotten_user_events_left_out": int(forgotten.sum()),
            "duplicate_events_dropped": duplicates,
            "dagster/row_count": len(table),
            "users": users,
            "items": items,
            "density": len(table) / (users * items),
            "rated_share": float(table["rating"].notna().mean()),
            "typed_share": float(table["weight"].notna().mean()),
            # No user ids: the run history keeps metadata for good, erasures or not.
            "preview": MetadataValue.md(
                table.drop(columns="user_id").head(5).to_markdown(index=False)
            ),
        },
    )


@asset(group_name="prepare", kinds={"pandas"})
def item_catalog(context: AssetExecutionContext, landing_zone: LandingZone) -> Output[pd.DataFrame]:
    """The items of `$RECO_DATA_DIR/catalog/` (optional): title, categories, availability and
    any other attributes per item, files applied in name order (a later file's values win)."""
    catalog, problems = landing_zone.item_catalog()
    for problem in problems:
        context.log.warning(f"Catalog: {problem}")
    return Output(
        catalog,
        metadata={
            "dagster/row_count": len(catalog),
            "unavailable": int((~catalog["available"]).sum()),
            "categories": len({c for categories in catalog["categories"] for c in categories}),
            "problems": len(problems),
            "preview": MetadataValue.md(catalog.head(5).to_markdown(index=False)),
        },
    )


@multi_asset(
    group_name="prepare",
    outs={"train_interactions": AssetOut(kinds={"pandas"}), "test_interactions": AssetOut()},
)
def train_test_split(protocol: EvaluationProtocol, interactions: pd.DataFrame):
    """The evaluation protocol's split (`protocol` resource): by default each user's latest
    quarter of interactions tests (chronological); temporal and stratified on request."""
    train, test = protocol.split(interactions)
    for name, table in (("train_interactions", train), ("test_interactions", test)):
        yield Output(
            table,
            output_name=name,
            metadata={
                "dagster/row_count": len(table),
                "users": table["user_id"].nunique(),
                "items": table["item_id"].nunique(),
                "method": protocol.method,
                "train_ratio": protocol.train_ratio,
            },
        )
