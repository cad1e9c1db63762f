"""Model-family and quality-gate logic without Spark: EASE, cards, the gate, the search."""

import time

import numpy as np
import pandas as pd
import pytest

from reco_dagster.domain.ease import CatalogueTooLargeError, fit_ease
from reco_dagster.domain.gate import gate_failures
from reco_dagster.domain.hyperparameters import search_als
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.models import FactorModel, ModelCard
from reco_dagster.domain.synthetic import synthetic_events

CONFIGURED = {
    "rank": 8,
    "max_iter": 6,
    "reg_param": 1.0,
    "alpha": 20.0,
    "confidence": "rating",
    "popularity_prior": 0.0,
    "seed": 1,
}


@pytest.fixture(scope="module")
def interactions():
    return build_interactions(synthetic_events(60, 80, 15, seed=5))[0]


def test_the_same_data_and_settings_make_the_same_version(interactions):
    card = ModelCard.describe("ease", {"l2": 300.0}, interactions)
    shuffled = interactions.sample(frac=1.0, random_state=1)
    assert ModelCard.describe("ease", {"l2": 300.0}, shuffled) == card
    assert ModelCard.describe("ease", {"l2": 200.0}, interactions).version != card.version
    assert ModelCard.describe("ease", {"l2": 300.0}, interactions.iloc[1:]).version != card.version
    assert card.version.startswith("ease-")


def test_ease_ranks_unseen_items_and_round_trips(interactions, tmp_path):
    card = ModelCard.describe("ease", {"l2": 10.0}, interactions)
    model = fit_ease(
        interactions, card, l2=10.0, max_items=1000, rating_weighted=True, item_normalization=0.15
    )
    assert np.allclose(np.diag(model.item_factors), 0.0)
    ranked = model.recommend(interactions, k=5)
    assert ranked.merge(interactions, on=["user_id", "item_id"]).empty
    model.save(tmp_path)
    again = FactorModel.load(tmp_path)
    assert again.card == card and np.array_equal(again.item_factors, model.item_factors)
    pd.testing.assert_frame_equal(again.recommend(interactions, k=5), ranked)


def test_ease_refuses_an_oversized_catalogue_clearly(interactions):
    card = ModelCard.describe("ease", {"l2": 10.0}, interactions)
    with pytest.raises(CatalogueTooLargeError, match=r"over max_items=50\. Use ALS"):
        fit_ease(
            interactions,
            card,
            l2=10.0,
            max_items=50,
            rating_weighted=False,
            item_normalization=0.0,
        )


def test_ease_with_item_normalization_scores_the_damped_closed_form(interactions):
    """Z = X·D, D = diag(column norm² ^ -0.3); scores must be Z·B with B from Z's Gram."""
    card = ModelCard.describe("ease", {"l2": 5.0}, interactions)
    model = fit_ease(
        interactions, card, l2=5.0, max_items=1000, rating_weighted=False, item_normalization=0.3
    )
    x = model.user_factors.astype(np.float64)
    z = x * (x**2).sum(axis=0) ** -0.3
    precision = np.linalg.inv(z.T @ z + 5.0 * np.eye(z.shape[1]))
    b = -precision / np.diag(precision)
    np.fill_diagonal(b, 0.0)
    assert np.allclose(x @ model.item_factors.T, z @ b, atol=1e-4)
    plain = fit_ease(
        interactions, card, l2=5.0, max_items=1000, rating_weighted=False, item_normalization=0.0
    )
    assert not np.allclose(plain.item_factors, model.item_factors)


def test_the_gate_names_each_failed_metric_and_by_how_much():
    failures = gate_failures(
        {"precision_at_10": 0.30, "ndcg_at_10": 0.40, "map_at_10": 0.15},
        floors={"precision_at_10": 0.35, "recall_at_10": 0.1},
        live_metrics={"precision_at_10": 0.31, "ndcg_at_10": 0.45, "map_at_10": 0.15},
        live_version="als-live",
        tolerance=0.05,
    )
    assert failures == [
        "precision_at_10 = 0.3000 is 0.0500 below its floor 0.3500",
        "recall_at_10 was not measured, but it has a floor of 0.1000",
        "ndcg_at_10 = 0.4000 is 0.0500 (11.1%) below live version als-live's 0.4500, "
        "beyond the 5% tolerance",
    ]


def test_the_gate_passes_a_model_within_tolerance_of_the_live_one():
    assert gate_failures({"ndcg_at_10": 0.43}, {}, {"ndcg_at_10": 0.45}, "v", 0.05) == []
    assert gate_failures({"ndcg_at_10": 0.43}, {}, None, None, 0.0) == []


def test_the_search_starts_from_the_configured_settings_and_keeps_the_best():
    scores = iter([0.30, 0.35, 0.20, 0.10, 0.10])

    def score(settings):
        value = next(scores)
        return {"precision_at_k": value, "ndcg_at_k": value, "map_at_k": value}

    search = search_als(CONFIGURED, score, time_budget_s=3600, max_trials=5)
    assert len(search.trials) == 5
    assert search.trials[0].settings == CONFIGURED
    assert search.best == search.trials[1].settings != CONFIGURED
    assert "← best" in search.bar_chart() and search.table().count("\n") == len(search.trials) + 1


def test_the_search_stops_before_a_trial_would_overrun_the_budget():
    def slow(settings):
        time.sleep(0.3)
        return {"precision_at_k": 0.1, "ndcg_at_k": 0.1, "map_at_k": 0.1}

    search = search_als(CONFIGURED, slow, time_budget_s=0.5, max_trials=10)
    assert len(search.trials) == 1 and search.best == CONFIGURED


def test_similar_items_rank_by_cosine_without_the_item_itself_or_the_prior(interactions):
    settings = {"implicit_prefs": True, "popularity_prior": 0.5}
    card = ModelCard("als-x", "als", settings, "f", 3)
    item_factors = np.array(
        # learned factors | popularity prior column (must not count)
        [[1.0, 0.0, 9.0], [0.9, 0.1, 0.0], [0.0, 1.0, 9.0], [-1.0, 0.0, 9.0]],
        dtype=np.float32,
    )
    model = FactorModel(
        card,
        np.array(["u"], dtype=object),
        np.array(["a", "b", "c", "d"], dtype=object),
        np.ones((1, 3), np.float32),
        item_factors,
    )
    similar = model.similar_items(k=3)
    of_a = similar[similar["source_item_id"] == "a"]
    assert of_a["item_id"].tolist() == ["b", "c", "d"]
    assert of_a["score"].iloc[0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), rel=1e-5)
    assert "a" not in set(of_a["item_id"])
