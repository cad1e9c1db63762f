"""POST /events over real HTTP against the real API process: events land durably in the
landing zone, retries are idempotent, and consumed items leave the user's live list on every
replica at once (SQLite, and Cosmos DB with Blob Storage)."""

import json
import os
import signal
import time
import uuid
from datetime import date
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import ContainerClient

from reco_dagster.automation import new_landing_files
from reco_dagster.micro_batch import micro_batch
from resources.files import LocalFiles
from resources.ingestion import EventWeights
from resources.landing_zone import LandingZone
from tests.conftest import api_process, azure_env, blob_files, live_world, resources, running_api
from tests.servers.azure import AZURITE_KEY
from tests.test_cosmos import open_store
from tests.test_ingest import ingest

TOKEN = "ingest-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_700_000_000


def event(user: str, item: str, rating: float | None = 4.0, at: int = NOW) -> dict:
    return {"user_id": user, "item_id": item, "rating": rating, "timestamp": at}


def landed(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "landing" / "api").rglob("*.jsonl"))


def item_ids(base_url: str, user: str) -> list[str]:
    response = httpx.get(f"{base_url}/recommendations", params={"user_id": user, "k": 100})
    assert response.status_code == 200
    return [item["item_id"] for item in response.json()["items"]]


def test_events_need_the_ingest_token(data_dir):
    body = [event("u1", "i1")]
    with running_api(data_dir) as base_url:
        refused = httpx.post(f"{base_url}/events", json=body, headers=AUTH)
        assert refused.status_code == 403 and "RECO_INGEST_TOKEN is not set" in refused.text
    with running_api(data_dir, RECO_INGEST_TOKEN=TOKEN) as base_url:
        assert httpx.post(f"{base_url}/events", json=body).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert httpx.post(f"{base_url}/events", json=body, headers=wrong).status_code == 401
    assert not landed(data_dir)


def test_batches_over_the_limits_are_refused_whole(data_dir):
    with running_api(data_dir, RECO_INGEST_TOKEN=TOKEN) as base_url:
        too_many = [event(f"u{n}", "i1") for n in range(1_001)]
        assert httpx.post(f"{base_url}/events", json=too_many, headers=AUTH).status_code == 413
        padded = [{**event("u1", "i1"), "note": "x" * 2**20}]
        assert httpx.post(f"{base_url}/events", json=padded, headers=AUTH).status_code == 413
        for body in (b"not json", b'{"user_id": "u1"}', b"[]"):
            assert httpx.post(f"{base_url}/events", content=body, headers=AUTH).status_code == 400
    assert not landed(data_dir)


def test_valid_events_land_and_invalid_ones_are_named_by_index(data_dir):
    batch = [
        event("u1", "i1"),
        event("u1", "i2", rating=99),
        "not an object",
        event("u2", "i3", rating=None),
        {"user_id": "u3", "item_id": "i4"},
        event("u1", "i1"),
        event(7, 12.0, at="2023-11-14T22:13:20Z"),
    ]
    with running_api(data_dir, RECO_INGEST_TOKEN=TOKEN) as base_url:
        response = httpx.post(f"{base_url}/events", json=batch, headers=AUTH)
        assert response.status_code == 202
        answer = response.json()
        assert (answer["accepted"], answer["rejected"]) == (3, 4)
        reasons = {r["index"]: r["reason"] for r in answer["rejections"]}
        assert reasons[1].startswith("rating is outside")
        assert reasons[2] == "event is not a JSON object"
        assert reasons[4].startswith("timestamp")
        assert reasons[5] == "exact duplicate of an earlier row in the same file"
        nothing_valid = httpx.post(f"{base_url}/events", json=batch[1:3], headers=AUTH)
        assert nothing_valid.status_code == 400
        assert "event is not a JSON object" in nothing_valid.text
    [file] = landed(data_dir)
    assert file.stem == answer["request_id"]
    zone = LandingZone(files=LocalFiles(root=str(data_dir)), settle_s=0)
    assert ingest(zone)["rows_ingested"] == 3


