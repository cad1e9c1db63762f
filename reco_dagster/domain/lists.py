"""Ranked rows as the store keeps them: one list per user (or per item, for similar items),
best first, each entry an item id, its score and its title when the catalogue has one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd

Item = dict[str, Any]
"""{"item_id": str, "score": float, "title": str (when the catalogue has one), "because":
list[str] (the history items that explain it, when ranked with them; stores keep them
apart), "new_item": true (a position given to a new item)}"""
PUBLISHED_DEPTH = 300
"""Items stored per user (and in the cold-start, trending and popular lists) unless
RECO_PUBLISHED_DEPTH says otherwise: the API serves any k up to 100 out of them, and has that
many to pick from when a request's filters leave items out, without touching the model."""
NON_PERSONAL_DEPTH = 2_000
"""Items kept, at least, in the cold-start, trending and popular lists (one each per version;
all of a smaller catalogue): a filter for a category that is rare among popular items still
finds some in their tail. Cosmos DB keeps the three in the version's registry record (2 MB at
most): about 0.5 MB at this depth."""
SIMILAR_DEPTH = 100
"""Similar items stored per item."""


def titles_by_item(catalog: pd.DataFrame) -> dict[str, str]:
    titled = catalog[catalog["title"].notna()]
    return dict(zip(titled["item_id"], titled["title"], strict=True))


def listed_items(ranked: pd.DataFrame, titles: dict[str, str]) -> list[Item]:
    """Ranked rows as the store keeps them: item_id, score, the title when known, the
    reasons when `ranked` has them (a `because` column), and `new_item` on positions given to
    new items (`domain.exposure`)."""
    items: list[Item] = []
    reasons = ranked["because"] if "because" in ranked else [None] * len(ranked)
    new = ranked["new_item"] if "new_item" in ranked else [False] * len(ranked)
    rows = zip(ranked["item_id"], ranked["score"], reasons, new, strict=True)
    for item_id, score, because, is_new in rows:
        item: Item = {"item_id": item_id, "score": round(float(score), 5)}
        if item_id in titles:
            item["title"] = titles[item_id]
        if because is not None:
            item["because"] = list(because)
        if is_new:
            item["new_item"] = True
        items.append(item)
    return items


def ranked_lists(
    ranked: pd.DataFrame, by: str, titles: dict[str, str]
) -> Iterator[tuple[str, list[Item]]]:
    """One list per value of `by` (a user, or an item for its similar items), best first."""
    ordered = ranked.sort_values([by, "rank"], kind="stable")
    for key, group in ordered.groupby(by, sort=False):
        yield key, listed_items(group, titles)
