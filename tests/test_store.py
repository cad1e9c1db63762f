"""One contract for every store, run against a real SQLite file and a real cosmosdb-server:
atomic switches, failed publishes, retention, the registry."""

import contextlib
import sqlite3
import threading
import uuid
from datetime import UTC, datetime

import pytest
from azure.cosmos import ContainerProxy

from reco_dagster.domain.forgetting import user_key
from resources.cosmos_store import LIVE_POINTER, CosmosRecommendationStore
from resources.store import Catalog, SqliteRecommendationStore, VersionNotPublishableError
from tests.servers.azure import COSMOS_EMULATOR_KEY


def lists(version: str, users: int = 50):
    """Every item id names its version, so a reader can tell which version it saw."""
    return [
        (f"u{n}", [{"item_id": f"{version}-{n}-{r}", "score": 1.0 - r / 10} for r in range(10)])
        for n in range(users)
    ]


POPULAR = [{"item_id": "p1", "score": 9.0, "title": "Popular One"}, {"item_id": "p2", "score": 8.0}]


@pytest.fixture(params=["sqlite", "cosmos"])
def open_store(request, tmp_path):
    """Opens a new client of one store (each test its own file or database)."""
    if request.param == "sqlite":
        return lambda: SqliteRecommendationStore(path=str(tmp_path / "reco.sqlite"))
    endpoint, database = request.getfixturevalue("cosmos").url, f"t{uuid.uuid4().hex}"
    return lambda: CosmosRecommendationStore(
        endpoint=endpoint, key=COSMOS_EMULATOR_KEY, database=database
    )


@pytest.fixture
def store(open_store):
    return open_store()


def publish(store, version, user_lists=None, info=None):
    store.register(version, info or {"family": "als"})
    return store.write_version(version, user_lists or lists(version), POPULAR)


def test_nothing_is_served_before_the_first_activation(store):
    assert store.lookup("u1", 10) is None and store.live_version() is None
    publish(store, "v1")
    assert store.lookup("u1", 10) is None
    store.activate("v1")
    assert store.live_version() == "v1"


def test_known_users_get_their_list_and_unknown_users_the_popular_one(store):
    publish(store, "v1", info={"metrics": {"precision_at_10": 0.4}})
    store.activate("v1")
    mine = store.lookup("u3", 4)
    assert (mine.model_version, mine.source) == ("v1", "personal")
    assert [item["item_id"] for item in mine.items] == [f"v1-3-{r}" for r in range(4)]
    stranger = store.lookup("nobody", 10)
    assert stranger.source == "popular" and stranger.items == POPULAR
    [record] = store.versions()
    assert record.status == "live" and record.info["metrics"]["precision_at_10"] == 0.4


def test_readers_see_one_whole_version_during_a_publish(store, open_store):
    publish(store, "v1")
    store.activate("v1")
    seen, problems, done = set(), [], threading.Event()

    def read():
        reader = open_store()
        while True:
            finished = done.is_set()  # one last read after the final switch
            found = reader.lookup("u7", 10)
            versions = {item["item_id"].split("-")[0] for item in found.items} if found else {}
            if found is None or len(found.items) != 10 or versions != {found.model_version}:
                problems.append(found)
            else:
                seen.add(found.model_version)
            if finished:
                return

    thread = threading.Thread(target=read)
    thread.start()
    for version in ("v2", "v3", "v4"):
        publish(store, version, lists(version, users=300))
        store.activate(version)
    done.set()
    thread.join()
    assert problems == []
    assert "v4" in seen and store.lookup("u7", 1).model_version == "v4"


def test_a_publish_that_dies_half_way_leaves_the_live_version_and_can_be_rerun(store):
    publish(store, "v1")
    store.activate("v1")

    def dying():
        yield from lists("v2")[:10]
        raise ConnectionError("worker lost")

    with pytest.raises(ConnectionError):
        publish(store, "v2", dying())
    with pytest.raises(VersionNotPublishableError, match="no complete lists"):
        store.activate("v2")
    assert store.lookup("u1", 1).model_version == "v1"
    assert publish(store, "v2").users == 50
    assert publish(store, "v2", lists("v2", users=40)).users == 40
    store.activate("v2")
    assert [v.status for v in store.versions()] == ["live", "retired"]
    # The re-run's lists, nothing left over from the earlier attempts.
    assert store.lookup("u39", 1).source == "personal"
    assert store.lookup("u45", 1).source == "popular"


