"""Explanations: the history items that raised a recommended item's score most, written with
the lists by the micro-batch (from the user's newest history) and served with explain=true
over real HTTP; sessions explain themselves alike."""

import httpx
import numpy as np
import pandas as pd
import pytest

from reco_dagster.domain.explain import explain_lists
from reco_dagster.domain.exposure import NEW_ITEMS
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.models import FactorModel, ModelCard
from reco_dagster.micro_batch import micro_batch
from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.landing_zone import LandingZone
from resources.model_archive import ModelArchive
from resources.store import SqliteRecommendationStore
from tests.conftest import SETTINGS, land, resources, running_api

ITEMS = ["i0", "i1", "i2", "i3"]
# B[h, i]: how much having h in a history adds to item i's score (EASE's item-item weights).
B = np.array(
    [
        [0.0, 0.1, 0.5, -0.1],
        [0.2, 0.0, 0.2, 0.3],
        [0.1, 0.1, 0.0, 0.9],
        [0.0, 0.0, 0.1, 0.0],
    ],
    dtype=np.float32,
)
UNWEIGHTED_EASE = {"l2": 1.0, "rating_weighted": False, "item_normalization": 0.0}


def ease_world(data_dir, new_items=()):
    """A live EASE version with the weights B, no personal lists yet, and `new_items` for its
    exposure positions."""
    files = LocalFiles(root=str(data_dir))
    zone, event_history = LandingZone(files=files, settle_s=0), EventHistory(files=files)
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    archive = ModelArchive(files=files)
    card = ModelCard("ease-hand-made", "ease", UNWEIGHTED_EASE, "none", 0)
    model = FactorModel.item_side_of(card, np.array(ITEMS, dtype=object), B.T.copy())
    archive.save(model, None)
    store.register(card.version, {"family": "ease"})
    store.write_version(
        card.version,
        [],
        [{"item_id": "i3", "score": 1.0}],
        item_lists={NEW_ITEMS: [{"item_id": item, "score": 0.0} for item in new_items]},
    )
    store.activate(card.version)
    return zone, event_history, store, archive


def micro_batch_of(data_dir, world, name, events):
    land(data_dir, name, pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"]))
    config = {"ops": {"score_new_events": {"config": {"files": [name]}}}}
    assert micro_batch.execute_in_process(run_config=config, resources=resources(*world)).success


def explained(base_url, user):
    response = httpx.get(f"{base_url}/users/{user}/recommendations", params={"explain": "true"})
    assert response.status_code == 200
    return {item["item_id"]: item["because"] for item in response.json()["items"]}


def test_explanations_match_a_hand_computed_ease_case_and_follow_the_newest_history(data_dir):
    world = ease_world(data_dir)
    micro_batch_of(data_dir, world, "first.csv", [("u", "i0", 1), ("u", "i1", 2)])
    with running_api(data_dir) as base_url:
        # i2: i0 adds 0.5, i1 0.2. i3: i1 adds 0.3, i0 takes 0.1 away (no reason).
        # i3 is not in i3's history, so it is listed; i0 and i1 are seen.
        assert explained(base_url, "u") == {"i2": ["i0", "i1"], "i3": ["i1"]}
        plain = httpx.get(f"{base_url}/users/u/recommendations").json()
        assert all("because" not in item for item in plain["items"])
        session = httpx.post(
            f"{base_url}/recommendations", json={"items": ["i0", "i1"], "explain": True}
        ).json()
        assert {i["item_id"]: i["because"] for i in session["items"]} == explained(base_url, "u")
        stranger = httpx.get(f"{base_url}/users/nobody/recommendations?explain=true").json()
        assert stranger["source"] == "popular" and "because" not in stranger["items"][0]
        micro_batch_of(data_dir, world, "second.csv", [("u", "i2", 3)])
        # Now i2 is seen, and it adds 0.9 to i3: the first reason.
        assert explained(base_url, "u") == {"i3": ["i2", "i1"]}


@pytest.mark.parametrize("implicit_prefs", [True, False])
def test_als_reasons_are_the_largest_terms_of_the_folded_in_score(implicit_prefs):
    rng = np.random.default_rng(4)
    items = np.array([f"i{n}" for n in range(30)], dtype=object)
    settings = {**SETTINGS, "rank": 5, "implicit_prefs": implicit_prefs}
    history = pd.DataFrame(
        {
            "user_id": "u",
            "item_id": items[[1, 4, 7, 9, 12, 20]],
            "rating": [5.0, 3.0, 4.0, 1.0, 2.0, 5.0],
            "timestamp": np.arange(6),
        }
    )
    interactions, _ = build_interactions(history)
    card = ModelCard("als-test", "als", settings, "none", 0)
    model = FactorModel.item_side_of(card, items, rng.normal(size=(30, 5)).astype(np.float32))
    ranked = fold_in(model, interactions).recommend(seen=interactions, k=10)
    reasons = explain_lists(model, interactions, ranked)
    # The score is the sum of one term per history item: t_h · yᵢᵀ A⁻¹ y_h.
    y = model.item_factors.astype(np.float64)
    columns = [int(item[1:]) for item in interactions["item_id"]]
    ratings = interactions["rating"].to_numpy()
    if implicit_prefs:
        confidence = settings["alpha"] * np.select(
            [ratings >= 4, ratings >= 3], [1.0, 0.5], default=0.2
        )
        normal = y.T @ y + (y[columns] * confidence[:, None]).T @ y[columns]
        normal += settings["reg_param"] * len(columns) * np.eye(5)
        target = 1.0 + confidence
    else:
        normal = y[columns].T @ y[columns] + settings["reg_param"] * len(columns) * np.eye(5)
        target = ratings
    for item_id, score, because in zip(ranked["item_id"], ranked["score"], reasons, strict=True):
        terms = target * (y[int(item_id[1:])] @ np.linalg.solve(normal, y[columns].T))
        assert terms.sum() == pytest.approx(score, rel=1e-4, abs=1e-5)
        largest = np.argsort(-terms)[:3]
        assert because == [interactions["item_id"].iloc[h] for h in largest if terms[h] > 0]
