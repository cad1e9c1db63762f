"""Scoring on Spark's executors gives the driver's top-k, seen items excluded."""

import numpy as np
import pandas as pd

from reco_dagster.domain.ranking import top_k_items
from reco_dagster.domain.spark_scoring import spark_top_k


def test_executor_scoring_matches_the_driver_and_excludes_seen_items(spark):
    rng = np.random.default_rng(4)
    users, items, rank, k = 300, 80, 6, 10
    user_factors = rng.normal(size=(users, rank)).astype(np.float32)
    item_factors = rng.normal(size=(items, rank)).astype(np.float32)
    seen_rows = rng.integers(0, users, 2000)
    seen_cols = rng.integers(0, items, 2000)
    # Spark's ids need not be 0..n-1: shift them, and name one unknown item in `seen`.
    user_ids, item_ids = np.arange(users) * 3 + 1, np.arange(items) * 2 + 5
    seen = pd.DataFrame({"user": user_ids[seen_rows], "item": item_ids[seen_cols]})
    seen.loc[len(seen)] = [user_ids[0], 10_000]

    def factors(ids, matrix):
        frame = pd.DataFrame({"id": ids.astype(np.int32), "features": list(matrix)})
        return spark.createDataFrame(frame, "id int, features array<float>").repartition(3)

    ranked = spark_top_k(
        spark,
        factors(user_ids, user_factors),
        factors(item_ids, item_factors),
        spark.createDataFrame(seen.astype("int32")),
        k,
    ).toPandas()

    best, scores = top_k_items(user_factors, item_factors, seen_rows, seen_cols, k)
    expected = pd.DataFrame(
        {
            "user": np.repeat(user_ids, k),
            "item": item_ids[best.ravel()],
            "rank": np.tile(np.arange(1, k + 1), users),
        }
    )
    got = ranked.sort_values(["user", "rank"]).reset_index(drop=True)
    assert got[["user", "item", "rank"]].astype("int64").equals(expected.astype("int64"))
    assert np.allclose(got["score"], scores.ravel(), atol=1e-5)
    assert not set(zip(got["user"], got["item"], strict=True)) & set(
        zip(seen["user"], seen["item"], strict=True)
    )
