"""End to end: generated events → `dagster job execute batch_retrain` (a real Spark session,
the real CLI) → the SQLite store → the API over HTTP. Then new events arrive and a second
run ingests only them and switches the live version."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from assets.evaluate import evaluate
from reco_dagster.domain.als import load_als_factors
from reco_dagster.domain.synthetic import synthetic_events
from resources.store import SqliteRecommendationStore
from tests.conftest import REPO, dagster_job, running_api

SMALL_ALS = {"rank": 16, "max_iter": 8, "alpha": 10.0, "confidence": "binary"}


def run_batch_retrain(
    data_dir: Path,
    tmp_path: Path,
    als: dict = SMALL_ALS,
    search_trials: int = 0,
    ease: dict | None = None,
    spark_from_users: int = 100_000,
    **extra_env: str,
) -> subprocess.CompletedProcess:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    config = tmp_path / "run_config.json"
    search = {"time_budget_s": 60.0 if search_trials else 0.0, "max_trials": search_trials or 1}
    config.write_text(
        json.dumps(
            {
                "resources": {
                    "als": {"config": als},
                    "ease": {"config": ease or {}},
                    "batch_scoring": {"config": {"spark_from_users": spark_from_users}},
                },
                "ops": {"als_hyperparameters": {"config": search}},
            }
        )
    )
    env = {
        **os.environ,
        "RECO_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(dagster_home),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        **extra_env,
    }
    return subprocess.run(
        dagster_job("batch_retrain", "-c", str(config)),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


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
    result = run_batch_retrain(data_dir, tmp_path, search_trials=2)
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
    assert live.version == evaluation["model_version"] and live.version.startswith("als-")
    chosen = json.loads((data_dir / "lake" / "als_hyperparameters.json").read_text())
    assert "2 trials; best:" in result.stderr
    assert live.info["metrics"] == metrics and live.info["settings"] == chosen
    ease_record = store.version(ease["model_version"])
    assert (ease_record.status, ease_record.has_lists) == ("candidate", True)
    seen = events.groupby("user_id")["item_id"].apply(set)
    for user_id in ("u0", "u1", "u150", "u299"):
        found = store.lookup(user_id, 100)
        assert found.source == "personal" and len(found.items) == 100
        ids = [item["item_id"] for item in found.items]
        assert not set(ids) & seen[user_id], "a served list repeats an item the user already has"
        assert found.items[0]["title"] == f"Title {ids[0][1:]}"
        scores = [item["score"] for item in found.items]
        assert scores == sorted(scores, reverse=True)


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
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Ranked 301 users' items on the spark executors" in result.stderr
    lake = data_dir / "lake"
    interactions = pd.read_parquet(lake / "interactions.parquet")
    on_driver = load_als_factors(lake / "als_model").recommend(interactions, k=100)
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
    assert "EASE skipped: EASE needs an 400 x 400 matrix inverse" in result.stderr
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
    result = run_batch_retrain(data_dir, tmp_path, {**SMALL_ALS, "rank": 1, "max_iter": 1})
    assert result.returncode != 0
    assert "rejected: precision_at_10" in result.stderr
    assert f"below live version {live}" in result.stderr
    assert store.live_version() == live
    [rejected] = [v for v in store.versions() if v.status == "rejected"]
    assert rejected.info["settings"]["rank"] == 1 and not rejected.has_lists
    assert "beyond the 5% tolerance" in rejected.info["rejected_because"]