def test_the_live_version_cannot_be_overwritten(store):
    publish(store, "v1")
    store.activate("v1")
    with pytest.raises(VersionNotPublishableError, match="is live"):
        publish(store, "v1")


def test_retention_purges_old_retired_versions_but_keeps_their_records(store):
    for version in ("v1", "v2", "v3", "v4"):
        publish(store, version)
        store.activate(version)
    assert store.purge_old_versions(keep=1) == ["v2", "v1"]
    assert store.purge_old_versions(keep=1) == []
    with pytest.raises(VersionNotPublishableError):
        store.activate("v1")
    store.activate("v3")  # the kept retired version is a rollback target
    assert store.lookup("u0", 1).model_version == "v3"
    assert len(store.versions()) == 4


def test_rejected_models_are_recorded_but_never_written_or_activated(store):
    publish(store, "v1")
    store.activate("v1")
    store.register("bad", {"family": "als"}, rejected_because="precision_at_10 below floor")
    with pytest.raises(VersionNotPublishableError, match="rejected"):
        store.write_version("bad", lists("bad"), POPULAR)
    with pytest.raises(
        VersionNotPublishableError,
        match="rejected by the quality gate: precision_at_10 below floor",
    ):
        store.activate("bad")
    bad = store.version("bad")
    assert (bad.status, bad.has_lists) == ("rejected", False)
    assert bad.info["rejected_because"] == "precision_at_10 below floor"
    assert store.live_version() == "v1"


def test_registering_the_live_version_again_keeps_it_live(store):
    publish(store, "v1")
    store.activate("v1")
    store.register("v1", {"family": "als", "metrics": {"precision_at_10": 0.5}})
    assert store.version("v1").status == "live"
    assert store.version("v1").info["metrics"] == {"precision_at_10": 0.5}


def test_micro_batch_updates_reach_only_the_live_version_and_move_the_change_token(
    store, open_store
):
    publish(store, "v1")
    store.activate("v1")
    watcher = open_store()
    before = watcher.change_token()
    fresh = [("u1", [{"item_id": "new-1", "score": 2.0}]), ("u99", [{"item_id": "new-99"}])]
    assert store.update_live_users("v1", fresh, {"u1": 1, "u99": 1}) is True
    assert watcher.change_token() != before
    assert watcher.lookup("u1", 5).items == [{"item_id": "new-1", "score": 2.0}]
    assert watcher.lookup("u99", 5).source == "personal"
    assert watcher.lookup("u2", 1).items[0]["item_id"] == "v1-2-0"
    publish(store, "v2")
    store.activate("v2")
    assert store.update_live_users("v1", [("u1", [{"item_id": "late"}])], {"u1": 2}) is False
    assert watcher.lookup("u1", 1).items[0]["item_id"] == "v2-1-0"


def test_similar_items_follow_the_live_version(store):
    assert store.similar("i1", 5) is None
    for version in ("v1", "v2"):
        store.register(version, {"family": "als"})
        neighbours = [("i1", [{"item_id": f"{version}-i2", "score": 0.9}])]
        store.write_version(version, lists(version), POPULAR, neighbours)
    store.activate("v1")
    assert store.similar("i1", 5) == ("v1", [{"item_id": "v1-i2", "score": 0.9}])
    store.activate("v2")
    assert store.similar("i1", 5) == ("v2", [{"item_id": "v2-i2", "score": 0.9}])
    assert store.similar("unknown", 5) == ("v2", None)


def test_named_lists_and_personal_lists_follow_the_live_version(store):
    assert store.item_list("trending") is None and store.personal_list("u1") is None
    for version in ("v1", "v2"):
        store.register(version, {"family": "als"})
        named = {"trending": [{"item_id": f"{version}-t", "score": 3.0}], "popular": []}
        store.write_version(version, lists(version), POPULAR, item_lists=named)
    store.activate("v1")
    assert store.item_list("trending") == ("v1", [{"item_id": "v1-t", "score": 3.0}])
    assert store.item_list("popular") == ("v1", [])
    assert store.item_list("nope") == ("v1", None)
    version, items = store.personal_list("u3")
    assert version == "v1" and len(items) == 10 and items[0]["item_id"] == "v1-3-0"
    assert store.personal_list("stranger") == ("v1", None)
    assert store.personal_list("u3", version="v2")[1][0]["item_id"] == "v2-3-0"
    assert store.personal_list("u3", version="v9") is None
    store.activate("v2")
    assert store.item_list("trending")[0] == "v2"
    assert store.purge_old_versions(keep=0) == ["v1"]
    assert store.personal_list("u3", version="v1") is None