def test_event_types_are_the_ones_the_deployment_weighs(data_dir, monkeypatch):
    monkeypatch.setenv("RECO_EVENT_WEIGHTS", '{" Like ": 1, "share": 3}')
    batch = [
        {**event("u1", "i1"), "event_type": "LIKE"},
        {**event("u1", "i2"), "event_type": "view"},
        {**event("u1", "i3"), "event_type": "rating"},
    ]
    with running_api(data_dir, RECO_INGEST_TOKEN=TOKEN) as base_url:
        answer = httpx.post(f"{base_url}/events", json=batch, headers=AUTH).json()
    assert answer["accepted"] == 2
    [rejection] = answer["rejections"]
    assert rejection["index"] == 1
    assert rejection["reason"] == "unknown event type (configured: like, rating, share)"
    # The pipeline reads the same setting, so what the API accepted is ingested whole.
    assert EventWeights().weights == {"like": 1, "share": 3}
    zone = LandingZone(files=LocalFiles(root=str(data_dir)), settle_s=0)
    assert ingest(zone)["rows_ingested"] == 2


def test_an_accepted_batch_survives_the_api_killed_right_after_its_answer(data_dir):
    batch = [event(f"u{n % 7}", f"i{n}") for n in range(500)]
    with api_process(data_dir, RECO_INGEST_TOKEN=TOKEN) as (base_url, server):
        response = httpx.post(f"{base_url}/events", json=batch, headers=AUTH)
        os.killpg(server.pid, signal.SIGKILL)
        assert response.status_code == 202 and response.json()["accepted"] == 500
    [file] = landed(data_dir)
    lines = file.read_bytes().decode().splitlines(keepends=True)
    assert len(lines) == 500 and all(line.endswith("\n") for line in lines)
    assert not list((data_dir / "landing").rglob("*.tmp"))
    zone = LandingZone(files=LocalFiles(root=str(data_dir)), settle_s=0)
    assert ingest(zone)["rows_ingested"] == 500
    # The sensor hands the file to a micro-batch like any other.
    found, _ = new_landing_files(zone, None, date.today())
    assert [info.name for info in found] == [str(file.relative_to(data_dir / "landing"))]


def test_a_retry_with_the_same_idempotency_key_is_not_ingested_twice(data_dir):
    batch = [event("u1", "i1"), event("u1", "bad", rating=-1)]
    with running_api(data_dir, RECO_INGEST_TOKEN=TOKEN) as base_url:
        keyed = {**AUTH, "Idempotency-Key": "order-42"}
        first = httpx.post(f"{base_url}/events", json=batch, headers=keyed)
        again = httpx.post(f"{base_url}/events", json=batch, headers=keyed)
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        other = httpx.post(f"{base_url}/events", json=batch[:1], headers=keyed)
        assert other.status_code == 422
        fresh = {**AUTH, "Idempotency-Key": "order-43"}
        assert httpx.post(f"{base_url}/events", json=batch, headers=fresh).status_code == 202
    assert len(landed(data_dir)) == 2
    assert not list((data_dir / "landing").rglob("*.json"))


