"""Top-k ranking from latent factors, never recommending what a user has already seen."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reco_dagster.domain.recency import DAY_S

SCORING_BLOCK_CELLS = 1 << 23
"""Scores (users by items) held at a time, whatever the catalogue's size: with the
partition's indices (int64) and the negated copy, about 130 MB."""


def top_k_items(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    seen_user_rows: np.ndarray,
    seen_item_cols: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Best k unseen items per user row, best first.

    seen_user_rows/seen_item_cols are parallel index arrays of (user row, item column) pairs
    to exclude. Returns item columns and scores, both (n_users, k'); k' = min(k, n_items).
    A slot a user cannot fill (fewer unseen items than k) has item -1 and score -inf.
    """
    n_users, n_items = user_factors.shape[0], item_factors.shape[0]
    k = min(k, n_items)
    items = np.empty((n_users, k), dtype=np.int64)
    if k == 0:
        return items, np.empty((n_users, 0), dtype=np.float32)
    scores = np.empty((n_users, k), dtype=np.float32)
    order = np.argsort(seen_user_rows, kind="stable")
    seen_rows, seen_cols = seen_user_rows[order], seen_item_cols[order]
    item_factors_t = np.ascontiguousarray(item_factors.T, dtype=np.float32)
    block_users = max(1, SCORING_BLOCK_CELLS // n_items)
    for start in range(0, n_users, block_users):
        stop = min(start + block_users, n_users)
        block = user_factors[start:stop].astype(np.float32, copy=False) @ item_factors_t
        lo, hi = np.searchsorted(seen_rows, [start, stop])
        block[seen_rows[lo:hi] - start, seen_cols[lo:hi]] = -np.inf
        best = (
            np.argpartition(-block, k - 1, axis=1)[:, :k]
            if k < n_items
            else np.tile(np.arange(n_items), (stop - start, 1))
        )
        best_scores = np.take_along_axis(block, best, axis=1)
        ranked = np.argsort(-best_scores, axis=1, kind="stable")
        items[start:stop] = np.take_along_axis(best, ranked, axis=1)
        scores[start:stop] = np.take_along_axis(best_scores, ranked, axis=1)
    items[~np.isfinite(scores)] = -1
    return items, scores


def popular_items(interactions: pd.DataFrame, k: int, half_life_days: float = 0.0) -> pd.DataFrame:
    """The cold-start list: items by number of distinct users, ties by latest activity, then
    by item id.

    With a half-life, "trending": each user counts 0.5 ** (age / half_life_days), the age
    measured back from the latest interaction in the table, so what many users took up lately
    leads.
    """
    timestamps = interactions["timestamp"].to_numpy(dtype=np.float64)
    weight = (
        0.5 ** ((timestamps.max() - timestamps) / (half_life_days * DAY_S))
        if half_life_days > 0 and len(timestamps)
        else np.ones(len(timestamps))
    )
    counts = (
        interactions.assign(weight=weight)
        .groupby("item_id")
        .agg(users=("weight", "sum"), latest=("timestamp", "max"))
    )
    top = (
        counts.reset_index()
        .sort_values(["users", "latest", "item_id"], ascending=[False, False, True], kind="stable")
        .head(k)
    )
    return pd.DataFrame(
        {"item_id": top["item_id"].to_numpy(), "score": top["users"].to_numpy(dtype="float64")}
    )


def fill_short_lists(
    ranked: pd.DataFrame, fallback: pd.DataFrame, seen: pd.DataFrame, depth: int
) -> pd.DataFrame:
    """Lists shorter than `depth` (a user who has seen most of the catalogue) continue with
    the fallback list's items (the cold-start list) that the user has neither seen nor been
    given, scored just below the user's last item."""
    lengths = ranked.groupby("user_id")["rank"].max()
    short = lengths[lengths < depth]
    if short.empty:
        return ranked
    listed = ranked[ranked["user_id"].isin(short.index)]
    taken = pd.concat([seen.loc[seen["user_id"].isin(short.index), ["user_id", "item_id"]], listed])
    items = fallback["item_id"].to_numpy()
    fills = first_unseen(short.index.to_numpy(), items, np.zeros(len(items)), taken, depth)
    by_user = listed.groupby("user_id")
    given = fills["user_id"].map(by_user.size()).to_numpy()
    fills = fills[fills["rank"].to_numpy() <= depth - given]
    given, after = given[fills.index], fills["rank"].to_numpy()
    fills = fills.assign(
        rank=(given + after).astype(np.int16),
        score=fills["user_id"].map(by_user["score"].min()).to_numpy() - 1e-6 * after,
    )
    return pd.concat([ranked, fills], ignore_index=True).sort_values(
        ["user_id", "rank"], kind="stable", ignore_index=True
    )


def first_unseen(
    user_ids: np.ndarray, items: np.ndarray, scores: np.ndarray, seen: pd.DataFrame, k: int
) -> pd.DataFrame:
    """Each user's first k items they have not seen of a list every user shares (`items`,
    best first, with their `scores`): `recommend` with one score per item, without scoring
    the catalogue for each user, and with ties in the list's order."""
    rows = pd.Index(user_ids).get_indexer(seen["user_id"])
    positions = pd.Index(items).get_indexer(seen["item_id"])
    known = (rows >= 0) & (positions >= 0)
    seen_keys = rows[known].astype(np.int64) * len(items) + positions[known]
    # A user's k unseen items lie within the list's first k + (items they have seen).
    window = np.minimum(k + np.bincount(rows[known], minlength=len(user_ids)), len(items))
    user, position = np.repeat(np.arange(len(user_ids)), window), positions_within(window)
    unseen = ~np.isin(user.astype(np.int64) * len(items) + position, seen_keys)
    user, position = user[unseen], position[unseen]
    rank = positions_within(np.bincount(user, minlength=len(user_ids))) + 1
    top = rank <= k
    return pd.DataFrame(
        {
            "user_id": np.asarray(user_ids)[user[top]],
            "item_id": np.asarray(items)[position[top]],
            "rank": rank[top].astype(np.int16),
            "score": np.asarray(scores, dtype=np.float64)[position[top]],
        }
    )


def run_starts(counts: np.ndarray) -> np.ndarray:
    """Where each run of rows begins, for runs of `counts[i]` consecutive rows."""
    return np.cumsum(counts) - counts


def positions_within(counts: np.ndarray) -> np.ndarray:
    """Each row's position (0, 1, …) within its run, for runs of `counts[i]` rows."""
    return np.arange(int(np.sum(counts))) - np.repeat(run_starts(counts), counts)


def recommend(
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    seen: pd.DataFrame,
    k: int,
) -> pd.DataFrame:
    """Top-k unseen items for every user with factors: user_id, item_id, rank (1 = best), score.

    `seen` (user_id, item_id) is everything to exclude; pairs naming unknown users or items
    are ignored.
    """
    rows = pd.Index(user_ids).get_indexer(seen["user_id"])
    cols = pd.Index(item_ids).get_indexer(seen["item_id"])
    known = (rows >= 0) & (cols >= 0)
    items, scores = top_k_items(user_factors, item_factors, rows[known], cols[known], k)
    filled = items >= 0
    width = items.shape[1]
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.asarray(user_ids), width)[filled.ravel()],
            "item_id": np.asarray(item_ids)[items[filled]],
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int16), len(user_ids))[filled.ravel()],
            "score": scores[filled].astype(np.float64),
        }
    )
