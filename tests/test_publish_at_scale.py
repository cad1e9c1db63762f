"""Publishing without the driver (#18): the ranked table read a batch at a time, SQLite
writing a generator's lists in transactions of a few users, Cosmos DB taking the lists from
Spark's executors, and the `published` asset doing whichever its store and table allow; the
stores' guarantees (tests/test_store.py) hold throughout."""

import tracemalloc
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
from dagster import AssetSpec, materialize
from dagster_pyspark import LazyPySparkResource

from assets.publish import build_publish
from reco_dagster.domain.exposure import NEW_ITEMS
from reco_dagster.domain.lists import Item, history_marks, ranked_lists, whole_key_batches
from resources.cosmos_store import CosmosRecommendationStore
from resources.files import LocalFiles
from resources.lake_io import LakeIOManager
from resources.lake_tables import read_table, write_parts
from resources.settings import spark_config
from resources.store import SqliteRecommendationStore, VersionNotPublishableError
from tests.test_cosmos import documents_of
from tests.test_store import POPULAR, interleave, lists

TITLES = {f"i{n}": f"Item {n}" for n in range(0, 500, 3)}
SIMILAR = [
    (f"i{n}", [{"item_id": f"i{n + 1}", "score": 0.9}, {"item_id": f"i{n + 2}", "score": 0.8}])
    for n in range(20)
]
NAMED = {"trending": POPULAR, "new_items": [{"item_id": "fresh", "score": 0.0}]}
OTHER_UPSTREAM = ["als_recommendations", "als_evaluation", "als_archived_model"]
"""What `als_published` reads or follows besides the tables each test writes."""


def ranked_table(users: int = 120, depth: int = 12) -> pd.DataFrame:
    """A `<family>_recommendations` table: user_id, item_id, rank, score, new_item, because
    (null for some users), model_version, history_events; sorted by user, then rank."""
    rows = [
        {
            "user_id": f"u{user:04d}",
            "item_id": f"i{(user * 7 + rank) % 500}",
            "rank": rank,
            "score": 1.0 - rank / 100,
            "new_item": rank % 5 == 0,
            "because": None if user % 4 == 0 else [f"h{user % 13}", f"h{rank}"],
            "model_version": "v1",
            "history_events": user % 17 + 1,
        }
        for user in range(users)
        for rank in range(1, depth + 1)
    ]
    return pd.DataFrame(rows)


def in_parts(spark, table: pd.DataFrame, parts: int = 4):
    """The table as Spark's executors would hand it over: every row of a user in one
    partition, by user and rank."""
    frame = spark.createDataFrame(table).repartition(parts, "user_id")
    return frame.sortWithinPartitions("user_id", "rank")


def open_cosmos(cosmos, database: str | None = None) -> CosmosRecommendationStore:
    from tests.servers.azure import COSMOS_EMULATOR_KEY

    return CosmosRecommendationStore(
        endpoint=cosmos.url, key=COSMOS_EMULATOR_KEY, database=database or f"t{uuid.uuid4().hex}"
    )


def test_a_lake_table_is_read_a_batch_at_a_time_and_users_come_out_whole(spark, tmp_path):
    files = LocalFiles(str(tmp_path))
    table = ranked_table()
    lake, _ = write_parts(files, "lake/ranked", in_parts(spark, table))
    assert len(lake.parts) == 4
    batches = list(lake.batches(["user_id", "history_events"], rows=7))
    assert all(len(batch) <= 7 for batch in batches)
    assert all(list(batch.columns) == ["user_id", "history_events"] for batch in batches)
    assert sum(len(batch) for batch in batches) == len(table)
    # Batches of 7 rows cut users of 12 rows: put back together, each user's list is whole.
    got = {
        user: items
        for frame in whole_key_batches(lake.batches(rows=7), "user_id")
        for user, items in ranked_lists(frame, "user_id", TITLES)
    }
    assert got == dict(ranked_lists(table, "user_id", TITLES))
    # A table the driver wrote as one file is read the same way.
    files.write("lake/small.parquet", table.to_parquet(index=False))
    small = read_table(files, "lake/small")
    assert not small.on_executors
    pd.testing.assert_frame_equal(pd.concat(small.batches(rows=50), ignore_index=True), table)


