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
