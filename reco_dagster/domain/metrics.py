"""Evaluation metrics with Microsoft Recommenders' definitions (python_evaluation).

Ranking metrics average over the users who have both recommendations and relevant test
items. Relevance is binary. MAP@k is Recommenders' classic `map_at_k`: the sum of the
precisions at each hit divided by the user's number of relevant items.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def ranking_metrics(recommended: pd.DataFrame, relevant: pd.DataFrame, k: int) -> dict[str, float]:
    """precision@k, recall@k, nDCG@k and MAP@k.

    recommended: user_id, item_id, rank (1 = best); relevant: user_id, item_id.
    """
    return averaged(ranking_metric_totals(recommended, relevant, k))


RANKING_METRICS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k")


def averaged(totals: Mapping[str, float]) -> dict[str, float]:
    """Per-user metrics summed over users (`ranking_metric_totals`, which add up across any
    split of the users) as their means."""
    users = totals["users"]
    return {name: totals[name] / users if users else 0.0 for name in RANKING_METRICS}


def ranking_metric_totals(
    recommended: pd.DataFrame, relevant: pd.DataFrame, k: int
) -> dict[str, float]:
    """Each ranking metric summed over the users who have both recommendations and relevant
    items, and how many they are (`users`)."""
    top = recommended[recommended["rank"] <= k]
    users = np.intersect1d(top["user_id"].unique(), relevant["user_id"].unique())
    if len(users) == 0:
        return dict.fromkeys((*RANKING_METRICS, "users"), 0.0)
    relevant = relevant[relevant["user_id"].isin(users)]
    relevant_counts = relevant.groupby("user_id").size().reindex(users).to_numpy()

    hits = top.merge(relevant[["user_id", "item_id"]], on=["user_id", "item_id"])
    hits = hits.sort_values(["user_id", "rank"])
    hit_order = hits.groupby("user_id").cumcount().to_numpy() + 1
    per_user = (
        pd.DataFrame(
            {
                "user_id": hits["user_id"].to_numpy(),
                "hit": 1.0,
                "gain": 1.0 / np.log2(hits["rank"].to_numpy() + 1.0),
                "precision_at_hit": hit_order / hits["rank"].to_numpy(),
            }
        )
        .groupby("user_id")
        .sum()
        .reindex(users, fill_value=0.0)
    )

    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(relevant_counts, k) - 1]
    return {
        "precision_at_k": float(np.sum(per_user["hit"].to_numpy() / k)),
        "recall_at_k": float(np.sum(per_user["hit"].to_numpy() / relevant_counts)),
        "ndcg_at_k": float(np.sum(per_user["gain"].to_numpy() / ideal)),
        "map_at_k": float(np.sum(per_user["precision_at_hit"].to_numpy() / relevant_counts)),
        "users": float(len(users)),
    }
