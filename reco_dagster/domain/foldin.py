"""Fold-in: user vectors computed from a history against a trained model's fixed item side.

This is how every user is scored: the batch job folds in each user's whole history, the
micro-batch the histories of users with new events, so both give the same list for the same
history. For ALS it is the exact user step of Spark ML's ALS (implicit: Hu, Koren & Volinsky
with confidence 1 + alpha·w; explicit: least squares), with Spark's regularization scaled by
the user's number of interactions (ALS-WR): without recency weights it reproduces the user
factors Spark computed in its last iteration. For EASE a user's vector is their weighted
interaction row, X_w, scored as X_w · B.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from reco_dagster.domain.als import rating_confidence
from reco_dagster.domain.ease import ease_weights, rating_scale
from reco_dagster.domain.models import FactorModel
from reco_dagster.domain.recency import settings_recency_weights

SOLVE_BLOCK_USERS = 1024
"""Users whose normal equations are solved at once: (block, rank, rank) float64 in memory."""


def history_weights(history: pd.DataFrame, family: str, settings: Mapping[str, Any]) -> np.ndarray:
    """What each (user, item, rating, weight, timestamp) row of a history (interactions)
    weighs in its user's vector: the family's weighting of ratings and typed events, times
    the recency decay the settings name. An explicit ALS model fits the ratings themselves
    and takes them unweighted."""
    ratings = history["rating"]
    if family == "ease":
        # Versions from before MODEL_FORMAT 2 kept no scale: the history's own top rating.
        scale = settings.get("rating_scale") or rating_scale(ratings)
        weighted = settings.get("rating_weighted")
        base = ease_weights(history, scale) if weighted else np.ones(len(history))
    elif not settings["implicit_prefs"]:
        return ratings.to_numpy(dtype=np.float64)
    elif settings.get("confidence") == "rating":
        base = rating_confidence(history)
    else:
        base = np.ones(len(history))
    return base * settings_recency_weights(history, settings)


def fold_in_als(
    item_factors: np.ndarray,
    item_columns: list[np.ndarray],
    preferences: list[np.ndarray],
    *,
    reg_param: float,
    alpha: float,
    implicit_prefs: bool,
    gram: np.ndarray | None = None,
) -> np.ndarray:
    """One user vector per (item columns, preferences) history; zeros for an empty history.

    item_factors: the model's (items, rank) matrix; item_columns[u] index its rows. `gram`
    is `implicit_gram(item_factors)` when the caller keeps it across calls (it costs more
    than a few users' solves).
    """
    rank = item_factors.shape[1]
    factors = item_factors.astype(np.float64, copy=False)
    if gram is None:
        gram = implicit_gram(factors) if implicit_prefs else np.zeros((rank, rank))
    users = np.zeros((len(item_columns), rank), dtype=np.float32)
    active = [row for row, columns in enumerate(item_columns) if len(columns)]
    for start in range(0, len(active), SOLVE_BLOCK_USERS):
        block = active[start : start + SOLVE_BLOCK_USERS]
        normals = np.empty((len(block), rank, rank))
        targets = np.empty((len(block), rank))
        for slot, row in enumerate(block):
            chosen = factors[item_columns[row]]
            normals[slot], target = normal_equations(
                chosen, preferences[row], gram, reg_param, alpha, implicit_prefs
            )
            targets[slot] = chosen.T @ target
        # One batched solve: a block of users' normal equations at once.
        users[block] = np.linalg.solve(normals, targets[..., None])[..., 0]
    return users


def normal_equations(
    chosen: np.ndarray,
    preferences: np.ndarray,
    gram: np.ndarray,
    reg_param: float,
    alpha: float,
    implicit_prefs: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """A user's normal matrix A and per-history-item target t, with the user's vector
    x = A⁻¹ · chosenᵀ · t (chosen: the factors of the user's history items)."""
    prefs = np.asarray(preferences, dtype=np.float64)
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
    normal = gram + (chosen * weights[:, None]).T @ chosen
    normal[np.diag_indices(len(normal))] += reg_param * count
    return normal, target


def implicit_gram(item_factors: np.ndarray) -> np.ndarray:
    """YᵀY, the part of every implicit user's normal equations that all users share."""
    factors = item_factors.astype(np.float64, copy=False)
    return factors.T @ factors


def is_implicit(model: FactorModel) -> bool:
    """Whether the model scores preferences (EASE, implicit ALS) rather than ratings."""
    return model.card.family == "ease" or bool(model.card.settings["implicit_prefs"])


def counted_history(
    model: FactorModel, history: pd.DataFrame, columns: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The rows of `history` a fold-in into `model` counts (an explicit model drops unrated
    ones, as its fit does), each row's item column in the model (-1: an item it does not
    know; `columns` when the caller looked them up already) and its weight."""
    if not is_implicit(model):
        if columns is not None:
            columns = columns[history["rating"].notna().to_numpy()]
        history = history[history["rating"].notna()]
    if columns is None:
        columns = pd.Index(model.item_ids).get_indexer(history["item_id"])
    return history, columns, history_weights(history, model.card.family, model.card.settings)


def fold_in(model: FactorModel, history: pd.DataFrame) -> FactorModel:
    """A model of just the users in `history` (interactions: user_id, item_id, rating,
    timestamp, and the typed events' weight where there are any), their
    vectors folded in against `model`'s items, scored exactly like the model's own users.

    Interactions with items the model does not know cannot move a vector and are skipped.
    """
    card = model.card
    history, columns, weights = counted_history(model, history)
    # Hashing, then sorting the distinct ids: a twentieth of np.unique's cost on strings.
    user_rows, users = pd.factorize(history["user_id"].to_numpy(dtype=object), sort=True)
    known = columns >= 0
    user_rows, columns, weights = user_rows[known], columns[known], weights[known]
    if card.family == "ease":
        rows = np.zeros((len(users), len(model.item_ids)), dtype=np.float32)
        rows[user_rows, columns] = weights
        return replace(model, user_ids=users, user_factors=rows)
    # Each user's rows in item order: the same vector to the last bit whatever the order of
    # the history (the driver's table, an executor's part, a micro-batch's read).
    order = np.lexsort((columns, user_rows))
    bounds = np.searchsorted(user_rows[order], np.arange(len(users) + 1))
    per_user = [order[bounds[row] : bounds[row + 1]] for row in range(len(users))]
    settings = card.settings
    vectors = fold_in_als(
        model.latent_item_factors,
        [columns[rows] for rows in per_user],
        [weights[rows] for rows in per_user],
        reg_param=settings["reg_param"],
        alpha=settings["alpha"],
        implicit_prefs=settings["implicit_prefs"],
    )
    if model.has_popularity_factor:
        prior = np.full((len(users), 1), settings["popularity_prior"], np.float32)
        vectors = np.hstack([vectors, prior])
    return replace(model, user_ids=users, user_factors=vectors)