CATALOG = [
    {"item_id": "a", "categories": ["shoes"], "available": True, "attributes": {"brand": "x"}},
    {"item_id": "b", "title": "B", "categories": [], "available": False, "attributes": {}},
]


def test_the_catalog_is_replaced_only_by_one_read_later(store, open_store):
    assert store.catalog() is None and store.catalog_revision() is None
    assert store.write_catalog(CATALOG, "r1", read_at=10.0) == "written"
    reader = open_store()
    assert reader.catalog_revision() == "r1"
    assert reader.catalog().entries == CATALOG and reader.catalog().read_at == 10.0
    assert store.write_catalog(CATALOG[:1], "r0", read_at=5.0) == "older"
    assert store.write_catalog(CATALOG, "r1", read_at=11.0) == "unchanged"
    assert store.write_catalog(CATALOG[:1], "r0", read_at=10.5) == "older"
    assert store.write_catalog(CATALOG[1:], "r2", read_at=12.0) == "written"
    assert reader.catalog() == Catalog("r2", 12.0, CATALOG[1:])
    many = [
        {**CATALOG[0], "item_id": f"i{n:04}", "attributes": {"x": "y" * 400}} for n in range(2000)
    ]
    assert store.write_catalog(many, "r3", read_at=13.0) == "written"
    assert store.write_catalog(CATALOG, "r4", read_at=14.0) == "written"
    assert store.write_catalog(many, "r3", read_at=15.0) == "written"
    assert reader.catalog().entries == many


def test_a_catalog_write_moves_the_change_token(store, open_store):
    publish(store, "v1")
    store.activate("v1")
    watcher = open_store()
    before = watcher.change_token()
    store.write_catalog(CATALOG, "r1", read_at=1.0)
    assert watcher.change_token() != before


@pytest.fixture
def rival(open_store):
    """A second client of the same store, for the other writer of a race."""
    other = open_store()
    if isinstance(other, SqliteRecommendationStore):
        # It writes from the thread inside the first writer's transaction: failing at once
        # on the lock is losing the race, where the default would wait 30 s for itself.
        other._connection().execute("PRAGMA busy_timeout = 0")
    return other


def interleave(monkeypatch, owner, method: str, other_writer, *, before=False, when=None):
    """Runs `other_writer` once, right after (or before) the first call of `owner.method`
    that `when` accepts (called with the call's arguments): between a writer's check and the
    write it guards. Returns what happened to the other writer once it ran: its result, or
    the error that refused it."""
    original, outcome, started = getattr(owner, method), [], threading.Event()

    def run_other_writer():
        started.set()  # once: the other writer's own calls go through as they are
        try:
            outcome.append(other_writer())
        except (sqlite3.OperationalError, VersionNotPublishableError) as error:
            outcome.append(error)

    def hooked(*args, **kwargs):
        now = not started.is_set() and (when is None or when(*args))
        if now and before:
            run_other_writer()
        result = original(*args, **kwargs)
        if now and not before:
            run_other_writer()
        return result

    monkeypatch.setattr(owner, method, hooked)
    return outcome


def assert_live_has_complete_lists(open_store):
    reader = open_store()
    live = reader.live_version()
    assert reader.version(live).has_lists
    for user in ("u0", "u49"):
        found = reader.lookup(user, 10)
        assert found is not None, f"live {live} has no lists"
        assert (found.model_version, found.source) == (live, "personal")
        assert found.items[0]["item_id"] == f"{live}-{user[1:]}-0"


@pytest.fixture
def three_versions(store):
    """v3 live; v1 is the oldest retired version: what a purge keeping one drops, and what
    a rollback goes back to."""
    for version in ("v1", "v2", "v3"):
        publish(store, version)
        store.activate(version)


def test_a_purge_in_the_middle_of_a_rollback_never_leaves_live_without_lists(
    store, open_store, rival, three_versions, monkeypatch
):
    def purge():
        return rival.purge_old_versions(keep=1)

    if isinstance(store, SqliteRecommendationStore):  # after the check of v1's lists
        purged = interleave(
            monkeypatch, type(store), "version", purge, when=lambda client, *_: client is store
        )
    else:  # right before the pointer moves
        purged = interleave(
            monkeypatch,
            ContainerProxy,
            "replace_item",
            purge,
            before=True,
            when=lambda proxy, item, *_: item == LIVE_POINTER,
        )
    with contextlib.suppress(VersionNotPublishableError):  # refused: the purge came first
        store.activate("v1")
    assert purged, "the purge never ran between the rollback's check and its switch"
    assert_live_has_complete_lists(open_store)
    rival.purge_old_versions(keep=1)
    assert_live_has_complete_lists(open_store)


