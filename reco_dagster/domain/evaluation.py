"""Offline evaluation: a scorer's lists against held-out interactions, and the popularity
baseline every model must beat (Microsoft Recommenders' metric definitions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reco_dagster.domain.metrics import mae, ranking_metrics, rmse
from reco_dagster.domain.models import Scorer
from reco_dagster.domain.ranking import popular_items, recommend

TOP_K = 10


def evaluate(candidate: Scorer, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """precision/recall/nDCG/MAP@10 over the items each user did not train on, plus RMSE and
    MAE of predicted ratings for explicit-feedback models."""
    metrics = named(ranking_metrics(candidate.recommend(seen=train, k=TOP_K), test, TOP_K))
    if not candidate.card.settings.get("implicit_prefs", True):
        rated = test[test["rating"].notna()]
        predicted = candidate.predict(rated["user_id"], rated["item_id"])
        known = ~np.isnan(predicted)
        metrics["rmse"] = rmse(rated["rating"].to_numpy()[known], predicted[known])
        metrics["mae"] = mae(rated["rating"].to_numpy()[known], predicted[known])
    return metrics


def popularity_baseline(
    train: pd.DataFrame, test: pd.DataFrame, half_life_days: float = 0.0
) -> dict[str, float]:
    """Every user gets the cold-start list (all-time, or trending with a half-life) minus
    what they have seen."""
    popularity = popular_items(train, train["item_id"].nunique(), half_life_days)
    users = train["user_id"].unique()
    ranked = recommend(
        users,
        popularity["item_id"].to_numpy(),
        np.ones((len(users), 1)),
        popularity["score"].to_numpy(dtype=np.float64)[:, None],
        seen=train,
        k=TOP_K,
    )
    return named(ranking_metrics(ranked, test, TOP_K))


def named(metrics: dict[str, float]) -> dict[str, float]:
    """precision_at_k → precision_at_10, as the registry and the gate name them."""
    return {name.replace("_at_k", f"_at_{TOP_K}"): value for name, value in metrics.items()}
