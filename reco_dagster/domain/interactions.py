"""From the event history to one row per (user, item) with dense integer indices."""

from __future__ import annotations

import pandas as pd

INTERACTION_COLUMNS = (
    "user_id",
    "item_id",
    "user_idx",
    "item_idx",
    "rating",
    "events",
    "timestamp",
)


def build_interactions(events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate events across files, then aggregate per (user, item).

    `rating` is the user's latest explicit rating of the item (NaN if there is none),
    `events` the number of distinct events, `timestamp` the latest one. Returns the table
    and the number of duplicate events dropped.
    """
    unique = events[["user_id", "item_id", "rating", "timestamp"]].drop_duplicates()
    duplicates = len(events) - len(unique)
    ordered = unique.sort_values("timestamp", kind="stable")
    grouped = ordered.groupby(["user_id", "item_id"], sort=False)
    table = grouped.agg(
        rating=("rating", "last"), events=("timestamp", "size"), timestamp=("timestamp", "max")
    ).reset_index()
    table["user_idx"] = pd.factorize(table["user_id"], sort=True)[0].astype("int32")
    table["item_idx"] = pd.factorize(table["item_id"], sort=True)[0].astype("int32")
    table = table.sort_values(["user_idx", "item_idx"], ignore_index=True)
    return table[list(INTERACTION_COLUMNS)], duplicates


def history_events(interactions: pd.DataFrame) -> dict[str, int]:
    """Per user, the distinct events their interactions were built from: the freshness mark
    of a list ranked from them (it grows with every new event, and a batch list and a
    micro-batch's refresh of the same history count alike)."""
    per_user = interactions.groupby("user_id", sort=False)["events"].sum()
    return {user: int(events) for user, events in per_user.items()}
