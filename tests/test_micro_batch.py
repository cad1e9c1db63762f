"""Micro-batch scoring and the automation around it, on real files, a real SQLite store and
the real Dagster machinery (sensor contexts, in-process runs); no Spark needed."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from math import inf
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context

from reco_dagster.automation import (
    landing_zone_sensor,
    new_landing_files,
    retrain_on_new_data,
    retrain_reason,
)
from reco_dagster.domain.events import ValidationRules
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.micro_batch import micro_batch
from resources.event_history import EventHistory
from resources.files import FileInfo, LocalFiles, SkipFolder
from resources.ingestion import EventWeights, ingest_landed_files
from resources.landing_zone import LandingZone
from resources.live_lists import refresh_live_users
from tests.capture_files import capture_file
from tests.conftest import REPO, land, live_world, nobody_forgotten, resources


@pytest.fixture
def world(data_dir):
    return live_world(data_dir)


def run(world, files=None):
    zone, event_history, store, archive, _ = world
    config = {"ops": {"score_new_events": {"config": {"files": files}}}}
    result = micro_batch.execute_in_process(
        run_config=config, resources=resources(zone, event_history, store, archive)
    )
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {key: value.value for key, value in output.step_output_data.metadata.items()}


def test_new_events_refresh_just_the_affected_users(world, data_dir):
    _, event_history, store, _, version = world
    before = {u: store.lookup(u, 5).items for u in ("u1", "u2")}
    land(
        data_dir,
        "drop.csv",
        pd.DataFrame(
            {
                "user_id": ["u1", "u1", "newbie", "newbie", "stranger", "u1"],
                "item_id": ["i1", "i2", "i3", "i4", "no-such-item", "bad"],
                "rating": [5, 5, 4, 5, 3, 99],
                "timestamp": 1_700_000_000,
            }
        ),
    )
    metadata = run(world, ["drop.csv"])
    assert metadata["users_refreshed"] == 2 and metadata["first_time_users"] == 2
    assert metadata["unknown_item_events"] == 1 and metadata["users_without_known_items"] == 1
    assert metadata["rows_quarantined"] == 1
    assert store.lookup("u1", 5).items != before["u1"]
    assert store.lookup("u2", 5).items == before["u2"]
    newbie = store.lookup("newbie", 12)
    assert newbie.source == "personal" and newbie.model_version == version
    assert not {item["item_id"] for item in newbie.items} & {"i3", "i4"}
    seen_by_u1 = set(event_history.user_history(["u1"])["item_id"])
    assert not {item["item_id"] for item in store.lookup("u1", 12).items} & seen_by_u1
    assert store.lookup("stranger", 5).source == "popular"
    # The ledger says the file's lists are written: handling it again does nothing.
    again = run(world, ["drop.csv"])
    assert again["rows_ingested"] == 0 and again["users_refreshed"] == 0
    assert len(event_history.all_events()) == 30 + 5


def test_a_micro_batch_gives_a_user_with_typed_events_the_batch_jobs_list(world, data_dir):
    _, event_history, store, archive, version = world
    land(
        data_dir,
        "typed.csv",
        pd.DataFrame(
            {
                "user_id": "u1",
                "item_id": ["i1", "i2", "i7", "i7"],
                "timestamp": 1_700_000_000 + pd.RangeIndex(4),
                "event_type": ["purchase", "view", "add_to_cart", "view"],
            }
        ),
    )
    run(world, ["typed.csv"])
    everyone, _ = build_interactions(event_history.all_events(), EventWeights().weights)
    assert everyone["weight"].notna().sum() == 3
    batch = fold_in(archive.load(version), everyone).recommend(seen=everyone, k=5)
    served = store.lookup("u1", 5)
    assert served.model_version == version
    expected = batch[batch["user_id"] == "u1"]["item_id"].tolist()
    assert [item["item_id"] for item in served.items] == expected


def test_the_store_refuses_micro_batch_writes_into_a_replaced_version(world):
    _, _, store, _, version = world
    store.register("next", {"family": "als"})
    store.write_version("next", [("u1", [{"item_id": "i9", "score": 1.0}])], [])
    store.activate("next")
    stale = [("u1", [{"item_id": "stale", "score": 1.0}])]
    assert store.update_live_users(version, stale, {"u1": 4}) is False
    assert store.lookup("u1", 1).items == [{"item_id": "i9", "score": 1.0}]
    assert store.update_live_users("next", [("u1", [{"item_id": "i8", "score": 2.0}])], {"u1": 4})


def test_a_refresh_that_read_the_history_earlier_never_overwrites_a_fresher_one(world, data_dir):
    """Two refreshes of u1 at once (say the catch-up after a switch and a micro-batch): the
    slow one read u1's history before more of u1's events landed, and writes last."""
    zone, event_history, store, archive, _ = world
    ranked, written = threading.Barrier(2, timeout=60), threading.Barrier(2, timeout=60)

    class PausedBeforeWriting:
        """The store as the slow refresh sees it: it waits for the other one to write."""

        def __getattr__(self, name):
            return getattr(store, name)

        def update_live_users(self, *args):
            ranked.wait()
            written.wait()
            return store.update_live_users(*args)

    u1 = pd.DataFrame({"user_id": ["u1"], "item_id": ["i3"]})
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            refresh_live_users,
            zone,
            event_history,
            PausedBeforeWriting(),
            archive,
            u1,
            EventWeights().weights,
            lambda _: None,
        )
        ranked.wait()
        later = ["i4", "i5", "i6"]
        land(
            data_dir, "later.csv", pd.DataFrame({"user_id": "u1", "item_id": later, "timestamp": 1})
        )
        run(world, ["later.csv"])
        fresh = store.lookup("u1", 100).items
        written.wait()
        assert slow.result().counts["users_refreshed"] == 1
    assert not {item["item_id"] for item in fresh} & set(later)
    assert store.lookup("u1", 100).items == fresh


def evaluate_sensor(**context):
    # The landing zone holds a nested resource: Dagster opens it inside a context manager.
    with build_sensor_context(**context) as sensor_context:
        return landing_zone_sensor(sensor_context)


def requested_files(result) -> list[list[str]]:
    return [
        request.run_config["ops"]["score_new_events"]["config"]["files"]
        for request in result.run_requests
    ]


def test_the_landing_sensor_requests_each_new_file_once(world, data_dir):
    zone = LandingZone(files=world[0].files, settle_s=0, watch_s=0)
    instance = DagsterInstance.ephemeral()
    land(
        data_dir,
        "waiting.csv",
        pd.DataFrame({"user_id": ["u2"], "item_id": ["i2"], "timestamp": [1]}),
    )
    first = evaluate_sensor(instance=instance, resources={"landing_zone": zone})
    # The sensor reads no ledger: history.csv (handled by the world's first run) is asked for
    # too, and the run finds its lists written already.
    assert requested_files(first) == [["history.csv", "waiting.csv"]]
    assert run(world, ["history.csv", "waiting.csv"])["new_files"] == 1
    idle = evaluate_sensor(cursor=first.cursor, instance=instance, resources={"landing_zone": zone})
    assert not idle.run_requests and "no new landing files" in idle.skip_reason.skip_message
    land(
        data_dir, "late.csv", pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]})
    )
    later = evaluate_sensor(cursor=idle.cursor, instance=instance, resources={"landing_zone": zone})
    assert requested_files(later) == [["late.csv"]]
    assert later.run_requests[0].run_key != first.run_requests[0].run_key


FRAME = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [1]})


def test_a_file_landing_while_a_tick_watches_is_requested_by_that_tick(data_dir):
    """The daemon evaluates the sensor every 5 s at most: a tick that finds nothing keeps
    looking, and a file that lands meanwhile is requested within a look, not a tick later."""
    files = ListedFiles(root=str(data_dir))
    zone = LandingZone(files=files, settle_s=0, watch_s=30)
    instance = DagsterInstance.ephemeral()
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        tick = pool.submit(evaluate_sensor, instance=instance, resources={"landing_zone": zone})
        assert files.listed.wait(30), "the tick never looked"
        land(data_dir, "during.csv", FRAME)
        result = tick.result()
    assert requested_files(result) == [["during.csv"]]
    assert time.monotonic() - started < 30


class ListedFiles(LocalFiles):
    """Local files that say when a listing has happened."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.listed = threading.Event()

    def _listing(self, folder: str) -> Iterable[dict]:
        found = super()._listing(folder)
        self.listed.set()
        return found


