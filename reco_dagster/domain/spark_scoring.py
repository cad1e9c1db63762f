"""Top-k for every user computed on Spark's executors: `SparkAls` ranks with the user factors
Spark fitted, `SparkFoldIn` folds users in from their histories there first.

Each executor ranks its partitions of user factors in blocks against the item factors
(broadcast: the catalogue is the small side) with the same numpy/BLAS code the driver uses
(`top_k_items`), so user factors never travel to the driver; only the ranked lists do.
Spark's own `ALSModel.recommendForAllUsers` does the same job with a cross join and no
exclusion of seen items; bench/scoring.py measures the three ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from reco_dagster.domain.models import FactorModel, ModelCard, Scorer
from reco_dagster.domain.ranking import top_k_items
from reco_dagster.domain.spark_tables import UserBatches, map_user_batches

RANKED_SCHEMA = "user int, item int, rank int, score float"


def spark_top_k(spark: Any, user_factors: Any, item_factors: np.ndarray, seen: Any, k: int) -> Any:
    """user_factors: a Spark DataFrame (id int, features array<float>, as ALSModel has it);
    item_factors: the items' rows; seen: a Spark DataFrame (user int, item int: a row of
    item_factors) to exclude. Returns a Spark DataFrame of (user, item: a row of item_factors,
    rank, score), best first per user, without collecting user factors."""
    from pyspark.sql import functions as F

    broadcast = spark.sparkContext.broadcast(item_factors.astype(np.float32))
    seen_lists = seen.groupBy("user").agg(F.collect_list("item").alias("seen"))
    users = user_factors.join(seen_lists, user_factors["id"] == seen_lists["user"], "left")

    def rank(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        factors = broadcast.value
        for batch in batches:
            seen_items = batch["seen"].map(lambda items: [] if items is None else items)
            rows = np.repeat(np.arange(len(batch)), seen_items.map(len).to_numpy())
            cols = np.concatenate([np.asarray(items) for items in seen_items] + [[]])
            best, scores = top_k_items(
                np.stack(batch["features"].to_numpy()), factors, rows, cols.astype(np.int64), k
            )
            width = best.shape[1]
            filled = (best >= 0).ravel()
            yield pd.DataFrame(
                {
                    "user": np.repeat(batch["id"].to_numpy(dtype=np.int32), width)[filled],
                    "item": best.ravel()[filled].astype(np.int32),
                    "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), len(batch))[filled],
                    "score": scores.ravel()[filled],
                }
            )

    return users.select("id", "features", "seen").mapInPandas(rank, RANKED_SCHEMA)


class SparkAls:
    """A Spark ALS model scored on Spark: the answers its FactorModel gives (same factors,
    same popularity prior, seen items excluded alike), while its user factors stay on the
    executors. Only the item side (broadcast) and the answers reach the driver."""

    def __init__(
        self,
        spark: Any,
        als_model: Any,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        item_side: FactorModel,
    ) -> None:
        """user_ids/item_ids: the string id of each of the model's integer indices (as
        ids_by_index gives them); item_side: the model's FactorModel without user factors."""
        self.spark = spark
        self.als_model = als_model
        self.item_side = item_side
        self._users = _index_of_id(user_ids)
        self._items = _index_of_id(item_ids)
        self._user_ids = user_ids
        self._item_rows = pd.Index(item_side.item_ids)

    @property
    def card(self) -> ModelCard:
        return self.item_side.card

    def _prior(self) -> float:
        if not self.item_side.has_popularity_factor:
            return 0.0
        return float(self.card.settings["popularity_prior"])

    def recommend(self, seen: pd.DataFrame, k: int) -> pd.DataFrame:
        """FactorModel.recommend's answer: every user's top-k items outside `seen`."""
        from pyspark.sql import functions as F

        user_factors = self.als_model.userFactors
        if prior := self._prior():
            # The prior's user side (see als._assemble): one constant factor.
            user_factors = user_factors.withColumn(
                "features", F.concat("features", F.array(F.lit(prior).cast("float")))
            )
        users = self._users.reindex(seen["user_id"]).to_numpy()
        items = self._item_rows.get_indexer(seen["item_id"])
        known = ~np.isnan(users) & (items >= 0)
        pairs = pd.DataFrame(
            {"user": users[known].astype(np.int32), "item": items[known].astype(np.int32)}
        )
        ranked = (
            spark_top_k(
                self.spark,
                user_factors,
                self.item_side.item_factors,
                self.spark.createDataFrame(pairs, "user int, item int"),
                k,
            )
            .toPandas()
            .sort_values(["user", "rank"], kind="stable")
        )
        return pd.DataFrame(
            {
                "user_id": self._user_ids[ranked["user"].to_numpy()],
                "item_id": self.item_side.item_ids[ranked["item"].to_numpy()],
                "rank": ranked["rank"].to_numpy(dtype=np.int16),
                "score": ranked["score"].to_numpy(dtype=np.float64),
            }
        )

    def predict(self, user_ids: pd.Series, item_ids: pd.Series) -> np.ndarray:
        """FactorModel.predict's answer, computed by ALSModel.transform on the executors."""
        users = self._users.reindex(user_ids).to_numpy()
        items = self._items.reindex(item_ids).to_numpy()
        item_rows = self._item_rows.get_indexer(item_ids)
        known = ~np.isnan(users) & (item_rows >= 0)
        pairs = pd.DataFrame(
            {
                "row": np.flatnonzero(known),
                "user": users[known].astype(np.int32),
                "item": items[known].astype(np.int32),
            }
        )
        predicted = (
            self.als_model.transform(
                self.spark.createDataFrame(pairs, "row long, user int, item int")
            )
            .select("row", "prediction")
            .toPandas()
        )
        rows = predicted["row"].to_numpy()
        scores = np.full(len(users), np.nan)
        scores[rows] = predicted["prediction"].to_numpy()
        if prior := self._prior():
            scores[rows] += prior * self.item_side.item_factors[item_rows[rows], -1]
        return scores


