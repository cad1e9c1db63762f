"""Exposure for new items: catalogue items the model cannot rank yet (unknown to it, or with
too few interactions to have learned factors worth the name) get a share of the positions in
every list, chosen by how well their categories match the user's recent history. Without it
an item nobody has interacted with is never shown, so nobody ever interacts with it.

A user's category profile is their history's weighted share in each category (the same
fold-in weights that score the user, recency included); a new item scores the mean of the
profile over its categories. One position in every `every` goes to the user's best new item
not yet listed, at an offset within each block drawn per user and version (stable while the
version serves, different between users, so new items are seen at every rank).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from itertools import pairwise

import numpy as np
import pandas as pd

from reco_dagster.domain.ranking import top_k_items

EXPOSURE_EVERY = 10
"""One position in this many goes to a new item (0: none)."""
NEW_ITEMS = "new"
"""The name of a version's list of the new items its exposure positions offer."""
MIN_INTERACTIONS = 5
"""Items with fewer distinct users than this count as new."""
TIE_BREAK = 1e-6
"""Scale of the per-version noise that orders new items of equal affinity differently for
different users: far below any difference in affinity between two category sets."""


def new_items(
    catalog_items: Collection[str],
    model_items: Collection[str],
    item_users: pd.Series,
    min_interactions: int = MIN_INTERACTIONS,
) -> list[str]:
    """Catalogue items the model does not know, or that fewer than `min_interactions`
    distinct users have interacted with (`item_users`: that count by item id)."""
    known = set(model_items)
    return sorted(
        item
        for item in catalog_items
        if item not in known or item_users.get(item, 0) < min_interactions
    )


def category_matrix(
    items: Sequence[str], categories: Mapping[str, Sequence[str]], names: Sequence[str]
) -> np.ndarray:
    """(items, categories) with 1 where an item is in a category."""
    column = {name: position for position, name in enumerate(names)}
    matrix = np.zeros((len(items), len(names)), dtype=np.float32)
    for row, item in enumerate(items):
        for name in categories.get(item, ()):
            matrix[row, column[name]] = 1.0
    return matrix


def new_item_affinity(
    history: pd.DataFrame,
    weights: np.ndarray,
    candidates: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    k: int,
    version: str,
) -> pd.DataFrame:
    """Each user of `history` (user_id, item_id; `weights` per row)'s `k` best `candidates`
    by category affinity, best first: user_id, item_id, rank, score. Users whose history has
    no categorised item get candidates in a per-version order alone."""
    names = sorted({name for item_categories in categories.values() for name in item_categories})
    users, user_rows = np.unique(history["user_id"].to_numpy(dtype=object), return_inverse=True)
    in_category = category_matrix(list(history["item_id"]), categories, names)
    profiles = np.zeros((len(users), len(names)), dtype=np.float64)
    np.add.at(profiles, user_rows, in_category * weights[:, None])
    totals = np.bincount(user_rows, weights=weights, minlength=len(users))
    profiles /= np.where(totals > 0, totals, 1.0)[:, None]
    candidate_matrix = category_matrix(candidates, categories, names)
    sizes = candidate_matrix.sum(axis=1, keepdims=True)
    candidate_matrix /= np.where(sizes > 0, sizes, 1.0)
    # A few noise dimensions: users' noise vectors point different ways, so equal affinities
    # are ordered differently per user, and the same way while the version serves, whatever
    # other users are ranked beside them (the batch job's, a micro-batch's).
    rng = np.random.default_rng(_seed(version))
    noise = 4
    user_side = np.hstack([profiles, TIE_BREAK * _user_noise(users, version, noise)])
    item_side = np.hstack([candidate_matrix, rng.standard_normal((len(candidates), noise))])
    none = np.empty(0, dtype=np.int64)
    best, scores = top_k_items(user_side, item_side, none, none, k)
    filled = best >= 0
    width = best.shape[1]
    return pd.DataFrame(
        {
            "user_id": np.repeat(users, width)[filled.ravel()],
            "item_id": np.asarray(candidates, dtype=object)[best[filled]],
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int16), len(users))[filled.ravel()],
            "score": scores[filled].astype(np.float64),
        }
    )


def expose_new_items(
    ranked: pd.DataFrame,
    history: pd.DataFrame,
    weights: np.ndarray,
    candidates: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    every: int,
    version: str,
    depth: int,
) -> pd.DataFrame:
    """`ranked` lists with their exposure positions (`with_new_items`) given to the users'
    best `candidates` by affinity with their `history` (weighted by `weights`): what the
    batch job and the micro-batch both do to the lists they rank."""
    if every <= 0 or not len(candidates) or ranked.empty:
        return ranked.assign(new_item=False)
    slots = -(-depth // every)
    affinity = new_item_affinity(history, weights, candidates, categories, slots, version)
    return with_new_items(ranked, affinity, every, version, depth)


def with_new_items(
    ranked: pd.DataFrame, affinity: pd.DataFrame, every: int, version: str, depth: int
) -> pd.DataFrame:
    """`ranked` (user_id, item_id, rank, score) with one position in every `every` given to
    the user's next best new item from `affinity` not listed already, marked `new_item`; the
    other items move down, and the list grows to at most `depth` items. A new item's score
    lies between its neighbours', so the list stays in score order."""
    if every <= 0 or affinity.empty or ranked.empty:
        return ranked.assign(new_item=False)
    offered = affinity.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
    ordered = ranked.sort_values(["user_id", "rank"], kind="stable")
    bounds = np.flatnonzero(
        np.r_[True, ordered["user_id"].to_numpy()[1:] != ordered["user_id"].to_numpy()[:-1], True]
    )
    user_ids, item_ids = ordered["user_id"].to_numpy(), ordered["item_id"].to_numpy()
    scores = ordered["score"].to_numpy(dtype=np.float64)
    rows: list[tuple[str, str, float, bool]] = []
    for start, stop in pairwise(bounds):
        user = user_ids[start]
        listed = list(zip(item_ids[start:stop], scores[start:stop], strict=True))
        taken = {item for item, _ in listed}
        extra = iter([item for item in offered.get(user, []) if item not in taken])
        offset = _seed(f"{version}/{user}") % every
        merged: list[tuple[str, float, bool]] = []
        rest = iter(listed)
        while len(merged) < depth:
            new = next(extra, None) if len(merged) % every == offset else None
            if new is not None:
                merged.append((new, np.nan, True))
            elif (item := next(rest, None)) is not None:
                merged.append((*item, False))
            else:
                break
        rows.extend((user, *entry) for entry in merged)
    table = pd.DataFrame(rows, columns=["user_id", "item_id", "score", "new_item"])
    table["rank"] = table.groupby("user_id", sort=False).cumcount().add(1).astype(np.int16)
    # Each new item scored between its neighbours in its user's list.
    above = table.groupby("user_id", sort=False)["score"].ffill()
    below = table.groupby("user_id", sort=False)["score"].bfill()
    middle = ((above + below) / 2).fillna(above - 1e-6).fillna(below + 1e-6).fillna(0.0)
    table["score"] = table["score"].fillna(middle)
    return table


def _user_noise(users: np.ndarray, version: str, dimensions: int) -> np.ndarray:
    """Per user, a vector in [-1, 1) ** dimensions drawn from keyed hashes of the version and
    the user id alone."""
    ids = users.astype(str).astype(object)
    seed = _seed(version)
    hashes = np.column_stack(
        [
            pd.util.hash_array(ids, hash_key=f"{(seed + dimension) % 10**16:016d}")
            for dimension in range(dimensions)
        ]
    )
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
