"""Benchmark: how fresh micro-batch recommendations are, end to end, and how good fold-in is.

    .venv/bin/python bench/freshness.py [--drops 20]

Phase 1 (latency, the headline): MovieLens 100K live, the API running, the real Dagster
daemon (`dagster-daemon run`, the landing sensor, the run queue, a new run process per
micro-batch). Each drop writes 1,000 new events from 200 users (20 of them new) beside the
landing zone and renames the file in, as the README asks of users. Measured per drop, from
the rename until the API serves every one of those users a changed list (end to end), and
its stages: the sensor's pickup (rename → run created), the run queue (→ RUN_STARTING), the
run process's start (→ RUN_START), and the run's own work (RUN_START → served, the
run-internal figure).
Drops wait a random 0-5 s after the previous one is served, so they land at random points
of the sensor daemon's 5 s loop.

Phase 2 (consumption): with the daemon stopped, each of `--posts` (200) POST /events sends
one event on the first item of a known user's list; measured from the POST's start until a
GET of the user's list no longer holds that item (the API takes it out within the request;
target p95 ≤ 50 ms).

Phase 3 (quality): per user, the earliest 50 % of interactions train ALS, the next 25 % are
folded in, the last 25 % are the test; nDCG@10 of fold-in against a full retrain on the
first 75 %, same settings.

The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EVENTS_PER_DROP, USERS_PER_DROP, NEW_USERS_PER_DROP = 1_000, 200, 20
INGEST_TOKEN = "freshness-bench"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="reco-freshness-"))
    dagster_home = data_dir / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    os.environ.update(
        RECO_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(dagster_home),
        SPARK_LOCAL_IP="127.0.0.1",
        # The drops add 20 % to the data: no retrain in the middle of the measurement.
        RECO_RETRAIN_NEW_FRACTION="10",
        RECO_RETRAIN_UNKNOWN_ITEMS="1000000",
    )
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from dagster import DagsterEventType, DagsterInstance, RunsFilter

    from reco_dagster.datasets import main as fetch_dataset
    from reco_dagster.definitions import defs
    from tests.conftest import running_api

    fetch_dataset(["movielens-100k"])
    instance = DagsterInstance.get()
    assert defs.resolve_job_def("batch_retrain").execute_in_process(instance=instance).success

    interactions = pd.read_parquet(data_dir / "lake" / "interactions.parquet")
    known_users, items = interactions["user_id"].unique(), interactions["item_id"].unique()
    rng = np.random.default_rng(7)
    staging = data_dir / "staging"
    staging.mkdir()
    stages: dict[str, list[float]] = {
        "end_to_end": [],
        "sensor_pickup": [],
        "queue": [],
        "process_start": [],
        "run_internal": [],
    }
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with running_api(data_dir) as url:
            client = httpx.Client(base_url=url)
            for drop in range(args.drops):
                time.sleep(rng.uniform(0, 5))
                users = [
                    *rng.choice(known_users, USERS_PER_DROP - NEW_USERS_PER_DROP, replace=False),
                    *(f"fresh-{drop}-{n}" for n in range(NEW_USERS_PER_DROP)),
                ]
                before = {user: _items(client, user) for user in users}
                name = f"drop-{drop}.csv"
                _write(staging / name, users, items, rng)
                watcher = _Watcher(client, before)
                (staging / name).rename(data_dir / "landing" / name)
                landed = time.time()
                watcher.start()
                watcher.join(timeout=90)
                assert watcher.all_updated_at, f"drop {drop}: {len(watcher.pending)} unchanged"
                [record] = instance.get_run_records(
                    RunsFilter(
                        job_name="micro_batch",
                        created_after=datetime.fromtimestamp(landed, UTC),
                    ),
                    limit=1,
                )
                created = record.create_timestamp.timestamp()
                launched, run_start = (
                    instance.get_records_for_run(record.dagster_run.run_id, of_type=event)
                    .records[0]
                    .event_log_entry.timestamp
                    for event in (DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START)
                )
                stages["end_to_end"].append(watcher.all_updated_at - landed)
                stages["sensor_pickup"].append(created - landed)
                stages["queue"].append(launched - created)
                stages["process_start"].append(run_start - launched)
                stages["run_internal"].append(watcher.all_updated_at - run_start)
                print(
                    f"drop {drop}: "
                    + ", ".join(f"{stage} {values[-1]:.2f} s" for stage, values in stages.items()),
                    flush=True,
                )
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)
    with running_api(data_dir, RECO_INGEST_TOKEN=INGEST_TOKEN) as url:
        consumed = consumption(httpx.Client(base_url=url), known_users, args.posts, rng)

    figures: dict[str, float | int] = {}
    for stage, values in stages.items():
        figures[f"{stage}_p50_s"] = round(float(np.percentile(values, 50)), 3)
        figures[f"{stage}_p95_s"] = round(float(np.percentile(values, 95)), 3)
    figures |= {
        "end_to_end_max_s": round(max(stages["end_to_end"]), 3),
        "drops": args.drops,
        "events_per_drop": EVENTS_PER_DROP,
        "users_per_drop": USERS_PER_DROP,
        "consumed_gone_p50_s": round(float(np.percentile(consumed, 50)), 4),
        "consumed_gone_p95_s": round(float(np.percentile(consumed, 95)), 4),
        "consumed_gone_max_s": round(max(consumed), 4),
        "posts": args.posts,
    }
    if not args.skip_quality:
        figures |= _fold_in_quality(data_dir)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


def consumption(
    client: httpx.Client, users: np.ndarray, posts: int, rng: np.random.Generator
) -> list[float]:
    """Per POST of one event on the first item of a user's list, the seconds until the
    user's list is served without it."""
    auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    seconds = []
    for user in rng.choice(users, posts, replace=False):
        first = _items(client, user)[1][0]
        started = time.perf_counter()
        event = {"user_id": user, "item_id": first, "rating": 5, "timestamp": int(time.time())}
        assert client.post("/events", json=[event], headers=auth).status_code == 202
        # Asked again until it is gone (the API takes it out within the POST, so once).
        while first in (item for item, _ in _items(client, user)[1:]):
            assert time.perf_counter() - started < 10, f"{first} still served to {user}"
        seconds.append(time.perf_counter() - started)
    return seconds


