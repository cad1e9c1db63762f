"""Forgetting a user (issue #16, part 5): ingestion leaves their events out, the API deletes
their lists and lists the deletions, and the erasure takes them out of every file."""

import json
import os
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from azure.cosmos import CosmosClient
from dagster import AssetKey, RunRequest, SkipReason, build_sensor_context, materialize

from assets.ingest import erasure
from reco_dagster import definitions
from reco_dagster.automation import erasure_pending
from reco_dagster.domain.models import FactorModel
from reco_dagster.domain.synthetic import synthetic_events
from resources.cosmos_store import FORGOTTEN, MODELS, SIMILAR, USERS, CosmosRecommendationStore
from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.landing_zone import LandingZone
from resources.model_archive import ModelArchive
from resources.served_log import ServedListLog
from resources.store import SqliteRecommendationStore
from tests.conftest import (
    REPO,
    azure_env,
    blob_files,
    dagster_job,
    land,
    live_world,
    run_batch_retrain,
    running_api,
)
from tests.servers.azure import COSMOS_EMULATOR_KEY
from tests.test_ingest import ingest
from tests.test_micro_batch import run

GONE = "forget-me-7f3a"
"""A user id no other text contains, so that a byte search finds every copy of it."""


def events(*users: str, rating: float = 4.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": list(users),
            "item_id": [f"i{n}" for n in range(len(users))],
            "rating": rating,
            "timestamp": 1_700_000_000 + pd.RangeIndex(len(users)),
        }
    )


def test_ingestion_leaves_a_forgotten_users_rows_out_and_their_erasure_pending_again(data_dir):
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    key = store.forget_user(GONE).tombstone.user_key
    store.mark_erased([key], datetime.now(UTC).isoformat())
    land(data_dir, "day.csv", pd.concat([events(GONE, "u1"), events(GONE, rating=99.0)]))
    files = LocalFiles(root=str(data_dir))
    metadata = ingest(LandingZone(files=files, settle_s=0), store)
    assert (metadata["forgotten_user_rows"], metadata["rows_ingested"]) == (2, 1)
    assert metadata["rows_quarantined"] == 0
    history = EventHistory(files=files)
    assert history.all_events()["user_id"].tolist() == ["u1"]
    [entry] = history.ingested().values()
    assert entry["forgotten_rows"] == 2
    [tombstone] = store.tombstones()
    assert (tombstone.state, tombstone.user_id) == ("pending", GONE)


def test_a_user_forgotten_while_ingestion_reads_their_file_is_taken_back_out(data_dir, monkeypatch):
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    land(data_dir, "day.csv", events(GONE, "u1", GONE))
    record = EventHistory.record_ingested

    def recorded_then_forgotten(history, *args):
        record(history, *args)
        store.forget_user(GONE)

    monkeypatch.setattr(EventHistory, "record_ingested", recorded_then_forgotten)
    files = LocalFiles(root=str(data_dir))
    assert ingest(LandingZone(files=files, settle_s=0), store)["rows_ingested"] == 3
    history = EventHistory(files=files)
    assert history.all_events()["user_id"].tolist() == ["u1"]
    assert [entry["forgotten_rows"] for entry in history.ingested().values()] == [2]
    assert store.tombstones()[0].pending_since > store.tombstones()[0].requested_at


ADMIN = {"Authorization": "Bearer admin-secret"}
REPLICA = {"RECO_ADMIN_TOKEN": "admin-secret", "RECO_SERVED_ERASE_INTERVAL_S": "0.2"}


def served_users(data_dir: Path) -> list[str]:
    lines = b"".join(path.read_bytes() for path in (data_dir / "served").glob("served-*.jsonl"))
    return [json.loads(line)[1] for line in lines.splitlines()]


def recommended(base_url: str, user: str) -> dict:
    response = httpx.get(f"{base_url}/recommendations", params={"user_id": user})
    assert response.status_code == 200
    return response.json()