TODAY = date(2024, 5, 17)


def test_a_file_renamed_in_with_an_old_modification_time_is_requested(data_dir):
    zone = LandingZone(files=LocalFiles(root=str(data_dir)), settle_s=0)
    land(data_dir, "new.csv", FRAME)
    fresh, cursor = new_landing_files(zone, None, TODAY)
    assert [file.name for file in fresh] == ["new.csv"]
    # Written elsewhere an hour ago, then moved in: a rename keeps the modification time.
    outside = data_dir / "outside.csv"
    FRAME.to_csv(outside, index=False)
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(outside, ns=(an_hour_ago, an_hour_ago))
    outside.rename(data_dir / "landing" / "old.csv")
    fresh, cursor = new_landing_files(zone, cursor, TODAY)
    assert [file.name for file in fresh] == ["old.csv"]
    assert new_landing_files(zone, cursor, TODAY)[0] == []
    # The same name with other bytes is another file.
    land(data_dir, "old.csv", pd.concat([FRAME, FRAME.assign(user_id="v")]))
    assert [file.name for file in new_landing_files(zone, cursor, TODAY)[0]] == ["old.csv"]


class WrittenBetweenLooks(LocalFiles):
    """A landing zone whose writer adds a line to growing.csv after each listing, until told
    to stop: between the sensor's first and second look at a fresh file."""

    _writing = True

    def stop_writing(self) -> None:
        self._writing = False

    def entries(self, prefix: str, skip: SkipFolder | None = None) -> list[FileInfo]:
        listed = super().entries(prefix, skip)
        if self._writing:
            with (Path(self.root) / "landing" / "growing.csv").open("a") as handle:
                handle.write("u2,i2,2\n")
        return listed


