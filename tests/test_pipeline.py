"""End to end: generated events → `dagster job execute batch_retrain` (a real Spark session,
the real CLI) → the SQLite store → the API over HTTP. Then new events arrive and a second
run ingests only them and switches the live version."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from dagster import AssetSelection, materialize

from reco_dagster import definitions
from reco_dagster.domain.als import load_als_factors
from reco_dagster.domain.evaluation import evaluate
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.lists import NON_PERSONAL_DEPTH, PUBLISHED_DEPTH
from reco_dagster.domain.recency import decays
from reco_dagster.domain.synthetic import synthetic_events
from reco_dagster.micro_batch import micro_batch
from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.landing_zone import LandingZone
from resources.model_archive import ModelArchive
from resources.store import SqliteRecommendationStore, VersionNotPublishableError
from tests.conftest import (
    DECAYED_ALS,
    REPO,
    SMALL_ALS,
    dagster_job,
    land,
    resources,
    run_batch_retrain,
    running_api,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    data_dir = tmp_path / "data"
    landing = data_dir / "landing"
    landing.mkdir(parents=True)
    events = synthetic_events(300, 400, 40, seed=3)
    events.to_parquet(landing / "history.parquet", index=False)
    (landing / "broken.csv").write_text("user_id;item_id\nnot;a contract file\n")
    (data_dir / "catalog").mkdir()
    pd.DataFrame(
        {"item_id": [f"i{n}" for n in range(400)], "title": [f"Title {n}" for n in range(400)]}
    ).to_parquet(data_dir / "catalog" / "items.parquet")
    # ALS as configured (with a recency decay), EASE searched: two trials.
    search = {"time_budget_s": {"als": 0.0, "ease": 60.0}, "max_trials": {"ease": 2}}
    result = run_batch_retrain(data_dir, tmp_path, DECAYED_ALS, search)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp_path, data_dir, events, result


def test_definitions_load_with_the_batch_job():
    result = subprocess.run(
        [
            Path(sys.executable).with_name("dagster"),
            "definitions",
            "validate",
            "-m",
            "reco_dagster.definitions",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_job_publishes_a_model_that_beats_popularity(first_run):
    _, data_dir, events, result = first_run
    assert "Quarantined broken.csv whole: missing required column(s)" in result.stderr
    evaluation = json.loads((data_dir / "lake" / "als_evaluation.json").read_text())
    metrics, baseline = evaluation["metrics"], evaluation["popularity_baseline"]
    assert metrics["precision_at_10"] > 1.5 * baseline["precision_at_10"]
    assert metrics["ndcg_at_10"] > baseline["ndcg_at_10"]
    ease = json.loads((data_dir / "lake" / "ease_evaluation.json").read_text())
    assert ease["metrics"]["precision_at_10"] > 1.5 * baseline["precision_at_10"]
    test_split = pd.read_parquet(data_dir / "lake" / "test_interactions.parquet")
    train_split = pd.read_parquet(data_dir / "lake" / "train_interactions.parquet")
    assert len(test_split) + len(train_split) == len(events)

    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    live = store.version(store.live_version())
    searched = json.loads((data_dir / "lake" / "model_search.json").read_text())
    assert "ease: 2 trial(s)" in result.stderr and "als: 1 trial(s)" in result.stderr
    assert (
        evaluation["settings"]
        == searched["als"]["settings"]
        == {
            **DECAYED_ALS,
            **{
                key: value
                for key, value in evaluation["settings"].items()
                if key not in DECAYED_ALS
            },
        }
    )
    # The family with the better validation nDCG@10 goes live; the other stays a candidate.
    by_validation = sorted(
        (evaluation, ease), key=lambda family: family["validation"]["ndcg_at_10"]
    )
    loser, winner = by_validation
    assert live.version == winner["model_version"]
    assert live.info["metrics"] == winner["metrics"]
    assert live.info["settings"] == winner["settings"]
    other = store.version(loser["model_version"])
    assert (other.status, other.has_lists) == ("candidate", True)
    seen = events.groupby("user_id")["item_id"].apply(set)
    for user_id in ("u0", "u1", "u150", "u299"):
        found = store.lookup(user_id, 100)
        assert found.source == "personal" and len(found.items) == 100
        ids = [item["item_id"] for item in found.items]
        assert not set(ids) & seen[user_id], "a served list repeats an item the user already has"
        assert found.items[0]["title"] == f"Title {ids[0][1:]}"
        scores = [item["score"] for item in found.items]
        assert scores == sorted(scores, reverse=True)
    # Lists as deep as the filters need; the trending and all-time lists beside them.
    assert len(store.personal_list("u0")[1]) == PUBLISHED_DEPTH
    trending, popular = store.item_list("trending")[1], store.item_list("popular")[1]
    assert len(trending) == len(popular) == min(NON_PERSONAL_DEPTH, 400)
    counts = events.groupby("item_id")["user_id"].nunique().sort_values(ascending=False)
    assert popular[0]["score"] == counts.iloc[0] and trending != popular
    catalog = store.catalog()
    assert len(catalog.entries) == 400 and catalog.entries[0]["available"]


def test_the_api_serves_the_published_lists(first_run):
    _, data_dir, _, _ = first_run
    live = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite")).live_version()
    with running_api(data_dir) as url:
        assert httpx.get(f"{url}/health").json()["model_version"] == live
        body = httpx.get(f"{url}/users/u42/recommendations").json()
        assert body["source"] == "personal" and len(body["items"]) == 10
        assert body["items"][0]["title"].startswith("Title ")
        cold = httpx.get(f"{url}/users/brand-new/recommendations", params={"k": 3}).json()
        assert cold["source"] == "popular" and len(cold["items"]) == 3
        similar = httpx.get(f"{url}/items/i7/similar", params={"k": 5}).json()
        assert similar["model_version"] == live and len(similar["items"]) == 5
        assert "i7" not in {item["item_id"] for item in similar["items"]}
        for name in ("trending", "popular"):
            listed = httpx.get(f"{url}/items/{name}", params={"k": 4}).json()
            assert listed["model_version"] == live and len(listed["items"]) == 4


def ranked_only(items: list[dict]) -> list[dict]:
    """A list without the positions given to new items."""
    return [item for item in items if not item.get("new_item")]


@pytest.fixture
def own_copy(first_run, tmp_path, monkeypatch) -> Path:
    """A copy of the first run's data dir, for a test that changes it (RECO_DATA_DIR names
    it)."""
    data_dir = tmp_path / "data"
    shutil.copytree(first_run[1], data_dir)
    monkeypatch.setenv("RECO_DATA_DIR", str(data_dir))
    return data_dir


def test_the_catalog_job_takes_a_sold_out_item_off_a_running_api(first_run, own_copy, tmp_path):
    """A new catalog file says an item is sold out; the catalog_refresh job (what
    catalog_sensor runs) publishes it, and the running API stops serving it: no retrain."""
    data_dir = own_copy
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    live = store.live_version()
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env = {**os.environ, "RECO_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(dagster_home)}
    with running_api(data_dir) as url:

        def served() -> list[str]:
            answers = [
                httpx.get(f"{url}{path}", params={"k": 100}).json()["items"]
                for path in ("/users/u42/recommendations", "/items/trending", "/items/i7/similar")
            ]
            return [item["item_id"] for items in answers for item in items]

        sold_out = served()[0]
        (data_dir / "catalog" / "stock.csv").write_text(f"item_id,available\n{sold_out},false\n")
        job = subprocess.run(
            dagster_job("catalog_refresh"),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert job.returncode == 0, job.stderr[-3000:]
        time.sleep(store.change_check_interval_s)
        assert sold_out not in served()
        assert store.live_version() == live


def test_a_micro_batch_gives_a_user_the_list_the_batch_gave_the_same_history(first_run, own_copy):
    """A newcomer whose events are u0's, event for event, is folded in by the micro-batch
    into each family's version and gets exactly the list the batch job published for u0."""
    events, data_dir = first_run[2], own_copy
    files = LocalFiles(root=str(data_dir))
    zone, event_history = LandingZone(files=files), EventHistory(files=files)
    archive = ModelArchive(files=files)
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    for family in ("als", "ease"):
        version = json.loads((data_dir / "lake" / f"{family}_evaluation.json").read_text())[
            "model_version"
        ]
        assert decays(store.version(version).info["settings"]) or family == "ease"
        store.activate(version)
        twin = f"twin-of-u0-{family}"
        land(data_dir, f"{twin}.csv", events[events["user_id"] == "u0"].assign(user_id=twin))
        result = micro_batch.execute_in_process(
            run_config={"ops": {"score_new_events": {"config": {"files": [f"{twin}.csv"]}}}},
            resources=resources(zone, event_history, store, archive),
        )
        assert result.success
        folded, batch = store.lookup(twin, 100), store.lookup("u0", 100)
        assert folded.source == batch.source == "personal"
        assert folded.model_version == batch.model_version == version
        # New items take positions at an offset of each user's own.
        folded_items, batch_items = ranked_only(folded.items), ranked_only(batch.items)
        assert [i["item_id"] for i in folded_items] == [i["item_id"] for i in batch_items]
        assert [i["score"] for i in folded_items] == pytest.approx(
            [i["score"] for i in batch_items], abs=2e-4
        )


