"""Ranked rows as the store keeps them: one list per user (or per item, for similar items),
best first, each entry an item id, its score and its title when the catalogue has one."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

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
SCORE_DECIMALS = 5
"""A served score's decimals: enough to order a list, and short in every response."""
LIST_COLUMNS = ["user_id", "item_id", "rank", "score", "new_item", "because"]
"""The columns of a ranked table (`<family>_recommendations`) a user's list is made of."""


def titles_by_item(catalog: pd.DataFrame) -> dict[str, str]:
    titled = catalog[catalog["title"].notna()]
    return dict(zip(titled["item_id"], titled["title"], strict=True))


def listed_items(ranked: pd.DataFrame, titles: dict[str, str]) -> list[Item]:
    """Ranked rows as the store keeps them: item_id, score, the title when known, the
    reasons when `ranked` has them (a `because` column), and `new_item` on positions given to
    new items (`domain.exposure`)."""
    return _listed(_Columns.of(ranked), titles)


def ranked_lists(
    ranked: pd.DataFrame, by: str, titles: dict[str, str]
) -> Iterator[tuple[str, list[Item]]]:
    """One list per value of `by` (a user, or an item for its similar items), best first."""
    ordered = ranked.sort_values([by, "rank"], kind="stable")
    keys = ordered[by].to_numpy()
    if not len(keys):
        return
    columns = _Columns.of(ordered)
    starts = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), len(keys)]
    for start, end in itertools.pairwise(starts):
        yield keys[start], _listed(columns.rows(start, end), titles)


def history_marks(ranked: pd.DataFrame) -> dict[str, int]:
    """Each user's `history_events` in a ranked table's rows: how many of the user's events
    the list was ranked from (every row of a user carries it)."""
    users = ranked.drop_duplicates("user_id")
    return dict(zip(users["user_id"], users["history_events"].tolist(), strict=True))


Rows = TypeVar("Rows", pd.DataFrame, pa.Table)


def whole_key_batches(batches: Iterable[Rows], by: str) -> Iterator[Rows]:
    """Batches (pandas frames or Arrow tables) read from a table whose rows of each value of
    `by` are together (a user's ranked rows, a user's part of a Spark partition), cut again
    so that each batch holds every row of its values: the rows of a batch's last value are
    held back and go with the next batch, where they may run on. What `ranked_lists` of each
    batch then gives is one whole list per value, with no more than a batch (and one value's
    rows) in memory."""
    held_back: Rows | None = None
    for batch in batches:
        rows = batch if held_back is None else _concat(held_back, batch)
        if not len(rows):
            continue
        keys = np.asarray(rows[by])
        last = keys == keys[-1]
        held_back = _taken(rows, last)
        if not last.all():
            yield _taken(rows, ~last)
    if held_back is not None:
        yield held_back


def _concat(first: Rows, second: Rows) -> Rows:
    if isinstance(first, pa.Table):
        return pa.concat_tables([first, second])
    return pd.concat([first, second], ignore_index=True)


def _taken(rows: Rows, mask: np.ndarray) -> Rows:
    return rows.filter(pa.array(mask)) if isinstance(rows, pa.Table) else rows[mask]


class _Columns(NamedTuple):
    """A ranked frame's columns as arrays, taken once: a list per user is then sliced from
    them rather than from a frame (pandas costs a millisecond a user; the micro-batch writes
    hundreds)."""

    item_ids: np.ndarray
    scores: np.ndarray
    because: np.ndarray | None
    new_item: np.ndarray | None

    @classmethod
    def of(cls, ranked: pd.DataFrame) -> _Columns:
        return cls(
            ranked["item_id"].to_numpy(dtype=object),
            ranked["score"].to_numpy(dtype=float),
            ranked["because"].to_numpy(dtype=object) if "because" in ranked else None,
            ranked["new_item"].to_numpy(dtype=bool) if "new_item" in ranked else None,
        )

    def rows(self, start: int, end: int) -> _Columns:
        return _Columns(*(None if column is None else column[start:end] for column in self))


def _listed(columns: _Columns, titles: dict[str, str]) -> list[Item]:
    items: list[Item] = [
        {"item_id": item_id, "score": round(score, SCORE_DECIMALS)}
        for item_id, score in zip(columns.item_ids.tolist(), columns.scores.tolist(), strict=True)
    ]
    if titles:
        for item in items:
            title = titles.get(item["item_id"])
            if title is not None:
                item["title"] = title
    if columns.because is not None:
        for item, because in zip(items, columns.because.tolist(), strict=True):
            if because is not None:
                item["because"] = list(because)
    if columns.new_item is not None:
        for position in np.flatnonzero(columns.new_item).tolist():
            items[position]["new_item"] = True
    return items
