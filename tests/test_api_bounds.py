"""The API's memory and availability are bounded by configuration, not by traffic (issue #15),
and its response cache never serves what a change replaced (issue #14): real servers over
HTTP, real SQLite and Cosmos DB stores, a real unwritable log folder and a real slowloris."""

import gc
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pytest
from litestar.testing import TestClient

from api.app import UNFILTERED, ResponseCache, _render_user, create_app
from api.metrics import TALLY
from reco_dagster.domain.online import served_hit_rate, served_hit_rate_in_chunks
from resources.cosmos_store import CosmosRecommendationStore
from resources.files import LocalFiles
from resources.served_log import ServedListLog
from resources.store import SqliteRecommendationStore
from tests.conftest import running_api
from tests.servers.azure import AZURITE_KEY, COSMOS_EMULATOR_KEY

POPULAR = [{"item_id": f"p{n}", "score": 100.0 - n} for n in range(100)]


def top_100(user: str, version: str = "v1") -> list[dict]:
    return [{"item_id": f"{version}-{user}-{r}", "score": 1 - r / 100} for r in range(100)]


def publish(store, version: str, users: list[str]) -> None:
    store.register(version, {"family": "als"})
    store.write_version(
        version,
        [(user, top_100(user, version)) for user in users],
        POPULAR,
        [(item, [{"item_id": "p1", "score": 0.5}]) for item in ("50", "a/b", "x y?#%")],
    )
    store.activate(version)


@pytest.fixture
def store(data_dir):
    return SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))


