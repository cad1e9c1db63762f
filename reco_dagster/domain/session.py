"""Recommendations for one history given at request time (an anonymous visitor's session):
the live version's item side kept ready, so that a history is scored in a fraction of a
millisecond, and exactly as the batch job scores a user with the same history (the same
weights, fold-in and ranking; a test holds the two lists equal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reco_dagster.domain.foldin import counted_history, fold_in_als, implicit_gram, is_implicit
from reco_dagster.domain.models import FactorModel
from reco_dagster.domain.ranking import fill_short_lists, top_k_items

SESSION_USER = "session"


@dataclass(frozen=True)
class SessionEvent:
    item_id: str
    timestamp: float
    """Only the order and the gaps matter: the recency decay is measured back from the
    history's latest event."""
    rating: float | None = None
    event_type: str | None = None


def session_history(events: Sequence[SessionEvent], weights: Mapping[str, float]) -> pd.DataFrame:
    """One row per item, as `interactions.build_interactions` aggregates a user's events
    (exact repeats dropped; the latest rating; the strongest typed event's weight relative
    to the top weight; the latest time), without its fixed cost per call, which is many times
    a session's whole scoring."""
    top = max(weights.values(), default=1.0)
    per_item: dict[str, list[float]] = {}
    distinct = dict.fromkeys(
        (event.item_id, event.rating, event.timestamp, event.event_type) for event in events
    )
    for item_id, rating, timestamp, event_type in sorted(distinct, key=lambda event: event[2]):
        row = per_item.setdefault(item_id, [np.nan, np.nan, timestamp])
        if rating is not None:
            row[0] = rating
        if event_type in weights:
            row[1] = np.fmax(row[1], weights[event_type] / top)
        row[2] = max(row[2], timestamp)
    values = np.array(list(per_item.values()), dtype=np.float64).reshape(-1, 3)
    return pd.DataFrame(
        {
            "user_id": np.full(len(per_item), SESSION_USER, dtype=object),
            "item_id": np.array(list(per_item), dtype=object),
            "rating": values[:, 0],
            "weight": values[:, 1],
            "timestamp": values[:, 2],
        }
    )


class SessionScorer:
    """A version's item side, ready for one history at a time."""

    def __init__(self, model: FactorModel, cold_start: Sequence[str]) -> None:
        self.model = model
        self.cold_start = pd.DataFrame({"item_id": list(cold_start)})
        self.columns = {item: column for column, item in enumerate(model.item_ids)}
        self.is_ease = model.card.family == "ease"
        self.implicit = is_implicit(model)
        # Stored as top_k_items multiplies by it, so no call copies the whole matrix.
        self.item_factors = np.ascontiguousarray(model.item_factors.T, dtype=np.float32).T
        if not self.is_ease:
            self.latent = model.latent_item_factors.astype(np.float64)
            self.gram = implicit_gram(self.latent) if self.implicit else None

    @property
    def version(self) -> str:
        return self.model.version

    def recommend(self, history: pd.DataFrame, k: int) -> list[tuple[str, float]] | None:
        """The history's top k unseen items (item id, score), best first, continued from the
        cold-start list when the model runs out, as the batch lists are; None when the history
        names no item the model knows (the caller serves the popular list, as to an unknown
        user)."""
        card = self.model.card
        # Looked up in a dict: an index over the catalogue costs more than the whole scoring.
        looked_up = np.array([self.columns.get(item, -1) for item in history["item_id"]], int)
        history, columns, weights = counted_history(self.model, history, looked_up)
        known = columns >= 0
        if not known.any():
            return None
        weights, columns = weights[known], columns[known]
        if self.is_ease:
            # X_w · B restricted to the history's rows of B: the other terms are zeros.
            vector = weights[None, :].astype(np.float32)
            item_factors = self.item_factors[:, columns]
        else:
            settings = card.settings
            vector = fold_in_als(
                self.latent,
                [columns],
                [weights],
                reg_param=settings["reg_param"],
                alpha=settings["alpha"],
                implicit_prefs=self.implicit,
                gram=self.gram,
            )
            if self.model.has_popularity_factor:
                vector = np.hstack([vector, [[settings["popularity_prior"]]]])
            item_factors = self.item_factors
        seen = np.zeros(len(columns), dtype=np.int64)
        items, scores = top_k_items(vector, item_factors, seen, columns, k)
        listed = items[0] >= 0
        item_ids = self.model.item_ids[items[0][listed]]
        ranked = list(zip(item_ids.tolist(), scores[0][listed].tolist(), strict=True))
        if len(ranked) == k or not ranked:
            return ranked
        filled = fill_short_lists(
            pd.DataFrame(ranked, columns=["item_id", "score"]).assign(
                user_id=SESSION_USER, rank=np.arange(1, len(ranked) + 1, dtype=np.int16)
            ),
            self.cold_start,
            history,
            k,
        )
        return list(zip(filled["item_id"], filled["score"], strict=True))
