"""The API in a real uvicorn process over a real SQLite store, called over HTTP."""

import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from resources.store import SqliteRecommendationStore
from tests.conftest import live_world, running_api

POPULAR = [{"item_id": "50", "score": 583.0, "title": "Star Wars (1977)"}]


def personal(version: str) -> list:
    return [("196", [{"item_id": f"{version}-{r}", "score": 1 - r / 100} for r in range(100)])]


@pytest.fixture
def store(data_dir):
    return SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))


def test_before_any_publish_the_api_says_so_clearly(data_dir, store):
    store.versions()  # creates the empty database file
    with running_api(data_dir) as url:
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503
        assert "no model has been published yet" in health.json()["detail"]
        lookup = httpx.get(f"{url}/users/196/recommendations")
        assert lookup.status_code == 503 and "batch_retrain" in lookup.json()["detail"]


def test_lookups_validation_and_live_switches(data_dir, store):
    store.register("v1", {"family": "als"})
    store.write_version("v1", personal("v1"), POPULAR)
    store.activate("v1")
    with running_api(data_dir) as url:
        client = httpx.Client(base_url=url)
        assert client.get("/health").json() == {"status": "ok", "model_version": "v1"}

        body = client.get("/users/196/recommendations").json()
        assert (body["user_id"], body["model_version"], body["source"]) == ("196", "v1", "personal")
        assert [item["item_id"] for item in body["items"]] == [f"v1-{r}" for r in range(10)]
        assert "title" not in body["items"][0]
        assert (
            len(client.get("/users/196/recommendations", params={"k": 100}).json()["items"]) == 100
        )

        stranger = client.get("/users/someone-new/recommendations", params={"k": 5})
        assert stranger.status_code == 200
        assert stranger.json()["source"] == "popular"
        assert stranger.json()["items"] == POPULAR

        for bad_k in ("0", "101", "ten"):
            response = client.get("/users/196/recommendations", params={"k": bad_k})
            assert response.status_code == 400 and "k" in response.text
        too_long = client.get(f"/users/{'x' * 257}/recommendations")
        assert too_long.status_code == 400
        assert too_long.json()["detail"] == "user_id is longer than 256 characters"
        assert client.get("/nowhere").status_code == 404
        assert client.post("/users/196/recommendations").status_code == 405
        schema = client.get("/schema/openapi.json").json()
        assert "/users/{user_id}/recommendations" in schema["paths"]

        store.register("v2", {"family": "als"})
        store.write_version("v2", personal("v2"), POPULAR)
        store.activate("v2")
        time.sleep(store.change_check_interval_s)  # the documented bound
        switched = client.get("/users/196/recommendations", params={"k": 1}).json()
        assert switched["model_version"] == "v2" and switched["items"][0]["item_id"] == "v2-0"


def registered(store, version: str, **info) -> None:
    store.register(version, {"family": "als", "settings": {"rank": 8}, **info})
    similar = [
        (
            "50",
            [
                {"item_id": "181", "score": 0.9, "title": "Return of the Jedi (1983)"},
                {"item_id": "1", "score": 0.5},
            ],
        )
    ]
    store.write_version(version, personal(version), POPULAR, similar)


def test_the_model_registry_is_public(data_dir, store):
    registered(store, "v1", metrics={"precision_at_10": 0.41}, data_fingerprint="abc")
    store.activate("v1")
    champion = {"version": "v1", "family": "als", "settings": {}, "metrics": {"ndcg_at_10": 0.5}}
    store.register(
        "v2",
        {
            "family": "als",
            "protocol": "chronological",
            "metrics": {"ndcg_at_10": 0.4},
            "validation": {"ndcg_at_10": 0.3},
            "champion": champion,
        },
        rejected_because="ndcg_at_10 below the floor",
    )
    with running_api(data_dir) as url:
        listed = httpx.get(f"{url}/models").json()
        assert [(m["version"], m["status"]) for m in listed] == [("v2", "rejected"), ("v1", "live")]
        one = httpx.get(f"{url}/models/v1").json()
        assert one["metrics"] == {"precision_at_10": 0.41} and one["data_fingerprint"] == "abc"
        assert one["compared_with"] is None and one["validation_metrics"] == {}
        two = httpx.get(f"{url}/models/v2").json()
        assert two["rejected_because"].startswith("ndcg_at_10")
        assert two["protocol"] == "chronological"
        assert two["validation_metrics"] == {"ndcg_at_10": 0.3}
        assert two["compared_with"] == {"version": "v1", "metrics": {"ndcg_at_10": 0.5}}
        assert httpx.get(f"{url}/models/nope").status_code == 404


