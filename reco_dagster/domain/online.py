"""Online evaluation: did users go on to interact with what they were served?"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

SERVED = "served/"
"""The API's log of served lists, under the data folder: `api.experiments.ServedLog` writes
it, `resources.served_log.ServedListLog` reads it."""
SERVED_COLUMNS = ["time", "user_id", "variant", "version", "items", "new_items"]
"""The fields of each line of the log, in order (`new_items`: those of `items` in positions
given to new items; lines from before it have none)."""
COUNTED = ["lists_served", "lists_hit", "new_item_positions", "new_items_hit"]


def served_hit_rate(served: pd.DataFrame, events: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Per (variant, version): lists served, lists with a hit, and the hit rate; and apart,
    the positions given to new items, how many of those new items were hit, and their hit
    rate.

    served: time (Unix s), user_id, variant, version, items (list of item ids), new_items
    (those of the items in new-item positions). events: user_id, item_id, timestamp. A
    served item is hit when its user interacted with it within `window_s` after it was
    served; a list is hit when one of its items is.
    """
    # Lines logged before new items were marked have no `new_items`: none were.
    served = served.reindex(columns=SERVED_COLUMNS)
    lists = served.reset_index(drop=True).rename_axis("list_id").reset_index()
    lists["variant"] = lists["variant"].fillna("none")
    shown = lists.explode("items").rename(columns={"items": "item_id"}).dropna(subset=["item_id"])
    joined = shown.merge(events[["user_id", "item_id", "timestamp"]], on=["user_id", "item_id"])
    later = joined[
        (joined["timestamp"] >= joined["time"]) & (joined["timestamp"] <= joined["time"] + window_s)
    ]
    lists["hit"] = lists["list_id"].isin(later["list_id"])
    new = lists.explode("new_items").rename(columns={"new_items": "item_id"})
    new = new.dropna(subset=["item_id"])
    hit_pairs = set(zip(later["list_id"], later["item_id"], strict=True))
    new["new_hit"] = [
        pair in hit_pairs for pair in zip(new["list_id"], new["item_id"], strict=True)
    ]
    lists["new_item_positions"] = new.groupby("list_id").size().reindex(lists["list_id"])
    lists["new_items_hit"] = new.groupby("list_id")["new_hit"].sum().reindex(lists["list_id"])
    summary = (
        lists.fillna({"new_item_positions": 0, "new_items_hit": 0})
        .groupby(["variant", "version"])
        .agg(
            lists_served=("list_id", "size"),
            lists_hit=("hit", "sum"),
            new_item_positions=("new_item_positions", "sum"),
            new_items_hit=("new_items_hit", "sum"),
        )
    )
    return _with_rates(summary).reset_index()


def _with_rates(summary: pd.DataFrame) -> pd.DataFrame:
    summary["hit_rate"] = summary["lists_hit"] / summary["lists_served"]
    positions = summary["new_item_positions"]
    summary["new_item_hit_rate"] = summary["new_items_hit"] / positions.where(positions > 0)
    return summary


def served_hit_rate_in_chunks(
    served: Iterable[pd.DataFrame], events: pd.DataFrame, window_s: float
) -> pd.DataFrame:
    """`served_hit_rate` over a log read a chunk at a time (however it is split, the answer is
    the same): each chunk is joined with the events from its first list to its last list's
    window only, so memory follows the chunk, not the log."""
    events = events[["user_id", "item_id", "timestamp"]].sort_values("timestamp", kind="stable")
    times = events["timestamp"].to_numpy()
    parts = []
    for chunk in served:
        if chunk.empty:
            continue
        first = np.searchsorted(times, chunk["time"].min(), side="left")
        last = np.searchsorted(times, chunk["time"].max() + window_s, side="right")
        parts.append(served_hit_rate(chunk, events.iloc[first:last], window_s))
    if not parts:
        return served_hit_rate(pd.DataFrame(columns=SERVED_COLUMNS), events, window_s)
    summary = pd.concat(parts).groupby(["variant", "version"])[COUNTED].sum()
    return _with_rates(summary).reset_index()