def test_forgetting_and_the_deletions_need_the_admin_token(data_dir):
    with running_api(data_dir) as base_url:
        refused = httpx.delete(f"{base_url}/users/u1", headers=ADMIN)
        assert refused.status_code == 403 and "RECO_ADMIN_TOKEN is not set" in refused.text
    with running_api(data_dir, **REPLICA) as base_url:
        wrong = {"Authorization": "Bearer wrong"}
        for method, path in (
            ("DELETE", "/users/u1"),
            ("DELETE", "/users?user_id=u1"),
            ("GET", "/deletions"),
            ("DELETE", "/deletions/u1"),
        ):
            assert httpx.request(method, base_url + path).status_code == 401
            assert httpx.request(method, base_url + path, headers=wrong).status_code == 403
        assert httpx.get(f"{base_url}/deletions", headers=ADMIN).json() == []


def test_a_forgotten_user_gets_the_popular_list_on_every_replica_at_once_and_is_not_logged(
    data_dir,
):
    _, _, store, _, version = live_world(data_dir)
    store.update_live_users(version, [("a/b", [{"item_id": "i1", "score": 1.0}])], {"a/b": 1})
    with running_api(data_dir, **REPLICA) as one, running_api(data_dir, **REPLICA) as other:
        for base_url in (one, other):  # in both replicas' caches, and in the served log
            for user in ("u1", "u2", "a/b"):
                assert recommended(base_url, user)["source"] == "personal"
        response = httpx.delete(f"{one}/users/u1", headers=ADMIN)
        assert response.status_code == 202
        receipt = response.json()
        assert (receipt["lists_deleted"], receipt["versions"]) == (1, [version])
        deletion = receipt["deletion"]
        assert (deletion["user_id"], deletion["state"], deletion["erased_at"]) == (
            "u1",
            "pending",
            None,
        )
        for base_url in (other, one):
            answer = recommended(base_url, "u1")
            assert (answer["source"], answer["items"][0]["item_id"]) == ("popular", "i0")
            assert recommended(base_url, "u2")["source"] == "personal"
        # Ids a path cannot carry, by query.
        by_query = httpx.delete(f"{other}/users", params={"user_id": "a/b"}, headers=ADMIN)
        assert by_query.status_code == 202 and recommended(one, "a/b")["source"] == "popular"
        listed = httpx.get(f"{other}/deletions", headers=ADMIN).json()
        assert [(d["user_id"], d["state"]) for d in listed] == [
            ("u1", "pending"),
            ("a/b", "pending"),
        ]
        assert listed[0] == deletion
        for base_url in (one, other):  # a session naming them is not logged either
            session = {"items": ["i1"], "user_id": "u1"}
            assert httpx.post(f"{base_url}/recommendations", json=session).status_code == 200
        # Each replica erases what it logged of them, and logs them no more.
        time.sleep(1.0)
        assert {"u1", "a/b"}.isdisjoint(served_users(data_dir))
        assert "u2" in served_users(data_dir)
        # Lifted: their next events count again; their lists do not come back by themselves.
        lifted = httpx.delete(f"{one}/deletions/u1", headers=ADMIN)
        assert lifted.status_code == 200 and lifted.json()["user_key"] == deletion["user_key"]
        assert httpx.delete(f"{one}/deletions/u1", headers=ADMIN).status_code == 404
        assert httpx.get(f"{one}/deletions", headers=ADMIN).json()[0]["user_id"] == "a/b"
        assert recommended(other, "u1")["source"] == "popular"
        time.sleep(0.5)
    assert "u1" in served_users(data_dir)  # a user like any other again


def encodings(text: str) -> list[bytes]:
    """`text` as files hold it: UTF-8, and UTF-32 as numpy keeps strings (a model's ids)."""
    return [text.encode(), text.encode("utf-32-le")]