def test_sqlite_writes_a_generators_lists_a_chunk_at_a_time(tmp_path):
    path = str(tmp_path / "reco.sqlite")
    store = SqliteRecommendationStore(path=path, users_per_transaction=100)
    reader = SqliteRecommendationStore(path=path)
    store.register("v1", {"family": "als"})
    store.write_version("v1", lists("v1"), POPULAR)
    store.activate("v1")
    store.register("v2", {"family": "als"})
    seen_mid_write = {}

    def users() -> Iterator[tuple[str, list[Item]]]:
        for n, pair in enumerate(lists("v2", users=1_000)):
            if n == 100:  # asked for the second chunk: the first one's transaction committed
                seen_mid_write["rows"] = count_rows(path, "v2")
                seen_mid_write["has_lists"] = reader.version("v2").has_lists
                with pytest.raises(VersionNotPublishableError, match="no complete lists"):
                    reader.activate("v2")
            if n == 300:
                reader.forget_user("u500")  # between chunks: left out of the later ones
            yield pair

    report = store.write_version("v2", users(), POPULAR, SIMILAR, item_lists=NAMED)
    assert seen_mid_write == {"rows": 100, "has_lists": False}
    assert (report.users, report.documents) == (999, 999 + len(SIMILAR) + len(NAMED) + 1)
    assert reader.lookup("u7", 1).model_version == "v1"  # the live version served meanwhile
    store.activate("v2")
    assert reader.lookup("u999", 1).items[0]["item_id"] == "v2-999-0"
    assert reader.lookup("u500", 1).source == "popular"
    assert reader.similar("i3", 1)[1] == SIMILAR[3][1][:1]
    assert reader.item_list("new_items")[1] == NAMED["new_items"]


def count_rows(path: str, version: str) -> int:
    """A version's user lists, read past the store (another connection)."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        query = "SELECT COUNT(*) FROM user_recommendations WHERE version = ?"
        return connection.execute(query, (version,)).fetchone()[0]


def test_a_sqlite_write_overtaken_by_another_of_the_same_version_stops(tmp_path):
    path = str(tmp_path / "reco.sqlite")
    store = SqliteRecommendationStore(path=path, users_per_transaction=100)
    rival = SqliteRecommendationStore(path=path)
    store.register("v1", {"family": "als"})

    def users() -> Iterator[tuple[str, list[Item]]]:
        for n, pair in enumerate(lists("v1", users=500)):
            if n == 150:
                assert rival.write_version("v1", lists("v1", users=40), POPULAR).users == 40
            yield pair

    with pytest.raises(VersionNotPublishableError, match="written again"):
        store.write_version("v1", users(), POPULAR)
    rival.activate("v1")
    assert count_rows(path, "v1") == 40
    assert rival.lookup("u39", 1).source == "personal"


def test_sqlite_memory_does_not_grow_with_the_users_written(tmp_path):
    """Four times the users, about the same peak: only a chunk's rows are held."""

    def peak_writing(users: int) -> int:
        store = SqliteRecommendationStore(path=str(tmp_path / f"{users}.sqlite"))
        store.register("v1", {"family": "als"})
        generated = (
            (f"u{n}", [{"item_id": f"item-{n}-{r}", "score": 1.0 - r / 100} for r in range(50)])
            for n in range(users)
        )
        tracemalloc.start()
        try:
            store.write_version("v1", generated, POPULAR)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_writing(4_000), peak_writing(16_000)
    assert large < 1.5 * small, (small, large)


def test_cosmos_takes_the_lists_from_sparks_executors_as_the_driver_writes_them(
    spark, cosmos, monkeypatch
):
    table = ranked_table()
    users = sorted(table["user_id"].unique())
    on_executors, on_driver = open_cosmos(cosmos), open_cosmos(cosmos)
    for store in (on_executors, on_driver):
        store.register("v1", {"family": "als"})
        store.forget_user("u0003")
    expected = on_driver.write_version(
        "v1",
        ranked_lists(table, "user_id", TITLES),
        POPULAR,
        SIMILAR,
        history_events=history_marks(table),
        item_lists=NAMED,
    )
    on_driver.forget_user("u0005")
    # An earlier attempt wrote a user this one does not have: deleted once it is done.
    on_executors.write_version("v1", [("ghost", [{"item_id": "i1", "score": 1.0}])], POPULAR)
    # Right after the write reads the tombstones to send to the executors: u0005 is forgotten
    # before their lists are written, and the write's own look afterwards deletes it.
    forgotten_meanwhile = interleave(
        monkeypatch,
        CosmosRecommendationStore,
        "_forgotten_keys",
        lambda: open_cosmos(cosmos, on_executors.database).forget_user("u0005"),
    )
    report = on_executors.write_version_on_executors(
        "v1", in_parts(spark, table), TITLES, POPULAR, SIMILAR, NAMED
    )
    assert forgotten_meanwhile and forgotten_meanwhile[0].tombstone.user_id == "u0005"
    for store in (on_executors, on_driver):
        store.activate("v1")
    written = len(users) - 1  # u0003, forgotten before
    assert (report.users, expected.users) == (written, written)
    # Each user's list and the similar items, the ghost's deletion and the record.
    assert report.documents == written + len(SIMILAR) + 1 + 1
    assert report.request_units > 0
    for user in users:
        mine, theirs = on_executors.lookup(user, None), on_driver.lookup(user, None)
        assert (mine.source, mine.items) == (theirs.source, theirs.items), user
        assert on_executors.reasons(user, "v1") == on_driver.reasons(user, "v1")
    for user in ("u0003", "u0005"):
        assert on_executors.lookup(user, 1).source == "popular"
    assert sorted(documents_of(cosmos, on_executors.database, "v1")) == sorted(
        documents_of(cosmos, on_driver.database, "v1")
    )
    assert on_executors.lookup("u0001", None).items[1] == {
        "item_id": "i9",
        "score": 0.98,
        "title": "Item 9",
    }
    assert on_executors.similar("i3", None)[1] == SIMILAR[3][1]
    assert on_executors.item_list("new_items")[1] == NAMED["new_items"]


