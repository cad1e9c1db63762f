"""Exposure for new items: which items count as new, how a user's categories choose among
them, and where they go in a list."""

import numpy as np
import pandas as pd

from reco_dagster.domain.exposure import new_item_affinity, new_items, with_new_items

CATEGORIES = {
    "old-drama": ["Drama"],
    "old-comedy": ["Comedy"],
    "new-drama": ["Drama"],
    "new-comedy": ["Comedy"],
    "new-both": ["Comedy", "Drama"],
}


def test_new_items_are_unknown_to_the_model_or_rarely_seen():
    interactions = pd.DataFrame(
        {"user_id": ["a", "b", "a", "b", "c"], "item_id": ["x", "x", "y", "y", "y"]}
    )
    found = new_items(
        ["x", "y", "z"], model_items=["x", "y"], interactions=interactions, min_interactions=3
    )
    assert found == ["x", "z"]


def test_a_users_categories_choose_their_new_items():
    history = pd.DataFrame(
        {"user_id": ["d", "d", "c"], "item_id": ["old-drama", "old-drama", "old-comedy"]}
    )
    weights = np.array([1.0, 1.0, 1.0])
    candidates = ["new-comedy", "new-drama", "new-both"]
    best = new_item_affinity(history, weights, candidates, CATEGORIES, 3, "v1")
    firsts = best[best["rank"] == 1].set_index("user_id")["item_id"].to_dict()
    assert firsts == {"d": "new-drama", "c": "new-comedy"}
    # Half of "new-both" matches either user: second for both.
    assert set(best[best["rank"] == 2]["item_id"]) == {"new-both"}


def test_one_position_in_every_ten_goes_to_a_new_item_at_a_stable_offset():
    users = [f"u{n}" for n in range(20)]
    ranked = pd.DataFrame(
        {
            "user_id": np.repeat(users, 30),
            "item_id": [f"i{r}" for _ in users for r in range(30)],
            "rank": np.tile(np.arange(1, 31), len(users)),
            "score": np.tile(np.linspace(3.0, 0.1, 30), len(users)),
        }
    )
    offered = pd.DataFrame(
        {
            "user_id": np.repeat(users, 4),
            "item_id": ["i2", "n1", "n2", "n3"] * len(users),  # i2 is listed already
        }
    )
    placed = with_new_items(ranked, offered, every=10, version="v1")
    assert placed.groupby("user_id").size().eq(30).all()
    news = placed[placed["new_item"]]
    assert all(
        items == ["n1", "n2", "n3"] for items in news.groupby("user_id")["item_id"].agg(list)
    )
    offsets = (news["rank"] - 1) % 10
    assert news.groupby("user_id")["rank"].apply(lambda r: ((r - 1) % 10).nunique()).eq(1).all()
    assert offsets.nunique() > 1  # different users see new items at different ranks
    for _, mine in placed.groupby("user_id"):
        assert mine["score"].is_monotonic_decreasing
    assert placed.equals(with_new_items(ranked, offered, every=10, version="v1"))
    moved = with_new_items(ranked, offered, every=10, version="v2")
    assert not moved[moved["new_item"]]["rank"].equals(news["rank"])