def _index_of_id(ids_by_index: np.ndarray) -> pd.Series:
    """Integer index by string id, over the indices that name an id."""
    used = np.flatnonzero(ids_by_index != "")
    return pd.Series(used.astype(np.float64), index=ids_by_index[used])


def ranked_on(scorer: Scorer) -> str:
    """Where a scorer ranks, as materialization metadata says it."""
    return "spark executors" if isinstance(scorer, SparkAls | SparkFoldIn) else "driver"


class SparkFoldIn:
    """Users folded in from their histories and ranked on Spark's executors: the answers
    `fold_in(item_side, history).recommend(...)` gives on the driver, for as many users as
    the cluster holds. Histories are partitioned by user (`spark_tables.map_user_batches`),
    each executor folds in and ranks its users with the same numpy code; only the item side
    and the ranked lists cross the driver."""

    def __init__(self, spark: Any, item_side: FactorModel) -> None:
        self.spark = spark
        self.item_side = item_side

    @property
    def card(self) -> ModelCard:
        return self.item_side.card

    def recommend(self, seen: pd.DataFrame, k: int) -> pd.DataFrame:
        """Every user of `seen` (interactions: their history, which is also what they are not
        offered again) scored from that history: top-k items."""

        history = self.spark.createDataFrame(
            seen[list(HISTORY_COLUMNS)].astype(
                {"rating": "float64", "weight": "float64", "timestamp": "int64"}
            ),
            "user_id string, item_id string, rating double, weight double, timestamp long",
        )
        # Broadcast: sent to each executor once, not with every task.
        item_side = self.spark.sparkContext.broadcast(self.item_side)

        def rank(batches: UserBatches) -> Iterator[pd.DataFrame]:
            for batch in batches:
                yield _ranked(item_side.value, batch["history"], k)

        partitions = max(self.spark.sparkContext.defaultParallelism, 1)
        ranked = map_user_batches({"history": history}, rank, FOLDED_SCHEMA, partitions).toPandas()
        return ranked.sort_values(["user_id", "rank"], kind="stable", ignore_index=True).astype(
            {"rank": np.int16, "score": np.float64}
        )

    def predict(self, user_ids: pd.Series, item_ids: pd.Series) -> np.ndarray:
        raise NotImplementedError(
            "predicted ratings come from explicit models, whose undecayed users Spark ranks "
            "with its own factors (SparkAls)"
        )


HISTORY_COLUMNS = ("user_id", "item_id", "rating", "weight", "timestamp")
FOLDED_SCHEMA = "user_id string, item_id string, rank int, score double"


def _ranked(item_side: FactorModel, history: pd.DataFrame, k: int) -> pd.DataFrame:
    # Imported here: foldin → als → this module.
    from reco_dagster.domain.foldin import fold_in

    return fold_in(item_side, history).recommend(seen=history, k=k)