def _items(client: httpx.Client, user: str) -> list:
    """The served list with its scores: any refresh moves the scores, if not the order."""
    body = client.get(f"/users/{user}/recommendations", params={"k": 10}).json()
    return [body["source"], *((item["item_id"], item["score"]) for item in body["items"])]


class _Watcher(threading.Thread):
    """Polls the users not yet seen changed; notes when the last of them changes."""

    def __init__(self, client: httpx.Client, before: dict[str, list[str]]) -> None:
        super().__init__(daemon=True)
        self.client, self.before = client, before
        self.pending = set(before)
        self.all_updated_at: float | None = None

    def run(self) -> None:
        deadline = time.time() + 60
        while self.pending and time.time() < deadline:
            for user in list(self.pending):
                if _items(self.client, user) != self.before[user]:
                    self.pending.discard(user)
            time.sleep(0.01)  # a sweep at a time, leaving the cores to the work measured
        if not self.pending:
            self.all_updated_at = time.time()


def _write(path: Path, users: list[str], items: np.ndarray, rng: np.random.Generator) -> None:
    per_user = EVENTS_PER_DROP // len(users)
    pd.DataFrame(
        {
            "user_id": np.repeat(users, per_user),
            "item_id": rng.choice(items, per_user * len(users)),
            "rating": rng.integers(1, 6, per_user * len(users)).astype(float),
            "timestamp": int(time.time()),
        }
    ).to_csv(path, index=False)


def _fold_in_quality(data_dir: Path) -> dict[str, float]:
    from reco_dagster.domain.als import fit_als
    from reco_dagster.domain.foldin import fold_in
    from reco_dagster.domain.metrics import ranking_metrics
    from reco_dagster.domain.models import ModelCard
    from resources.settings import AlsSettings, spark_session

    interactions = pd.read_parquet(data_dir / "lake" / "interactions.parquet")
    ordered = interactions.sort_values(["user_id", "timestamp"], kind="stable")
    position = ordered.groupby("user_id").cumcount() / ordered.groupby("user_id")[
        "user_id"
    ].transform("size")
    early, later, test = (
        ordered[position < 0.5],
        ordered[(position >= 0.5) & (position < 0.75)],
        ordered[position >= 0.75],
    )
    spark = spark_session()
    settings = AlsSettings().model_dump()

    def fitted(table: pd.DataFrame):
        card = ModelCard.describe("als", settings, table)
        return fit_als(spark, table, card, **settings).factor_model()

    seen = pd.concat([early, later])
    started = time.perf_counter()
    folded = fold_in(fitted(early), seen)
    fold_in_ndcg = ranking_metrics(folded.recommend(seen, 10), test, 10)["ndcg_at_k"]
    fold_in_s = time.perf_counter() - started
    retrain_ndcg = ranking_metrics(fitted(seen).recommend(seen, 10), test, 10)["ndcg_at_k"]
    return {
        "fold_in_ndcg_at_10": round(fold_in_ndcg, 4),
        "full_retrain_ndcg_at_10": round(retrain_ndcg, 4),
        "fold_in_share_of_retrain": round(fold_in_ndcg / retrain_ndcg, 3),
        "fold_in_experiment_s": round(fold_in_s, 1),
    }


if __name__ == "__main__":
    main()
