"""Why an item is recommended: the items of the user's history that contributed most to its
score, in the terms the score is made of.

EASE scores item i as Σ_h w_h · B[h, i] over the history's weighted items h, so item h
contributed w_h · B[h, i]. ALS folds a user in as x = A⁻¹ Σ_h t_h · y_h (A: the user's normal
matrix, t_h: the history item's target), so item i's score yᵢ · x is the sum of h's terms
t_h · yᵢᵀ A⁻¹ y_h: the history items whose factors align most with the item under the user's
fold-in weights (Hu, Koren & Volinsky's explanation of implicit ALS). Only items that raised
the score explain it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reco_dagster.domain.foldin import (
    counted_history,
    implicit_gram,
    is_implicit,
    normal_equations,
)
from reco_dagster.domain.models import FactorModel

REASONS = 3
"""History items named per recommended item."""


def explain_lists(
    model: FactorModel, history: pd.DataFrame, ranked: pd.DataFrame, n: int = REASONS
) -> list[list[str]]:
    """For each row of `ranked` (user_id, item_id), up to `n` items of the user's `history`
    (interactions, weighted as fold-in weighs them) that raised its score most, the largest
    first; none for an item or a user the model cannot score."""
    card = model.card
    is_ease, implicit = card.family == "ease", is_implicit(model)
    history, columns, weights = counted_history(model, history)
    known = columns >= 0
    history_users = history["user_id"].to_numpy(dtype=object)[known]
    history_columns, weights = columns[known], weights[known]
    by_user = pd.Series(np.arange(len(history_users))).groupby(history_users).indices
    latent = None if is_ease else model.latent_item_factors.astype(np.float64)
    if latent is not None:
        rank = latent.shape[1]
        gram = implicit_gram(latent) if implicit else np.zeros((rank, rank))
    ranked_columns = pd.Index(model.item_ids).get_indexer(ranked["item_id"])
    item_ids = np.asarray(model.item_ids).astype(str).astype(object)
    # Per user: the rows explained, their reasons (n columns, padded) and how many raised it.
    explained: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    ranked_by_user = pd.Series(np.arange(len(ranked))).groupby(ranked["user_id"].to_numpy()).indices
    for user, rows in ranked_by_user.items():
        mine = by_user.get(user)
        scored = rows[ranked_columns[rows] >= 0]
        if mine is None or not len(scored):
            continue
        # In item order: ties between reasons fall the same way whatever the history's order.
        mine = mine[np.argsort(history_columns[mine], kind="stable")]
        items, item_weights = history_columns[mine], weights[mine]
        targets = ranked_columns[scored]
        if latent is None:
            # item_factors is Bᵀ: row i holds B[·, i].
            terms = model.item_factors[np.ix_(targets, items)] * item_weights[None, :]
        else:
            settings = card.settings
            chosen = latent[items]
            normal, target = normal_equations(
                chosen,
                item_weights,
                gram,
                settings["reg_param"],
                settings["alpha"],
                implicit,
            )
            terms = (latent[targets] @ np.linalg.solve(normal, chosen.T)) * target[None, :]
        if terms.shape[1] > n:  # the n largest first, then only those n sorted
            top = np.argpartition(-terms, n - 1, axis=1)[:, :n]
            order = np.argsort(-np.take_along_axis(terms, top, axis=1), axis=1, kind="stable")
            best = np.take_along_axis(top, order, axis=1)
        else:
            best = np.argsort(-terms, axis=1, kind="stable")
        # Sorted by descending term: the items that raised the score come first.
        raised = (np.take_along_axis(terms, best, axis=1) > 0).sum(axis=1)
        named = np.full((len(scored), n), None, dtype=object)
        named[:, : best.shape[1]] = item_ids[items[best]]
        explained.append((scored, named, raised))
    reasons: list[list[str]] = [[] for _ in range(len(ranked))]
    if explained:
        rows, named, raised = (np.concatenate(part) for part in zip(*explained, strict=True))
        for row, names, count in zip(rows.tolist(), named.tolist(), raised.tolist(), strict=True):
            reasons[row] = names[:count]
    return reasons
