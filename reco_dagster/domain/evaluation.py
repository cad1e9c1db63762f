"""Offline evaluation: a scorer's lists against held-out interactions, and the popularity
baseline every model must beat (Microsoft Recommenders' metric definitions). Each measure is
a sum over users first (`evaluation_totals`), so a table too large for the driver is scored
a few users at a time on Spark's executors (`evaluate_on_spark`) with the same code."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.metrics import RANKING_METRICS, averaged, ranking_metric_totals
from reco_dagster.domain.models import FactorModel, Scorer
from reco_dagster.domain.ranking import first_unseen, popular_items
from reco_dagster.domain.spark_tables import UserBatches, map_user_batches

TOP_K = 10
ERROR_TOTALS = ("squared_error", "absolute_error", "rated")
"""What RMSE and MAE are made of, for explicit-feedback models."""
MODEL = "model"
"""The name of the evaluated model's totals beside the baselines' (`evaluate_on_spark`)."""


def evaluate(candidate: Scorer, train: pd.DataFrame, test: pd.DataFrame) -> dict[str, float]:
    """precision/recall/nDCG/MAP@10 over the items each user did not train on, plus RMSE and
    MAE of predicted ratings for explicit-feedback models."""
    return metrics_of(evaluation_totals(candidate, train, test))


def evaluation_totals(candidate: Scorer, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """`evaluate`'s measures as sums over the users of `train` and `test` (every row of
    each of them), which add up across any split of the users."""
    totals = ranking_metric_totals(candidate.recommend(seen=train, k=TOP_K), test, TOP_K)
    if not candidate.card.settings.get("implicit_prefs", True):
        rated = test[test["rating"].notna()]
        predicted = candidate.predict(rated["user_id"], rated["item_id"])
        known = ~np.isnan(predicted)
        errors = rated["rating"].to_numpy()[known] - predicted[known]
        totals |= {
            "squared_error": float(np.sum(errors**2)),
            "absolute_error": float(np.sum(np.abs(errors))),
            "rated": float(known.sum()),
        }
    return totals


def metrics_of(totals: Mapping[str, float]) -> dict[str, float]:
    """Totals as the registry and the gate name the metrics: means over users, and RMSE and
    MAE where there are predicted ratings."""
    metrics = named(averaged(totals))
    if totals.get("rated"):
        metrics["rmse"] = float(np.sqrt(totals["squared_error"] / totals["rated"]))
        metrics["mae"] = totals["absolute_error"] / totals["rated"]
    return metrics


def popularity_baseline(
    train: pd.DataFrame, test: pd.DataFrame, half_life_days: float = 0.0
) -> dict[str, float]:
    """Every user gets the cold-start list (all-time, or trending with a half-life) minus
    what they have seen."""
    popularity = popular_items(train, train["item_id"].nunique(), half_life_days)
    return named(averaged(popularity_totals(popularity, train, test)))


def popularity_totals(popularity: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """The baseline's ranking metrics as sums over the users of `train`, `popularity` every
    training item with its score, best first (`popular_items`)."""
    ranked = first_unseen(
        train["user_id"].unique(),
        popularity["item_id"].to_numpy(),
        popularity["score"].to_numpy(),
        seen=train,
        k=TOP_K,
    )
    return ranking_metric_totals(ranked, test, TOP_K)


def named(metrics: dict[str, float]) -> dict[str, float]:
    """precision_at_k → precision_at_10, as the registry and the gate name them."""
    return {name.replace("_at_k", f"_at_{TOP_K}"): value for name, value in metrics.items()}


TOTALS = (*RANKING_METRICS, "users", *ERROR_TOTALS)


def evaluate_on_spark(
    item_side: FactorModel,
    train: Any,
    test: Any,
    popularities: Mapping[str, pd.DataFrame],
) -> dict[str, dict[str, float]]:
    """`evaluate` of the model whose item side is given (each user folded in from their
    training history, as on the driver) and `popularity_totals`' baselines, by name, for
    Spark DataFrames: every executor scores its users, the driver adds up the totals."""

    spark = train.sparkSession
    # Broadcast: sent to each executor once, not with every task.
    shared = spark.sparkContext.broadcast(item_side)

    def totals(batches: UserBatches) -> Iterator[pd.DataFrame]:
        model = shared.value
        for batch in batches:
            fold, held_out = batch["train"], batch["test"]
            found = {MODEL: evaluation_totals(fold_in(model, fold), fold, held_out)}
            for name, popularity in popularities.items():
                found[name] = popularity_totals(popularity, fold, held_out)
            yield pd.DataFrame(
                [{"scorer": name, **dict.fromkeys(TOTALS, 0.0), **t} for name, t in found.items()]
            )

    schema = "scorer string, " + ", ".join(f"{name} double" for name in TOTALS)
    partitions = spark.sparkContext.defaultParallelism
    summed = (
        map_user_batches({"train": train, "test": test}, totals, schema, partitions)
        .groupBy("scorer")
        .sum(*TOTALS)
        .collect()
    )
    return {
        row.scorer: metrics_of({name: row[f"sum({name})"] for name in TOTALS}) for row in summed
    }
