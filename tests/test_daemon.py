"""The Dagster daemon for real: a file dropped into the landing zone reaches the API through
landing_zone_sensor and a micro_batch run, with no hand in between (also a file renamed in
with an old modification time), and a run killed mid-way is retried to the same effect."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from math import inf
from pathlib import Path

import httpx
import pandas as pd
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from tests.conftest import REPO, land, live_world, running_api
from tests.servers import stop_process_group

pytestmark = pytest.mark.slow


def wait_for_personal(url: str, user: str, daemon: subprocess.Popen, log: Path) -> dict:
    """The user's list once it is personal; fails when the daemon stops or after 2 minutes."""
    deadline = time.monotonic() + 120
    while True:
        body = httpx.get(f"{url}/users/{user}/recommendations").json()
        if body["source"] == "personal":
            return body
        assert daemon.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


@contextmanager
def running_daemon(data_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`dagster-daemon` on the code location with the repository's dagster.yaml; yields the
    process and its log."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    # The instance's storage exists before the daemon and the test open it: two processes
    # creating it at once race on its schema.
    DagsterInstance.from_config(str(dagster_home)).dispose()
    env = {
        **os.environ,
        "RECO_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(dagster_home),
        # These tests are about micro-batches: new files must not also start a full retrain.
        "RECO_RETRAIN_NEW_FRACTION": "1000",
    }
    log = tmp_path / "daemon.log"
    with log.open("w") as daemon_log:
        daemon = subprocess.Popen(
            [
                Path(sys.executable).with_name("dagster-daemon"),
                "run",
                "-w",
                "workspace.yaml",
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=daemon_log,
        )
    try:
        yield daemon, log
    finally:
        stop_process_group(daemon)


def wait_until(condition: Callable[[], object], daemon: subprocess.Popen, log: Path):
    """The condition's first true value; fails when the daemon stops or after 2 minutes."""
    deadline = time.monotonic() + 120
    while not (value := condition()):
        assert daemon.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return value


ARRIVALS = pd.DataFrame(
    {"user_id": "late-comer", "item_id": ["i1", "i2", "i3"], "rating": 5.0}
).assign(timestamp=1_700_000_000)


def test_a_dropped_file_changes_what_the_api_serves(data_dir, tmp_path):
    live_world(data_dir)
    with running_daemon(data_dir, tmp_path) as (daemon, log), running_api(data_dir) as url:

        def personal(user: str) -> dict | None:
            body = httpx.get(f"{url}/users/{user}/recommendations").json()
            return body if body["source"] == "personal" else None

        assert personal("late-comer") is None
        land(data_dir, "arrivals.csv", ARRIVALS)
        body = wait_until(lambda: personal("late-comer"), daemon, log)
        assert not {item["item_id"] for item in body["items"]} & {"i1", "i2", "i3"}
        # Written an hour ago elsewhere and renamed in after newer files were seen: a rename
        # keeps the modification time, and the file is still new.
        outside = tmp_path / "old.csv"
        ARRIVALS.assign(user_id="renamed-in").to_csv(outside, index=False)
        an_hour_ago = time.time_ns() - 3600 * 10**9
        os.utime(outside, ns=(an_hour_ago, an_hour_ago))
        outside.rename(data_dir / "landing" / "old.csv")
        wait_until(lambda: personal("renamed-in"), daemon, log)


def test_a_killed_micro_batch_run_is_retried_and_its_events_count_once(data_dir, tmp_path):
    zone, event_history, store, _, _ = live_world(data_dir)
    with running_daemon(data_dir, tmp_path) as (daemon, log):
        instance = DagsterInstance.from_config(str(tmp_path / "dagster_home"))
        # Holding the store's write lock keeps the run at its write, where it is killed.
        lock = sqlite3.connect(data_dir / "reco.sqlite", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        land(data_dir, "arrivals.csv", ARRIVALS)
        wait_until(
            lambda: any(
                entry["file"] == "arrivals.csv" for entry in event_history.ingested().values()
            ),
            daemon,
            log,
        )
        [run] = instance.get_runs(RunsFilter(job_name="micro_batch"))
        worker = wait_until(lambda: worker_pid(instance, run.run_id), daemon, log)
        os.kill(worker, signal.SIGKILL)
        lock.rollback()
        lock.close()
        wait_until(lambda: store.lookup("late-comer", 5).source == "personal", daemon, log)
        runs = instance.get_runs(RunsFilter(job_name="micro_batch"))
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
        assert [retry.tags.get("dagster/retry_number") for retry in runs[:-1]] == ["1"]
    history = event_history.all_events()
    assert len(history[history["user_id"] == "late-comer"]) == 3, "ingested once"
    [entry] = [e for e in event_history.ingested().values() if e["file"] == "arrivals.csv"]
    assert "lists" in entry and zone.due_attempts(inf) == []


def worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The process a run's steps execute in, once it says."""
    for record in instance.all_logs(run_id):
        found = re.search(r"Executing steps in process \(pid: (\d+)\)", record.message or "")
        if found:
            return int(found.group(1))
    return None