def test_a_session_gets_the_list_the_batch_gave_a_user_with_the_same_history(first_run, own_copy):
    """POST /recommendations with u0's events, event for event, answers with exactly the
    list the batch job published for u0, in each family's version."""
    events, data_dir = first_run[2], own_copy
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    mine = events[events["user_id"] == "u0"].astype(object)
    session = mine.drop(columns="user_id").where(mine.notna(), None).to_dict("records")
    for family in ("als", "ease"):
        version = json.loads((data_dir / "lake" / f"{family}_evaluation.json").read_text())[
            "model_version"
        ]
        store.activate(version)
        with running_api(data_dir) as base_url:
            answer = httpx.post(
                f"{base_url}/recommendations", json={"items": session, "k": 100}
            ).json()
            batch = httpx.get(f"{base_url}/users/u0/recommendations", params={"k": 100}).json()
        assert (answer["source"], answer["model_version"]) == ("session", version)
        assert batch["model_version"] == version
        # A session has no positions for new items (they are per user): the rest is alike.
        listed = ranked_only(batch["items"])
        assert [i["item_id"] for i in answer["items"][: len(listed)]] == [
            i["item_id"] for i in listed
        ]
        assert [i["score"] for i in answer["items"][: len(listed)]] == pytest.approx(
            [i["score"] for i in listed], abs=2e-4
        )


