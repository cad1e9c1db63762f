import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from reco_dagster.domain.lists import listed_items
from reco_dagster.domain.models import FactorModel, ModelCard
from reco_dagster.micro_batch import micro_batch
from resources.blob_files import BlobFiles
from resources.event_history import EventHistory
from resources.files import FileStore, LocalFiles
from resources.ingestion import EventWeights
from resources.landing_zone import LandingZone
from resources.model_archive import ModelArchive
from resources.settings import spark_session
from resources.store import SqliteRecommendationStore
from tests.servers import free_port
from tests.servers.azure import AZURITE_KEY, COSMOS_EMULATOR_KEY, Server, azurite, cosmosdb_server

REPO = Path(__file__).resolve().parents[1]


def dagster_job(job: str, *options: str) -> list[str]:
    """The command line that runs one of the code location's jobs, as a user would."""
    dagster = Path(sys.executable).with_name("dagster")
    return [str(dagster), "job", "execute", "-m", "reco_dagster.definitions", "-j", job, *options]


@contextmanager
def running_api(data_dir: Path, **extra_env: str) -> Iterator[str]:
    """The real API in its own process over `data_dir`; yields its base URL."""
    with api_process(data_dir, **extra_env) as (base_url, _):
        yield base_url


@contextmanager
def api_process(data_dir: Path, **extra_env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`running_api`, yielding the process too (the leader of its own process group)."""
    port = free_port()
    env = {**os.environ, "RECO_DATA_DIR": str(data_dir), "RECO_API_PORT": str(port), **extra_env}
    env.pop("RECO_ADMIN_TOKEN", None) if "RECO_ADMIN_TOKEN" not in extra_env else None
    server = subprocess.Popen(
        [sys.executable, "-m", "api.serve"], cwd=REPO, env=env, start_new_session=True
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base_url}/schema/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.1)
        yield base_url, server
    finally:
        server.terminate()
        server.wait(timeout=10)


SMALL_ALS = {
    "rank": 16,
    "max_iter": 8,
    "alpha": 10.0,
    "confidence": "binary",
    "half_life_events": 0.0,
    "recency_floor": 0.0,
}
DECAYED_ALS = {**SMALL_ALS, "half_life_events": 5.0, "recency_floor": 0.03}


def run_batch_retrain(
    data_dir: Path,
    tmp_path: Path,
    als: dict = SMALL_ALS,
    search: dict | None = None,
    ease: dict | None = None,
    spark_from_users: int = 100_000,
    serving: dict | None = None,
    **extra_env: str,
) -> subprocess.CompletedProcess:
    """batch_retrain through the CLI; `search` is model_search's config (default: the
    configured settings as they are)."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    config = tmp_path / "run_config.json"
    config.write_text(
        json.dumps(
            {
                "resources": {
                    "als": {"config": als},
                    "ease": {"config": ease or {}},
                    "batch_scoring": {"config": {"spark_from_users": spark_from_users}},
                    "serving": {"config": serving or {}},
                },
                "ops": {
                    "model_search": {
                        "config": search or {"time_budget_s": {"als": 0.0, "ease": 0.0}}
                    }
                },
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


SETTINGS = {
    "rank": 3,
    "max_iter": 5,
    "reg_param": 0.1,
    "alpha": 10.0,
    "implicit_prefs": True,
    "confidence": "rating",
    "popularity_prior": 0.0,
    "seed": 1,
}
ITEMS = [f"i{n}" for n in range(12)]


def live_world(data_dir: Path):
    """A live ALS version trained on u0..u9: in the store, the model archive and the event
    history (ingested by a micro-batch run while no model was live). Returns the landing
    zone, the event history, the store, the archive and the live version."""
    files = LocalFiles(root=str(data_dir))
    zone, event_history = LandingZone(files=files), EventHistory(files=files)
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    archive = ModelArchive(files=files)
    rng = np.random.default_rng(0)
    history = pd.DataFrame(
        {
            "user_id": [f"u{n // 3}" for n in range(30)],
            "item_id": [ITEMS[(n * 5) % 12] for n in range(30)],
            "rating": 4.0,
            "timestamp": 1_600_000_000 + np.arange(30),
        }
    )
    land(data_dir, "history.csv", history)
    micro_batch.execute_in_process(resources=resources(zone, event_history, store, archive))
    card = ModelCard.describe("als", SETTINGS, history)
    model = FactorModel(
        card,
        np.array([f"u{n}" for n in range(10)], dtype=object),
        np.array(ITEMS, dtype=object),
        rng.normal(size=(10, 3)).astype(np.float32),
        rng.normal(size=(12, 3)).astype(np.float32),
    )
    archive.save(model, None)
    store.register(card.version, {"family": "als", "training_rows": 30})
    ranked = model.recommend(history, k=5)
    store.write_version(
        card.version,
        [(u, listed_items(g, {})) for u, g in ranked.groupby("user_id")],
        [{"item_id": "i0", "score": 9.0}],
    )
    store.activate(card.version)
    return zone, event_history, store, archive, card.version


def nobody_forgotten() -> SqliteRecommendationStore:
    """A store without tombstones (nor anything else), for ingesting alone."""
    return SqliteRecommendationStore(path=":memory:")


def resources(zone, event_history, store, archive):
    return {
        "landing_zone": zone,
        "event_history": event_history,
        "event_weights": EventWeights(),
        "store": store,
        "archive": archive,
    }


def land(data_dir, name, frame):
    (data_dir / "landing").mkdir(parents=True, exist_ok=True)
    frame.to_csv(data_dir / "landing" / name, index=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def cosmos() -> Iterator[Server]:
    with cosmosdb_server() as server:
        yield server


@pytest.fixture(scope="session")
def blob_server() -> Iterator[Server]:
    with azurite() as server:
        yield server


def azure_env(blob_server: Server, cosmos: Server, container: str, database: str) -> dict:
    """The environment of the azure deployment on azurite and cosmosdb-server."""
    return {
        "RECO_DEPLOYMENT": "azure",
        "RECO_BLOB_ACCOUNT_URL": blob_server.url,
        "RECO_BLOB_KEY": AZURITE_KEY,
        "RECO_BLOB_CONTAINER": container,
        "RECO_COSMOS_ENDPOINT": cosmos.url,
        "RECO_COSMOS_KEY": COSMOS_EMULATOR_KEY,
        "RECO_COSMOS_DATABASE": database,
    }


def blob_files(server: Server, container: str | None = None) -> BlobFiles:
    """A new container (or a named one) on an azurite server."""
    return BlobFiles(server.url, container or f"t{uuid.uuid4().hex}", AZURITE_KEY)


@pytest.fixture(params=["local", "blob"])
def files(request, data_dir) -> FileStore:
    """Each file store, empty: a local folder and an Azure Blob Storage container."""
    if request.param == "local":
        return LocalFiles(root=str(data_dir))
    return blob_files(request.getfixturevalue("blob_server"))


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the tests that call Spark directly."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = spark_session()
    yield session
    session.stop()
