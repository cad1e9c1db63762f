"""Spark ML ALS: fitting with confidence weighting, saving in Spark's model format, and
reading the factors back without a JVM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from reco_dagster.domain.interactions import strength
from reco_dagster.domain.models import FactorModel, ModelCard, ids_by_index
from reco_dagster.domain.spark_scoring import SparkAls

SPARK_MODEL_DIR = "spark_model"
Confidence = Literal["binary", "rating"]


@dataclass(frozen=True)
class TrainedAls:
    """A freshly fitted Spark model with the id mapping its integer indices refer to."""

    card: ModelCard
    spark_model: Any
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_users: np.ndarray
    """Distinct training users per item index: the popularity prior's input."""

    def save(self, directory: Path) -> None:
        self.spark_model.write().overwrite().save(str(directory / SPARK_MODEL_DIR))
        pd.DataFrame({"user_id": self.user_ids}).to_parquet(directory / "user_ids.parquet")
        pd.DataFrame({"item_id": self.item_ids, "users": self.item_users}).to_parquet(
            directory / "item_ids.parquet"
        )
        self.card.save(directory)

    def factor_model(self, users: bool = True) -> FactorModel:
        """The factors as a saved copy would load them, straight from the fitted model;
        without `users`, its item side only."""
        return _assemble(
            self.card,
            self.user_ids,
            self.item_ids,
            self.item_users,
            _factors(pa.Table.from_pandas(self.spark_model.userFactors.toPandas()))
            if users
            else None,
            _factors(pa.Table.from_pandas(self.spark_model.itemFactors.toPandas())),
        )

    def on_spark(self, spark: Any) -> SparkAls:
        """The fitted model scored on Spark, its user factors left on the executors."""
        return SparkAls(
            spark, self.spark_model, self.user_ids, self.item_ids, self.factor_model(users=False)
        )


def is_spark_model_dir(directory: Path) -> bool:
    return (directory / SPARK_MODEL_DIR).is_dir()


def load_als_factors(directory: Path, users: bool = True) -> FactorModel:
    """Read a saved model's factors straight from the parquet inside Spark's model format;
    without `users`, its item side only (no user factors)."""
    items = pd.read_parquet(directory / "item_ids.parquet")
    return _assemble(
        ModelCard.load(directory),
        _saved_ids(directory, "user") if users else np.empty(0, dtype=object),
        items["item_id"].to_numpy(),
        items["users"].to_numpy(),
        _factors(pads.dataset(directory / SPARK_MODEL_DIR / "userFactors").to_table())
        if users
        else None,
        _factors(pads.dataset(directory / SPARK_MODEL_DIR / "itemFactors").to_table()),
    )


def load_als_on_spark(spark: Any, directory: Path) -> SparkAls:
    """A saved model scored on Spark: Spark reads its user factors, the driver only its item
    side. `directory` must stay readable by Spark until the scoring is done."""
    from pyspark.ml.recommendation import ALSModel

    item_side = load_als_factors(directory, users=False)
    return SparkAls(
        spark,
        ALSModel.load(str(directory / SPARK_MODEL_DIR)),
        _saved_ids(directory, "user"),
        _saved_ids(directory, "item"),
        item_side,
    )


def _saved_ids(directory: Path, entity: str) -> np.ndarray:
    """The string id of each integer index of `entity` ("user" or "item")."""
    return pd.read_parquet(directory / f"{entity}_ids.parquet")[f"{entity}_id"].to_numpy()


def _assemble(
    card: ModelCard,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    item_users: np.ndarray,
    users: tuple[np.ndarray, np.ndarray] | None,
    items: tuple[np.ndarray, np.ndarray],
) -> FactorModel:
    """Factors keyed by string ids (no users: the item side only). An implicit model's
    popularity prior rides along as one more factor: a constant `popularity_prior` for every
    user times log(training users) for every item, so score = u·v + popularity_prior ·
    log(item users), no special case when ranking."""
    item_idx, item_factors = items
    user_idx, user_factors = users or (
        np.empty(0, dtype=np.int64),
        np.empty((0, item_factors.shape[1]), dtype=np.float32),
    )
    prior = card.settings.get("popularity_prior", 0.0) if card.settings["implicit_prefs"] else 0.0
    if prior:
        log_users = np.log(np.maximum(item_users[item_idx], 1)).astype(np.float32)
        user_factors = np.hstack([user_factors, np.full((len(user_idx), 1), prior, np.float32)])
        item_factors = np.hstack([item_factors, log_users[:, None]])
    return FactorModel(card, user_ids[user_idx], item_ids[item_idx], user_factors, item_factors)


