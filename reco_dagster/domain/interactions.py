"""From the event history to one row per (user, item) with dense integer indices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from reco_dagster.domain.events import DEFAULT_EVENT_WEIGHTS

INTERACTION_COLUMNS = (
    "user_id",
    "item_id",
    "user_idx",
    "item_idx",
    "rating",
    "weight",
    "events",
    "timestamp",
)


def build_interactions(
    events: pd.DataFrame, weights: Mapping[str, float] = DEFAULT_EVENT_WEIGHTS
) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate events across files, then aggregate per (user, item).

    `rating` is the user's latest explicit rating of the item (NaN if there is none): a
    rating is the user's word and a later one replaces it. `weight` is the strongest of its
    typed events' `weights` (a `rating` event has none: its rating speaks), divided by the
    top configured weight so that the strongest type counts like a top rating; NaN without
    typed events. Typed events add evidence rather than replace it: a purchase followed by
    a view is still a purchase. `events` is the number of distinct events, `timestamp` the
    latest one. Events without an `event_type` column are untyped. Returns the table and the
    number of duplicate events dropped.
    """
    # A view and a purchase at the same second are two events, not a duplicate.
    columns = ["user_id", "item_id", "rating", "timestamp", "event_type"]
    unique = events.reindex(columns=columns).drop_duplicates()
    duplicates = len(events) - len(unique)
    top = max(weights.values(), default=1.0)
    relative = {kind: weight / top for kind, weight in weights.items()}
    ordered = unique.assign(weight=unique["event_type"].map(relative).astype("float64"))
    # The latest rating wins; at the same second, the higher one (so the table's order, which
    # Spark does not keep, does not decide).
    ordered = ordered.sort_values(["timestamp", "rating"], kind="stable", na_position="first")
    grouped = ordered.groupby(["user_id", "item_id"], sort=False)
    table = grouped.agg(
        rating=("rating", "last"),
        weight=("weight", "max"),
        events=("timestamp", "size"),
        timestamp=("timestamp", "max"),
    ).reset_index()
    table["user_idx"] = pd.factorize(table["user_id"], sort=True)[0].astype("int32")
    table["item_idx"] = pd.factorize(table["item_id"], sort=True)[0].astype("int32")
    table = table.sort_values(["user_idx", "item_idx"], ignore_index=True)
    return table[list(INTERACTION_COLUMNS)], duplicates


def table_shape(table: Any) -> dict[str, Any]:
    """Rows, distinct users and items, and the shares of rated and typed rows of an
    interactions table, a pandas or (in one pass on its executors) a Spark DataFrame."""
    if isinstance(table, pd.DataFrame):
        return {
            "rows": len(table),
            "users": table["user_id"].nunique(),
            "items": table["item_id"].nunique(),
            "rated_share": float(table["rating"].notna().mean()),
            "typed_share": float(table["weight"].notna().mean()),
        }
    from pyspark.sql import functions as F

    found = table.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count_distinct("user_id").alias("users"),
        F.count_distinct("item_id").alias("items"),
        F.avg(F.col("rating").isNotNull().cast("double")).alias("rated_share"),
        F.avg(F.col("weight").isNotNull().cast("double")).alias("typed_share"),
    ).first()
    return found.asDict()


def item_users(table: Any) -> pd.Series:
    """Distinct users per item id of an interactions table (one row per user and item), a
    pandas or a Spark DataFrame."""
    if isinstance(table, pd.DataFrame):
        return table.groupby("item_id").size()
    counts = table.groupBy("item_id").count().toPandas()
    return counts.set_index("item_id")["count"]


def history_events(interactions: pd.DataFrame) -> dict[str, int]:
    """Per user, the distinct events their interactions were built from: the freshness mark
    of a list ranked from them (it grows with every new event, and a batch list and a
    micro-batch's refresh of the same history count alike)."""
    per_user = interactions.groupby("user_id", sort=False)["events"].sum()
    return {user: int(events) for user, events in per_user.items()}


def strength(from_rating: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """How strongly each (user, item) row speaks for the item: the stronger of what its
    rating says (`from_rating`, in [0, 1], NaN where unrated) and its typed events' `weight`;
    1 where neither says anything, so an untyped unrated event counts fully, as every event
    did before event types. A history without a `weight` column is untyped."""
    typed = rows["weight"].to_numpy(dtype=np.float64) if "weight" in rows else np.nan
    return np.nan_to_num(np.fmax(from_rating, typed), nan=1.0)
