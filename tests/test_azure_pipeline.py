"""The azure deployment end to end, on real stand-ins: events land in Blob Storage (azurite),
`dagster job execute batch_retrain` keeps its lake there and publishes to Cosmos DB
(cosmosdb-server), and the API serves the lists from Cosmos DB."""

import io
import uuid

import httpx
import pandas as pd
import pytest

from reco_dagster.domain.synthetic import synthetic_events
from resources.cosmos_store import CosmosRecommendationStore
from resources.landing_zone import LandingZone
from tests.conftest import azure_env, blob_files, run_batch_retrain, running_api
from tests.servers.azure import COSMOS_EMULATOR_KEY

pytestmark = pytest.mark.slow


def test_the_batch_flow_runs_on_blob_storage_and_cosmos_db(blob_server, cosmos, data_dir, tmp_path):
    container, database = f"t{uuid.uuid4().hex}", f"t{uuid.uuid4().hex}"
    files = blob_files(blob_server, container)
    zone = LandingZone(files=files)
    zone.land("2026/11/history.parquet", synthetic_events(300, 400, 40, seed=3).to_parquet())
    zone.land("2026/11/broken.csv", b"user_id;item_id\nnot;a contract file\n")
    zone.add_catalog(
        "items.csv", b"item_id,title\n" + b"".join(b"i%d,Title %d\n" % (n, n) for n in range(400))
    )
    azure = azure_env(blob_server, cosmos, container, database)

    result = run_batch_retrain(data_dir, tmp_path, **azure)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    store = CosmosRecommendationStore(
        endpoint=cosmos.url, key=COSMOS_EMULATOR_KEY, database=database
    )
    live = store.live_version()
    assert live is not None and store.version(live).info["metrics"]["precision_at_10"] > 0
    lake = {file.name for file in files.list("lake/")}
    assert {"lake/interactions.parquet", "lake/als_evaluation.json"} <= lake
    assert f"lake/versions/{live}/factors.npz" in lake
    assert any(name.startswith("lake/als_model/spark_model/") for name in lake)
    split = pd.read_parquet(io.BytesIO(files.read("lake/test_interactions.parquet")))
    assert len(split) > 0
    [reason] = [f.name for f in files.list("quarantine/files/") if f.name.endswith(".reason.txt")]
    assert "broken.csv" in reason
    assert not (data_dir / "lake").exists() and not (data_dir / "landing").exists()

    with running_api(data_dir, **azure) as url:
        assert httpx.get(f"{url}/health").json()["model_version"] == live
        body = httpx.get(f"{url}/users/u42/recommendations").json()
        assert (body["model_version"], body["source"]) == (live, "personal")
        assert len(body["items"]) == 10 and body["items"][0]["title"].startswith("Title ")
        cold = httpx.get(f"{url}/users/brand-new/recommendations", params={"k": 3}).json()
        assert cold["source"] == "popular" and len(cold["items"]) == 3
        records = httpx.get(f"{url}/models").json()
        assert {r["version"]: r["status"] for r in records}[live] == "live"
        assert {r["family"] for r in records} == {"als", "ease"}
