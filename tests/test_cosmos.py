"""What only Cosmos DB can do to a publish, done by a real cosmosdb-server: throttling, a busy
server, and a server that stops in the middle of a publish; and the catalog and the API's
filters on Azure."""

import threading
import time
import uuid

import httpx
import pytest
from azure.cosmos import ContainerProxy, CosmosClient
from dagster import materialize

from assets.prepare import item_catalog
from assets.publish import published_catalog
from resources.cosmos_store import CATALOG, PURGING, USERS, CosmosRecommendationStore
from resources.lake_io import LakeIOManager
from resources.landing_zone import LandingZone
from tests.conftest import azure_env, blob_files, running_api
from tests.servers.azure import COSMOS_EMULATOR_KEY, Server, cosmosdb_server
from tests.test_store import POPULAR, interleave, lists


def open_store(server: Server, database: str, **settings) -> CosmosRecommendationStore:
    return CosmosRecommendationStore(
        endpoint=server.url, key=COSMOS_EMULATOR_KEY, database=database, **settings
    )


def documents_of(server: Server, database: str, version: str) -> list[str]:
    """The users with a document for `version`, read past the store."""
    client = CosmosClient(server.url, COSMOS_EMULATOR_KEY, enable_endpoint_discovery=False)
    container = client.get_database_client(database).get_container_client(USERS)
    return [
        row["user_id"]
        for row in container.query_items(
            "SELECT c.user_id FROM c WHERE c.id = @v",
            parameters=[{"name": "@v", "value": version}],
            enable_cross_partition_query=True,
        )
    ]


@pytest.mark.parametrize("status", [429, 503])
def test_throttled_and_busy_writes_are_retried_until_every_document_is_in(status):
    with cosmosdb_server(COSMOS_FAULT_EVERY="4", COSMOS_FAULT_STATUS=str(status)) as server:
        store = open_store(server, "reco")
        store.register("v1", {"family": "als"})
        report = store.write_version("v1", lists("v1", users=200), POPULAR)
        store.activate("v1")
        assert report.users == 200 and report.request_units > 0
        assert sorted(documents_of(server, "reco", "v1")) == sorted(f"u{n}" for n in range(200))
        assert all(store.lookup(f"u{n}", 1).source == "personal" for n in range(200))
        if status == 503:  # the SDK retries throttling itself; the store retries the rest
            assert report.retries >= 200 // 4


def test_a_publish_cut_off_by_a_stopped_server_is_rerun_to_completion(cosmos):
    database = f"t{uuid.uuid4().hex}"
    store = open_store(cosmos, database, max_attempts=2, request_timeout_s=1.0)
    store.register("v1", {"family": "als"})
    store.write_version("v1", lists("v1"), POPULAR)
    store.activate("v1")
    store.register("v2", {"family": "als"})
    failure: list[BaseException] = []

    def publish_v2():
        try:
            store.write_version("v2", lists("v2", users=3000), POPULAR)
        except BaseException as error:
            failure.append(error)

    publisher = threading.Thread(target=publish_v2)
    publisher.start()
    deadline = time.monotonic() + 30
    while len(documents_of(cosmos, database, "v2")) < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    cosmos.freeze()
    try:
        publisher.join(timeout=60)
    finally:
        cosmos.thaw()
    assert not publisher.is_alive() and failure, "the publish should fail while the server stops"
    written = len(documents_of(cosmos, database, "v2"))
    assert 100 <= written < 3000

    reader = open_store(cosmos, database)
    assert reader.live_version() == "v1" and not reader.version("v2").has_lists
    assert [item["item_id"] for item in reader.lookup("u5", 2).items] == ["v1-5-0", "v1-5-1"]
    with pytest.raises(Exception, match="no complete lists"):
        reader.activate("v2")

    assert store.write_version("v2", lists("v2", users=3000), POPULAR).users == 3000
    store.activate("v2")
    users = documents_of(cosmos, database, "v2")
    assert len(users) == len(set(users)) == 3000
    assert [item["item_id"] for item in reader.lookup("u2999", 1).items] == ["v2-2999-0"]
    assert sorted(documents_of(cosmos, database, "v1")) == sorted(f"u{n}" for n in range(50))


@pytest.mark.parametrize("user", ["u1", "newcomer"])  # a list to replace, one to create
def test_a_fresher_list_written_between_a_refreshs_read_and_write_is_kept(
    cosmos, monkeypatch, user
):
    database = f"t{uuid.uuid4().hex}"
    store, rival = open_store(cosmos, database), open_store(cosmos, database)
    store.register("v1", {"family": "als"})
    store.write_version("v1", lists("v1"), POPULAR, history_events={"u1": 1})
    store.activate("v1")
    write = "replace_item" if user == "u1" else "create_item"
    interleave(
        monkeypatch,
        ContainerProxy,
        write,
        lambda: rival.update_live_users("v1", [(user, [{"item_id": "fresh"}])], {user: 7}),
        before=True,
        when=lambda proxy, *_: proxy.id == USERS,
    )
    assert store.update_live_users("v1", [(user, [{"item_id": "stale"}])], {user: 5})
    assert store.lookup(user, 1).items == [{"item_id": "fresh"}]


