"""Spark ML ALS fitting, and the factor model the rest of the product scores with in numpy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from reco_dagster.domain.ranking import recommend

SPARK_MODEL_DIR = "spark_model"


@dataclass(frozen=True)
class FactorModel:
    """ALS factors keyed by the product's own string ids, loaded without a JVM."""

    version: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    def predict(self, user_ids: pd.Series, item_ids: pd.Series) -> np.ndarray:
        """Predicted rating/preference per pair; NaN where the user or the item is unknown."""
        users = pd.Index(self.user_ids).get_indexer(user_ids)
        items = pd.Index(self.item_ids).get_indexer(item_ids)
        known = (users >= 0) & (items >= 0)
        scores = np.full(len(users), np.nan)
        scores[known] = np.einsum(
            "ij,ij->i", self.user_factors[users[known]], self.item_factors[items[known]]
        )
        return scores

    def recommend(self, seen: pd.DataFrame, k: int) -> pd.DataFrame:
        """Every user's top-k items outside `seen` (user_id, item_id, rank, score)."""
        return recommend(
            self.user_ids, self.item_ids, self.user_factors, self.item_factors, seen, k
        )


@dataclass(frozen=True)
class TrainedAls:
    """A freshly fitted Spark model with the id mapping its integer indices refer to."""

    version: str
    spark_model: Any
    user_ids: np.ndarray
    item_ids: np.ndarray
    settings: dict[str, Any]

    def save(self, directory: Path) -> None:
        self.spark_model.write().overwrite().save(str(directory / SPARK_MODEL_DIR))
        pd.DataFrame({"user_id": self.user_ids}).to_parquet(directory / "user_ids.parquet")
        pd.DataFrame({"item_id": self.item_ids}).to_parquet(directory / "item_ids.parquet")
        (directory / "model.json").write_text(
            json.dumps({"version": self.version, "settings": self.settings}, indent=2)
        )


def load_factor_model(directory: Path) -> FactorModel:
    """Read a saved model's factors straight from the parquet inside Spark's model format."""
    user_ids = pd.read_parquet(directory / "user_ids.parquet")["user_id"].to_numpy()
    item_ids = pd.read_parquet(directory / "item_ids.parquet")["item_id"].to_numpy()
    described = json.loads((directory / "model.json").read_text())
    user_idx, user_factors = _factors(directory / SPARK_MODEL_DIR / "userFactors")
    item_idx, item_factors = _factors(directory / SPARK_MODEL_DIR / "itemFactors")
    return FactorModel(
        version=described["version"],
        user_ids=user_ids[user_idx],
        item_ids=item_ids[item_idx],
        user_factors=user_factors,
        item_factors=item_factors,
        settings=described["settings"],
    )


def _factors(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pads.dataset(directory, format="parquet").to_table()
    ids = table.column("id").to_numpy()
    features = table.column("features").combine_chunks()
    rank = len(features[0]) if len(features) else 0
    matrix = features.flatten().to_numpy().astype(np.float32).reshape(len(ids), rank)
    order = np.argsort(ids)
    return ids[order], matrix[order]


def fit_als(
    spark: Any,
    interactions: pd.DataFrame,
    *,
    rank: int,
    max_iter: int,
    reg_param: float,
    alpha: float,
    implicit_prefs: bool,
    seed: int,
) -> Any:
    """Fit Spark ML ALS on (user_idx, item_idx). Implicit feedback uses binary confidence
    (every interaction counts once, scaled by alpha); explicit feedback fits the ratings."""
    from pyspark.ml.recommendation import ALS

    if implicit_prefs:
        preference = np.ones(len(interactions), dtype=np.float32)
        rows = interactions
    else:
        rows = interactions[interactions["rating"].notna()]
        preference = rows["rating"].to_numpy(dtype=np.float32)
    if rows.empty:
        raise ValueError(
            "no interactions to train on"
            + ("" if implicit_prefs else " (explicit feedback needs rated events)")
        )
    training = spark.createDataFrame(
        pd.DataFrame(
            {
                "user": rows["user_idx"].to_numpy(dtype=np.int32),
                "item": rows["item_idx"].to_numpy(dtype=np.int32),
                "preference": preference,
            }
        )
    )
    estimator = ALS(
        rank=rank,
        maxIter=max_iter,
        regParam=reg_param,
        alpha=alpha,
        implicitPrefs=implicit_prefs,
        seed=seed,
        userCol="user",
        itemCol="item",
        ratingCol="preference",
        coldStartStrategy="drop",
    )
    return estimator.fit(training)
