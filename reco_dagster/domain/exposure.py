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

import numpy as np
import pandas as pd

from reco_dagster.domain.ranking import positions_within, run_starts, top_k_items

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
    user_rows, users = pd.factorize(history["user_id"].to_numpy(dtype=object), sort=True)
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
    ordered = ranked.sort_values(["user_id", "rank"], kind="stable")
    listed_ids = ordered["user_id"].to_numpy()
    first_of_user = np.r_[True, listed_ids[1:] != listed_ids[:-1]]
    users, listed_user = listed_ids[first_of_user], np.cumsum(first_of_user) - 1
    # The user's offered new items in affinity order, less those their list holds already.
    offered_user = pd.Index(users).get_indexer(affinity["user_id"])
    offered = affinity.assign(user=offered_user)[offered_user >= 0]
    listed_pairs = pd.MultiIndex.from_arrays([ordered["user_id"], ordered["item_id"]])
    offered = offered[
        ~pd.MultiIndex.from_arrays([offered["user_id"], offered["item_id"]]).isin(listed_pairs)
    ].sort_values("user", kind="stable")
    n_listed = np.bincount(listed_user, minlength=len(users))
    n_offered = np.bincount(offered["user"].to_numpy(), minlength=len(users))
    offsets = np.array([_seed(f"{version}/{user}") % every for user in users])
    # Every position a user's merged list could reach: at most all their listed and offered
    # items. A position is a new item's when it is the user's slot in its block of `every`
    # and an offered item is left; otherwise it takes the next listed item.
    user = np.repeat(np.arange(len(users)), n_listed + n_offered)
    position = positions_within(n_listed + n_offered)
    from_offset = position - offsets[user]
    is_new = (
        (from_offset >= 0) & (from_offset % every == 0) & (from_offset // every < n_offered[user])
    )
    new_before = pd.Series(is_new).groupby(user).cumsum().to_numpy() - is_new
    listed_index = position - new_before
    usable = is_new | (listed_index < n_listed[user])
    # A list ends at its first position with nothing to take, or at `depth`.
    ended = pd.Series(~usable).groupby(user).cummax().to_numpy() | (position >= depth)
    keep = ~ended
    user, is_new, position = user[keep], is_new[keep], position[keep]
    listed_row = run_starts(n_listed)[user] + listed_index[keep]
    offered_row = run_starts(n_offered)[user] + from_offset[keep] // every
    item_ids = np.where(
        is_new,
        offered["item_id"].to_numpy()[np.where(is_new, offered_row, 0)] if len(offered) else None,
        ordered["item_id"].to_numpy()[np.where(is_new, 0, listed_row)],
    )
    scores = np.where(
        is_new, np.nan, ordered["score"].to_numpy(dtype=np.float64)[np.where(is_new, 0, listed_row)]
    )
    table = pd.DataFrame(
        {"user_id": users[user], "item_id": item_ids, "score": scores, "new_item": is_new}
    )
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
