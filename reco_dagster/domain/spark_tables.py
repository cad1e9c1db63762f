"""The preparation stage as Spark jobs, for event logs the driver cannot hold: the same
interactions, splits and cold-start lists as `interactions.build_interactions`,
`splits.split_interactions` and `ranking.popular_items`, row for row (tests compare them on
the same data). Per-user splits use window functions, as Microsoft Recommenders'
`spark_splitters` do; only a few small tables (the distinct users and items, a band of
timestamps) are ever sorted in one partition.
"""

# No `from __future__ import annotations`: pandas_udf reads the type hints of its function.
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd

from reco_dagster.domain.events import DEFAULT_EVENT_WEIGHTS
from reco_dagster.domain.interactions import INTERACTION_COLUMNS
from reco_dagster.domain.lists import whole_key_batches
from reco_dagster.domain.models import fingerprint_columns, fingerprint_of, row_hash_total
from reco_dagster.domain.recency import DAY_S
from reco_dagster.domain.splits import (
    SPLIT_METHODS,
    SplitMethod,
    check_ratio,
    stratified_keys,
    user_keys,
)

EVENT_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "event_type")


def spark_interactions(
    events: Any, weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS
) -> tuple[Any, int]:
    """`build_interactions` on Spark: `events` a Spark DataFrame of the event history's
    columns (`event_type` optional). Returns the table (INTERACTION_COLUMNS) and the number of
    duplicate events dropped."""
    from pyspark.sql import functions as F

    if "event_type" not in events.columns:
        events = events.withColumn("event_type", F.lit(None).cast("string"))
    unique = events.select(*EVENT_COLUMNS).dropDuplicates()
    duplicates = events.count() - unique.count()
    top = max(weights.values(), default=1.0)
    relative = F.create_map(
        *[F.lit(value) for kind, weight in weights.items() for value in (kind, weight / top)]
    )
    weighed = unique.withColumn("weight", F.try_element_at(relative, "event_type").cast("double"))
    rated = F.when(F.col("rating").isNotNull() & ~F.isnan("rating"), F.col("rating"))
    table = weighed.groupBy("user_id", "item_id").agg(
        # The latest rating; at the same second, the higher one (as the pandas path orders).
        F.max(F.when(rated.isNotNull(), F.struct("timestamp", rated.alias("rating"))))
        .getField("rating")
        .alias("rating"),
        F.max("weight").alias("weight"),
        F.count(F.lit(1)).alias("events"),
        F.max("timestamp").alias("timestamp"),
    )
    table = _with_dense_index(table, "user_id", "user_idx")
    table = _with_dense_index(table, "item_id", "item_idx")
    return table.select(*INTERACTION_COLUMNS), duplicates


