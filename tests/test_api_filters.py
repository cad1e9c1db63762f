"""Request-time filters over HTTP, against the real API process and a real SQLite store:
exclude=, category=, include_unavailable=, the fill from the cold-start list, the trending and
popular endpoints, and a catalog change that reaches a running API without a retrain."""

import time

import httpx
import pandas as pd
import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context, materialize

from assets.prepare import item_catalog
from assets.publish import published_catalog
from reco_dagster.automation import catalog_sensor
from resources.lake_io import LakeIOManager
from resources.landing_zone import LandingZone
from resources.store import SqliteRecommendationStore
from tests.conftest import live_world, running_api


def item(n: int) -> dict:
    return {"item_id": f"i{n}", "score": round(1.0 - n / 100, 2), "title": f"Item {n}"}


def entry(n: int, available: bool = True) -> dict:
    categories = ["shoes"] if n % 2 == 0 else ["hats"]
    if n == 7 or 31 <= n <= 35:
        categories.append("bags")
    return {
        "item_id": f"i{n}",
        "title": f"Item {n}",
        "categories": categories,
        "available": available,
        "attributes": {},
    }


CATALOG = [entry(n, available=n not in (1, 32)) for n in range(40)]
COLD_START = [item(n) for n in (35, 34, 33, 32, 31, 30, 0, 2)]
NAMED = {"trending": [item(n) for n in (39, 38, 1, 37)], "popular": [item(n) for n in range(4)]}


@pytest.fixture
def store(data_dir):
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    store.register("v1", {"family": "als"})
    store.write_version(
        "v1",
        [("196", [item(n) for n in range(30)])],
        COLD_START,
        [("i0", [item(n) for n in (1, 2, 3, 4)])],
        item_lists=NAMED,
    )
    store.activate("v1")
    store.write_catalog(CATALOG, "r1", read_at=1.0)
    return store


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [entry["item_id"] for entry in response.json()["items"]]


def test_each_filter_picks_from_the_precomputed_list(data_dir, store):
    with running_api(data_dir) as url, httpx.Client(base_url=url) as client:

        def mine(**params) -> httpx.Response:
            return client.get("/users/196/recommendations", params=params)

        default = mine(k=5).json()
        assert [i["item_id"] for i in default["items"]] == ["i0", "i2", "i3", "i4", "i5"]
        assert (default["source"], default["filled"]) == ("personal", 0)
        assert default["items"][0] == item(0)
        assert ids(mine(k=3, include_unavailable="true")) == ["i0", "i1", "i2"]
        assert ids(mine(k=3, category="hats")) == ["i3", "i5", "i7"]
        assert ids(mine(k=2, category="hats", include_unavailable="true")) == ["i1", "i3"]
        assert ids(mine(k=4, category=["shoes", "bags"])) == ["i0", "i2", "i4", "i6"]
        assert ids(mine(k=3, category=["bags", "shoes"])) == ids(mine(k=3, category="shoes"))
        assert ids(mine(k=3, exclude=["i0", "i2"])) == ["i3", "i4", "i5"]
        assert ids(mine(k=3, category="no such category")) == []
        by_query = client.get("/recommendations", params={"user_id": "196", "category": "hats"})
        assert ids(by_query)[:2] == ["i3", "i5"]
        # Unknown users get the cold-start list under the same filters.
        stranger = client.get("/users/nobody/recommendations", params={"category": "bags"})
        assert stranger.json()["source"] == "popular"
        assert ids(stranger) == ["i35", "i34", "i33", "i31"]
        assert ids(client.get("/users/nobody/recommendations", params={"k": 2})) == ["i35", "i34"]
        # Similar items are filtered too (no fill).
        assert ids(client.get("/items/i0/similar", params={"k": 3})) == ["i2", "i3", "i4"]
        assert ids(client.get("/items/i0/similar", params={"category": "shoes"})) == ["i2", "i4"]
        similar = client.get("/similar", params={"item_id": "i0", "include_unavailable": True})
        assert ids(similar) == ["i1", "i2", "i3", "i4"]
        # Cached answers are the same answers.
        assert ids(mine(k=3, category="hats")) == ["i3", "i5", "i7"]

        too_many = mine(exclude=[f"x{n}" for n in range(501)])
        assert too_many.status_code == 400 and "exclude" in too_many.text
        assert mine(category=[f"c{n}" for n in range(51)]).status_code == 400
        assert mine(include_unavailable="maybe").status_code == 400


def test_what_filters_leave_out_is_filled_from_the_cold_start_list(data_dir, store):
    with running_api(data_dir) as url, httpx.Client(base_url=url) as client:
        bags = client.get("/users/196/recommendations", params={"k": 4, "category": "bags"})
        # i7 is the user's only bag; i32 is unavailable; nothing is given twice.
        assert ids(bags) == ["i7", "i35", "i34", "i33"]
        assert bags.json()["filled"] == 3
        excluded = client.get(
            "/users/196/recommendations", params={"k": 4, "category": "bags", "exclude": "i34"}
        )
        assert ids(excluded) == ["i7", "i35", "i33", "i31"]
        # Shoes from the cold-start list, after the user's own: none repeated.
        shoes = client.get("/users/196/recommendations", params={"k": 17, "category": "shoes"})
        assert ids(shoes) == [f"i{n}" for n in range(0, 30, 2)] + ["i34", "i30"]
        assert shoes.json()["filled"] == 2


