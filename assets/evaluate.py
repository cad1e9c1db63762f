"""Stage 4: every model family scored on the held-out test split; online evaluation of what
was served."""

import math
import sys

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)
from dagster_pyspark import LazyPySparkResource

from assets.ingest import raw_events
from reco_dagster.domain.evaluation import (
    MODEL,
    evaluate,
    evaluate_on_spark,
    popularity_baseline,
)
from reco_dagster.domain.families import FAMILIES
from reco_dagster.domain.online import served_hit_rate_in_chunks
from reco_dagster.domain.spark_scoring import ranked_on
from reco_dagster.domain.spark_tables import spark_popular_items
from resources.event_history import EventHistory
from resources.lake_io import StoredModel
from resources.lake_tables import LakeTable
from resources.served_log import ServedListLog
from resources.settings import BatchScoring, EvaluationProtocol
from resources.store import RecommendationStore


def build_evaluation(family: str) -> AssetsDefinition:
    @asset(
        name=f"{family}_evaluation",
        group_name="evaluate",
        kinds={"pandas"},
        ins={
            "candidate": AssetIn(f"{family}_evaluation_model"),
            "served": AssetIn(f"{family}_model"),
        },
    )
    def evaluation(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        batch_scoring: BatchScoring,
        protocol: EvaluationProtocol,
        candidate: StoredModel,
        served: StoredModel,
        model_search: dict,
        train_interactions: LakeTable,
        test_interactions: LakeTable,
    ) -> Output[dict]:
        """The family's settings fitted on the training split, scored on the test split (each
        user folded in from their training history, as served lists are made); the result is
        recorded for the served model version those settings produced. On Spark's executors
        when Spark wrote the split. A family that was not fitted is recorded as skipped
        without reading the split."""
        searched, card = model_search[family], served.card
        # Skipped by the search, or by a fit on a table with more items than it searched on.
        skipped = (
            searched.get("skipped")
            or card.settings.get("skipped")
            or candidate.card.settings.get("skipped")
        )
        recorded = {
            "model_version": card.version,
            "family": family,
            "settings": card.settings,
            "data_fingerprint": card.data_fingerprint,
            "training_rows": card.training_rows,
            "protocol": protocol.method,
            "validation": searched.get("validation", {}),
            "skipped": skipped,
        }
        if skipped:  # nothing was fitted: nothing to score, and the gate reads no baseline
            return Output(
                {**recorded, "metrics": {}, "popularity_baseline": {}, "trending_baseline": {}},
                metadata={"model_version": card.version, "skipped": skipped},
            )
        trending_days = model_search["cold_start"]["half_life_days"]
        train, test = train_interactions.frame(pyspark), test_interactions.frame(pyspark)
        if isinstance(train, pd.DataFrame):
            users = train["user_id"].nunique()
            with candidate.scorer(train, batch_scoring.spark_to_rank(users, pyspark)) as scorer:
                metrics = evaluate(scorer, train, test)
            where = ranked_on(scorer)
            baseline = popularity_baseline(train, test)
            trending = popularity_baseline(train, test, trending_days)
            evaluated_users = test["user_id"].nunique()
        else:
            items = train.select("item_id").distinct().count()
            found = evaluate_on_spark(
                candidate.item_side(),
                train,
                test,
                {
                    "popularity": spark_popular_items(train, items).toPandas(),
                    "trending": spark_popular_items(train, items, trending_days).toPandas(),
                },
            )
            metrics, baseline, trending = found[MODEL], found["popularity"], found["trending"]
            where = "spark executors"
            evaluated_users = test.select("user_id").distinct().count()
        lift = metrics["precision_at_10"] / max(baseline["precision_at_10"], 1e-12)
        context.log.info(", ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
        return Output(
            {
                **recorded,
                "metrics": metrics,
                "popularity_baseline": baseline,
                "trending_baseline": trending,
            },
            metadata={
                "model_version": card.version,
                "protocol": protocol.method,
                "ranked_on": where,
                **{name: MetadataValue.float(value) for name, value in metrics.items()},
                **{f"popularity_{name}": MetadataValue.float(v) for name, v in baseline.items()},
                **{f"trending_{name}": MetadataValue.float(v) for name, v in trending.items()},
                "precision_lift_over_popularity": round(lift, 2),
                "evaluated_users": evaluated_users,
                "rating_metrics": "computed" if "rmse" in metrics else "n/a: implicit feedback",
            },
        )

    return evaluation


evaluation_assets = [build_evaluation(family) for family in FAMILIES]


class OnlineEvaluationConfig(Config):
    window_s: float = 7 * 86_400.0
    """How long after a list was served an interaction with one of its items counts."""


@asset(group_name="evaluate", kinds={"pandas"}, deps=[raw_events])
def online_evaluation(
    context: AssetExecutionContext,
    config: OnlineEvaluationConfig,
    event_history: EventHistory,
    served_log: ServedListLog,
    store: ResourceParam[RecommendationStore],
) -> Output[pd.DataFrame]:
    """The hit rate of served lists per A/B variant and model version: the API's log of
    served lists joined with the events that arrived after them (forgotten users' neither);
    only events from the first served list on are read."""
    forgotten = store.forgotten()
    first_served = served_log.first_served_at()
    # Nothing served yet: no event can count, and none is read.
    events = event_history.events_from(
        sys.maxsize if first_served is None else math.floor(first_served)
    )
    events = events[~forgotten.mask(events["user_id"].astype("string")).to_numpy()]
    served = (
        chunk[~forgotten.mask(chunk["user_id"].astype("string")).to_numpy()]
        for chunk in served_log.served_lists()
    )
    summary = served_hit_rate_in_chunks(served, events, config.window_s)
    if summary.empty:
        context.log.info("No served lists logged yet")
    return Output(
        summary,
        metadata={
            "lists_served": int(summary["lists_served"].sum()),
            "new_item_positions": int(summary["new_item_positions"].sum()),
            "by_variant_and_version": MetadataValue.md(
                summary.to_markdown(index=False) if not summary.empty else "nothing served yet"
            ),
        },
    )