def test_a_file_is_requested_once_it_stopped_changing(data_dir):
    files = WrittenBetweenLooks(root=str(data_dir))
    zone = LandingZone(files=files, settle_s=0.2)
    growing = data_dir / "landing" / "growing.csv"
    land(data_dir, "growing.csv", FRAME)
    fresh, cursor = new_landing_files(zone, None, TODAY)
    assert fresh == [], "it changed between the two looks"
    files.stop_writing()
    fresh, cursor = new_landing_files(zone, cursor, TODAY)
    assert [file.size for file in fresh] == [growing.stat().st_size]
    assert new_landing_files(zone, cursor, TODAY)[0] == []


def capture_layout(data_dir, days: list[date]) -> list[str]:
    """Event Hubs Capture's files ({namespace}/{hub}/{partition}/yyyy/mm/dd/hh/mm/ss.avro), one
    a day in each of two partitions, each a user's event; returns the names."""
    names = []
    for day in days:
        for partition in ("0", "1"):
            name = f"ns/hub/{partition}/{day:%Y/%m/%d}/13/05/00.avro"
            (data_dir / "landing" / name).parent.mkdir(parents=True, exist_ok=True)
            event = {"user_id": name, "item_id": "i", "timestamp": 1}
            (data_dir / "landing" / name).write_bytes(capture_file([event]))
            names.append(name)
    return names


def test_the_sensor_leaves_out_dated_folders_past_the_lookback_and_the_batch_takes_them(data_dir):
    zone = LandingZone(files=LocalFiles(root=str(data_dir)), settle_s=0)
    recent = capture_layout(data_dir, [TODAY, date(2024, 5, 15)])
    old = capture_layout(data_dir, [date(2024, 5, 14), date(2024, 4, 30), date(2023, 12, 31)])
    land(data_dir, "undated.csv", FRAME)
    (data_dir / "landing" / "2024/05/01").mkdir(parents=True)
    land(data_dir, "2024/05/01/plain.csv", FRAME.assign(user_id="plain"))
    fresh, _ = new_landing_files(zone, None, TODAY)
    assert sorted(file.name for file in fresh) == sorted([*recent, "undated.csv"])
    # Late files in old partitions reach the history through batch_retrain, which lists all.
    report = ingest_landed_files(
        zone, EventHistory(files=zone.files), nobody_forgotten(), ValidationRules(), print
    )
    assert set(report.ingested_files) >= {*old, "2024/05/01/plain.csv"}