def test_a_switch_keeps_what_micro_batches_wrote_after_the_data_snapshot(first_run, own_copy):
    """A micro-batch that lands between a retrain's data snapshot and its switch writes into
    the old version; the switch folds those users into the new version, not losing them."""
    events, data_dir = first_run[2], own_copy
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    old = store.live_version()
    land(data_dir, "more.csv", events[events["user_id"] == "u1"].assign(user_id="u1-again"))
    config = {
        # Any new version may go live: this test is about the switch, not the gate.
        "resources": {"als": {"config": SMALL_ALS}, "quality_gate": {"config": {"tolerance": 1.0}}},
        "ops": {"model_search": {"config": {"time_budget_s": {"als": 0.0, "ease": 0.0}}}},
    }
    everything = AssetSelection.all()
    before_switch = materialize(
        definitions.batch_assets,
        selection=everything - AssetSelection.assets("live_model", "online_evaluation"),
        resources=definitions.build_resources(),
        run_config=config,
    )
    assert before_switch.success and store.live_version() == old

    late = pd.DataFrame(
        {
            "user_id": ["late-user"] * 3 + ["u2"],
            "item_id": ["i3", "i4", "i5", "i6"],
            "rating": 5.0,
            "timestamp": 1_700_000_000,
        }
    )
    land(data_dir, "late.csv", late)
    files = LocalFiles(root=str(data_dir))
    zone, event_history = LandingZone(files=files), EventHistory(files=files)
    archive = ModelArchive(files=files)
    assert micro_batch.execute_in_process(
        resources=resources(zone, event_history, store, archive)
    ).success
    assert store.lookup("late-user", 10).model_version == old

    switch = materialize(
        definitions.batch_assets,
        selection=AssetSelection.assets("live_model"),
        resources=definitions.build_resources(),
        run_config={"resources": config["resources"]},
    )
    assert switch.success
    new = store.live_version()
    assert new != old
    for user in ("late-user", "u2"):
        served = store.lookup(user, 100)
        assert (served.model_version, served.source) == (new, "personal")
        history, _ = build_interactions(event_history.user_history([user]))
        expected = fold_in(archive.load(new), history).recommend(seen=history, k=100)
        assert [item["item_id"] for item in served.items] == expected["item_id"].tolist()
    assert "i6" not in {item["item_id"] for item in store.lookup("u2", 100).items}


