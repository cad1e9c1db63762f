"""Top-k for every user computed where the user factors are: on Spark's executors.

Each executor scores its partitions of user factors in blocks against the item factors
(broadcast: the catalogue is the small side) with the same numpy/BLAS code the driver uses
(`top_k_items`), so user factors never travel to the driver. Spark's own
`ALSModel.recommendForAllUsers` does the same job with a cross join and no exclusion of seen
items; bench/scoring.py measures the three ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from reco_dagster.domain.ranking import top_k_items

RANKED_SCHEMA = "user int, item int, rank int, score float"


def spark_top_k(spark: Any, user_factors: Any, item_factors: Any, seen: Any, k: int) -> Any:
    """Spark DataFrames in: user_factors and item_factors (id int, features array<float>, as
    ALSModel has them), seen (user int, item int) to exclude. Returns a DataFrame of
    (user, item, rank, score), best first per user, without collecting user factors."""
    from pyspark.sql import functions as F

    items = item_factors.orderBy("id").toPandas()
    item_ids = items["id"].to_numpy(dtype=np.int64)
    broadcast = spark.sparkContext.broadcast(
        (item_ids, np.stack(items["features"].to_numpy()).astype(np.float32))
    )
    seen_lists = seen.groupBy("user").agg(F.collect_list("item").alias("seen"))
    users = user_factors.join(seen_lists, user_factors["id"] == seen_lists["user"], "left")

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        ids, factors = broadcast.value
        for batch in batches:
            seen_items = batch["seen"].map(lambda items: [] if items is None else items)
            counts = seen_items.map(len).to_numpy()
            rows = np.repeat(np.arange(len(batch)), counts)
            flat = np.concatenate([np.asarray(items) for items in seen_items] + [[]])
            cols = np.searchsorted(ids, flat.astype(np.int64))
            known = (cols < len(ids)) & (ids[np.minimum(cols, len(ids) - 1)] == flat)
            best, scores = top_k_items(
                np.stack(batch["features"].to_numpy()), factors, rows[known], cols[known], k
            )
            width = best.shape[1]
            filled = (best >= 0).ravel()
            yield pd.DataFrame(
                {
                    "user": np.repeat(batch["id"].to_numpy(dtype=np.int32), width)[filled],
                    "item": ids[best.ravel()[filled]].astype(np.int32),
                    "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), len(batch))[filled],
                    "score": scores.ravel()[filled],
                }
            )

    return users.select("id", "features", "seen").mapInPandas(score, RANKED_SCHEMA)
