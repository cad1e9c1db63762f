"""Online evaluation: did users go on to interact with what they were served?"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

SERVED = "served/"
"""The API's log of served lists, under the data folder: `api.experiments.ServedLog` writes
it, `resources.served_log.ServedListLog` reads it."""
SERVED_COLUMNS = ["time", "user_id", "variant", "version", "items"]
"""The fields of each line of the log, in order."""


def served_hit_rate(served: pd.DataFrame, events: pd.DataFrame, window_s: float) -> pd.DataFrame:
    """Per (variant, version): lists served, lists with a hit, and the hit rate.

    served: time (Unix s), user_id, variant, version, items (list of item ids).
    events: user_id, item_id, timestamp. A served list is a hit when its user interacted
    with one of its items within `window_s` after it was served.
    """
    lists = served.reset_index(drop=True).rename_axis("list_id").reset_index()
    lists["variant"] = lists["variant"].fillna("none")
    shown = lists.explode("items").rename(columns={"items": "item_id"}).dropna(subset=["item_id"])
    joined = shown.merge(events[["user_id", "item_id", "timestamp"]], on=["user_id", "item_id"])
    later = joined[
        (joined["timestamp"] >= joined["time"]) & (joined["timestamp"] <= joined["time"] + window_s)
    ]
    lists["hit"] = lists["list_id"].isin(later["list_id"])
    summary = lists.groupby(["variant", "version"]).agg(
        lists_served=("list_id", "size"), lists_hit=("hit", "sum")
    )
    summary["hit_rate"] = summary["lists_hit"] / summary["lists_served"]
    return summary.reset_index()


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
    summary = pd.concat(parts).groupby(["variant", "version"])[["lists_served", "lists_hit"]].sum()
    summary["hit_rate"] = summary["lists_hit"] / summary["lists_served"]
    return summary.reset_index()