def test_cosmos_refuses_a_table_with_a_users_rows_apart(spark, cosmos):
    table = ranked_table(users=20)
    store = open_cosmos(cosmos)
    store.register("v1", {"family": "als"})
    scattered = spark.createDataFrame(table).repartition(3, "rank")  # a user in every part
    with pytest.raises(ValueError, match="two lists for one user"):
        store.write_version_on_executors("v1", scattered, TITLES, POPULAR)
    with pytest.raises(VersionNotPublishableError, match="no complete lists"):
        store.activate("v1")


@pytest.mark.parametrize("store_kind", ["sqlite", "cosmos"])
@pytest.mark.parametrize("engine", ["pandas", "spark"])
def test_the_published_asset_writes_either_engines_table_to_either_store(
    spark, request, tmp_path, store_kind, engine
):
    files = LocalFiles(str(tmp_path / "data"))
    table = ranked_table()
    if engine == "spark":
        write_parts(files, "lake/als_recommendations", in_parts(spark, table))
    else:
        files.write("lake/als_recommendations.parquet", table.to_parquet(index=False))
    upstream = {
        "als_similar_items": pd.DataFrame(
            [
                {"source_item_id": item, "item_id": n["item_id"], "rank": r, "score": n["score"]}
                for item, neighbours in SIMILAR
                for r, n in enumerate(neighbours, start=1)
            ]
        ),
        "als_new_items": pd.DataFrame({"item_id": ["fresh"], "categories": [["a"]]}),
        "popular_items": pd.DataFrame({"item_id": ["p1", "p2"], "score": [9.0, 8.0]}),
        "non_personal_lists": pd.DataFrame(
            {"item_id": ["p1"], "score": [9.0], "list": ["trending"]}
        ),
        "item_catalog": pd.DataFrame({"item_id": list(TITLES), "title": list(TITLES.values())}),
    }
    for name, frame in upstream.items():
        files.write(f"lake/{name}.parquet", frame.to_parquet(index=False))
    files.write("lake/als_evaluation.json", b'{"model_version": "v1", "skipped": null}')
    if store_kind == "sqlite":
        store = SqliteRecommendationStore(path=str(tmp_path / "reco.sqlite"))
    else:
        store = open_cosmos(request.getfixturevalue("cosmos"))
    published = next(a for a in build_publish("als") if a.key.path == ["als_published"])
    jobs_before = set(spark.sparkContext.statusTracker().getJobIdsForGroup())
    result = materialize(
        [
            published,
            *(AssetSpec(key) for key in [*upstream, *OTHER_UPSTREAM]),
        ],
        resources={
            "store": store,
            "pyspark": LazyPySparkResource(spark_config=spark_config()),
            "io_manager": LakeIOManager(files=files),
        },
        selection=["als_published"],
    )
    [materialization] = result.asset_materializations_for_node("als_published")
    # Spark's executors write only a table Spark wrote into a store that takes their writes.
    ran_on_spark = set(spark.sparkContext.statusTracker().getJobIdsForGroup()) - jobs_before
    assert bool(ran_on_spark) == (engine == "spark" and store_kind == "cosmos")
    metadata = materialization.metadata
    assert metadata["users_published"].value == 120
    # The first batch's first three users' top 10, unnamed.
    preview = metadata["preview"].value
    assert preview.count("**user ") == 3 and preview.count("\n10. ") == 3
    assert "u0" not in preview
    store.activate("v1")
    expected = dict(ranked_lists(table, "user_id", TITLES))
    marks = history_marks(table)
    for user in ("u0000", "u0042", "u0119"):
        assert store.personal_list(user) == ("v1", _served(expected[user]))
        assert store.reasons(user, "v1") == _reasons(expected[user])
    assert store.similar("i3", None)[1] == [
        {**item, "title": TITLES[item["item_id"]]} if item["item_id"] in TITLES else item
        for item in SIMILAR[3][1]
    ]
    assert store.item_list(NEW_ITEMS)[1] == [{"item_id": "fresh", "score": 0.0}]
    assert store.item_list("trending")[1] == [{"item_id": "p1", "score": 9.0}]
    # Each list's mark: a micro-batch refresh ranked from fewer events is refused.
    assert not _refreshed(store, "u0042", marks["u0042"] - 1)
    assert _refreshed(store, "u0042", marks["u0042"])


def _served(items: list[Item]) -> list[Item]:
    return [{key: value for key, value in item.items() if key != "because"} for item in items]


def _reasons(items: list[Item]) -> dict[str, list[str]]:
    return {item["item_id"]: item["because"] for item in items if "because" in item}


def _refreshed(store, user: str, events: int) -> bool:
    fresh = [{"item_id": f"refresh-{events}", "score": 1.0}]
    store.update_live_users("v1", [(user, fresh)], {user: events})
    return store.personal_list(user)[1] == fresh
