"""Stage 4: every model family scored on the held-out test split, and the quality gate that
decides whether a new model may go live."""

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from dagster._core.definitions.asset_checks.asset_checks_definition import AssetChecksDefinition
from dagster_pyspark import LazyPySparkResource

from assets.ingest import raw_events
from assets.train import FAMILIES
from reco_dagster.domain.gate import gate_failures
from reco_dagster.domain.metrics import mae, ranking_metrics, rmse
from reco_dagster.domain.models import Scorer
from reco_dagster.domain.online import served_hit_rate_in_chunks
from reco_dagster.domain.ranking import recommend
from reco_dagster.domain.spark_scoring import ranked_on
from resources.lake_io import StoredModel
from resources.landing_zone import LandingZone
from resources.settings import BatchScoring, QualityGate
from resources.store import RecommendationStore

TOP_K = 10


def evaluate(candidate: Scorer, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """precision/recall/nDCG/MAP@10 over the items each user did not train on, plus RMSE and
    MAE of predicted ratings for explicit-feedback models."""
    metrics = _named(ranking_metrics(candidate.recommend(seen=train, k=TOP_K), test, TOP_K))
    if not candidate.card.settings.get("implicit_prefs", True):
        rated = test[test["rating"].notna()]
        predicted = candidate.predict(rated["user_id"], rated["item_id"])
        known = ~np.isnan(predicted)
        metrics["rmse"] = rmse(rated["rating"].to_numpy()[known], predicted[known])
        metrics["mae"] = mae(rated["rating"].to_numpy()[known], predicted[known])
    return metrics


def popularity_baseline(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """Every user gets the most popular training items they have not seen."""
    popularity = train.groupby("item_id")["user_id"].nunique()
    users = train["user_id"].unique()
    ranked = recommend(
        users,
        popularity.index.to_numpy(),
        np.ones((len(users), 1)),
        popularity.to_numpy(dtype=np.float64)[:, None],
        seen=train,
        k=TOP_K,
    )
    return _named(ranking_metrics(ranked, test, TOP_K))


def _named(metrics: dict[str, float]) -> dict[str, float]:
    return {name.replace("_at_k", f"_at_{TOP_K}"): value for name, value in metrics.items()}


def build_evaluation(family: str) -> tuple[AssetsDefinition, AssetChecksDefinition]:
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
        candidate: StoredModel,
        served: StoredModel,
        train_interactions: pd.DataFrame,
        test_interactions: pd.DataFrame,
    ) -> Output[dict]:
        """The family's settings fitted on the training split, scored on the test split; the
        result is recorded for the served model version those settings produced."""
        users = train_interactions["user_id"].nunique()
        with candidate.scorer(batch_scoring.spark_to_rank(users, pyspark)) as scorer:
            metrics = evaluate(scorer, train_interactions, test_interactions)
        baseline = popularity_baseline(train_interactions, test_interactions)
        lift = metrics["precision_at_10"] / max(baseline["precision_at_10"], 1e-12)
        context.log.info(", ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
        card = served.card
        return Output(
            {
                "model_version": card.version,
                "family": family,
                "settings": card.settings,
                "data_fingerprint": card.data_fingerprint,
                "training_rows": card.training_rows,
                "metrics": metrics,
                "popularity_baseline": baseline,
            },
            metadata={
                "model_version": card.version,
                "ranked_on": ranked_on(scorer),
                **{name: MetadataValue.float(value) for name, value in metrics.items()},
                **{f"popularity_{name}": MetadataValue.float(v) for name, v in baseline.items()},
                "precision_lift_over_popularity": round(lift, 2),
                "evaluated_users": test_interactions["user_id"].nunique(),
                "rating_metrics": "computed" if "rmse" in metrics else "n/a: implicit feedback",
            },
        )

    @asset_check(asset=evaluation, name="quality_gate", blocking=True)
    def quality_gate_check(
        context: AssetCheckExecutionContext,
        quality_gate: QualityGate,
        store: RecommendationStore,
        evaluation: dict,
    ) -> AssetCheckResult:
        """Floors, and no regression beyond the tolerance against the live model; records the
        verdict in the model registry. A failure blocks this family's publish."""
        live = store.version(store.live_version() or "")
        compared = live if live and live.version != evaluation["model_version"] else None
        metrics, baseline = evaluation["metrics"], evaluation["popularity_baseline"]
        floors = dict(quality_gate.floors)
        floors["precision_at_10"] = max(
            floors.get("precision_at_10", 0.0),
            quality_gate.min_lift_over_popularity * baseline["precision_at_10"],
        )
        failures = gate_failures(
            metrics,
            floors,
            compared.info.get("metrics") if compared else None,
            compared.version if compared else None,
            quality_gate.tolerance,
        )
        store.register(
            evaluation["model_version"], evaluation, rejected_because="; ".join(failures) or None
        )
        for failure in failures:
            context.log.error(f"{evaluation['model_version']} rejected: {failure}")
        return AssetCheckResult(
            passed=not failures,
            severity=AssetCheckSeverity.ERROR,
            description="; ".join(failures) or "passed every floor and the live comparison",
            metadata={
                "model_version": evaluation["model_version"],
                "compared_with": compared.version if compared else "no other live version",
                "failures": MetadataValue.md("\n".join(f"- {f}" for f in failures) or "none"),
                **{f"floor_{name}": value for name, value in floors.items()},
            },
        )

    return evaluation, quality_gate_check


evaluations = [build_evaluation(family) for family in FAMILIES]
evaluation_assets = [evaluation for evaluation, _ in evaluations]
quality_gates = [check for _, check in evaluations]


class OnlineEvaluationConfig(Config):
    window_s: float = 7 * 86_400.0
    """How long after a list was served an interaction with one of its items counts."""


@asset(group_name="evaluate", kinds={"pandas"}, deps=[raw_events])
def online_evaluation(
    context: AssetExecutionContext, config: OnlineEvaluationConfig, landing_zone: LandingZone
) -> Output[pd.DataFrame]:
    """The hit rate of served lists per A/B variant and model version: the API's log of
    served lists joined with the events that arrived after them."""
    events = landing_zone.event_history()
    summary = served_hit_rate_in_chunks(landing_zone.served_lists(), events, config.window_s)
    if summary.empty:
        context.log.info("No served lists logged yet")
    return Output(
        summary,
        metadata={
            "lists_served": int(summary["lists_served"].sum()),
            "by_variant_and_version": MetadataValue.md(
                summary.to_markdown(index=False) if not summary.empty else "nothing served yet"
            ),
        },
    )