def test_a_rollback_in_the_middle_of_a_purge_never_leaves_live_without_lists(
    store, open_store, rival, three_versions, monkeypatch
):
    def roll_back():
        return rival.activate("v1")

    # Right after the purge listed the versions and their state.
    listing = "versions" if isinstance(store, SqliteRecommendationStore) else "_query"
    rolled_back = interleave(
        monkeypatch, type(store), listing, roll_back, when=lambda client, *_: client is store
    )
    store.purge_old_versions(keep=1)
    assert rolled_back, "the rollback never ran between the purge's check and its deletes"
    assert_live_has_complete_lists(open_store)
    with contextlib.suppress(VersionNotPublishableError):  # refused: the purge came first
        rival.activate("v1")
    assert_live_has_complete_lists(open_store)


def test_a_refresh_replaces_a_list_only_if_ranked_from_at_least_as_many_events(store):
    store.register("v1", {"family": "als"})
    store.write_version("v1", lists("v1"), POPULAR, history_events={"u1": 5})
    store.activate("v1")

    def refresh(user, tag, events):
        assert store.update_live_users("v1", [(user, [{"item_id": tag}])], {user: events})
        return store.lookup(user, 1).items[0]["item_id"]

    assert refresh("u1", "from-4", 4) == "v1-1-0"  # read the history before the batch did
    assert refresh("u1", "from-5", 5) == "from-5"  # the same history: the same list
    assert refresh("u1", "from-7", 7) == "from-7"
    assert refresh("u1", "from-6", 6) == "from-7"  # a slower refresh arriving last
    assert refresh("u2", "from-1", 1) == "from-1"  # the batch gave no mark: any refresh wins
    assert refresh("newcomer", "from-1", 1) == "from-1"
    assert refresh("newcomer", "from-0", 0) == "from-1"


def test_reasons_are_kept_apart_from_the_served_lists_and_follow_each_refresh(store):
    explained = [
        {"item_id": "a", "score": 2.0, "because": ["h1", "h2"]},
        {"item_id": "b", "score": 1.0, "because": []},
    ]
    store.register("v1", {"family": "ease"})
    store.write_version("v1", [("u1", explained), ("u2", lists("v1")[2][1])], POPULAR)
    store.activate("v1")
    assert store.lookup("u1", 10).items == [
        {"item_id": "a", "score": 2.0},
        {"item_id": "b", "score": 1.0},
    ]
    assert store.reasons("u1", "v1") == {"a": ["h1", "h2"], "b": []}
    assert store.reasons("u2", "v1") == {} and store.reasons("nobody", "v1") == {}
    fresher = [{"item_id": "c", "score": 3.0, "because": ["h3"]}]
    assert store.update_live_users("v1", [("u1", fresher)], {"u1": 1})
    assert store.reasons("u1", "v1") == {"c": ["h3"]}
    # Consumed items leave the list; the reasons of the rest stay.
    store.update_live_users("v1", [("u1", [*fresher, *explained])], {"u1": 2})
    assert store.remove_from_live_lists({"u1": {"c"}}, {"u1": 1}) == 1
    assert [item["item_id"] for item in store.lookup("u1", 10).items] == ["a", "b"]
    assert store.reasons("u1", "v1")["a"] == ["h1", "h2"]


def test_a_sqlite_file_from_before_the_freshness_marks_and_reasons_gets_them(tmp_path):
    path = str(tmp_path / "reco.sqlite")
    publish(SqliteRecommendationStore(path=path), "v1")
    with contextlib.closing(sqlite3.connect(path)) as older:
        older.execute("ALTER TABLE user_recommendations DROP COLUMN history_events")
        older.execute("ALTER TABLE user_recommendations DROP COLUMN reasons")
    store = SqliteRecommendationStore(path=path)
    store.activate("v1")
    assert store.lookup("u1", 1).items[0]["item_id"] == "v1-1-0"
    assert store.reasons("u1", "v1") == {}
    assert store.update_live_users("v1", [("u1", [{"item_id": "fresh"}])], {"u1": 1})
    assert store.lookup("u1", 1).items[0]["item_id"] == "fresh"


