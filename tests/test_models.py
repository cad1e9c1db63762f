"""Model-family and quality-gate logic without Spark: EASE, cards, the gate, the search."""

import numpy as np
import pandas as pd
import pytest

from reco_dagster.domain import models
from reco_dagster.domain.ease import CatalogueTooLargeError, fit_ease, rating_scale
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.gate import choose_family, gate_failures
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.models import FactorModel, ModelCard
from reco_dagster.domain.synthetic import synthetic_events

EASE = {"rating_weighted": False, "item_normalization": 0.0, "rating_scale": 5.0}


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


def test_a_new_model_format_makes_a_new_version(interactions, monkeypatch):
    """A retrain after a change to fitting or scoring must not collide with the live version
    trained on the same data and settings."""
    card = ModelCard.describe("ease", {"l2": 300.0}, interactions)
    monkeypatch.setattr(models, "MODEL_FORMAT", models.MODEL_FORMAT + 1)
    assert ModelCard.describe("ease", {"l2": 300.0}, interactions).version != card.version


def test_ease_ranks_unseen_items_and_round_trips(interactions, tmp_path):
    settings = {**EASE, "l2": 10.0, "rating_weighted": True, "item_normalization": 0.15}
    card = ModelCard.describe("ease", settings, interactions)
    model = fit_ease(interactions, card, max_items=1000, **settings)
    assert np.allclose(np.diag(model.item_factors), 0.0) and len(model.user_ids) == 0
    ranked = fold_in(model, interactions).recommend(interactions, k=5)
    assert ranked.merge(interactions, on=["user_id", "item_id"]).empty
    model.save(tmp_path)
    again = FactorModel.load(tmp_path)
    assert again.card == card and np.array_equal(again.item_factors, model.item_factors)
    pd.testing.assert_frame_equal(fold_in(again, interactions).recommend(interactions, k=5), ranked)


def test_ease_refuses_an_oversized_catalogue_clearly(interactions):
    card = ModelCard.describe("ease", {"l2": 10.0}, interactions)
    with pytest.raises(CatalogueTooLargeError, match=r"over max_items=50\. Use ALS"):
        fit_ease(interactions, card, l2=10.0, max_items=50, **EASE)


@pytest.mark.parametrize("user_normalization", [0.0, 0.25])
def test_ease_with_normalization_scores_the_damped_closed_form(interactions, user_normalization):
    """Z = N·X·D, N = diag(user's interactions ^ -user_normalization), D = diag(Z's column
    norm² ^ -0.3): scores must be X·D·B with B from Z's Gram (N cannot change a user's
    ranking, so scoring leaves it out)."""
    settings = {**EASE, "l2": 5.0, "item_normalization": 0.3}
    settings["user_normalization"] = user_normalization
    card = ModelCard.describe("ease", settings, interactions)
    model = fit_ease(interactions, card, max_items=1000, **settings)
    users = fold_in(model, interactions)
    x = users.user_factors.astype(np.float64)
    n = x * (x > 0).sum(axis=1, keepdims=True) ** -user_normalization
    d = (n**2).sum(axis=0) ** -0.3
    z = n * d
    precision = np.linalg.inv(z.T @ z + 5.0 * np.eye(z.shape[1]))
    b = -precision / np.diag(precision)
    np.fill_diagonal(b, 0.0)
    assert np.allclose(x @ model.item_factors.T, (x * d) @ b, atol=1e-4)
    plain = fit_ease(interactions, card, max_items=1000, **{**EASE, "l2": 5.0})
    assert not np.allclose(plain.item_factors, model.item_factors)


def test_ease_weights_a_few_users_as_it_weighted_the_whole_table(interactions):
    """The rating scale is the model's, not the history's: a user whose best rating is 3
    keeps the weights the batch gave them."""
    assert rating_scale(pd.Series([1.0, 5.0, np.nan])) == 5.0
    assert rating_scale(pd.Series([np.nan])) == 1.0
    settings = {**EASE, "l2": 10.0, "rating_weighted": True}
    card = ModelCard.describe("ease", settings, interactions)
    model = fit_ease(interactions, card, max_items=1000, **settings)
    lukewarm = interactions[interactions["user_id"] == interactions["user_id"].iloc[0]].assign(
        rating=3.0
    )
    [row] = fold_in(model, lukewarm).user_factors
    columns = pd.Index(model.item_ids).get_indexer(lukewarm["item_id"])
    assert row[columns] == pytest.approx(np.full(len(columns), np.sqrt(3.0 / 5.0)))
    assert np.count_nonzero(row) == len(columns)


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


def test_the_family_that_goes_live_is_the_best_on_validation_among_those_that_passed():
    validation = {"als": 0.24, "ease": 0.26}
    assert choose_family(validation, {"als", "ease"}, None) == "ease"
    assert choose_family(validation, {"als"}, None) == "als"
    assert choose_family(validation, set(), None) is None
    assert choose_family(validation, {"als", "ease"}, "als") == "als"
    assert choose_family(validation, {"ease"}, "als") is None


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
