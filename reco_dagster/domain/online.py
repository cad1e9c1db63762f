"""Online evaluation: did users go on to interact with what they were served?"""

from __future__ import annotations

import pandas as pd


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
