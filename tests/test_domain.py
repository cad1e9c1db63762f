import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reco_dagster.domain.als import rating_confidence
from reco_dagster.domain.ease import ease_weights
from reco_dagster.domain.evaluation import metrics_of
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.lists import ranked_lists
from reco_dagster.domain.metrics import ranking_metrics
from reco_dagster.domain.models import data_fingerprint
from reco_dagster.domain.ranking import (
    fill_short_lists,
    first_unseen,
    popular_items,
    recommend,
    top_k_items,
)
from reco_dagster.domain.splits import chronological_split, stratified_random_split
from reco_dagster.domain.synthetic import synthetic_events


def events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def test_interactions_drop_duplicates_keep_latest_rating_and_index_ids():
    table, duplicates = build_interactions(
        events(
            [
                ("b", "x", 3.0, 10),
                ("b", "x", 3.0, 10),  # exact duplicate from another file
                ("b", "x", 5.0, 20),  # a later re-rating wins
                ("a", "y", np.nan, 5),
                ("a", "x", np.nan, 7),
            ]
        )
    )
    assert duplicates == 1
    assert table[["user_id", "item_id", "user_idx", "item_idx"]].values.tolist() == [
        ["a", "x", 0, 0],
        ["a", "y", 0, 1],
        ["b", "x", 1, 0],
    ]
    re_rated = table[(table.user_id == "b") & (table.item_id == "x")].iloc[0]
    assert (re_rated.rating, re_rated.events, re_rated.timestamp) == (5.0, 2, 20)


def typed_events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp", "event_type"])


TYPED = [
    ("u", "a", np.nan, 1, "purchase"),
    ("u", "a", np.nan, 2, "view"),  # a later view does not undo the purchase
    ("u", "b", np.nan, 3, "click"),
    ("u", "c", 2.0, 4, "rating"),
    ("u", "c", np.nan, 5, "view"),
    ("u", "d", np.nan, 6, None),  # untyped and unrated: counts fully, as before types
    ("u", "d", np.nan, 6, "view"),  # the same second, but another event
    ("v", "a", 5.0, 7, None),
]


def test_typed_events_weigh_relative_to_the_top_weight_and_the_strongest_counts():
    weights = {"view": 1.0, "click": 2.0, "purchase": 8.0}
    table, duplicates = build_interactions(typed_events(TYPED), weights)
    assert duplicates == 0
    by_pair = table.set_index(["user_id", "item_id"])
    assert by_pair["weight"].fillna(-1).tolist() == [1.0, 0.25, 0.125, 0.125, -1]
    assert by_pair["events"].tolist() == [2, 1, 2, 2, 1]
    # The stronger of what the rating says and the typed events' weight.
    assert rating_confidence(table).tolist() == pytest.approx([1.0, 0.25, 0.2, 0.125, 1.0])
    expected = np.sqrt([1.0, 0.25, 0.4, 0.125, 1.0])
    assert ease_weights(table, 5.0).tolist() == pytest.approx(expected.tolist())


def test_weights_are_part_of_the_data_fingerprint_and_untyped_data_keeps_its_own():
    table, _ = build_interactions(typed_events(TYPED))
    reweighed, _ = build_interactions(typed_events(TYPED), {"view": 1.0, "purchase": 2.0})
    assert data_fingerprint(table) != data_fingerprint(reweighed)
    doubled, _ = build_interactions(typed_events(TYPED), {"view": 2.0, "purchase": 4.0})
    assert data_fingerprint(reweighed) == data_fingerprint(doubled)
    untyped, _ = build_interactions(synthetic_events(20, 30, 5, seed=1))
    assert untyped["weight"].isna().all()
    assert data_fingerprint(untyped) == data_fingerprint(untyped.drop(columns="weight"))


def test_stratified_split_keeps_three_quarters_of_each_user_and_is_seeded():
    table, _ = build_interactions(synthetic_events(50, 200, 20, seed=1))
    train, test = stratified_random_split(table, 0.75, seed=7)
    assert len(train) + len(test) == len(table)
    assert train.merge(test, on=["user_id", "item_id"]).empty
    per_user = train.groupby("user_id").size()
    assert (per_user == 15).all() and len(per_user) == 50
    again, _ = stratified_random_split(table, 0.75, seed=7)
    other, _ = stratified_random_split(table, 0.75, seed=8)
    assert again.equals(train) and not other.equals(train)


def test_chronological_split_tests_on_each_users_latest():
    table = events([("u", f"i{t}", 1.0, t) for t in range(8)]).assign(events=1)
    train, test = chronological_split(table, 0.75)
    assert sorted(test["timestamp"]) == [6, 7] and train["timestamp"].max() == 5


def test_split_rejects_a_ratio_outside_zero_one():
    with pytest.raises(ValueError, match="between 0 and 1"):
        stratified_random_split(events([("u", "i", 1.0, 1)]), 1.0)