def wait_for(condition: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_cache_stays_within_its_bytes_and_unknown_users_share_the_popular_list(data_dir, store):
    users = [f"u{n}" for n in range(300)]
    publish(store, "v1", users)
    with running_api(data_dir, RECO_API_CACHE_MB="1") as url, httpx.Client(base_url=url) as c:
        for user in users:
            body = c.get(f"/users/{user}/recommendations", params={"k": 100}).json()
            assert body["source"] == "personal" and body["items"] == top_100(user)
        for _ in range(1_000):
            stranger = f"stranger-{uuid.uuid4()}"
            body = c.get(f"/users/{stranger}/recommendations", params={"k": 100}).json()
            assert body["user_id"] == stranger and body["items"] == POPULAR
        scraped = c.get("/metrics").text
        # Least recently used out, the latest kept: the last user is still a hit.
        hits = metric(scraped, "reco_api_cache_hits_total")
        c.get(f"/users/{users[-1]}/recommendations", params={"k": 100})
        c.get(f"/users/{users[0]}/recommendations", params={"k": 100})
        again = c.get("/metrics").text
    assert 0 < metric(scraped, "reco_api_cache_bytes") <= 2**20
    # 300 lists of 100 items are about 3 MB: only part of them fit.
    assert 10 < metric(scraped, "reco_api_cache_entries") < 300
    assert metric(again, "reco_api_cache_hits_total") == hits + 1
    assert (
        metric(again, "reco_api_cache_misses_total")
        == metric(scraped, "reco_api_cache_misses_total") + 1
    )


def test_cached_answers_are_not_walked_by_the_garbage_collector(data_dir, store):
    """A full collection walks every object the collector tracks: a cache of hundreds of
    thousands of answers must hold none, or the API stalls under a million users' churn."""
    publish(store, "v1", ["u1", "u2"])
    with TestClient(create_app(store)) as client:
        for path in (
            "/users/u1/recommendations",
            "/users/u2/recommendations?k=5&category=none&include_unavailable=true",
            "/users/stranger/recommendations",
            "/items/50/similar",
        ):
            assert client.get(path).status_code == 200
        gc.collect()
        cached = list(TALLY.cache.items())
    kinds = {type(entry).__name__ for _, entry in cached}
    assert {"Rendered", "PopularPart"} <= kinds
    tracked = [
        (key, type(entry).__name__)
        for key, entry in cached
        if type(entry).__name__ != "Listed" and (gc.is_tracked(key) or gc.is_tracked(entry))
    ]
    assert tracked == []


def test_ids_with_any_character_are_served_by_query_and_head_works_like_get(data_dir, store):
    odd = ["a/b", "x y?#%", "../etc", "ünï/cødé", "+plus&amp=1"]
    publish(store, "v1", ["196", *odd])
    with running_api(data_dir) as url, httpx.Client(base_url=url) as client:
        for user in odd:
            # httpx percent-encodes query values, as clients must (README: "Any id").
            body = client.get("/recommendations", params={"user_id": user, "k": 3}).json()
            assert body["user_id"] == user and body["source"] == "personal"
            assert body["items"] == top_100(user)[:3]
        for item in ("a/b", "x y?#%"):
            body = client.get("/similar", params={"item_id": item}).json()
            assert body["item_id"] == item and body["items"][0]["item_id"] == "p1"
        assert client.get("/recommendations").status_code == 400
        assert client.get("/recommendations", params={"user_id": ""}).status_code == 400
        assert client.get("/similar", params={"item_id": "nope"}).status_code == 404
        assert client.get("/recommendations", params={"user_id": "x" * 257}).status_code == 400

        for path in (
            "/users/196/recommendations?k=5",
            "/recommendations?user_id=a%2Fb",
            "/items/50/similar",
            "/similar?item_id=a%2Fb",
            "/health",
            "/models",
            "/models/v1",
            "/metrics",
            "/schema/openapi.json",
        ):
            got, head = client.get(path), client.head(path)
            assert (head.status_code, got.status_code) == (200, 200), path
            assert head.content == b"", path
            if path != "/metrics":  # /metrics changes between the two requests
                assert head.headers["content-length"] == got.headers["content-length"], path
        assert client.head("/users/196/recommendations?k=0").status_code == 400
        assert client.post("/users/196/recommendations").status_code == 405
        scraped = client.get("/metrics").text
    route = 'route="/users/{user_id}/recommendations"'
    assert f'reco_api_requests_total{{method="HEAD",{route},status="200"}} 1.0' in scraped


def test_metric_labels_come_from_a_fixed_set_of_methods_and_routes(data_dir, store):
    publish(store, "v1", ["196"])
    with running_api(data_dir) as url, httpx.Client(base_url=url) as client:
        for n in range(50):
            client.request(f"BREW{n}", "/users/196/recommendations")
            client.get(f"/nowhere/{n}")
        client.get("/users/196/recommendations")
        scraped = client.get("/metrics").text
    methods = set(re.findall(r'reco_api_requests_total\{method="([^"]+)"', scraped))
    routes = set(re.findall(r'reco_api_requests_total\{[^}]*route="([^"]+)"', scraped))
    assert methods == {"GET", "other"}
    # (the schema: running_api waits for it)
    assert routes == {"/users/{user_id}/recommendations", "/schema/openapi.json", "other"}
    assert 'method="other",route="other",status="405"} 50.0' in scraped
    assert 'method="GET",route="other",status="404"} 50.0' in scraped


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
def test_half_sent_requests_do_not_stall_the_api(data_dir, store, server):
    """1,100 connections dribbling header lines (slowloris) while a client keeps asking."""
    publish(store, "v1", ["196"])
    timeout_s = 2.0
    with running_api(
        data_dir, RECO_API_SERVER=server, RECO_API_HEADER_TIMEOUT_S=str(timeout_s)
    ) as url:
        port = int(url.rsplit(":", 1)[1])
        attackers = []
        for _ in range(1_100):
            attacker = socket.create_connection(("127.0.0.1", port))
            attacker.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            attackers.append(attacker)
        waits = []
        started = time.monotonic()
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() - started < timeout_s + 1:
                for attacker in attackers:
                    with suppress(OSError):  # closed by the server: the deadline at work
                        attacker.sendall(b"X-Slow: 1\r\n")
                asked = time.monotonic()
                response = client.get("/users/196/recommendations")
                waits.append(time.monotonic() - asked)
                assert response.status_code == 200
                time.sleep(0.1)
        assert max(waits) < 1.0, waits

        # Every half-sent request is cut off, at the deadline not at the attacker's pace.
        def closed(attacker: socket.socket) -> bool:
            attacker.settimeout(10)
            try:
                while attacker.recv(65536):  # a 408 answer, if any, then the end
                    pass
            except ConnectionResetError:
                pass
            return True

        assert all(closed(attacker) for attacker in attackers)
        assert time.monotonic() - started < timeout_s + 10
        for attacker in attackers:
            attacker.close()


def test_the_served_log_survives_an_unwritable_folder_and_bounds_its_buffer(data_dir, store):
    publish(store, "v1", ["196"])
    blocker = data_dir / "served"
    blocker.write_text("a file where the log's folder should be\n")
    with running_api(data_dir, RECO_SERVED_BUFFER="50") as url, httpx.Client(base_url=url) as c:
        for n in range(80):
            assert c.get(f"/users/u{n}/recommendations").status_code == 200
        wait_for(lambda: metric(c.get("/metrics").text, "reco_api_served_log_write_errors_total"))
        assert metric(c.get("/metrics").text, "reco_api_served_log_dropped_total") == 30
        blocker.unlink()
        logged = lambda: [  # noqa: E731
            json.loads(line)[1]
            for path in sorted(blocker.glob("served-*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        wait_for(lambda: len(logged()) == 50)
        assert logged() == [f"u{n}" for n in range(30, 80)]  # the oldest were dropped
        c.get("/users/u80/recommendations")
        wait_for(lambda: len(logged()) == 51)  # the flush loop lives on
        assert metric(c.get("/metrics").text, "reco_api_served_log_dropped_total") == 30


def test_served_log_files_older_than_the_retention_are_deleted(data_dir, store):
    publish(store, "v1", ["196"])
    folder = data_dir / "served"
    folder.mkdir()
    now = datetime.now(UTC)
    old, recent = (
        folder / f"served-{(now - timedelta(days=days)):%Y%m%d%H}.jsonl" for days in (31, 29)
    )
    for path in (old, recent, folder / "notes.txt"):
        path.write_text("[]\n")
    with running_api(data_dir, RECO_SERVED_RETENTION_DAYS="30") as url:
        httpx.get(f"{url}/users/196/recommendations")
        wait_for(lambda: not old.exists())
    assert recent.exists() and (folder / "notes.txt").exists()
    assert len(list(folder.glob("served-*.jsonl"))) == 2  # the recent one and this hour's


def test_a_response_rendered_before_a_change_is_not_cached_after_it(cosmos):
    """Cosmos DB lookups run in threads: one renders the old list, another thread sees the
    switch meanwhile, then the first one finishes. Its response must not be kept."""
    store = CosmosRecommendationStore(
        endpoint=cosmos.url, key=COSMOS_EMULATOR_KEY, database=f"t{uuid.uuid4().hex}"
    )
    publish(store, "v1", ["196"])
    store.register("v2", {"family": "als"})
    store.write_version("v2", [("196", top_100("196", "v2"))], POPULAR)
    cache = ResponseCache(store, max_bytes=2**20)
    key = ("user", "196", 10, UNFILTERED)
    rendered_old, go_on = threading.Event(), threading.Event()
    answers: dict[str, str] = {}

    def render_then_wait(generation: int):
        rendered = _render_user(cache, generation, "196", 10, None, UNFILTERED)
        rendered_old.set()
        assert go_on.wait(30)
        return rendered

    def slow_request() -> None:
        answers["slow"] = cache.get(key, render_then_wait).version

    slow = threading.Thread(target=slow_request)
    slow.start()
    assert rendered_old.wait(30)
    store.activate("v2")
    time.sleep(store.change_check_interval_s)  # the cache's documented bound
    answers["after"] = cache.get(
        key, lambda g: _render_user(cache, g, "196", 10, None, UNFILTERED)
    ).version
    go_on.set()
    slow.join()
    assert answers == {"slow": "v1", "after": "v2"}  # each as of when it read the store
    later = cache.get(key, lambda g: _render_user(cache, g, "196", 10, None, UNFILTERED))
    assert later.version == "v2" and json.loads(later.body)["items"][0]["item_id"] == ("v2-196-0")


def test_network_store_calls_do_not_block_the_event_loop(cosmos, blob_server, data_dir):
    database = f"t{uuid.uuid4().hex}"
    store = CosmosRecommendationStore(
        endpoint=cosmos.url, key=COSMOS_EMULATOR_KEY, database=database
    )
    publish(store, "v1", ["196"])
    azure = {
        "RECO_DEPLOYMENT": "azure",
        "RECO_COSMOS_ENDPOINT": cosmos.url,
        "RECO_COSMOS_KEY": COSMOS_EMULATOR_KEY,
        "RECO_COSMOS_DATABASE": database,
        # The azure deployment's API writes POST /events into Blob Storage: it needs it.
        "RECO_BLOB_ACCOUNT_URL": blob_server.url,
        "RECO_BLOB_KEY": AZURITE_KEY,
    }
    with running_api(data_dir, **azure) as url:
        assert httpx.get(f"{url}/health").json()["model_version"] == "v1"
        answers: dict[str, int] = {}
        cosmos.freeze()  # the store's calls now hang, as across a network that went away
        try:
            calls = [
                threading.Thread(
                    target=lambda path=path: answers.update(
                        {path: httpx.get(f"{url}{path}", timeout=120).status_code}
                    )
                )
                for path in ("/health", "/models", "/models/v1")
            ]
            for call in calls:
                call.start()
            time.sleep(0.5)  # they are waiting on the store
            asked = time.monotonic()
            assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
            assert time.monotonic() - asked < 1.0
            assert answers == {}
        finally:
            cosmos.thaw()
        for call in calls:
            call.join()
    assert answers == {"/health": 200, "/models": 200, "/models/v1": 200}


def test_online_evaluation_in_chunks_answers_as_over_the_whole_log(data_dir):
    served_log = ServedListLog(files=LocalFiles(root=str(data_dir)))
    folder = data_dir / "served"
    folder.mkdir(parents=True)
    start = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    records = [
        [
            start + 600 * n,
            f"u{n % 7}",
            [None, "control", "treatment"][n % 3],
            ["v1", "v2"][n % 2],
            [f"i{(n + r) % 9}" for r in range(3)],
        ]
        for n in range(60)
    ]
    for record in records:  # ten minutes apart: 10 hourly files
        path = folder / f"served-{datetime.fromtimestamp(record[0], UTC):%Y%m%d%H}.jsonl"
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    with path.open("a") as handle:
        handle.write('[1, "half a line the API is still writing')
    events = pd.DataFrame(
        {
            "user_id": [f"u{n % 7}" for n in range(200)],
            "item_id": [f"i{n % 9}" for n in range(200)],
            "timestamp": [int(start) + 170 * n for n in range(200)],
        }
    )
    whole = pd.concat(served_log.served_lists())
    assert len(whole) == 60
    expected = served_hit_rate(whole, events, window_s=1_800)
    chunks = served_log.served_lists(chunk_rows=4)
    chunked = served_hit_rate_in_chunks(chunks, events, window_s=1_800)
    pd.testing.assert_frame_equal(chunked, expected)
    assert expected["hit_rate"].min() > 0 and expected["hit_rate"].max() < 1