def _with_dense_index(table: Any, column: str, index: str) -> Any:
    """`index`: the position of `column`'s value among its distinct values in sorted order
    (pandas.factorize(sort=True)); Spark's string order is UTF-8 byte order, which is code
    point order, as Python's."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    distinct = table.select(column).distinct()
    # One partition: a table of distinct ids, the small side.
    numbered = distinct.withColumn(
        index, (F.row_number().over(Window.orderBy(column)) - 1).cast("int")
    )
    return table.join(numbered, column)


def spark_split(
    interactions: Any, method: SplitMethod, ratio: float = 0.75, seed: int = 42
) -> tuple[Any, Any]:
    """`split_interactions` on Spark: (train, test)."""
    check_ratio(ratio)
    if method == "chronological":
        return _split_by_order(interactions, "timestamp", ratio)
    if method == "stratified":
        return _split_by_order(_with_stratified_key(interactions, seed), "_key", ratio)
    if method == "temporal":
        return _temporal_split(interactions, ratio)
    raise ValueError(f"unknown split method {method!r}: choose one of {', '.join(SPLIT_METHODS)}")


def _split_by_order(interactions: Any, key: str, ratio: float) -> tuple[Any, Any]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_user = Window.partitionBy("user_id")
    ordered = by_user.orderBy(key, "item_id")
    positioned = interactions.withColumn("_position", F.row_number().over(ordered) - 1)
    # Half to even, as numpy rounds.
    kept = F.bround(F.lit(ratio) * F.count(F.lit(1)).over(by_user))
    marked = positioned.withColumn("_train", F.col("_position") < kept)
    columns = [name for name in interactions.columns if name != "_key"]
    return (
        marked.filter("_train").select(*columns),
        marked.filter(~F.col("_train")).select(*columns),
    )


def _with_stratified_key(interactions: Any, seed: int) -> Any:
    from pyspark.sql import functions as F

    @F.pandas_udf("long")
    def key(user_ids: pd.Series, item_ids: pd.Series) -> pd.Series:
        return pd.Series(stratified_keys(user_ids, item_ids, seed))

    return interactions.withColumn("_key", key("user_id", "item_id"))


def _temporal_split(interactions: Any, ratio: float) -> tuple[Any, Any]:
    from pyspark.sql import functions as F

    cut_off = exact_lower_quantile(interactions, "timestamp", ratio)
    train = interactions.filter(F.col("timestamp") <= cut_off)
    later = interactions.filter(F.col("timestamp") > cut_off)
    known = later.join(train.select("user_id").distinct(), "user_id", "left_semi").join(
        train.select("item_id").distinct(), "item_id", "left_semi"
    )
    return train, known.select(*interactions.columns)


def exact_lower_quantile(table: Any, column: str, q: float, band: float = 0.002) -> Any:
    """numpy.quantile(values, q, method="lower") of a numeric column, exactly, without
    sorting it whole: Spark's approximate quantiles (rank error at most band / 4 of the rows)
    bound a band of ranks that holds the wanted one, and only that band is collected."""
    from pyspark.sql import functions as F

    values = table.select(F.col(column).alias("value"))
    count = values.count()
    wanted = math.floor(q * (count - 1))
    while True:
        bounds = [max(q - band, 0.0), min(q + band, 1.0)]
        low, high = values.approxQuantile("value", bounds, band / 4)
        below = values.filter(F.col("value") < low).count()
        inside = [row.value for row in values.filter(F.col("value").between(low, high)).collect()]
        if below <= wanted < below + len(inside):
            return sorted(inside)[wanted - below]
        band *= 4  # the guarantee held not: a wider band


def spark_popular_items(interactions: Any, k: int, half_life_days: float = 0.0) -> Any:
    """`popular_items` on Spark: the k items with the most distinct users (each counted
    0.5 ** (age / half_life_days) with a half-life), ties by latest activity; a Spark
    DataFrame (item_id, score) in that order."""
    from pyspark.sql import functions as F

    if half_life_days > 0:
        latest = interactions.agg(F.max("timestamp")).first()[0]
        weight = F.pow(
            F.lit(0.5), (F.lit(latest) - F.col("timestamp")) / F.lit(half_life_days * DAY_S)
        )
    else:
        weight = F.lit(1.0)
    counts = interactions.groupBy("item_id").agg(
        F.sum(weight).alias("score"), F.max("timestamp").alias("latest")
    )
    ordered = counts.orderBy(F.desc("score"), F.desc("latest"), F.asc("item_id"))
    return ordered.limit(k).select("item_id", "score")


UserBatches = Iterator[dict[str, pd.DataFrame]]


def map_user_batches(
    tables: Mapping[str, Any],
    apply: Callable[[UserBatches], Iterator[pd.DataFrame]],
    schema: str,
    partitions: int,
) -> Any:
    """The driver's pandas code run on Spark's executors, a few users at a time: `tables`
    (Spark DataFrames by name, each with a user_id column) are partitioned by user into
    `partitions` parts, and `apply` gets each part's batches, each a dict of pandas frames (one
    per table, its own columns and types) holding every row of a set of whole users. What it
    yields becomes a Spark DataFrame of `schema` (DDL), its partitions the users' parts: code that
    is right for the rows of some users is right for all of them, on any number of
    executors."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    arrow_schemas = {name: to_arrow_schema(table.schema) for name, table in tables.items()}
    tagged = [table.withColumn(TABLE_TAG, F.lit(name)) for name, table in tables.items()]
    union = functools.reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), tagged)
    by_user = union.repartition(partitions, "user_id").sortWithinPartitions("user_id")
    out_schema = StructType.fromDDL(schema)
    arrow_out = to_arrow_schema(out_schema)

    def split(rows: pa.Table) -> dict[str, pd.DataFrame]:
        return {
            name: rows.filter(pc.equal(rows[TABLE_TAG], name))
            .select(wanted.names)
            .cast(wanted)
            .to_pandas()
            for name, wanted in arrow_schemas.items()
        }

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # A user's rows may straddle two Arrow batches: cut again at users' ends.
        tables = (pa.Table.from_batches([batch]) for batch in batches)
        users = (split(rows) for rows in whole_key_batches(tables, "user_id"))
        for frame in apply(users):
            # An empty frame's columns may have no type to convert (an empty list column
            # is float64 in pandas); it has no rows to give anyway.
            if len(frame):
                yield pa.RecordBatch.from_pandas(frame, schema=arrow_out, preserve_index=False)

    return by_user.mapInArrow(run, out_schema)


TABLE_TAG = "_table"


def partitions_for(users: int, users_per_partition: int, spark: Any) -> int:
    """Enough partitions to keep every executor busy and each part's users few."""
    return max(spark.sparkContext.defaultParallelism, math.ceil(users / users_per_partition))


def spark_data_fingerprint(table: Any) -> tuple[str, int]:
    """`models.data_fingerprint` of a Spark DataFrame, and its number of rows: each
    partition's row hashes summed and rows counted on its executor. The same rows give the
    same fingerprint in either engine."""
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import functions as F

    weighted = "weight" in table.columns and (
        table.filter(F.col("weight").isNotNull() & ~F.isnan("weight")).limit(1).count() > 0
    )
    names = fingerprint_columns(weighted)

    def totals(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        total, rows = np.uint64(0), 0
        for batch in batches:
            total += row_hash_total(batch.to_pandas(), names)
            rows += batch.num_rows
        # A uint64 travels as the int64 of the same bits.
        yield pa.RecordBatch.from_pylist(
            [{"total": int(np.int64(total.view(np.int64))), "rows": rows}]
        )

    parts = table.select(*names).mapInArrow(totals, "total long, rows long").collect()
    total = np.array([part.total for part in parts], dtype=np.int64).view(np.uint64)
    fingerprint = fingerprint_of(np.uint64(total.sum(dtype=np.uint64)), names)
    return fingerprint, sum(part.rows for part in parts)


def spark_sample_users(table: Any, max_users: int, seed: int) -> pd.DataFrame:
    """`splits.sample_users` of a Spark DataFrame, as a pandas one: only the chosen users'
    rows reach the driver."""
    from pyspark.sql import functions as F

    @F.pandas_udf("long")
    def key(user_ids: pd.Series) -> pd.Series:
        return pd.Series(user_keys(user_ids, seed))

    users = table.select("user_id").distinct()
    chosen = users.withColumn("_key", key("user_id")).orderBy("_key", "user_id").limit(max_users)
    return table.join(F.broadcast(chosen.select("user_id")), "user_id", "left_semi").toPandas()