def test_ranking_metrics_match_hand_computed_values():
    recommended = pd.DataFrame(
        {
            "user_id": ["a"] * 3 + ["b"] * 3,
            "item_id": ["1", "2", "3", "4", "5", "6"],
            "rank": [1, 2, 3] * 2,
        }
    )
    relevant = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["1", "3", "9", "1"]})
    metrics = ranking_metrics(recommended, relevant, k=3)
    # user a: hits at ranks 1 and 3 of 2 relevant; user b: none; user c has no recommendations.
    assert metrics["precision_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    assert metrics["recall_at_k"] == pytest.approx((1.0 + 0) / 2)
    ndcg_a = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert metrics["ndcg_at_k"] == pytest.approx(ndcg_a / 2)
    assert metrics["map_at_k"] == pytest.approx(((1 / 1 + 2 / 3) / 2) / 2)


def test_rating_errors_from_totals():
    # Errors 1 and 2 (ratings 1 and 3 predicted as 2 and 5).
    totals = {"users": 0.0, "squared_error": 5.0, "absolute_error": 3.0, "rated": 2.0}
    metrics = metrics_of(
        {**totals, "precision_at_k": 0.0, "recall_at_k": 0.0} | {"ndcg_at_k": 0.0, "map_at_k": 0.0}
    )
    assert metrics["rmse"] == pytest.approx(np.sqrt(2.5))
    assert metrics["mae"] == pytest.approx(1.5)


def test_top_k_never_returns_seen_items_and_orders_by_score():
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 5.0]])
    top, scores = top_k_items(users, items, np.array([0, 1]), np.array([0, 3]), k=2)
    assert top.tolist() == [[1, 2], [0, 1]]
    assert scores[0].tolist() == [2.0, 1.0]


def test_top_k_marks_slots_a_user_cannot_fill():
    top, scores = top_k_items(
        np.ones((1, 2)), np.ones((3, 2)), np.array([0, 0]), np.array([0, 1]), k=3
    )
    assert top.tolist() == [[2, -1, -1]] and np.isneginf(scores[0, 1:]).all()


def test_recommend_maps_ids_and_skips_everything_seen():
    ranked = recommend(
        np.array(["a", "b"]),
        np.array(["x", "y", "z"]),
        np.array([[1.0], [2.0]]),
        np.array([[3.0], [2.0], [1.0]]),
        seen=pd.DataFrame({"user_id": ["a", "b", "ghost"], "item_id": ["x", "z", "x"]}),
        k=5,
    )
    assert ranked.values.tolist() == [
        ["a", "y", 1, 2.0],
        ["a", "z", 2, 1.0],
        ["b", "x", 1, 6.0],
        ["b", "y", 2, 4.0],
    ]


def test_popular_items_rank_by_distinct_users():
    table = events([("a", "x", 1, 1), ("b", "x", 1, 2), ("a", "y", 1, 3)])
    assert popular_items(table, 5)["item_id"].tolist() == ["x", "y"]


def test_trending_counts_recent_users_more_and_all_time_counts_everyone_alike():
    day = 86_400
    old = [(user, "old", 1, 0) for user in "abc"]
    new = [(user, "new", 1, 30 * day) for user in "ab"]
    table = events(old + new)
    assert popular_items(table, 5)["item_id"].tolist() == ["old", "new"]
    trending = popular_items(table, 5, half_life_days=7.0)
    assert trending["item_id"].tolist() == ["new", "old"]
    assert trending["score"].tolist() == pytest.approx([2.0, 3 * 0.5 ** (30 / 7)])


@settings(max_examples=200, deadline=None)
@given(
    seen=st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("pqrstuvwxyz")), unique=True),
    k=st.integers(1, 12),
)
def test_a_shared_lists_first_unseen_items_are_what_scoring_every_item_ranks(seen, k):
    items = np.array(list("zyxwvutsrqp"), dtype=object)  # best first
    scores = np.arange(len(items), 0, -1, dtype=np.float64)
    users = np.array(["a", "b", "c", "d", "e"], dtype=object)
    seen = pd.DataFrame(seen, columns=["user_id", "item_id"])
    walked = first_unseen(users, items, scores, seen, k)
    scored = recommend(users, items, np.ones((len(users), 1)), scores[:, None], seen, k)
    pd.testing.assert_frame_equal(walked, scored)


def test_lists_of_no_rows_are_none():
    ranked = pd.DataFrame(columns=["user_id", "item_id", "rank", "score"])
    assert list(ranked_lists(ranked, "user_id", {})) == []


def test_short_lists_go_on_with_the_cold_start_list_minus_seen_and_listed_items():
    ranked = pd.DataFrame(
        {"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "rank": [1, 2, 1]}
    ).assign(score=[0.9, 0.8, 0.7])
    fallback = pd.DataFrame({"item_id": ["y", "z", "w", "v"], "score": [9.0, 8.0, 7.0, 6.0]})
    seen = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["z", "w"]})
    filled = fill_short_lists(ranked, fallback, seen, depth=3)
    assert filled[["user_id", "item_id", "rank"]].values.tolist() == [
        ["a", "x", 1], ["a", "y", 2], ["a", "w", 3],
        ["b", "x", 1], ["b", "y", 2], ["b", "z", 3],
    ]  # fmt: skip
    for _, user in filled.groupby("user_id"):
        assert user["score"].is_monotonic_decreasing