def test_consumed_items_leave_the_list_on_every_replica_until_a_refresh(data_dir):
    zone, event_history, store, archive, version = live_world(data_dir)
    zone = LandingZone(files=zone.files, settle_s=0)
    # u1's list, marked as ranked from the user's whole history so far.
    mark = len(event_history.user_history(["u1"]))
    stale = store.lookup("u1", 100).items
    assert store.update_live_users(version, [("u1", stale)], {"u1": mark})
    with (
        running_api(data_dir, RECO_INGEST_TOKEN=TOKEN) as one,
        running_api(data_dir, RECO_INGEST_TOKEN=TOKEN) as other,
    ):
        before = item_ids(other, "u1")  # now in the other replica's cache
        consumed = before[:2]
        body = [event("u1", item) for item in consumed] + [event("stranger", "i1")]
        assert httpx.post(f"{one}/events", json=body, headers=AUTH).status_code == 202
        assert item_ids(other, "u1") == before[2:]
        assert item_ids(one, "u1") == before[2:]
        # Without a personal list there is nothing to take out.
        stranger = httpx.get(f"{other}/recommendations", params={"user_id": "stranger"})
        assert stranger.json()["source"] == "popular"
        # A refresh ranked from the history before these events cannot bring them back.
        assert store.update_live_users(version, [("u1", stale)], {"u1": mark + 1})
        assert item_ids(other, "u1") == before[2:]
        # The micro-batch reads them, and its list replaces the shortened one.
        [file] = landed(data_dir)
        name = str(file.relative_to(data_dir / "landing"))
        config = {"ops": {"score_new_events": {"config": {"files": [name]}}}}
        result = micro_batch.execute_in_process(
            run_config=config, resources=resources(zone, event_history, store, archive)
        )
        assert result.success
        refreshed = item_ids(other, "u1")
        assert len(refreshed) > len(before) - 2 and not set(refreshed) & set(consumed)


def test_on_azure_events_land_as_blobs_and_leave_lists_on_cosmos(blob_server, cosmos, tmp_path):
    container, database = f"c{uuid.uuid4().hex[:12]}", f"d{uuid.uuid4().hex[:8]}"
    store = open_store(cosmos, database)
    store.register("v1", {"family": "als"})
    items = [{"item_id": f"i{n}", "score": 10.0 - n} for n in range(5)]
    store.write_version("v1", [("u1", items)], items, history_events={"u1": 3})
    store.activate("v1")
    env = {**azure_env(blob_server, cosmos, container, database), "RECO_INGEST_TOKEN": TOKEN}
    with (
        api_process(tmp_path, **env) as (one, server),
        running_api(tmp_path, **env) as other,
    ):
        assert item_ids(other, "u1") == [item["item_id"] for item in items]
        body = [event("u1", "i0"), event("u1", "i3")]
        keyed = {**AUTH, "Idempotency-Key": "k1"}
        response = httpx.post(f"{one}/events", json=body, headers=keyed)
        assert response.status_code == 202
        assert httpx.post(f"{one}/events", json=body, headers=keyed).json() == response.json()
        # Another replica's cache compares the store's token every half second (Cosmos DB's
        # documented bound), then drops what it held.
        time.sleep(store.change_check_interval_s)
        assert item_ids(other, "u1") == ["i1", "i2", "i4"]
        # A refresh ranked from the history before them (3 events, or 4) cannot bring them back.
        store.update_live_users("v1", [("u1", items)], {"u1": 4})
        assert store.lookup("u1", 100).items == [items[1], items[2], items[4]]
        # The refresh that read the two events replaces the list.
        assert store.update_live_users("v1", [("u1", items[1:])], {"u1": 5})
        assert store.lookup("u1", 100).items == items[1:]
        os.killpg(server.pid, signal.SIGKILL)
    blobs = ContainerClient(blob_server.url, container, credential=AZURITE_KEY)
    names = [blob.name for blob in blobs.list_blobs(name_starts_with="landing/api/")]
    assert len(names) == 1 and names[0].endswith(f"{response.json()['request_id']}.jsonl")
    zone = LandingZone(files=blob_files(blob_server, container), settle_s=0)
    assert ingest(zone)["rows_ingested"] == 2
    assert json.loads(blobs.download_blob(names[0]).readall().splitlines()[0])["item_id"] == "i0"


@pytest.fixture(autouse=True)
def no_inherited_tokens(monkeypatch):
    monkeypatch.delenv("RECO_INGEST_TOKEN", raising=False)
