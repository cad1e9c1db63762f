"""POST /recommendations over real HTTP against the real API process: a visitor's session is
scored by the live version as the batch job scores a user with that history."""

import httpx
import pandas as pd
import pytest

from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from resources.ingestion import EventWeights
from tests.conftest import live_world, running_api


def test_before_any_publish_a_session_is_answered_503(data_dir):
    with running_api(data_dir) as base_url:
        response = httpx.post(f"{base_url}/recommendations", json={"items": ["i1"]})
    assert response.status_code == 503


def test_a_session_is_scored_by_fold_in_against_the_live_version(data_dir):
    *_, archive, version = live_world(data_dir)
    session = [
        {"item_id": "i3", "event_type": "view", "timestamp": 100},
        {"item_id": "i7", "rating": 5, "event_type": "rating", "timestamp": 160},
        {"item_id": "i3", "event_type": "purchase", "timestamp": 200},
        {"item_id": "not-in-the-model", "timestamp": 210},
    ]
    history, _ = build_interactions(
        pd.DataFrame(session).assign(user_id="visitor", rating=[None, 5.0, None, None]),
        EventWeights().weights,
    )
    expected = fold_in(archive.load(version), history).recommend(seen=history, k=4)
    with running_api(data_dir) as base_url:
        response = httpx.post(
            f"{base_url}/recommendations", json={"items": session, "user_id": "u42", "k": 4}
        )
    assert response.status_code == 200
    answer = response.json()
    assert (answer["model_version"], answer["source"], answer["user_id"]) == (
        version,
        "session",
        "u42",
    )
    assert [item["item_id"] for item in answer["items"]] == list(expected["item_id"])
    assert [item["score"] for item in answer["items"]] == pytest.approx(
        list(expected["score"]), abs=1e-5
    )


def test_a_plain_list_of_ids_counts_by_its_order(data_dir):
    *_, archive, version = live_world(data_dir)
    history, _ = build_interactions(
        pd.DataFrame(
            {"user_id": "v", "item_id": ["i1", "i2", "i5"], "rating": None, "timestamp": [0, 1, 2]}
        )
    )
    expected = fold_in(archive.load(version), history).recommend(seen=history, k=3)
    with running_api(data_dir) as base_url:
        answer = httpx.post(
            f"{base_url}/recommendations", json={"items": ["i1", "i2", "i5"], "k": 3}
        ).json()
    assert [item["item_id"] for item in answer["items"]] == list(expected["item_id"])
    assert "user_id" not in answer


def test_a_session_the_model_cannot_score_gets_the_popular_list(data_dir):
    live_world(data_dir)
    with running_api(data_dir) as base_url:
        answer = httpx.post(
            f"{base_url}/recommendations", json={"items": ["new-1", "new-2"]}
        ).json()
    assert answer["source"] == "popular"
    assert [item["item_id"] for item in answer["items"]] == ["i0"]


def test_a_session_takes_the_filters_and_never_gets_an_unavailable_item(data_dir):
    _, _, store, archive, version = live_world(data_dir)
    entries = [
        {"item_id": f"i{n}", "categories": ["even" if n % 2 == 0 else "odd"], "available": n != 4}
        for n in range(12)
    ]
    store.write_catalog(entries, "r1", read_at=1.0)
    history, _ = build_interactions(
        pd.DataFrame({"user_id": "v", "item_id": ["i1"], "rating": None, "timestamp": [0]})
    )
    everything = fold_in(archive.load(version), history).recommend(seen=history, k=12)
    with running_api(data_dir) as base_url:

        def asked(**filters) -> list[str]:
            body = {"items": ["i1"], "k": 5, **filters}
            answer = httpx.post(f"{base_url}/recommendations", json=body).json()
            return [item["item_id"] for item in answer["items"]]

        served = [item for item in everything["item_id"] if item != "i4"]
        assert asked() == served[:5]
        assert asked(category=["even"]) == [i for i in served if int(i[1:]) % 2 == 0][:5]
        assert asked(exclude=served[:2]) == served[2:7]
        assert "i4" in asked(include_unavailable=True, category=["even"])


def test_a_session_lists_catalog_titles_and_scores_as_stored_lists_do(data_dir):
    _, _, store, _, _ = live_world(data_dir)
    entries = [
        {"item_id": f"i{n}", "title": f"Item {n}", "categories": [], "available": True}
        for n in range(12)
        if n != 3
    ]
    store.write_catalog(entries, "r1", read_at=1.0)
    with running_api(data_dir) as base_url:
        answer = httpx.post(f"{base_url}/recommendations", json={"items": ["i1"], "k": 12}).json()
    titles = {item["item_id"]: item.get("title") for item in answer["items"]}
    assert titles["i3"] is None and titles["i2"] == "Item 2"
    assert all(titles[item] == f"Item {item[1:]}" for item in titles if item != "i3")
    assert all(item["score"] == round(item["score"], 5) for item in answer["items"])


MALFORMED = [
    ({"items": []}, "1 to 500 items"),
    ({"items": ["i1"], "k": 101}, "k"),
    ({"items": [{"item_id": "i1", "timestamp": 5}, "i2"]}, "every item a timestamp"),
    ({"items": [{"item_id": "i1", "event_type": "like"}]}, "unknown event type"),
    ({"items": [{"item_id": "i1", "event_type": "rating"}]}, "has no rating"),
    ({"items": [{"item_id": "i1", "rating": 7}]}, "rating"),
    ({"items": [{"item_id": ""}]}, "item_id"),
    ({"items": ["i1"], "colour": "red"}, "colour"),
]


def test_malformed_sessions_are_refused_with_a_reason(data_dir):
    live_world(data_dir)
    with running_api(data_dir) as base_url:
        for body, reason in MALFORMED:
            response = httpx.post(f"{base_url}/recommendations", json=body)
            assert response.status_code == 400, body
            assert reason in response.text, (body, response.text)