def test_activation_needs_the_admin_token(data_dir, store):
    registered(store, "v1")
    registered(store, "v2")
    store.activate("v2")
    store.register("bad", {"family": "als"}, rejected_because="worse than live")
    with running_api(data_dir, RECO_ADMIN_TOKEN="s3cret") as url:
        activate = f"{url}/models/v1/activate"
        assert httpx.post(activate).status_code == 401
        assert httpx.post(activate, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert httpx.post(activate, headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert store.live_version() == "v2"
        admin = {"Authorization": "Bearer s3cret"}
        rolled_back = httpx.post(activate, headers=admin)
        assert rolled_back.status_code == 200 and rolled_back.json()["status"] == "live"
        assert httpx.get(f"{url}/users/196/recommendations").json()["model_version"] == "v1"
        refused = httpx.post(f"{url}/models/bad/activate", headers=admin)
        assert refused.status_code == 409
        assert "rejected by the quality gate: worse than live" in refused.json()["detail"]
        assert httpx.post(f"{url}/models/ghost/activate", headers=admin).status_code == 404
        assert store.live_version() == "v1"


def test_without_a_configured_token_nobody_may_activate(data_dir, store):
    registered(store, "v1")
    with running_api(data_dir) as url:
        response = httpx.post(f"{url}/models/v1/activate", headers={"Authorization": "Bearer x"})
        assert response.status_code == 403 and "RECO_ADMIN_TOKEN is not set" in response.text
        assert store.live_version() is None


def test_switching_versions_under_load_drops_nothing_and_mixes_nothing(data_dir, store):
    users = [f"u{n}" for n in range(200)]

    def lists(version: str):
        return [
            (u, [{"item_id": f"{version}:{r}", "score": 1.0} for r in range(10)]) for u in users
        ]

    store.register("v1", {"family": "als"})
    store.write_version("v1", lists("v1"), POPULAR)
    store.activate("v1")
    failures, mixed, answered = [], [], []
    switched_at: dict[str, float] = {}
    stop = threading.Event()

    def hammer(url: str, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = client.get(f"/users/{rng.choice(users)}/recommendations")
                if response.status_code != 200:
                    failures.append(response.status_code)
                    continue
                body = response.json()
                versions = {item["item_id"].split(":")[0] for item in body["items"]}
                if versions != {body["model_version"]}:
                    mixed.append(body)
                answered.append((started, body["model_version"]))

    with running_api(data_dir) as url:
        threads = [threading.Thread(target=hammer, args=(url, n)) for n in range(4)]
        for thread in threads:
            thread.start()
        for version in ("v2", "v3"):
            time.sleep(0.5)
            store.register(version, {"family": "als"})
            store.write_version(version, lists(version), POPULAR)
            store.activate(version)
            switched_at[version] = time.monotonic()
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [] and mixed == []
    # A request that started after a switch (and the cache's bound) is answered from that
    # version or a newer one.
    for version, moment in switched_at.items():
        bound = moment + store.change_check_interval_s
        later = {served for started, served in answered if started > bound}
        assert later and later <= {"v2", "v3"} and (version == "v2" or later == {"v3"})


def test_fuzzing_the_openapi_schema_finds_no_server_error(data_dir, store):
    *_, version = live_world(data_dir)  # sessions need the live version's archived model
    with running_api(data_dir, RECO_ADMIN_TOKEN="s3cret") as url:
        result = subprocess.run(
            [
                Path(sys.executable).with_name("schemathesis"),
                "run",
                f"{url}/schema/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "50",
                "--seed",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout)
    assert store.live_version() == version  # fuzzed activations without the token changed nothing


def test_similar_items_of_the_live_version(data_dir, store):
    registered(store, "v1")
    store.activate("v1")
    with running_api(data_dir) as url:
        body = httpx.get(f"{url}/items/50/similar", params={"k": 1}).json()
        assert body == {
            "item_id": "50",
            "model_version": "v1",
            "items": [{"item_id": "181", "score": 0.9, "title": "Return of the Jedi (1983)"}],
            "based_on": "factors",
        }
        unknown = httpx.get(f"{url}/items/nope/similar")
        assert unknown.status_code == 404 and "not in live model version v1" in unknown.text
        assert httpx.get(f"{url}/items/50/similar", params={"k": 0}).status_code == 400


def test_metrics_count_requests_per_route_cache_hits_and_the_live_version(data_dir, store):
    registered(store, "v1")
    store.activate("v1")
    with running_api(data_dir) as url:
        for _ in range(3):
            httpx.get(f"{url}/users/196/recommendations")
        httpx.get(f"{url}/users/196/recommendations", params={"k": 0})
        metrics = httpx.get(f"{url}/metrics").text
    route = 'route="/users/{user_id}/recommendations"'
    assert f'reco_api_requests_total{{method="GET",{route},status="200"}} 3.0' in metrics
    assert f'reco_api_requests_total{{method="GET",{route},status="400"}} 1.0' in metrics
    assert f"reco_api_request_duration_seconds_count{{{route}}} 4.0" in metrics
    assert "reco_api_cache_hits_total 2.0" in metrics
    assert "reco_api_cache_misses_total 1.0" in metrics
    assert 'reco_api_live_model{version="v1"} 1.0' in metrics
    dashboard = (Path(__file__).parents[1] / "deploy/grafana/reco-api-dashboard.json").read_text()
    charted = set(re.findall(r"reco_api_\w+", dashboard))
    assert charted and all(f"\n{name}" in metrics for name in charted), charted


# Installed in the API's processes (granian's workers too, through PYTHONPATH): an environment
# where Dagster and Spark are not installed, as in the Dockerfile's api image.
WITHOUT_THE_ORCHESTRATOR = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dagster", "pyspark") or name.startswith("dagster_"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def test_the_api_is_a_lookup_service_without_dagster_or_spark(data_dir, store, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WITHOUT_THE_ORCHESTRATOR)
    env = {"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[1]}"}
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, api.app, api.serve; print(sorted(sys.modules))"],
        env={**env, "RECO_DATA_DIR": str(data_dir), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'dagster" not in loaded and "'pyspark" not in loaded
    assert "'adlfs" not in loaded, "Blob Storage's file system only where it is configured"
    store.register("v1", {"family": "als"})
    store.write_version("v1", personal("v1"), POPULAR)
    store.activate("v1")
    with running_api(data_dir, **env) as url:
        body = httpx.get(f"{url}/users/196/recommendations").json()
        assert (body["model_version"], body["source"]) == ("v1", "personal")
