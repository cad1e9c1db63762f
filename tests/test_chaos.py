"""Chaos through a running `dagster dev`: about 30 files land the ways real feeds land them
(renamed in with old modification times, out of order, written slowly, one under two names),
micro-batch run processes are killed with SIGKILL, and a batch_retrain starts in the middle.
At the end every event is in the history exactly once and every user is served exactly the
list a fold-in of their whole history into the live version gives."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.lists import PUBLISHED_DEPTH
from reco_dagster.domain.ranking import fill_short_lists
from reco_dagster.domain.synthetic import synthetic_events
from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.model_archive import ModelArchive
from resources.store import SqliteRecommendationStore
from tests.conftest import REPO, run_batch_retrain
from tests.servers import free_port

pytestmark = pytest.mark.slow

EVENT_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
KILLS = 3


def test_every_landed_event_reaches_the_served_lists_exactly_once(tmp_path):
    data_dir = tmp_path / "data"
    landing, staging = data_dir / "landing", data_dir / "staging"
    landing.mkdir(parents=True)
    staging.mkdir()
    base = synthetic_events(150, 120, 20, seed=5)
    base.to_parquet(landing / "history.parquet", index=False)
    first = run_batch_retrain(data_dir, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    dagster_home = tmp_path / "dagster_home"
    env = {
        **os.environ,
        "RECO_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(dagster_home),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        # Only the retrain this test starts: not one the new data would ask for.
        "RECO_RETRAIN_NEW_FRACTION": "1000",
        "RECO_RETRAIN_UNKNOWN_ITEMS": "1000000",
    }
    port = free_port()
    with (tmp_path / "dagster.log").open("w") as log:
        dev = subprocess.Popen(
            [
                *(Path(sys.executable).with_name("dagster"), "dev", "-w", "workspace.yaml"),
                *("-h", "127.0.0.1", "-p", str(port)),
            ],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until(
            lambda: _answers(f"http://127.0.0.1:{port}/server_info"), 120, lambda: "dagster dev"
        )
        killer = _RunWorkerKiller(dev.pid, KILLS)
        killer.start()
        drops = _drop_files(landing, staging, base, retrain=lambda: _launch_retrain(env, tmp_path))
        landed = pd.concat(drops.values(), ignore_index=True)
        expected_events = pd.concat([base, landed], ignore_index=True)

        files = LocalFiles(root=str(data_dir))
        event_history, archive = EventHistory(files=files), ModelArchive(files=files)
        _wait_until(
            lambda: (
                len(event_history.all_events()) >= len(expected_events) and _quiet(dagster_home)
            ),
            300,
            lambda: (
                f"every event ingested ({len(event_history.all_events())} of "
                f"{len(expected_events)}) and no run left ({_busy(dagster_home)})"
            ),
        )
        killer.stop()
        # One more sensor loop: nothing was left to launch.
        time.sleep(6)
        assert _quiet(dagster_home)
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        dev.wait(timeout=60)

    assert len(killer.killed) == KILLS, "the test must kill micro-batches to test their retries"
    history = event_history.all_events()
    assert _multiset(history) == _multiset(expected_events), "every event exactly once"

    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    live = store.live_version()
    retrains = _runs(dagster_home, RunsFilter(job_name="batch_retrain"))
    assert len(retrains) == 2 and all(run.status == DagsterRunStatus.SUCCESS for run in retrains)
    model = archive.load(live)
    interactions, _ = build_interactions(history)
    cold_start = pd.DataFrame(
        store.lookup("", PUBLISHED_DEPTH, popular_only=True).items, columns=["item_id", "score"]
    )
    ranked = fold_in(model, interactions).recommend(seen=interactions, k=PUBLISHED_DEPTH)
    ranked = fill_short_lists(ranked, cold_start, interactions, PUBLISHED_DEPTH)
    expected = ranked.groupby("user_id")["item_id"].apply(lambda items: items.head(10).tolist())
    knows = interactions["item_id"].isin(model.item_ids).groupby(interactions["user_id"]).any()
    wrong = []
    for user_id, knows_an_item in knows.items():
        served = store.lookup(user_id, 10)
        if (served.model_version, served.source) != (
            live,
            "personal" if knows_an_item else "popular",
        ) or (knows_an_item and [i["item_id"] for i in served.items] != expected[user_id]):
            wrong.append(user_id)
    assert not wrong, f"{len(wrong)} of {len(knows)} users served a stale list: {wrong[:10]}"


def _drop_files(
    landing: Path, staging: Path, base: pd.DataFrame, retrain
) -> dict[str, pd.DataFrame]:
    """About 30 files the ways feeds land them; returns each distinct content's events."""
    rng = np.random.default_rng(11)
    users = base["user_id"].unique()
    items = base["item_id"].unique()
    now = int(time.time())
    drops: dict[str, pd.DataFrame] = {}

    def events(n: int) -> pd.DataFrame:
        who = [*rng.choice(users, 2), f"chaos-{n}"]
        return pd.DataFrame(
            {
                "user_id": np.repeat(who, 4),
                "item_id": [*rng.choice(items, 11, replace=False), f"new-item-{n}"],
                "rating": rng.integers(1, 6, 12).astype(float),
                "timestamp": now - 1000 + n,
            }
        )

    def rename_in(n: int, name: str, mtime: float | None = None) -> None:
        frame = events(n)
        path = staging / name
        frame.to_csv(path, index=False)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        path.rename(landing / name)
        drops[name] = frame

    for n in range(10):  # written elsewhere, then renamed in; a retrain starts half-way
        rename_in(n, f"fresh-{n:02}.csv")
        time.sleep(0.5)
        if n == 4:
            retrain()
    for n in range(10, 15):  # renamed in with modification times an hour old
        rename_in(n, f"old-{n:02}.csv", mtime=now - 3600 - n)
        time.sleep(0.5)
    for n in range(19, 14, -1):  # out of order: the later, the older
        rename_in(n, f"late-{n:02}.csv", mtime=now - 60 - (19 - n) * 10)
        time.sleep(0.3)
    writers = [
        threading.Thread(target=_write_slowly, args=(landing, n, events(n), drops))
        for n in range(20, 23)
    ]
    for writer in writers:
        writer.start()
    twice = events(23)
    for name in ("twice-a.csv", "twice-b.csv"):  # the same bytes under two names: once
        twice.to_csv(staging / name, index=False)
        (staging / name).rename(landing / name)
    drops["twice-a.csv"] = twice
    for n in range(24, 30):
        rename_in(n, f"after-{n:02}.csv")
        time.sleep(1.0)
    for writer in writers:
        writer.join()
    return drops