def _factors(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(ids, factor matrix) from Spark's (id, features) factor table, ordered by id."""
    ids = table.column("id").to_numpy()
    features = table.column("features").combine_chunks()
    rank = len(features[0]) if len(features) else 0
    matrix = features.flatten().to_numpy().astype(np.float32).reshape(len(ids), rank)
    order = np.argsort(ids)
    return ids[order], matrix[order]


def rating_confidence(rows: pd.DataFrame) -> np.ndarray:
    """Preference strength of interaction rows: from explicit ratings on a 5-point scale, a
    liked item (4+) counts fully, a lukewarm 3 half, a disliked one a little (it was still
    chosen); typed events by their relative weight, the stronger of both (see
    `interactions.strength`); an untyped implicit event (no rating) counts fully."""
    values = rows["rating"].to_numpy(dtype=np.float64)
    from_rating = np.select([values >= 4, values >= 3, values < 3], [1.0, 0.5, 0.2], default=np.nan)
    return strength(from_rating, rows).astype(np.float32)


def fit_als(
    spark: Any,
    interactions: Any,
    card: ModelCard,
    *,
    rank: int,
    max_iter: int,
    reg_param: float,
    alpha: float,
    implicit_prefs: bool,
    confidence: Confidence,
    popularity_prior: float,
    seed: int,
    **scoring: float,
) -> TrainedAls:
    """Fit Spark ML ALS on (user_idx, item_idx) of `interactions`, a pandas DataFrame or a
    Spark one (which stays on the executors). Implicit feedback weighs each interaction by
    `confidence` (binary: all alike; rating: ratings and event types, see
    rating_confidence), scaled by alpha;
    explicit feedback fits the ratings themselves. `popularity_prior` is applied when the
    factors are loaded (load_als_factors), the `scoring` settings (recency) when users are
    folded in."""
    from pyspark.ml.recommendation import ALS

    if isinstance(interactions, pd.DataFrame):
        training, user_ids, item_ids, item_users = _training_from_pandas(
            spark, interactions, implicit_prefs, confidence
        )
    else:
        training, user_ids, item_ids, item_users = _training_on_spark(
            interactions, implicit_prefs, confidence
        )
    # Every interaction counted once per item on either engine: the same table gets the same
    # blocks, and so the same initial factors, wherever it is.
    blocks = min(MAX_ALS_BLOCKS, max(2, -(-int(item_users.sum()) // ROWS_PER_ALS_BLOCK)))
    estimator = ALS(
        numUserBlocks=blocks,
        numItemBlocks=blocks,
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
    return TrainedAls(
        card=card,
        spark_model=estimator.fit(training),
        user_ids=user_ids,
        item_ids=item_ids,
        item_users=item_users,
    )


MAX_ALS_BLOCKS = 10
"""Spark's default number of ALS blocks per side, kept from 2.5M interactions on."""
ROWS_PER_ALS_BLOCK = 250_000
"""ALS splits each side into a block per this many interactions (2 to MAX_ALS_BLOCKS):
Spark's fixed 10 blocks' tasks are mostly overhead on small data (MovieLens 100K's 75,000
training rows on 2 cores: a fit took 4.5 s with 10 blocks, 2.5 s with 2)."""


def preference(rows: pd.DataFrame, implicit_prefs: bool, confidence: Confidence) -> np.ndarray:
    """What ALS fits for each row: a confidence (implicit) or the rating (explicit: rated
    rows only)."""
    if not implicit_prefs:
        return rows["rating"].to_numpy(dtype=np.float32)
    if confidence == "rating":
        return rating_confidence(rows)
    return np.ones(len(rows), dtype=np.float32)


def _no_rows_error(implicit_prefs: bool) -> ValueError:
    return ValueError(
        "no interactions to train on"
        + ("" if implicit_prefs else " (explicit feedback needs rated events)")
    )


def _training_from_pandas(
    spark: Any, interactions: pd.DataFrame, implicit_prefs: bool, confidence: Confidence
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """ALS's (user, item, preference) rows as a Spark DataFrame, the ids of the indices and
    each item's training users."""
    rows = interactions if implicit_prefs else interactions[interactions["rating"].notna()]
    if rows.empty:
        raise _no_rows_error(implicit_prefs)
    training = spark.createDataFrame(
        pd.DataFrame(
            {
                "user": rows["user_idx"].to_numpy(dtype=np.int32),
                "item": rows["item_idx"].to_numpy(dtype=np.int32),
                "preference": preference(rows, implicit_prefs, confidence),
            }
        )
    )
    item_ids = ids_by_index(interactions, "item")
    item_users = np.bincount(interactions["item_idx"].to_numpy(), minlength=len(item_ids))
    return training, ids_by_index(interactions, "user"), item_ids, item_users


def _training_on_spark(
    interactions: Any, implicit_prefs: bool, confidence: Confidence
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """`_training_from_pandas` of a Spark DataFrame: the rows stay on the executors, the
    driver collects only ids and per-item counts."""
    from pyspark.sql import functions as F

    rows = interactions
    if not implicit_prefs:
        rows = rows.filter(F.col("rating").isNotNull() & ~F.isnan("rating"))
    if rows.isEmpty():
        raise _no_rows_error(implicit_prefs)

    @F.pandas_udf("float")
    def preference_of(rating: pd.Series, weight: pd.Series) -> pd.Series:
        rows = pd.DataFrame({"rating": rating, "weight": weight})
        return pd.Series(preference(rows, implicit_prefs, confidence))

    training = rows.select(
        F.col("user_idx").cast("int").alias("user"),
        F.col("item_idx").cast("int").alias("item"),
        preference_of("rating", "weight").alias("preference"),
    )
    items = interactions.groupBy("item_idx", "item_id").agg(F.count(F.lit(1)).alias("users"))
    items = items.toPandas()
    item_ids = ids_by_index(items, "item")
    item_users = np.zeros(len(item_ids), dtype=np.int64)
    item_users[items["item_idx"].to_numpy()] = items["users"].to_numpy()
    users = interactions.select("user_idx", "user_id").distinct().toPandas()
    return training, ids_by_index(users, "user"), item_ids, item_users
