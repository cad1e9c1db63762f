"""Fold-in against a direct solve, and against Spark's own user step on a real Spark session."""

import numpy as np
import pandas as pd
import pytest

from reco_dagster.domain.als import fit_als
from reco_dagster.domain.families import fit_model, item_side
from reco_dagster.domain.foldin import fold_in, fold_in_als
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.models import ModelCard
from reco_dagster.domain.synthetic import synthetic_events


def test_implicit_fold_in_solves_the_weighted_normal_equations():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(6, 3))
    columns, prefs = np.array([0, 2, 5]), np.array([1.0, 0.5, 0.2])
    reg, alpha = 0.3, 10.0
    [vector] = fold_in_als(
        items, [columns], [prefs], reg_param=reg, alpha=alpha, implicit_prefs=True
    )
    confidence = np.ones(6)
    confidence[columns] += alpha * prefs
    preference = np.zeros(6)
    preference[columns] = 1.0
    normal = items.T @ np.diag(confidence) @ items + reg * len(columns) * np.eye(3)
    expected = np.linalg.solve(normal, items.T @ (confidence * preference))
    assert np.allclose(vector, expected, rtol=1e-5)


def test_explicit_fold_in_is_regularized_least_squares_and_empty_histories_stay_zero():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(5, 2))
    columns, ratings = np.array([1, 3, 4]), np.array([4.0, 2.0, 5.0])
    vectors = fold_in_als(
        items,
        [columns, np.array([], dtype=int)],
        [ratings, np.array([])],
        reg_param=0.1,
        alpha=1.0,
        implicit_prefs=False,
    )
    chosen = items[columns]
    expected = np.linalg.solve(chosen.T @ chosen + 0.3 * np.eye(2), chosen.T @ ratings)
    assert np.allclose(vectors[0], expected, rtol=1e-5)
    assert not vectors[1].any()


@pytest.mark.parametrize("confidence", ["binary", "rating"])
def test_fold_in_reproduces_sparks_own_user_factors(spark, confidence, tmp_path):
    interactions, _ = build_interactions(synthetic_events(80, 120, 20, seed=2))
    settings = {
        "rank": 8,
        "max_iter": 5,
        "reg_param": 0.5,
        "alpha": 15.0,
        "implicit_prefs": True,
        "confidence": confidence,
        "popularity_prior": 0.05,
        "seed": 3,
        "half_life_events": 0.0,
    }
    card = ModelCard.describe("als", settings, interactions)
    model = fit_als(spark, interactions, card, **settings).factor_model()
    refolded = fold_in(model, interactions[["user_id", "item_id", "rating", "timestamp"]])
    order = pd.Index(model.user_ids).get_indexer(refolded.user_ids)
    assert np.allclose(refolded.user_factors, model.user_factors[order], atol=2e-3, rtol=2e-2)
    ranked = refolded.recommend(interactions, k=5)
    original = model.recommend(interactions, k=5)
    agreement = ranked.merge(original, on=["user_id", "item_id"]).shape[0] / len(original)
    assert agreement > 0.95


def test_new_users_and_unknown_items(spark):
    interactions, _ = build_interactions(synthetic_events(40, 60, 15, seed=4))
    settings = {
        "rank": 4,
        "max_iter": 3,
        "reg_param": 0.5,
        "alpha": 10.0,
        "implicit_prefs": True,
        "confidence": "binary",
        "popularity_prior": 0.0,
        "seed": 3,
    }
    model = fit_als(
        spark, interactions, ModelCard.describe("als", settings, interactions), **settings
    ).factor_model()
    history = pd.DataFrame(
        {
            "user_id": ["newbie", "newbie", "ghost"],
            "item_id": ["i1", "i2", "never-seen"],
            "rating": [5.0, 4.0, 3.0],
            "timestamp": [1, 2, 3],
        }
    )
    refolded = fold_in(model, history)
    assert list(refolded.user_ids) == ["ghost", "newbie"]
    assert refolded.user_factors[1].any() and not refolded.user_factors[0].any()
    ranked = refolded.recommend(history, k=3)
    assert not set(ranked[ranked.user_id == "newbie"].item_id) & {"i1", "i2"}


def neighbourhoods() -> pd.DataFrame:
    """Untyped users who take p with p_fan and v with v_fan, and two users typed the other way
    round: "buyer" purchased p and viewed v, "browser" viewed p and purchased v."""
    rows = [(f"p{n}", item, np.nan, n, None) for n in range(12) for item in ("p", "p_fan")]
    rows += [(f"v{n}", item, np.nan, n, None) for n in range(12) for item in ("v", "v_fan")]
    rows += [(f"x{n}", f"x{n % 3}", np.nan, n, None) for n in range(6)]
    rows += [
        ("buyer", "p", np.nan, 100, "purchase"),
        ("buyer", "v", np.nan, 100, "view"),
        ("browser", "p", np.nan, 100, "view"),
        ("browser", "v", np.nan, 100, "purchase"),
    ]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp", "event_type"])
    return build_interactions(events)[0]


@pytest.mark.parametrize("family", ["als", "ease"])
def test_a_purchased_items_neighbours_rank_above_a_viewed_items(spark, family):
    interactions = neighbourhoods()
    scoring = {"half_life_events": 0.0, "half_life_days": 0.0, "recency_floor": 0.0}
    if family == "als":
        fit = {"rank": 4, "max_iter": 10, "reg_param": 0.1, "alpha": 20.0, "seed": 3}
        fit |= {"implicit_prefs": True, "confidence": "rating", "popularity_prior": 0.0}
    else:
        fit = {"l2": 1.0, "rating_weighted": True, "item_normalization": 0.0}
    model = item_side(fit_model(family, {**fit, **scoring}, interactions, spark))
    typed = interactions[interactions["user_id"].isin(["buyer", "browser"])]
    ranked = fold_in(model, typed).recommend(seen=typed, k=2)
    first = ranked[ranked["rank"] == 1].set_index("user_id")["item_id"]
    assert first.to_dict() == {"buyer": "p_fan", "browser": "v_fan"}