def _write_slowly(
    landing: Path, n: int, frame: pd.DataFrame, drops: dict[str, pd.DataFrame]
) -> None:
    """Written in place, whole lines at a time, over about 3 s: never taken half-written."""
    name = f"slow-{n:02}.csv"
    text = frame.to_csv(index=False).splitlines(keepends=True)
    with (landing / name).open("w") as handle:
        for line in text:
            handle.write(line)
            handle.flush()
            time.sleep(3 / len(text))
    drops[name] = frame


class _RunWorkerKiller(threading.Thread):
    """SIGKILLs the first `count` micro-batch run processes it finds in `dagster dev`'s tree,
    a few seconds apart: each is a child of the streaming location's code server."""

    def __init__(self, dev_pid: int, count: int) -> None:
        super().__init__(daemon=True)
        self.dev, self.count = psutil.Process(dev_pid), count
        self.killed: list[int] = []
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        self.join()

    def run(self) -> None:
        while len(self.killed) < self.count and not self._stopped.is_set():
            worker = self._micro_batch_worker()
            if worker is None:
                time.sleep(0.05)
                continue
            worker.send_signal(signal.SIGKILL)
            self.killed.append(worker.pid)
            self._stopped.wait(5)

    def _micro_batch_worker(self) -> psutil.Process | None:
        for process in self.dev.children(recursive=True):
            try:
                if "reco_dagster.streaming" not in " ".join(process.cmdline()):
                    continue
                for child in process.children():
                    if "spawn_main" in " ".join(child.cmdline()):
                        return child
            except psutil.NoSuchProcess:
                continue
        return None


def _launch_retrain(env: dict[str, str], tmp_path: Path) -> None:
    """batch_retrain through the run queue, as the UI's Launchpad would."""
    dagster = Path(sys.executable).with_name("dagster")
    subprocess.run(
        [
            *(dagster, "job", "launch", "-w", "workspace.yaml", "-l", "reco_dagster"),
            *("-j", "batch_retrain", "-c", str(tmp_path / "run_config.json")),
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )


def _runs(dagster_home: Path, runs: RunsFilter) -> list:
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        return instance.get_runs(runs)


def _busy(dagster_home: Path) -> list[str]:
    """The runs queued, starting or running, in any location."""
    busy = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    runs = _runs(dagster_home, RunsFilter(statuses=busy))
    return [f"{run.job_name} {run.run_id[:8]} {run.status.value}" for run in runs]


def _quiet(dagster_home: Path) -> bool:
    return not _busy(dagster_home)


def _multiset(events: pd.DataFrame) -> list[tuple]:
    rows = events[EVENT_COLUMNS].astype({"rating": float, "timestamp": int})
    return sorted(map(tuple, rows.astype(str).to_numpy()))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _wait_until(condition, timeout_s: float, what) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what()}")
        time.sleep(0.5)
