"""Realistic synthetic interaction events: users with latent tastes, power-law popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_events(
    n_users: int,
    n_items: int,
    events_per_user: int,
    *,
    taste_clusters: int = 8,
    taste_affinity: float = 30.0,
    seed: int = 0,
    start_s: int = 1_600_000_000,
    span_s: int = 90 * 86_400,
) -> pd.DataFrame:
    """Events in the landing-zone contract. Each user belongs to one taste cluster and takes
    most of their items from that cluster's share of the catalogue (an in-taste item is
    `taste_affinity` times likelier than another), popular ones more often;
    ratings are higher inside the cluster. Ids are strings: "u<n>", "i<n>"."""
    rng = np.random.default_rng(seed)
    cluster_of_item = rng.integers(0, taste_clusters, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rng.shuffle(popularity)
    rows_user, rows_item, rows_rating = [], [], []
    for user in range(n_users):
        cluster = user % taste_clusters
        in_taste = np.where(cluster_of_item == cluster, taste_affinity, 1.0) * popularity
        picks = rng.choice(
            n_items, size=min(events_per_user, n_items), replace=False, p=in_taste / in_taste.sum()
        )
        liked = cluster_of_item[picks] == cluster
        rating = np.clip(np.where(liked, 4.2, 2.6) + rng.normal(0, 0.8, len(picks)), 1, 5).round()
        rows_user.append(np.full(len(picks), user))
        rows_item.append(picks)
        rows_rating.append(rating)
    users = np.concatenate(rows_user)
    return pd.DataFrame(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", np.concatenate(rows_item).astype(str)),
            "rating": np.concatenate(rows_rating),
            "timestamp": start_s + rng.integers(0, span_s, len(users)),
        }
    )


def synthetic_event_log(
    n_events: int,
    n_users: int,
    n_items: int,
    *,
    taste_clusters: int = 16,
    in_taste_share: float = 0.7,
    seed: int = 0,
    start_s: int = 1_600_000_000,
    span_s: int = 365 * 86_400,
) -> pd.DataFrame:
    """An event log at any size, generated in vectorized passes (20M events in under a
    minute): user activity and item popularity follow power laws (a few heavy users and hit
    items, long tails of both), each user has a taste cluster from which `in_taste_share` of
    their events come, ratings are higher in taste, and timestamps spread over `span_s`.
    A user may meet an item twice, as real logs do; `interactions` keeps the latest."""
    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.0, n_users)
    users = rng.choice(n_users, size=n_events, p=activity / activity.sum())
    cluster_of_user = rng.integers(0, taste_clusters, n_users)
    cluster_of_item = rng.integers(0, taste_clusters, n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    rng.shuffle(popularity)

    items = np.empty(n_events, dtype=np.int64)
    in_taste = rng.random(n_events) < in_taste_share
    clusters = cluster_of_user[users]
    for cluster in range(taste_clusters):
        members = np.flatnonzero(cluster_of_item == cluster)
        chosen = np.flatnonzero(in_taste & (clusters == cluster))
        cumulative = np.cumsum(popularity[members])
        picks = np.searchsorted(cumulative, rng.random(len(chosen)) * cumulative[-1])
        items[chosen] = members[np.minimum(picks, len(members) - 1)]
    anywhere = np.flatnonzero(~in_taste)
    cumulative = np.cumsum(popularity)
    picks = np.searchsorted(cumulative, rng.random(len(anywhere)) * cumulative[-1])
    items[anywhere] = np.minimum(picks, n_items - 1)

    liked = cluster_of_item[items] == clusters
    rating = np.clip(np.where(liked, 4.1, 2.8) + rng.normal(0, 0.9, n_events), 1, 5).round()
    return pd.DataFrame(
        {
            "user_id": np.char.add("u", users.astype(str)),
            "item_id": np.char.add("i", items.astype(str)),
            "rating": rating,
            "timestamp": np.sort(start_s + rng.integers(0, span_s, n_events)),
        }
    )
