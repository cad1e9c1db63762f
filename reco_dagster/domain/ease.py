"""EASE (Steck, 2019): a closed-form item-item linear model for catalogues that fit one machine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from reco_dagster.domain.interactions import strength
from reco_dagster.domain.models import FactorModel, ModelCard
from reco_dagster.domain.spark_tables import UserBatches, map_user_batches


class CatalogueTooLargeError(ValueError):
    pass


def fit_ease(
    interactions: Any,
    card: ModelCard,
    *,
    l2: float,
    max_items: int,
    rating_weighted: bool,
    item_normalization: float,
    rating_scale: float,
    user_normalization: float = 0.0,
    **scoring: float,
) -> FactorModel:
    """B = argmin ||Z - ZB||² + l2·||B||² with diag(B) = 0, where Z = N·X·D: D divides each
    item's column by (its squared column norm)^item_normalization, N each user's row by
    (their number of interactions)^user_normalization; scores are X·D·B.

    X is 1 per interaction, or with `rating_weighted` sqrt(rating / rating_scale) (typed
    events: sqrt of their relative weight, see `ease_weights`):
    a mild preference for what users liked (on MovieLens 100K it adds about 0.005 to
    precision@10 and nDCG@10 over binary X; linear weights gain nothing). Damping popular
    items' columns keeps them from dominating the Gram matrix, and damping heavy users' rows
    keeps a few long histories from dominating the co-occurrences (defaults in
    `EaseSettings`, the search's ranges in `search.FIT_SPACES`). N only shapes the fit:
    scaling a user's row does not change their ranking, so scoring leaves it out.
    `user_normalization` defaults to 0 for the settings of versions registered before it
    existed (the live model is refitted with its own to be compared on a new split).

    Fitting inverts an items x items matrix: O(items³) time and items² memory, so a catalogue
    over `max_items` is refused rather than left to run for hours or exhaust memory.

    `interactions` is a pandas DataFrame, or a Spark one whose rows stay on the executors.

    The model keeps only its item side: users are scored by fold-in (a user's vector is
    their weighted row of X, with the `scoring` settings' recency decay), so the batch job
    and the micro-batch score a history alike.
    """
    if isinstance(interactions, pd.DataFrame):
        items = interactions[["item_idx", "item_id"]]
    else:
        items = interactions.select("item_idx", "item_id").distinct().toPandas()
    items = items.drop_duplicates("item_idx").sort_values("item_idx")
    n_items = len(items)
    if n_items > max_items:
        raise CatalogueTooLargeError(
            f"EASE needs an {n_items:,} x {n_items:,} matrix inverse "
            f"(O(items³)); this catalogue is over max_items={max_items:,}. "
            "Use ALS, or raise max_items if the machine can take it."
        )
    column_of_item = np.full(items["item_idx"].max() + 1, -1, dtype=np.int64)
    column_of_item[items["item_idx"].to_numpy()] = np.arange(n_items)
    scale = rating_scale if rating_weighted else None
    gram_of = users_gram if isinstance(interactions, pd.DataFrame) else _gram_on_spark
    co_occurrence = gram_of(interactions, column_of_item, scale, user_normalization)
    # The damping from each item's squared column norm, the Gram matrix's diagonal.
    column_norms = np.maximum(np.diag(co_occurrence), 1e-12)
    damping = column_norms**-item_normalization
    gram = co_occurrence * damping[:, None] * damping[None, :]
    gram[np.diag_indices(n_items)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)
    weights[np.diag_indices(n_items)] = 0.0
    # Z·B = X·(D·B): the damping goes into the item side, so a user's row stays plain X
    # (what fold-in builds from a history).
    weights *= damping[:, None]
    return FactorModel.item_side_of(
        card, items["item_id"].to_numpy(dtype=object), np.ascontiguousarray(weights.T, np.float32)
    )


GRAM_USERS = 4_096
"""Users whose rows of X are made dense at a time: bounds the memory a Gram matrix costs
beyond its own items²."""


def users_gram(
    rows: pd.DataFrame, column_of_item: np.ndarray, scale: float | None, user_normalization: float
) -> np.ndarray:
    """(N·X)ᵀ(N·X) over the users of `rows` (each with all of their rows): X weighted by
    `ease_weights` with a rating scale, else 1 per interaction; N divides each user's row by
    (their number of interactions)^user_normalization; float64."""
    n_items = int(column_of_item.max()) + 1
    users = pd.factorize(rows["user_idx"])[0]
    columns = column_of_item[rows["item_idx"].to_numpy()]
    values = ease_weights(rows, scale) if scale else np.ones(len(rows), dtype=np.float32)
    if user_normalization:
        interactions_of_user = np.bincount(users).astype(np.float32)
        values = values * interactions_of_user[users] ** -user_normalization
    n_users = users.max(initial=-1) + 1
    gram = np.zeros((n_items, n_items))
    for first in range(0, n_users, GRAM_USERS):
        chunk = (users >= first) & (users < first + GRAM_USERS)
        dense = np.zeros((min(GRAM_USERS, n_users - first), n_items), dtype=np.float32)
        dense[users[chunk] - first, columns[chunk]] = values[chunk]
        gram += dense.T @ dense
    return gram


def _gram_on_spark(
    table: Any, column_of_item: np.ndarray, scale: float | None, user_normalization: float
) -> np.ndarray:
    """`users_gram` of a Spark DataFrame: each executor sums its users' Gram matrices, and
    the driver adds up one per partition (items² each, whatever the number of events)."""

    def partial_grams(batches: UserBatches) -> Iterator[pd.DataFrame]:
        total = sum(
            (
                users_gram(batch["rows"], column_of_item, scale, user_normalization)
                for batch in batches
            ),
            0.0,
        )
        if isinstance(total, np.ndarray):
            yield pd.DataFrame({"gram": [total.tobytes()]})

    spark = table.sparkSession
    partitions = spark.sparkContext.defaultParallelism
    columns = table.select("user_id", "user_idx", "item_idx", "rating", "weight")
    grams = map_user_batches({"rows": columns}, partial_grams, "gram binary", partitions)
    n_items = int(column_of_item.max()) + 1
    gram = np.zeros((n_items, n_items))
    for part in grams.toLocalIterator():
        gram += np.frombuffer(part.gram).reshape(n_items, n_items)
    return gram


def rating_scale(ratings: pd.Series) -> float:
    """The top of the rating scale seen in training (1 when nothing is rated): fixed in the
    model's settings, so that a few users' histories are weighted as the whole table was."""
    top = ratings.max()
    return 1.0 if pd.isna(top) or top <= 0 else float(top)


def ease_weights(rows: pd.DataFrame, scale: float) -> np.ndarray:
    """sqrt(strength) of interaction rows: the stronger of rating / scale (capped at 1) and
    the typed events' relative weight; untyped implicit events (no rating) weigh 1."""
    # numpy rather than Series.clip: a tenth of the cost on a session's few rows.
    from_rating = np.clip(rows["rating"].to_numpy(dtype=np.float64), 0, scale) / scale
    return np.sqrt(strength(from_rating, rows)).astype(np.float32)
