"""Fold-in: new user vectors against a trained model's fixed item factors, without retraining.

For ALS this is the exact user step of Spark ML's ALS (implicit: Hu, Koren & Volinsky with
confidence 1 + alpha·r; explicit: least squares), with Spark's regularization scaled by the
user's number of interactions (ALS-WR). Given the same history, it reproduces the user
factors Spark itself computed in its last iteration.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from reco_dagster.domain.als import rating_confidence
from reco_dagster.domain.ease import ease_weights
from reco_dagster.domain.models import FactorModel


def fold_in_als(
    item_factors: np.ndarray,
    item_columns: list[np.ndarray],
    preferences: list[np.ndarray],
    *,
    reg_param: float,
    alpha: float,
    implicit_prefs: bool,
) -> np.ndarray:
    """One user vector per (item columns, preferences) history; zeros for an empty history.

    item_factors: the model's (items, rank) matrix; item_columns[u] index its rows.
    """
    rank = item_factors.shape[1]
    factors = item_factors.astype(np.float64)
    gram = factors.T @ factors if implicit_prefs else np.zeros((rank, rank))
    users = np.zeros((len(item_columns), rank), dtype=np.float32)
    active = [row for row, columns in enumerate(item_columns) if len(columns)]
    if not active:
        return users
    normals = np.empty((len(active), rank, rank))
    targets = np.empty((len(active), rank))
    for slot, row in enumerate(active):
        chosen = factors[item_columns[row]]
        prefs = np.asarray(preferences[row], dtype=np.float64)
        if implicit_prefs:
            confidence = alpha * np.abs(prefs)
            positive = prefs > 0
            weights, target, count = (
                confidence,
                np.where(positive, 1.0 + confidence, 0.0),
                positive.sum(),
            )
        else:
            weights, target, count = np.ones(len(prefs)), prefs, len(prefs)
        normals[slot] = gram + (chosen * weights[:, None]).T @ chosen
        normals[slot][np.diag_indices(rank)] += reg_param * count
        targets[slot] = chosen.T @ target
    # One batched solve: every user's normal equations at once.
    users[active] = np.linalg.solve(normals, targets[..., None])[..., 0]
    return users


def fold_in(model: FactorModel, history: pd.DataFrame) -> FactorModel:
    """A model of just the users in `history` (user_id, item_id, rating), their vectors
    folded in against `model`'s items, scored exactly like the model's own users.

    Interactions with items the model does not know cannot move a vector and are skipped.
    """
    columns = pd.Index(model.item_ids).get_indexer(history["item_id"])
    known = history.assign(column=columns)[columns >= 0]
    users = history["user_id"].drop_duplicates().to_numpy()
    grouped = dict(tuple(known.groupby("user_id", sort=False)))
    empty = known.iloc[:0]
    histories = [grouped.get(user, empty) for user in users]
    settings = model.card.settings
    if model.card.family == "ease":
        rows = np.zeros((len(users), len(model.item_ids)), dtype=np.float32)
        for row, rated in enumerate(histories):
            rows[row, rated["column"].to_numpy()] = (
                ease_weights(rated["rating"]) if settings.get("rating_weighted") else 1.0
            )
        return replace(model, user_ids=users, user_factors=rows)
    vectors = fold_in_als(
        model.latent_item_factors,
        [rated["column"].to_numpy() for rated in histories],
        [_preferences(rated["rating"], settings) for rated in histories],
        reg_param=settings["reg_param"],
        alpha=settings["alpha"],
        implicit_prefs=settings["implicit_prefs"],
    )
    if model.has_popularity_factor:
        prior = np.full((len(users), 1), settings["popularity_prior"], np.float32)
        vectors = np.hstack([vectors, prior])
    return replace(model, user_ids=users, user_factors=vectors)


def _preferences(ratings: pd.Series, settings: dict) -> np.ndarray:
    if not settings["implicit_prefs"]:
        return ratings.to_numpy(dtype=np.float64)
    if settings.get("confidence") == "rating":
        return rating_confidence(ratings)
    return np.ones(len(ratings))
