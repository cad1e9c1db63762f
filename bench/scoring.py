"""Batch scoring, three ways, on the same ALS factors: top-100 for every user.

    .venv/bin/python bench/scoring.py [--events 20000000] [--rank 128]

The factors come from a one-iteration Spark ALS fit on a generated log shaped like
MovieLens 20M at the default size (scoring does not depend on how well they are fitted):
- `recommend_for_all_users`: Spark's ALSModel.recommendForAllUsers(100) (seen items are not
  excluded; it has no option to).
- `executor_blocked`: spark_top_k, numpy/BLAS blocks on the executors, item factors
  broadcast, seen items excluded; user factors stay on the executors.
- `driver_blocked`: user and item factors collected to the driver and ranked there with the
  same numpy code (what the pipeline does below BatchScoring.spark_from_users users), seen
  items excluded.
Each result is written to parquet (the work is forced, and kept as the pipeline keeps it).
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.ml.recommendation import ALS

    from bench.scale import shape
    from reco_dagster.domain.ranking import top_k_items
    from reco_dagster.domain.spark_scoring import spark_top_k
    from resources.settings import spark_session

    spark = spark_session()

    from reco_dagster.domain.synthetic import synthetic_event_log

    n_users, n_items = shape(args.events)
    events = synthetic_event_log(args.events, n_users, n_items, seed=7)
    pairs = pd.DataFrame(
        {
            "user": events["user_id"].str[1:].astype(np.int32),
            "item": events["item_id"].str[1:].astype(np.int32),
        }
    ).drop_duplicates()
    del events
    seen = spark.createDataFrame(pairs.assign(preference=np.float32(1.0))).cache()
    seen.count()
    model = ALS(
        rank=args.rank,
        maxIter=1,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="preference",
        seed=1,
    ).fit(seen)
    user_factors, item_factors = model.userFactors.cache(), model.itemFactors.cache()
    user_factors.count(), item_factors.count()
    out = Path(tempfile.mkdtemp(prefix="reco-scoring-"))
    figures: dict[str, float | int] = {
        "events": args.events,
        "users": user_factors.count(),
        "items": item_factors.count(),
        "rank": args.rank,
        "k": args.k,
    }

    started = time.perf_counter()
    model.recommendForAllUsers(args.k).write.parquet(str(out / "spark"))
    figures["recommend_for_all_users_s"] = round(time.perf_counter() - started, 1)

    # Both blocked ways rank the same item rows: seen items named by their row.
    item_ids = np.sort(pairs["item"].unique())
    seen_rows = pairs.assign(item=np.searchsorted(item_ids, pairs["item"]).astype(np.int32))

    started = time.perf_counter()
    items = item_factors.orderBy("id").toPandas()
    spark_top_k(
        spark,
        user_factors,
        np.stack(items["features"].to_numpy()),
        spark.createDataFrame(seen_rows),
        args.k,
    ).write.parquet(str(out / "executors"))
    figures["executor_blocked_s"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    users = user_factors.toPandas()
    items = item_factors.orderBy("id").toPandas()
    best, scores = top_k_items(
        np.stack(users["features"].to_numpy()),
        np.stack(items["features"].to_numpy()),
        pd.Index(users["id"]).get_indexer(seen_rows["user"]),
        seen_rows["item"].to_numpy(),
        args.k,
    )
    width = best.shape[1]
    pd.DataFrame(
        {
            "user": np.repeat(users["id"].to_numpy(), width),
            "item": items["id"].to_numpy()[best.ravel()],
            "rank": np.tile(np.arange(1, width + 1), len(users)),
            "score": scores.ravel(),
        }
    ).to_parquet(out / "driver.parquet")
    figures["driver_blocked_s"] = round(time.perf_counter() - started, 1)
    spark.stop()

    for name, value in figures.items():
        print(f"{name:<28} {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