def test_a_retrain_the_gate_rejects_still_folds_what_it_ingested_into_the_live_version(
    first_run, own_copy
):
    """A retrain ingests a file no micro-batch saw; its gate keeps the old version live, and
    the file's user is still folded into it, not left to the next retrain."""
    events, data_dir = first_run[2], own_copy
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    old = store.live_version()
    land(data_dir, "unseen.csv", events[events["user_id"] == "u3"].assign(user_id="gated-user"))
    rejected = materialize(
        definitions.batch_assets,
        selection=AssetSelection.all() - AssetSelection.assets("online_evaluation"),
        resources=definitions.build_resources(),
        run_config={
            "resources": {
                "als": {"config": SMALL_ALS},
                "quality_gate": {"config": {"floors": {"precision_at_10": 1.1}}},
            },
            "ops": {"model_search": {"config": {"time_budget_s": {"als": 0.0, "ease": 0.0}}}},
        },
        raise_on_error=False,
    )
    assert not rejected.success and store.live_version() == old
    files = LocalFiles(root=str(data_dir))
    event_history, archive = EventHistory(files=files), ModelArchive(files=files)
    served = store.lookup("gated-user", 100)
    assert (served.model_version, served.source) == (old, "personal")
    history, _ = build_interactions(event_history.user_history(["gated-user"]))
    expected = fold_in(archive.load(old), history).recommend(seen=history, k=100)
    assert [item["item_id"] for item in served.items] == expected["item_id"].tolist()


def test_a_second_run_ingests_only_new_files_and_switches_versions_without_ease(first_run):
    """...and ranks on Spark's executors (from 0 users on), as the driver would have."""
    tmp_path, data_dir, _, _ = first_run
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    first_version = store.live_version()
    new_user = pd.DataFrame(
        {
            "user_id": ["newcomer"] * 5,
            "item_id": ["i1", "i2", "i3", "i4", "i5"],
            "rating": [5.0] * 5,
            "timestamp": [1_700_000_000 + n for n in range(5)],
        }
    )
    new_user.to_csv(data_dir / "landing" / "day2.csv", index=False)
    # With a catalogue over EASE's limit, EASE is skipped and ALS goes on.
    result = run_batch_retrain(data_dir, tmp_path, ease={"max_items": 50}, spark_from_users=0)
    # SMALL_ALS leaves histories undecayed, so Spark's own user factors rank on the executors.
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Ranked 301 users' items on the spark executors" in result.stderr
    lake = data_dir / "lake"
    interactions = pd.read_parquet(lake / "interactions.parquet")
    on_driver = load_als_factors(lake / "als_model").recommend(interactions, k=PUBLISHED_DEPTH)
    published = pd.read_parquet(lake / "als_recommendations.parquet")
    pd.testing.assert_frame_equal(
        published[["user_id", "item_id", "rank"]], on_driver[["user_id", "item_id", "rank"]]
    )
    train = pd.read_parquet(lake / "train_interactions.parquet")
    test = pd.read_parquet(lake / "test_interactions.parquet")
    evaluated = json.loads((lake / "als_evaluation.json").read_text())["metrics"]
    on_driver_metrics = evaluate(load_als_factors(lake / "als_evaluation_model"), train, test)
    assert evaluated == pytest.approx(on_driver_metrics, abs=1e-9)
    assert "Ingested 5 events from 1 new file(s)" in result.stderr
    assert "ease is no candidate: EASE needs an 400 x 400 matrix inverse" in result.stderr
    second_version = store.live_version()
    assert second_version != first_version
    assert store.version(first_version).status == "retired"
    newcomer = store.lookup("newcomer", 10)
    assert newcomer.source == "personal"
    assert not {item["item_id"] for item in newcomer.items} & set(new_user["item_id"])


def test_the_gate_rejects_a_bad_model_and_the_live_version_stays(first_run):
    tmp_path, data_dir, _, _ = first_run
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    live = store.live_version()
    result = run_batch_retrain(
        data_dir, tmp_path, {**SMALL_ALS, "rank": 1, "max_iter": 1}, serving={"family": "als"}
    )
    assert result.returncode != 0
    assert "no model version may go live (serving.family pins als)" in result.stderr
    assert "rejected: precision_at_10" in result.stderr
    assert f"below live version {live}" in result.stderr
    assert store.live_version() == live
    # Run alone, after the first run only, the searched EASE may be rejected beside it.
    [rejected] = [
        v for v in store.versions() if v.status == "rejected" and v.info["family"] == "als"
    ]
    assert rejected.info["settings"]["rank"] == 1
    assert "beyond the 5% tolerance" in rejected.info["rejected_because"]
    assert rejected.info["champion"]["version"] == live
    with pytest.raises(VersionNotPublishableError):
        store.activate(rejected.version)
