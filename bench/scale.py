"""Scale benchmark: the batch flow on generated event logs of 1M to 50M events.

    .venv/bin/python bench/scale.py [--events 1000000 5000000 20000000 50000000]

For each size, in a fresh data dir: generate the events in a process of their own
(`synthetic_event_log`: power-law user activity and item popularity, taste clusters,
timestamps; users and items grow with the size, to MovieLens 20M's 138,000 x 27,000 at 20M)
and land them as parquet files of 1M events; then, in a fresh process, run `batch_retrain`
(in-process executor, as deployed) and one micro-batch of 1,000 new events from 200 users
(20 of them new). Prints each stage's wall time, the peak memory of each part of the process
tree, sampled every 0.2 s: the driver (the Python process the job runs in, where #18's
target applies), Spark's JVM (in local mode it hosts the executors too; its heap is set by
spark.driver.memory) and the Python workers Spark starts for pandas UDFs; the driver's and
the workers' peaks during each of the five steps where they were highest (a step's figure
includes what earlier steps left allocated); then the micro-batch's time with its stages
(ingest, reading the users' history, loading the model, fold-in and ranking, writing) and
the driver's peak during it. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MOVIELENS_20M = (20_000_000, 138_000, 27_000)
FILE_EVENTS = 1_000_000


def shape(n_events: int) -> tuple[int, int]:
    """(users, items) for a log of n_events, scaled like MovieLens 20M (145 events a user;
    the catalogue grows with the cube root of the size)."""
    events, users, items = MOVIELENS_20M
    return max(200, n_events * users // events), round(items * (n_events / events) ** (1 / 3))


class PeakMemory:
    """The highest resident memory of this process (the driver), of Spark's JVM and of the
    other Python processes below it (Spark's workers), each sampled apart."""

    ROLES = ("driver", "jvm", "python_workers")

    def __init__(self, interval_s: float = 0.2) -> None:
        self.peak_bytes = dict.fromkeys(self.ROLES, 0)
        self.samples: list[tuple[float, dict[str, int]]] = []
        """(epoch seconds, RSS by role): to tell which step a peak came in."""
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            now = dict.fromkeys(self.ROLES, 0)
            for process in [me, *me.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss
                    role = (
                        "driver"
                        if process.pid == me.pid
                        else "jvm"
                        if "java" in process.name()
                        else "python_workers"
                    )
                except psutil.Error:
                    continue
                now[role] += rss
            for role, rss in now.items():
                self.peak_bytes[role] = max(self.peak_bytes[role], rss)
            self.samples.append((time.time(), now))

    def peak_by_step(self, role: str, windows: dict[str, tuple[float, float]]) -> dict[str, float]:
        """A role's peak RSS (GB) while each step ran (`windows`: the steps' start and end;
        the in-process executor runs one step at a time), the largest first."""
        peaks = {
            step: round(
                max((rss[role] for at, rss in self.samples if begin <= at <= end), default=0) / 1e9,
                2,
            )
            for step, (begin, end) in windows.items()
        }
        return dict(sorted(peaks.items(), key=lambda step: -step[1]))


def run_one_size(n_events: int) -> dict[str, float | int]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"reco-scale-{n_events}-"))
    os.environ["RECO_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from dagster import DagsterEventType, DagsterInstance

    from bench.batch_pipeline import stage_seconds, step_windows

    started = time.perf_counter()
    # Generated elsewhere: the driver's memory is the job's alone.
    landed = subprocess.run(
        [sys.executable, __file__, "--land", str(n_events), str(data_dir / "landing")],
        capture_output=True,
        text=True,
        check=True,
    )
    known_users, items = json.loads(landed.stdout.strip().splitlines()[-1])
    generate_s = time.perf_counter() - started
    n_users, n_items = shape(n_events)
    landing = data_dir / "landing"

    definitions = importlib.import_module("reco_dagster.definitions")
    with DagsterInstance.ephemeral() as instance, PeakMemory() as memory:
        started = time.perf_counter()
        result = definitions.defs.resolve_job_def("batch_retrain").execute_in_process(
            instance=instance
        )
        total_s = time.perf_counter() - started
        assert result.success, "batch_retrain failed"
        entries = instance.all_logs(result.run_id)
        stages = stage_seconds(entries, DagsterEventType)
        windows = step_windows(entries, DagsterEventType)
        by_step = {
            role: memory.peak_by_step(role, windows) for role in ("driver", "python_workers")
        }
        [ranked_on] = [
            event.asset_materialization.metadata["ranked_on"].value
            for event in instance.all_logs(
                result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
            )
            if event.asset_materialization.asset_key.to_user_string() == "als_recommendations"
        ]

        _land_micro_batch(landing / "micro-batch.csv", known_users, items)
        streaming = importlib.import_module("reco_dagster.streaming")
        micro_began, started = time.time(), time.perf_counter()
        micro = streaming.defs.resolve_job_def("micro_batch").execute_in_process(
            instance=instance,
            run_config={"ops": {"score_new_events": {"config": {"files": ["micro-batch.csv"]}}}},
        )
        micro_run_s = time.perf_counter() - started
        micro_driver_gb = memory.peak_by_step("driver", {"micro": (micro_began, time.time())})[
            "micro"
        ]
        assert micro.success, "micro_batch failed"
        micro_stages = stage_seconds(instance.all_logs(micro.run_id), DagsterEventType)
        [micro_output] = [
            event.dagster_event.event_specific_data.metadata
            for event in instance.all_logs(micro.run_id, of_type=DagsterEventType.STEP_OUTPUT)
        ]

    evaluation = json.loads((data_dir / "lake" / "als_evaluation.json").read_text())
    return {
        "events": n_events,
        "users": n_users,
        "items": n_items,
        "generate_and_land_s": round(generate_s, 1),
        "total_s": round(total_s, 1),
        **{name: round(seconds, 1) for name, seconds in stages.items()},
        **{f"{role}_peak_rss_gb": round(peak / 1e9, 2) for role, peak in memory.peak_bytes.items()},
        **{
            f"{role}_peak_rss_gb_in_{step}": gb
            for role, steps in by_step.items()
            for step, gb in list(steps.items())[:5]
        },
        "als_ranked_on": ranked_on,
        "micro_batch_fold_in_s": round(micro_stages["step_score_new_events"], 3),
        "micro_batch_run_s": round(micro_run_s, 2),
        "micro_batch_driver_peak_rss_gb": micro_driver_gb,
        **{
            f"micro_batch_{name}": value.value
            for name, value in micro_output.items()
            if name.endswith("_ms")
        },
        "als_precision_at_10": round(evaluation["metrics"]["precision_at_10"], 4),
        "popularity_precision_at_10": round(
            evaluation["popularity_baseline"]["precision_at_10"], 4
        ),
        "training_interactions": evaluation["training_rows"],
    }


def land(n_events: int, landing: Path) -> tuple[list[str], list[str]]:
    """Generate and land the events as parquet files of FILE_EVENTS; returns 180 known users
    and 500 items for the micro-batch to use."""
    from reco_dagster.domain.synthetic import synthetic_event_log

    events = synthetic_event_log(n_events, *shape(n_events), seed=7)
    landing.mkdir(parents=True)
    for part, start in enumerate(range(0, n_events, FILE_EVENTS)):
        events.iloc[start : start + FILE_EVENTS].to_parquet(landing / f"events-{part:03}.parquet")
    known_users = events["user_id"].drop_duplicates().sample(180, random_state=1).tolist()
    return known_users, events["item_id"].drop_duplicates().sample(500, random_state=1).tolist()


def _land_micro_batch(path: Path, known_users: list[str], items: list[str]) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    users = known_users + [f"newcomer-{n}" for n in range(20)]
    pd.DataFrame(
        {
            "user_id": rng.choice(users, 1000),
            "item_id": rng.choice(items, 1000),
            "rating": rng.integers(1, 6, 1000).astype(float),
            "timestamp": 1_700_000_000 + np.arange(1000),
        }
    ).to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--events", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000, 50_000_000]
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--land", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.land:
        print(json.dumps(land(int(args.land[0]), Path(args.land[1]))))
        return
    if args.one:
        print(json.dumps(run_one_size(args.one)))
        return
    figures: dict[str, float | int] = {}
    for n_events in args.events:
        # A fresh process per size: its peak memory is its own, Spark starts afresh.
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(n_events)],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(child.stderr[-5000:], file=sys.stderr)
            raise SystemExit(f"{n_events:,} events: the run failed")
        sized = json.loads(child.stdout.strip().splitlines()[-1])
        label = f"{n_events // 1_000_000}m" if n_events >= 1_000_000 else str(n_events)
        for name, value in sized.items():
            print(f"{label:>4}  {name:<40} {value}", flush=True)
            figures[f"n{label}_{name}"] = value
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
