"""Stage 4: offline evaluation of the ALS settings on the held-out test split."""

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, MetadataValue, Output, asset

from reco_dagster.domain.als import FactorModel
from reco_dagster.domain.metrics import mae, ranking_metrics, rmse
from reco_dagster.domain.ranking import recommend

TOP_K = 10


@asset(group_name="evaluate", kinds={"pandas"})
def model_evaluation(
    context: AssetExecutionContext,
    evaluation_model: FactorModel,
    train_interactions: pd.DataFrame,
    test_interactions: pd.DataFrame,
) -> Output[dict]:
    """precision/recall/nDCG/MAP@10 ranking the items each user did not train on, plus
    RMSE/MAE of predicted ratings for explicit-feedback models."""
    ranked = evaluation_model.recommend(seen=train_interactions, k=TOP_K)
    metrics = _named(ranking_metrics(ranked, test_interactions, TOP_K))
    baseline = _named(
        ranking_metrics(_popularity_ranking(train_interactions), test_interactions, TOP_K)
    )
    if not evaluation_model.settings.get("implicit_prefs", True):
        rated = test_interactions[test_interactions["rating"].notna()]
        predicted = evaluation_model.predict(rated["user_id"], rated["item_id"])
        known = ~np.isnan(predicted)
        metrics["rmse"] = rmse(rated["rating"].to_numpy()[known], predicted[known])
        metrics["mae"] = mae(rated["rating"].to_numpy()[known], predicted[known])
    evaluated_users = len(np.intersect1d(ranked["user_id"].unique(), test_interactions["user_id"]))
    catalog_coverage = ranked["item_id"].nunique() / len(evaluation_model.item_ids)
    context.log.info(", ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
    lift = metrics["precision_at_10"] / max(baseline["precision_at_10"], 1e-12)
    return Output(
        {
            **metrics,
            "evaluated_users": evaluated_users,
            "model_version": evaluation_model.version,
            "popularity_baseline": baseline,
        },
        metadata={
            **{name: MetadataValue.float(value) for name, value in metrics.items()},
            **{f"popularity_{name}": MetadataValue.float(v) for name, v in baseline.items()},
            "precision_lift_over_popularity": round(lift, 2),
            "evaluated_users": evaluated_users,
            "test_interactions": len(test_interactions),
            "catalog_coverage": catalog_coverage,
            "rating_metrics": (
                "computed"
                if "rmse" in metrics
                else "n/a: implicit-feedback model ranks, it does not predict ratings"
            ),
        },
    )


def _named(metrics: dict[str, float]) -> dict[str, float]:
    return {name.replace("_at_k", f"_at_{TOP_K}"): value for name, value in metrics.items()}


def _popularity_ranking(train: pd.DataFrame) -> pd.DataFrame:
    """The baseline: every user gets the most popular training items they have not seen."""
    popularity = train.groupby("item_id")["user_id"].nunique()
    users = train["user_id"].unique()
    return recommend(
        users,
        popularity.index.to_numpy(),
        np.ones((len(users), 1)),
        popularity.to_numpy(dtype=np.float64)[:, None],
        seen=train,
        k=TOP_K,
    )
