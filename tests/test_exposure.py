"""Exposure for new items: which items count as new, how a user's categories choose among
them, and where they go in a list."""

import json

import httpx
import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from reco_dagster.domain.exposure import _seed, new_item_affinity, new_items, with_new_items
from reco_dagster.domain.interactions import item_users
from reco_dagster.domain.online import served_hit_rate
from tests.conftest import running_api
from tests.test_explain import ease_world, micro_batch_of

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
    found = new_items(["x", "y", "z"], ["x", "y"], item_users(interactions), min_interactions=3)
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
    placed = with_new_items(ranked, offered, every=10, version="v1", depth=30)
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
    assert placed.equals(with_new_items(ranked, offered, every=10, version="v1", depth=30))
    moved = with_new_items(ranked, offered, every=10, version="v2", depth=30)
    assert not moved[moved["new_item"]]["rank"].equals(news["rank"])


def merged_one_at_a_time(
    listed: list[str], offered: list[str], offset: int, every: int, depth: int
) -> list[tuple[str, bool]]:
    """The exposure rule for one user, item by item: at the user's offset in every block of
    `every` positions the next offered item not listed, else the next listed item; the list
    ends when the position's source has nothing left, or at `depth`."""
    extra = iter([item for item in offered if item not in listed])
    rest = iter(listed)
    merged: list[tuple[str, bool]] = []
    while len(merged) < depth:
        new = next(extra, None) if len(merged) % every == offset else None
        if new is not None:
            merged.append((new, True))
        elif (item := next(rest, None)) is not None:
            merged.append((item, False))
        else:
            break
    return merged


@settings(max_examples=200, deadline=None)
@given(
    lists=st.lists(
        st.tuples(
            st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=10, unique=True),
            st.lists(st.sampled_from("efghijklmn"), max_size=6, unique=True),
        ),
        min_size=1,
        max_size=4,
    ),
    every=st.integers(1, 5),
    depth=st.integers(1, 16),
)
def test_new_items_are_merged_into_every_list_by_the_one_at_a_time_rule(
    lists: list[tuple[list[str], list[str]]], every: int, depth: int
):
    users = [f"u{n}" for n in range(len(lists))]
    ranked = pd.DataFrame(
        [
            {"user_id": user, "item_id": item, "rank": rank, "score": 100.0 - rank}
            for user, (listed, _) in zip(users, lists, strict=True)
            for rank, item in enumerate(listed, 1)
        ]
    )
    offered = pd.DataFrame(
        [
            {"user_id": user, "item_id": item}
            for user, (_, items) in zip(users, lists, strict=True)
            for item in items
        ],
        columns=["user_id", "item_id"],
    )
    placed = with_new_items(ranked, offered, every, "v1", depth)
    expected = [
        (user, item, new)
        for user, (listed, items) in zip(users, lists, strict=True)
        for item, new in merged_one_at_a_time(
            listed, items, _seed(f"v1/{user}") % every, every, depth
        )
    ]
    if offered.empty:  # nothing to place: the lists stay as ranked
        expected = [
            (user, item, False)
            for user, (listed, _) in zip(users, lists, strict=True)
            for item in listed
        ]
    got = list(zip(placed["user_id"], placed["item_id"], placed["new_item"], strict=True))
    assert got == expected
    for _, mine in placed.groupby("user_id"):
        assert mine["rank"].tolist() == list(range(1, len(mine) + 1))
        assert mine["score"].is_monotonic_decreasing


def test_new_items_get_their_marked_positions_the_log_and_similar_items_by_category(
    data_dir, monkeypatch
):
    monkeypatch.setenv("RECO_NEW_ITEM_EVERY", "2")
    world = ease_world(data_dir, new_items=["n-drama", "n-comedy"])
    catalog = pd.DataFrame(
        {
            "item_id": ["i0", "i1", "i2", "i3", "n-drama", "n-comedy"],
            "categories": ["Drama", "Comedy", "Drama", "Drama", "Drama", "Comedy"],
        }
    )
    (data_dir / "catalog").mkdir()
    catalog.to_csv(data_dir / "catalog" / "items.csv", index=False)
    world[2].write_catalog(
        [
            {"item_id": i, "categories": [c], "available": True, "attributes": "{}"}
            | ({"title": "Drama Three"} if i == "i3" else {})
            for i, c in zip(catalog["item_id"], catalog["categories"], strict=True)
        ],
        "r1",
        read_at=1.0,
    )
    micro_batch_of(data_dir, world, "first.csv", [("u", "i0", 1)])
    with running_api(data_dir) as base_url:
        items = httpx.get(f"{base_url}/users/u/recommendations").json()["items"]
        marked = [position for position, item in enumerate(items) if item.get("new_item")]
        # One position in every two, at one offset; the drama lover's drama first.
        # The list grows by its new items (it is shorter than the published depth).
        assert len(items) == 5 and len(marked) == 2 and marked[1] - marked[0] == 2
        assert [items[p]["item_id"] for p in marked] == ["n-drama", "n-comedy"]
        similar = httpx.get(f"{base_url}/items/n-drama/similar").json()
        assert similar["based_on"] == "categories"
        assert [item["item_id"] for item in similar["items"]] == ["i3", "i0", "i2"]
        assert [item.get("title") for item in similar["items"]] == ["Drama Three", None, None]
        assert httpx.get(f"{base_url}/items/unknown/similar").status_code == 404
    served = data_dir / "served"
    [line] = [json.loads(line) for f in served.glob("*.jsonl") for line in f.read_text().split()]
    assert line[5] == ["n-drama", "n-comedy"]


def test_online_evaluation_reports_new_items_apart():
    served = pd.DataFrame(
        {
            "time": [0.0, 0.0],
            "user_id": ["a", "b"],
            "variant": [None, None],
            "version": ["v1", "v1"],
            "items": [["x", "new"], ["y", "new"]],
            "new_items": [["new"], ["new"]],
        }
    )
    events = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["new", "y"], "timestamp": [5, 5]})
    [row] = served_hit_rate(served, events, window_s=10).to_dict("records")
    assert (row["lists_served"], row["lists_hit"], row["hit_rate"]) == (2, 2, 1.0)
    assert (row["new_item_positions"], row["new_items_hit"], row["new_item_hit_rate"]) == (
        2,
        1,
        0.5,
    )