def files_naming(root: Path, text: str) -> list[str]:
    """Every file under `root` whose bytes hold `text` (a byte search, as `grep -r` does)."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and any(form in path.read_bytes() for form in encodings(text))
    )


def test_after_the_deletion_and_the_erasure_the_id_is_nowhere_in_the_data_dir(data_dir):
    world = live_world(data_dir)
    zone, event_history, store, archive, version = world
    files = zone.files
    land(data_dir, "mixed.csv", pd.concat([events(GONE, "u1", GONE), events(GONE, rating=99)]))
    (data_dir / "landing" / "broken.jsonl").write_text(
        json.dumps({"user_id": "u3", "item_id": "i1", "timestamp": 1_700_000_000})
        + f'\n{{"user_id": "{GONE}", oops\n'
    )
    run(world)
    assert store.lookup(GONE, 5).source == "personal"
    # What the batch job keeps in the lake: tables by user, and fitted models' user side.
    lake = data_dir / "lake"
    pd.DataFrame({"user_id": [GONE, "u1"], "item_id": ["i1", "i2"]}).to_parquet(
        lake / "als_recommendations.parquet"
    )
    fitted = archive.load(version)
    FactorModel(
        fitted.card,
        np.append(fitted.user_ids, GONE),
        fitted.item_ids,
        np.vstack([fitted.user_factors, fitted.user_factors[:1]]),
        fitted.item_factors,
    ).save(_folder(lake / "ease_model"))
    with running_api(data_dir, **REPLICA, RECO_INGEST_TOKEN="ingest") as one:
        assert recommended(one, GONE)["source"] == "personal"
        sent = httpx.post(
            f"{one}/events",
            json=[{"user_id": GONE, "item_id": "i3", "timestamp": 1_700_000_100}],
            headers={"Authorization": "Bearer ingest", "Idempotency-Key": "k-1"},
        )
        assert sent.status_code == 202
        time.sleep(0.5)  # served, and logged
        assert GONE in served_users(data_dir)
        assert httpx.delete(f"{one}/users/{GONE}", headers=ADMIN).status_code == 202
        assert recommended(one, GONE)["source"] == "popular"
        # Their next events: in a landing file, left out of the history and of every list.
        land(data_dir, "later.csv", events(GONE, "u2", GONE))
        assert run(world)["forgotten_user_rows"] == 3  # later.csv's and the one sent
        assert store.lookup(GONE, 5).source == "popular"
        assert len(event_history.user_history([GONE])) == 2  # their erasure is to come
        assert "later.csv" in set(event_history.user_history(["u2"])["source_file"])
        others = event_history.all_events().query("user_id != @GONE")
        # The replica erased its served-list log at the deletion already.
        holding = files_naming(data_dir, GONE)
        assert {name.split("/")[0] for name in holding} == {"landing", "lake", "quarantine"} | {
            "reco.sqlite-wal"
        }
        assert {"lake/ease_model/factors.npz", "landing/broken.jsonl"} <= set(holding)
        erased = materialize(
            [erasure],
            resources={
                "landing_zone": zone,
                "event_history": event_history,
                "served_log": ServedListLog(files=files),
                "store": store,
            },
        )
        assert erased.success
        [deletion] = httpx.get(f"{one}/deletions", headers=ADMIN).json()
        assert (deletion["state"], deletion["user_id"]) == ("erased", None)
        assert deletion["erased_at"] >= deletion["requested_at"]
    assert files_naming(data_dir, GONE) == []
    left = event_history.all_events()
    pd.testing.assert_frame_equal(left.reset_index(drop=True), others.reset_index(drop=True))
    # The rewritten landing files are not ingested again: no event twice.
    assert run(world)["rows_ingested"] == 0


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_sensor_asks_for_forget_users_while_an_erasure_is_pending(data_dir):
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))

    def evaluate():
        return erasure_pending(build_sensor_context(resources={"store": store}))

    assert isinstance(evaluate(), SkipReason)
    key = store.forget_user(GONE).tombstone.user_key
    first = evaluate()
    assert isinstance(first, RunRequest) and first.run_key == evaluate().run_key
    store.reopen_tombstones([GONE])  # their events came again: another run
    assert evaluate().run_key != first.run_key
    store.mark_erased([key], datetime.now(UTC).isoformat())
    assert isinstance(evaluate(), SkipReason)


def test_every_retrain_erases_first_and_forget_users_only_erases():
    graph = definitions.defs.resolve_asset_graph()
    assert AssetKey("erasure") in graph.get(AssetKey("raw_events")).parent_keys
    jobs = {
        name: definitions.defs.resolve_job_def(name) for name in ("batch_retrain", "forget_users")
    }
    assert "erasure" in jobs["batch_retrain"].graph.node_dict
    assert list(jobs["forget_users"].graph.node_dict) == ["erasure"]
    assert jobs["forget_users"].tags["reco/run"] == jobs["batch_retrain"].tags["reco/run"]


def with_a_forgotten_user(frame: pd.DataFrame) -> pd.DataFrame:
    """Synthetic events in which u7 (a user with a real history) is GONE."""
    return frame.assign(user_id=frame["user_id"].replace({"u7": GONE}))


def forget_users_job(data_dir: Path, dagster_home: Path, **env: str) -> None:
    """`dagster job execute -j forget_users`, as a user (or the sensor) runs it."""
    dagster_home.mkdir(exist_ok=True)
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    result = subprocess.run(
        dagster_job("forget_users"),
        cwd=REPO,
        env={
            **os.environ,
            "RECO_DATA_DIR": str(data_dir),
            "DAGSTER_HOME": str(dagster_home),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Erased 1 forgotten user(s)" in result.stderr


def forget_over_http(one: str, other: str, versions: set[str], bound_s: float) -> None:
    """Served and logged by both replicas, sent events through one, forgotten through the
    other; then both answer as for an unknown user (after the store's change bound)."""
    for base_url in (one, other):
        assert recommended(base_url, GONE)["source"] == "personal"
    sent = httpx.post(
        f"{one}/events",
        json=[{"user_id": GONE, "item_id": "i3", "timestamp": 1_700_000_100}],
        headers={"Authorization": "Bearer ingest", "Idempotency-Key": "order-1"},
    )
    assert sent.status_code == 202
    forgotten = httpx.delete(f"{other}/users/{GONE}", headers=ADMIN)
    assert forgotten.status_code == 202 and set(forgotten.json()["versions"]) == versions
    time.sleep(bound_s)
    for base_url in (one, other):
        answer = recommended(base_url, GONE)
        assert (answer["source"], answer["user_id"]) == ("popular", GONE)
        assert recommended(base_url, "u8")["source"] == "personal"


@pytest.mark.slow
def test_the_batch_flow_forgets_a_user_everywhere_on_sqlite(tmp_path):
    """Trained on, served, logged, sent events, forgotten; then their next file is left out,
    and forget_users leaves no byte of their id in the data dir, Dagster's run history in it
    (where scripts/env.sh puts it) included."""
    data_dir = tmp_path / "data"
    dagster_home = data_dir / "dagster_home"
    land(data_dir, "history.csv", with_a_forgotten_user(synthetic_events(300, 400, 40, seed=3)))
    land(data_dir, "bad.csv", events(GONE, "u8", rating=99))
    result = run_batch_retrain(data_dir, data_dir)  # its run history under the data dir too
    assert result.returncode == 0, result.stderr[-3000:]
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    versions = {v.version for v in store.versions() if v.has_lists}
    assert len(versions) == 2
    env = {**REPLICA, "RECO_INGEST_TOKEN": "ingest"}
    with running_api(data_dir, **env) as one, running_api(data_dir, **env) as other:
        forget_over_http(one, other, versions, bound_s=0.01)
        land(data_dir, "later.csv", events(GONE, "u8", GONE))
        files = LocalFiles(root=str(data_dir))
        zone, history = LandingZone(files=files), EventHistory(files=files)
        metadata = run((zone, history, store, ModelArchive(files=files), None))
        assert metadata["forgotten_user_rows"] == 3  # later.csv's and the one sent
        assert store.lookup(GONE, 10).source == "popular"
        holding = files_naming(data_dir, GONE)
        assert {
            "lake/als_model/user_ids.parquet",
            "lake/interactions.parquet",
            "lake/als_recommendations.parquet",
            "landing/bad.csv",
            "landing/later.csv",
            "reco.sqlite",
        } <= set(holding)
        assert any(name.startswith("lake/history-by-user/") for name in holding)
        assert any(name.startswith("landing/api/") for name in holding)
        forget_users_job(data_dir, dagster_home)
        [deletion] = httpx.get(f"{one}/deletions", headers=ADMIN).json()
        assert (deletion["state"], deletion["user_id"]) == ("erased", None)
        assert recommended(other, "u8")["source"] == "personal"
    assert files_naming(data_dir, GONE) == []
    assert history.user_history([GONE]).empty and len(history.user_history(["u8"])) > 3
    assert store.lookup(GONE, 10).forgotten


@pytest.mark.slow
def test_the_batch_flow_forgets_a_user_everywhere_on_blob_storage_and_cosmos_db(
    blob_server, cosmos, tmp_path
):
    """The same on the azure deployment: no blob of the container and no document of the
    database names them afterwards, nor either API replica's own disk (its served-list
    log)."""
    container, database = f"t{uuid.uuid4().hex}", f"t{uuid.uuid4().hex}"
    files = blob_files(blob_server, container)
    zone = LandingZone(files=files)
    synthetic = with_a_forgotten_user(synthetic_events(300, 400, 40, seed=3))
    zone.land("2026/11/history.parquet", synthetic.to_parquet())
    zone.land("bad.csv", events(GONE, "u8", rating=99).to_csv(index=False).encode())
    azure = azure_env(blob_server, cosmos, container, database)
    result = run_batch_retrain(tmp_path / "data", tmp_path, **azure)
    assert result.returncode == 0, result.stderr[-3000:]
    store = CosmosRecommendationStore(
        endpoint=cosmos.url, key=COSMOS_EMULATOR_KEY, database=database
    )
    versions = {v.version for v in store.versions() if v.has_lists}
    assert len(versions) == 2
    env = {**azure, **REPLICA, "RECO_INGEST_TOKEN": "ingest"}
    disks = tmp_path / "api-one", tmp_path / "api-two"  # each replica's own served-list log
    with running_api(disks[0], **env) as one, running_api(disks[1], **env) as other:
        forget_over_http(one, other, versions, store.change_check_interval_s)
        zone.land("later.csv", events(GONE, "u8", GONE).to_csv(index=False).encode())
        history = EventHistory(files=files)
        metadata = run(
            (LandingZone(files=files, settle_s=0), history, store, ModelArchive(files=files), None)
        )
        assert metadata["forgotten_user_rows"] == 3  # later.csv's and the one sent
        assert store.lookup(GONE, 10).source == "popular"
        assert any(GONE.encode() in files.read(blob.name) for blob in files.list("lake/"))
        forget_users_job(tmp_path / "data", tmp_path / "dagster_home", **azure)
        [deletion] = httpx.get(f"{one}/deletions", headers=ADMIN).json()
        assert (deletion["state"], deletion["user_id"]) == ("erased", None)
        time.sleep(1.0)  # each replica's erasure of its served-list log
    assert history.user_history([GONE]).empty and len(history.user_history(["u8"])) > 3
    blobs = [blob.name for blob in files.list("")]
    assert len(blobs) > 20
    assert [
        name for name in blobs if any(form in files.read(name) for form in encodings(GONE))
    ] == []
    client = CosmosClient(cosmos.url, COSMOS_EMULATOR_KEY, enable_endpoint_discovery=False)
    for container_name in (USERS, SIMILAR, MODELS, FORGOTTEN):
        documents = client.get_database_client(database).get_container_client(container_name)
        everything = json.dumps(
            list(documents.query_items("SELECT * FROM c", enable_cross_partition_query=True))
        )
        assert GONE not in everything, container_name
    for disk in disks:
        assert files_naming(disk, GONE) == []
    assert store.lookup(GONE, 10).forgotten


@pytest.fixture(autouse=True)
def no_inherited_tokens(monkeypatch):
    monkeypatch.delenv("RECO_ADMIN_TOKEN", raising=False)