class CountingFiles(LocalFiles):
    """Local files that count the folders a walk lists."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._folders_opened: list[str] = []

    def _listing(self, folder: str) -> Iterable[dict]:
        self._folders_opened.append(folder)
        return super()._listing(folder)


def test_the_sensor_walks_no_more_folders_for_more_old_partitions(data_dir):
    files = CountingFiles(root=str(data_dir))
    zone = LandingZone(files=files, settle_s=0)
    capture_layout(data_dir, [TODAY, date(2024, 5, 16), date(2024, 3, 1), date(2023, 1, 1)])
    new_landing_files(zone, None, TODAY)
    opened = len(files._folders_opened)
    years = [
        date(year, month, day) for year in range(2015, 2023) for month in (1, 6) for day in (1, 2)
    ]
    capture_layout(data_dir, years + [date(2024, month, 3) for month in (1, 2, 4)])
    files._folders_opened.clear()
    fresh, _ = new_landing_files(zone, None, TODAY)
    assert len(files._folders_opened) == opened
    assert len(fresh) == 4


NEWBIE = pd.DataFrame(
    {"user_id": "newbie", "item_id": ["i1", "i2"], "rating": 5.0, "timestamp": 1_700_000_000}
)


def micro_batch_run(world, files):
    zone, event_history, store, archive, _ = world
    return micro_batch.execute_in_process(
        run_config={"ops": {"score_new_events": {"config": {"files": files}}}},
        resources=resources(zone, event_history, store, archive),
        raise_on_error=False,
    )


def retries(result) -> int:
    return sum(event.event_type_value == "STEP_UP_FOR_RETRY" for event in result.all_events)


def test_a_failed_micro_batch_is_retried_and_its_events_count_once(world, data_dir):
    zone, event_history, store, _, version = world
    land(data_dir, "drop.csv", NEWBIE)
    model = data_dir / "lake" / "versions" / version
    model.rename(data_dir / "away")

    def restore_after_the_first_failure():
        deadline = time.monotonic() + 60
        while not any((note.error or "").startswith("failed") for note in zone.due_attempts(inf)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (data_dir / "away").rename(model)

    with ThreadPoolExecutor(1) as pool:
        restored = pool.submit(restore_after_the_first_failure)
        result = micro_batch_run(world, ["drop.csv"])
        restored.result()
    # The retry comes a second after the failure; a slower restore costs one more attempt.
    assert result.success and 1 <= retries(result) <= 2
    history = event_history.all_events()
    assert len(history[history["user_id"] == "newbie"]) == 2, "ingested once"
    newbie = store.lookup("newbie", 12)
    assert newbie.source == "personal" and newbie.model_version == version
    assert zone.due_attempts(inf) == []
    [entry] = [e for e in event_history.ingested().values() if e["file"] == "drop.csv"]
    assert entry["lists"]["version"] == version


def test_a_file_whose_attempts_keep_failing_is_given_up_into_quarantine(world, data_dir):
    zone, event_history, store, _, version = world
    land(data_dir, "drop.csv", NEWBIE)
    model = data_dir / "lake" / "versions" / version
    model.rename(data_dir / "away")
    result = micro_batch_run(world, ["drop.csv"])
    assert not result.success and retries(result) == zone.max_attempts - 1
    [copy] = (data_dir / "quarantine" / "files").glob("*.drop.csv")
    assert copy.read_bytes() == (data_dir / "landing" / "drop.csv").read_bytes()
    reason = copy.with_name(copy.name + ".reason.txt").read_text()
    assert reason.startswith("gave up after 3 micro-batch attempts; the last failed: FileNotFound")
    assert "its 2 events stay in the history and reach the lists at the next batch_retrain" in (
        reason
    )
    # Given up: no more attempts, from the sensor or from another run naming the file.
    assert zone.due_attempts(inf) == []
    (data_dir / "away").rename(model)
    assert run(world, ["drop.csv"])["users_refreshed"] == 0
    assert store.lookup("newbie", 5).source == "popular"
    assert len(event_history.all_events()) == 30 + 2


def test_attempts_whose_process_died_count(world, data_dir):
    zone, event_history, *_ = world
    land(data_dir, "drop.csv", NEWBIE)
    [file] = zone.scan_named(["drop.csv"]).files
    # Each attempt is counted before its work starts: these three ended there (killed).
    for _ in range(zone.max_attempts):
        zone.begin_attempt(file)
    result = micro_batch_run(world, ["drop.csv"])
    assert result.success and retries(result) == 0
    [reason] = (data_dir / "quarantine" / "files").glob("*.drop.csv.reason.txt")
    assert reason.read_text().startswith(
        "gave up after 3 micro-batch attempts; the last ended without a word (its process died)"
        "; the next batch_retrain ingests it"
    )
    assert len(event_history.all_events()) == 30


def test_a_file_left_for_later_is_asked_for_again(world, data_dir):
    zone = LandingZone(files=world[0].files, settle_s=0, unterminated_settle_s=1, retry_s=0)
    world = (zone, *world[1:])
    instance = DagsterInstance.ephemeral()
    (data_dir / "landing" / "cut.csv").write_text("user_id,item_id,timestamp\nnewbie,i1,1")
    first = evaluate_sensor(instance=instance, resources={"landing_zone": zone})
    assert requested_files(first) == [["cut.csv", "history.csv"]]
    assert run(world, ["cut.csv", "history.csv"])["files_deferred"] == 1
    # The file does not change, so only the run's note brings it back: once it is old enough.
    deadline = time.monotonic() + 30
    while not (
        again := evaluate_sensor(
            cursor=first.cursor, instance=instance, resources={"landing_zone": zone}
        )
    ).run_requests:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert requested_files(again) == [["cut.csv"]]
    assert run(world, ["cut.csv"])["new_files"] == 1
    assert zone.due_attempts(inf) == []


def test_the_retrain_sensor_says_why_it_waits_and_fires_when_the_data_moved(world, data_dir):
    _, event_history, store, archive, _ = world
    waiting = retrain_reason(
        store, event_history, archive, min_new_fraction=0.5, max_unknown_item_events=2
    )
    assert isinstance(waiting, SkipReason)
    assert "0 new events (0.0% of 30; retrain at 50%)" in waiting.skip_message
    land(
        data_dir,
        "more.csv",
        pd.DataFrame(
            {"user_id": ["u1"] * 3, "item_id": ["x1", "x2", "x3"], "timestamp": [1, 2, 3]}
        ),
    )
    run(world, ["more.csv"])
    assert retrain_reason(store, event_history, archive, 0.5, 2) == (
        "3 new events name items the live model does not know"
    )
    assert retrain_reason(store, event_history, archive, 0.05, 100).startswith(
        "3 new events are 10.0%"
    )


def test_a_failed_retrain_is_asked_for_again_once_more_data_came_in(world, data_dir):
    _, event_history, store, archive, _ = world

    def evaluate():
        with build_sensor_context(
            instance=DagsterInstance.ephemeral(),
            resources={"store": store, "event_history": event_history, "archive": archive},
        ) as context:
            return retrain_on_new_data(context)

    def drop(name, users):
        frame = pd.DataFrame({"user_id": users, "item_id": "i1", "timestamp": 1_700_000_000})
        land(data_dir, name, frame)
        run(world, [name])

    drop("a.csv", ["u1", "u2", "u3"])
    first = evaluate()
    # Were that run to fail, the daemon would skip every later request with its run key.
    assert evaluate().run_key == first.run_key
    drop("b.csv", ["u4"])
    assert evaluate().run_key != first.run_key


def test_the_micro_batch_location_loads_no_assets_and_no_spark():
    """Shared ingest and list building live in domain/ and resources/: the streaming code
    location, which each micro-batch run's process loads, needs no asset module, no Spark and
    no model search."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, reco_dagster.streaming; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('assets', 'pyspark', 'dagster_pyspark', 'optuna')))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