def test_forgetting_a_user_deletes_their_list_in_every_version_at_once(store, open_store):
    for version in ("v1", "v2", "v3"):
        publish(store, version)
    store.activate("v1")
    store.activate("v2")  # v1 retired, v3 a candidate: every kept version has u3's list
    watcher = open_store()
    before = watcher.change_token()
    receipt = store.forget_user("u3")
    assert (receipt.lists_deleted, receipt.versions) == (3, ["v1", "v2", "v3"])
    tombstone = receipt.tombstone
    assert (tombstone.user_id, tombstone.state) == ("u3", "pending")
    assert (
        tombstone.user_key == user_key("u3") and tombstone.pending_since == tombstone.requested_at
    )
    assert watcher.change_token() != before
    for version in (None, "v1", "v2", "v3"):
        found = watcher.lookup("u3", 10, version=version)
        assert (found.source, found.items, found.forgotten) == ("popular", POPULAR, True)
    assert watcher.lookup("u4", 1).source == "personal"
    assert not watcher.lookup("nobody", 1).forgotten
    assert watcher.tombstones() == [tombstone]
    again = store.forget_user("u3")
    assert again.lists_deleted == 0 and again.tombstone.requested_at == tombstone.requested_at


def test_no_writer_puts_a_forgotten_users_list_back_until_the_tombstone_is_lifted(store):
    publish(store, "v1")
    store.activate("v1")
    store.forget_user("u1")
    fresh = [("u1", [{"item_id": "back"}]), ("u2", [{"item_id": "new"}])]
    assert store.update_live_users("v1", fresh, {"u1": 9, "u2": 9})
    assert store.lookup("u1", 1).source == "popular"
    assert store.lookup("u2", 1).items == [{"item_id": "new"}]
    assert publish(store, "v2").users == 49
    store.activate("v2")
    assert store.lookup("u1", 1).source == "popular"
    lifted = store.lift_tombstone("u1")
    assert lifted.user_key == user_key("u1") and store.tombstones() == []
    assert store.lift_tombstone("u1") is None
    assert store.update_live_users("v2", fresh[:1], {"u1": 1})
    found = store.lookup("u1", 1)
    assert (found.source, found.forgotten) == ("personal", False)


def test_an_erasure_completes_a_tombstone_unless_the_users_events_came_again(store):
    forgotten = store.forget_user("u1").tombstone
    swept_from = datetime.now(UTC).isoformat()
    assert store.mark_erased([forgotten.user_key, user_key("nobody")], swept_from) == [
        forgotten.user_key
    ]
    [erased] = store.tombstones()
    assert (erased.state, erased.user_id, erased.requested_at) == (
        "erased",
        None,
        forgotten.requested_at,
    )
    assert erased.erased_at >= swept_from
    store.reopen_tombstones(["u1", "never-forgotten"])
    [reopened] = store.tombstones()
    assert (reopened.state, reopened.user_id) == ("pending", "u1")
    assert reopened.pending_since > swept_from
    # An erasure that started before the events came again did not remove them.
    assert store.mark_erased([forgotten.user_key], swept_from) == []
    later = datetime.now(UTC).isoformat()
    assert store.mark_erased([forgotten.user_key], later) == [forgotten.user_key]


def test_an_erased_user_leaves_no_bytes_in_the_sqlite_files(tmp_path):
    store = SqliteRecommendationStore(path=str(tmp_path / "reco.sqlite"))
    forgotten = "forget-me-7f3a"
    for version in ("v1", "v2"):
        publish(store, version, [*lists(version), (forgotten, [{"item_id": "i1"}])])
        store.activate(version)
    for events in range(1, 4):  # each refresh leaves the old row's bytes in free space
        store.update_live_users(
            "v2", [(forgotten, [{"item_id": f"i{events}"}])], {forgotten: events}
        )
    reader = SqliteRecommendationStore(path=str(tmp_path / "reco.sqlite"))
    assert reader.lookup(forgotten, 1).source == "personal"
    key = store.forget_user(forgotten).tombstone.user_key
    assert store.mark_erased([key], datetime.now(UTC).isoformat()) == [key]
    assert reader.lookup(forgotten, 1).forgotten
    for path in tmp_path.iterdir():
        assert forgotten.encode() not in path.read_bytes(), path.name
