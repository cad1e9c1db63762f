"""Micro-batch scoring and the automation around it, on real files, a real SQLite store and
the real Dagster machinery (sensor contexts, in-process runs); no Spark needed."""

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from dagster import DagsterInstance, SkipReason, build_sensor_context

from reco_dagster.automation import (
    landing_zone_sensor,
    new_landing_files,
    retrain_on_new_data,
    retrain_reason,
)
from reco_dagster.micro_batch import micro_batch
from resources.files import LocalFiles
from resources.landing_zone import LandingZone
from resources.live_lists import refresh_live_users
from tests.conftest import REPO, land, live_world, resources


@pytest.fixture
def world(data_dir):
    return live_world(data_dir)


def run(world, files=None):
    zone, store, archive, _ = world
    config = {"ops": {"score_new_events": {"config": {"files": files}}}}
    result = micro_batch.execute_in_process(
        run_config=config, resources=resources(zone, store, archive)
    )
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {key: value.value for key, value in output.step_output_data.metadata.items()}


def test_new_events_refresh_just_the_affected_users(world, data_dir):
    zone, store, _, version = world
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
    seen_by_u1 = set(zone.user_history(["u1"])["item_id"])
    assert not {item["item_id"] for item in store.lookup("u1", 12).items} & seen_by_u1
    assert store.lookup("stranger", 5).source == "popular"
    # Handling the same files again changes nothing and ingests nothing twice.
    again = run(world, ["drop.csv"])
    assert again["rows_ingested"] == 0 and again["users_refreshed"] == 2
    assert len(zone.event_history()) == 30 + 5


def test_the_store_refuses_micro_batch_writes_into_a_replaced_version(world):
    _, store, _, version = world
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
    zone, store, archive, _ = world
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
            refresh_live_users, zone, PausedBeforeWriting(), archive, u1, lambda _: None
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


def test_the_landing_sensor_requests_each_new_file_once(world, data_dir):
    zone = world[0]
    instance = DagsterInstance.ephemeral()
    land(
        data_dir,
        "waiting.csv",
        pd.DataFrame({"user_id": ["u2"], "item_id": ["i2"], "timestamp": [1]}),
    )
    first = evaluate_sensor(instance=instance, resources={"landing_zone": zone})
    [request] = first.run_requests
    # history.csv was ingested already (by the world's first run): only the new file counts.
    assert request.run_config["ops"]["score_new_events"]["config"]["files"] == ["waiting.csv"]
    idle = evaluate_sensor(cursor=first.cursor, instance=instance, resources={"landing_zone": zone})
    assert not idle.run_requests and "no new landing files" in idle.skip_reason.skip_message
    land(
        data_dir, "late.csv", pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]})
    )
    os.utime(data_dir / "landing" / "late.csv", ns=(2_000_000_000 * 10**9,) * 2)
    later = evaluate_sensor(cursor=idle.cursor, instance=instance, resources={"landing_zone": zone})
    [request] = later.run_requests
    assert request.run_config["ops"]["score_new_events"]["config"]["files"] == ["late.csv"]
    assert request.run_key != first.run_requests[0].run_key


def test_the_cursor_keeps_files_that_share_a_modification_time(data_dir):
    zone = LandingZone(files=LocalFiles(root=str(data_dir)))
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [1]})
    for name in ("a.csv", "b.csv"):
        land(data_dir, name, frame)
        os.utime(data_dir / "landing" / name, ns=(5, 5))
    fresh, cursor = new_landing_files(zone, None)
    assert [name for name, _, _ in fresh] == ["a.csv", "b.csv"]
    land(data_dir, "c.csv", frame)
    os.utime(data_dir / "landing" / "c.csv", ns=(5, 5))
    fresh, cursor = new_landing_files(zone, cursor)
    assert [name for name, _, _ in fresh] == ["c.csv"]
    assert json.loads(cursor) == {"mtime_ns": 5, "names": ["a.csv", "b.csv", "c.csv"]}
    assert new_landing_files(zone, cursor)[0] == []


def test_the_retrain_sensor_says_why_it_waits_and_fires_when_the_data_moved(world, data_dir):
    zone, store, archive, _ = world
    waiting = retrain_reason(store, zone, archive, min_new_fraction=0.5, max_unknown_item_events=2)
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
    assert retrain_reason(store, zone, archive, 0.5, 2) == (
        "3 new events name items the live model does not know"
    )
    assert retrain_reason(store, zone, archive, 0.05, 100).startswith("3 new events are 10.0%")


def test_a_failed_retrain_is_asked_for_again_once_more_data_came_in(world, data_dir):
    zone, store, archive, _ = world

    def evaluate():
        with build_sensor_context(
            instance=DagsterInstance.ephemeral(),
            resources={"store": store, "landing_zone": zone, "archive": archive},
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


def test_the_micro_batch_needs_nothing_from_the_assets():
    """Shared ingest and list building live in domain/ and resources/: the micro-batch job
    (and its run process) loads no asset module."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, reco_dagster.micro_batch; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'assets'))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