def test_the_trending_and_popular_lists_are_endpoints_with_the_same_filters(data_dir, store):
    with running_api(data_dir) as url, httpx.Client(base_url=url) as client:
        trending = client.get("/items/trending", params={"k": 3})
        assert trending.json() == {"model_version": "v1", "items": [item(39), item(38), item(37)]}
        assert ids(client.get("/items/trending", params={"category": "hats"})) == ["i39", "i37"]
        assert ids(client.get("/items/popular", params={"k": 2})) == ["i0", "i2"]
        everything = {"k": 2, "include_unavailable": True}
        assert ids(client.get("/items/popular", params=everything)) == ["i0", "i1"]
        assert ids(client.get("/items/popular", params={"exclude": ["i0", "i3"]})) == ["i2"]
        assert client.get("/items/popular", params={"k": 0}).status_code == 400

        # A version published before these lists existed says so.
        store.register("v0", {"family": "als"})
        store.write_version("v0", [("196", [item(0)])], COLD_START)
        store.activate("v0")
        time.sleep(store.change_check_interval_s)
        missing = client.get("/items/trending")
        assert missing.status_code == 404 and "no trending list" in missing.text


def test_the_schema_documents_every_filter(data_dir, store):
    with running_api(data_dir) as url:
        schema = httpx.get(f"{url}/schema/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/users/{user_id}/recommendations",
        "/recommendations",
        "/items/{item_id}/similar",
        "/similar",
        "/items/trending",
        "/items/popular",
    ):
        documented = {p["name"]: p for p in paths[path]["get"]["parameters"]}
        for name in ("k", "exclude", "category", "include_unavailable"):
            assert documented[name]["description"], (path, name)
    answer = schema["components"]["schemas"]["Recommendations"]["properties"]
    assert "cold-start list" in answer["filled"]["description"]


def test_a_catalog_change_reaches_a_running_api_without_a_retrain(data_dir, store):
    with running_api(data_dir) as url, httpx.Client(base_url=url) as client:

        def everywhere() -> set[str]:
            """Every item id served by default, on every route."""
            served = set()
            for path, params in (
                ("/users/196/recommendations", {"k": 100}),
                ("/users/nobody/recommendations", {"k": 100}),
                ("/items/i0/similar", {"k": 100}),
                ("/items/trending", {"k": 100}),
                ("/items/popular", {"k": 100}),
            ):
                served |= set(ids(client.get(path, params=params)))
            return served

        assert "i2" in everywhere() and "i1" not in everywhere()
        # i2 is sold out, i1 is back: a new catalog, no new model version.
        changed = [entry(n, available=n not in (2, 32)) for n in range(40)]
        assert store.write_catalog(changed, "r2", read_at=2.0) == "written"
        time.sleep(store.change_check_interval_s)  # the documented bound
        served = everywhere()
        assert "i2" not in served and "i1" in served
        assert client.get("/health").json()["model_version"] == "v1"


def test_the_catalog_assets_publish_catalog_files_to_the_store(data_dir):
    zone, _, store, _, version = live_world(data_dir)
    catalog = data_dir / "catalog"
    catalog.mkdir()
    pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(12)],
            "title": [f"Item {n}" for n in range(12)],
            "categories": ["even" if n % 2 == 0 else "odd" for n in range(12)],
        }
    ).to_csv(catalog / "items.csv", index=False)
    resources = {
        "landing_zone": zone,
        "store": store,
        "io_manager": LakeIOManager(files=zone.files),
    }
    assert materialize([item_catalog, published_catalog], resources=resources).success
    assert len(store.catalog().entries) == 12
    with running_api(data_dir) as url:

        def served(**params) -> list[str]:
            return ids(httpx.get(f"{url}/users/u1/recommendations", params={"k": 100, **params}))

        before = served()
        sold_out = before[0]
        parity = "odd" if int(sold_out[1:]) % 2 else "even"
        assert served(category=parity) == [
            i for i in before if (int(i[1:]) % 2) == (parity == "odd")
        ]
        # A later file says the first item is sold out; the catalog's assets publish it.
        (catalog / "stock.csv").write_text(f"item_id,available\n{sold_out},false\n")
        assert materialize([item_catalog, published_catalog], resources=resources).success
        time.sleep(store.change_check_interval_s)
        after = served()
        assert sold_out not in after and set(before) - {sold_out} <= set(after)
        assert store.live_version() == version


def test_the_catalog_sensor_asks_for_a_publish_whenever_the_files_change(data_dir):
    zone, *_ = live_world(data_dir)
    instance = DagsterInstance.ephemeral()

    def evaluate(cursor: str | None, settle_s: float = 0.0):
        zone_now = LandingZone(files=zone.files, settle_s=settle_s)
        # The landing zone holds a nested resource: Dagster opens it inside a context manager.
        with build_sensor_context(
            cursor=cursor, instance=instance, resources={"landing_zone": zone_now}
        ) as context:
            return catalog_sensor(context)

    nothing = evaluate(None)
    assert isinstance(nothing, SkipReason) and "no files" in nothing.skip_message
    (data_dir / "catalog").mkdir()
    (data_dir / "catalog" / "items.csv").write_text("item_id,title\ni1,One\n")
    assert "still being written" in evaluate(None, settle_s=60).skip_message
    first = evaluate(None)
    assert len(first.run_requests) == 1
    unchanged = evaluate(first.cursor)
    assert isinstance(unchanged, SkipReason) and "as it was" in unchanged.skip_message
    (data_dir / "catalog" / "_half-written.csv").write_text("item_id\n")
    assert isinstance(evaluate(first.cursor), SkipReason)
    (data_dir / "catalog" / "stock.csv").write_text("item_id,available\ni1,false\n")
    second = evaluate(first.cursor)
    (data_dir / "catalog" / "stock.csv").unlink()
    third = evaluate(second.cursor)  # back to the first listing: published again
    keys = [result.run_requests[0].run_key for result in (first, second, third)]
    assert len(set(keys)) == 3