def test_a_rollback_between_a_purges_check_and_its_mark_keeps_the_version(cosmos, monkeypatch):
    database = f"t{uuid.uuid4().hex}"
    store, rival = open_store(cosmos, database), open_store(cosmos, database)
    for version in ("v1", "v2", "v3"):
        store.register(version, {"family": "als"})
        store.write_version(version, lists(version), POPULAR)
        store.activate(version)
    rolled_back = interleave(
        monkeypatch,
        ContainerProxy,
        "replace_item",
        lambda: rival.activate("v1"),
        before=True,
        when=lambda proxy, item, body, **_: body.get("lists") == PURGING,
    )
    assert store.purge_old_versions(keep=1) == []
    assert rolled_back and store.live_version() == "v1"
    assert store.lookup("u7", 1).items[0]["item_id"] == "v1-7-0"


@pytest.mark.parametrize("writer", ["refresh", "publish"])
def test_a_list_written_while_its_user_is_being_forgotten_does_not_survive(
    cosmos, monkeypatch, writer
):
    """The writer checked the tombstones before forget_user wrote one, and writes the user's
    list after forget_user deleted the user's documents: the writer's own look afterwards
    deletes it."""
    database = f"t{uuid.uuid4().hex}"
    store, rival = open_store(cosmos, database), open_store(cosmos, database)
    store.register("v1", {"family": "als"})
    store.write_version("v1", lists("v1"), POPULAR)
    store.activate("v1")
    # Right before the refresh reads u1's list to replace it, or the publish writes it.
    forgotten = interleave(
        monkeypatch,
        ContainerProxy,
        "read_item" if writer == "refresh" else "upsert_item",
        lambda: rival.forget_user("u1"),
        before=True,
        when=lambda proxy, item, *_: (
            proxy.id == USERS and (writer == "refresh" or item["user_id"] == "u1")
        ),
    )
    if writer == "refresh":
        assert store.update_live_users("v1", [("u1", [{"item_id": "late"}])], {"u1": 9})
    else:
        store.register("v2", {"family": "als"})
        store.write_version("v2", lists("v2"), POPULAR)
        store.activate("v2")
    assert forgotten and forgotten[0].versions == ["v1"]
    assert store.lookup("u1", 1).source == "popular"
    assert "u1" not in documents_of(cosmos, database, store.live_version())
    assert store.lookup("u2", 1).source == "personal"


def test_the_catalog_and_the_filters_on_azure(blob_server, cosmos, tmp_path):
    """The catalog's assets read catalog files from Blob Storage and publish them to Cosmos
    DB; the API over Cosmos DB filters by them, and a change reaches it without a retrain."""
    container, database = f"c{uuid.uuid4().hex[:12]}", f"d{uuid.uuid4().hex[:8]}"
    files = blob_files(blob_server, container)
    zone, store = LandingZone(files=files, settle_s=0), open_store(cosmos, database)
    items = [{"item_id": f"i{n}", "score": 10.0 - n} for n in range(6)]
    store.register("v1", {"family": "als"})
    store.write_version(
        "v1",
        [("u1", items)],
        items[::-1],
        [("i0", items[1:])],
        item_lists={"trending": items, "popular": items[::-1]},
    )
    store.activate("v1")
    resources = {"landing_zone": zone, "store": store, "io_manager": LakeIOManager(files=files)}
    zone.add_catalog("items.csv", b"item_id,categories\ni0,a\ni1,b\ni2,a|b\ni3,b\ni4,a\ni5,b\n")
    assert materialize([item_catalog, published_catalog], resources=resources).success
    env = azure_env(blob_server, cosmos, container, database)
    with running_api(tmp_path, **env) as url, httpx.Client(base_url=url) as client:

        def ids(path: str, **params) -> list[str]:
            response = client.get(path, params={"k": 3, **params})
            assert response.status_code == 200, response.text
            return [item["item_id"] for item in response.json()["items"]]

        assert ids("/users/u1/recommendations", category="a") == ["i0", "i2", "i4"]
        assert ids("/users/u1/recommendations", category="b", exclude="i1") == ["i2", "i3", "i5"]
        assert ids("/users/stranger/recommendations", category="a") == ["i4", "i2", "i0"]
        assert ids("/items/i0/similar", category="b") == ["i1", "i2", "i3"]
        assert ids("/items/trending", category="b") == ["i1", "i2", "i3"]
        assert ids("/items/popular", category="a") == ["i4", "i2", "i0"]

        zone.add_catalog("stock.csv", b"item_id,available\ni2,false\n")
        assert materialize([item_catalog, published_catalog], resources=resources).success
        time.sleep(store.change_check_interval_s)  # the documented bound
        assert ids("/users/u1/recommendations", category="a") == ["i0", "i4"]
        assert ids("/items/trending", category="b") == ["i1", "i3", "i5"]
        assert ids("/items/i0/similar", include_unavailable=True) == ["i1", "i2", "i3"]
        assert client.get("/health").json()["model_version"] == "v1"

    # Each write's chunks in a partition of their own: the current and the previous are kept.
    zone.add_catalog("more.csv", b"item_id,available\ni3,false\n")
    assert materialize([item_catalog, published_catalog], resources=resources).success
    chunks = CosmosClient(cosmos.url, COSMOS_EMULATOR_KEY, enable_endpoint_discovery=False)
    catalog = chunks.get_database_client(database).get_container_client(CATALOG)
    generations = {row["generation"] for row in catalog.read_all_items()}
    assert len(generations) == 2
    assert {entry["item_id"] for entry in store.catalog().entries if not entry["available"]} == {
        "i2",
        "i3",
    }
