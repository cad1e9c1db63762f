"""Stage 2: event history → one row per (user, item) → per-user train/test split."""

from collections.abc import Iterator
from typing import Any

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
from reco_dagster.domain.forgetting import Forgotten
from reco_dagster.domain.interactions import build_interactions, table_shape
from reco_dagster.domain.spark_tables import spark_interactions
from resources.event_history import EventHistory
from resources.ingestion import EventWeights
from resources.lake_tables import LakeTable
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


@asset(group_name="prepare", deps=[history_by_user], kinds={"pandas", "spark"})
def interactions(
    landing_zone: LandingZone,
    event_history: EventHistory,
    event_weights: EventWeights,
    data_engine: DataEngine,
    pyspark: LazyPySparkResource,
    store: ResourceParam[RecommendationStore],
) -> Output[Any]:
    """Deduplicated interactions, one row per (user, item), with dense integer indices and
    the weight of their typed events, from the snapshot `history_by_user` wrote; users
    forgotten since it was written (their erasure still to come) left out. Built on the
    driver, or on Spark's executors when the history is large (`data_engine`): then the lake
    holds it in parts and the driver never holds it."""
    forgotten = store.forgotten()
    engine_events = event_history.estimated_events([])
    spark = data_engine.spark_to_prepare(engine_events, pyspark)
    if spark is None:
        events = event_history.snapshot_events()
        left_out = forgotten.mask(events["user_id"].astype("string")).to_numpy()
        events = events[~left_out]
        counts = {"events": len(events), "forgotten": int(left_out.sum())}
        table, duplicates = build_interactions(events, event_weights.weights)
    else:
        events, counts = _without_forgotten_on_spark(
            event_history.snapshot_on_spark(spark), forgotten
        )
        table, duplicates = spark_interactions(events, event_weights.weights)
        table = table.persist()  # described below, then written by the lake
    if counts["events"] == 0:
        raise Failure(
            f"No events have been ingested: put event files in {landing_zone.where(LANDING)} "
            "(or run `python -m reco_dagster.datasets movielens-100k`) and materialize raw_events."
        )
    shape = table_shape(table)
    return Output(
        table,
        metadata={
            "events": counts["events"],
            "forgotten_user_events_left_out": counts["forgotten"],
            "duplicate_events_dropped": duplicates,
            "dagster/row_count": shape["rows"],
            "users": shape["users"],
            "items": shape["items"],
            "density": shape["rows"] / (shape["users"] * shape["items"]),
            "rated_share": shape["rated_share"],
            "typed_share": shape["typed_share"],
            # No user ids: the run history keeps metadata for good, erasures or not.
            "preview": MetadataValue.md(
                _head(table).drop(columns="user_id").to_markdown(index=False)
            ),
            **data_engine.metadata(engine_events, spark),
        },
    )


def _head(table: Any, rows: int = 5) -> pd.DataFrame:
    return table.head(rows) if isinstance(table, pd.DataFrame) else table.limit(rows).toPandas()


def _without_forgotten_on_spark(events: Any, forgotten: Forgotten) -> tuple[Any, dict[str, int]]:
    """The events of users not forgotten, and how many there were and were left out."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, StructField, StructType

    schema = StructType([*events.schema.fields, StructField("forgotten", BooleanType())])

    def flag(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield batch.assign(forgotten=forgotten.mask(batch["user_id"].astype("string")))

    # Counted, then built from: kept, so the history's parts are read once.
    flagged = events.mapInPandas(flag, schema).persist()
    found = flagged.agg(F.count(F.lit(1)), F.count_if("forgotten")).first()
    counts = {"events": found[0] - found[1], "forgotten": found[1]}
    return flagged.filter(~F.col("forgotten")).drop("forgotten"), counts


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
def train_test_split(
    protocol: EvaluationProtocol, pyspark: LazyPySparkResource, interactions: LakeTable
) -> Iterator[Output[Any]]:
    """The evaluation protocol's split (`protocol` resource): by default each user's latest
    quarter of interactions tests (chronological); temporal and stratified on request. On
    Spark's executors when `interactions` was built there."""
    if interactions.on_executors:
        splits = protocol.split_on_spark(interactions.to_spark(pyspark.spark_session))
    else:
        splits = protocol.split(interactions.to_pandas())
    for name, table in zip(("train_interactions", "test_interactions"), splits, strict=True):
        shape = table_shape(table)
        yield Output(
            table,
            output_name=name,
            metadata={
                "dagster/row_count": shape["rows"],
                "users": shape["users"],
                "items": shape["items"],
                "method": protocol.method,
                "train_ratio": protocol.train_ratio,
            },
        )
