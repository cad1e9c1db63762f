"""Benchmark: the whole batch flow on MovieLens 100K in a fresh data dir.

    .venv/bin/python bench/batch_pipeline.py [--no-reference]

Prints the wall time of each stage and in total (Spark start-up included), the evaluation
metrics, and, as a reference measured in the same run, a plain PySpark script doing what the
flow's Spark part does: ALS fit + recommendForAllUsers, twice, in a fresh JVM.
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REFERENCE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.ml.recommendation import ALS
    started = time.perf_counter()
    spark = (SparkSession.builder.master("local[*]").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "8").getOrCreate())
    events = pd.read_parquet(sys.argv[1])
    frame = spark.createDataFrame(events.astype({"user_id": int, "item_id": int}))
    for _ in range(2):
        model = ALS(rank=int(sys.argv[2]), maxIter=int(sys.argv[3]), implicitPrefs=True,
                    userCol="user_id", itemCol="item_id", ratingCol="rating").fit(frame)
        model.recommendForAllUsers(100).count()
    print(time.perf_counter() - started)
    """
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the plain-Spark reference"
    )
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="reco-bench-"))
    os.environ["RECO_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from dagster import DagsterEventType, DagsterInstance

    from reco_dagster.datasets import main as fetch_dataset

    started = time.perf_counter()
    fetch_dataset(["movielens-100k"])
    fetch_s = time.perf_counter() - started

    definitions = importlib.import_module("reco_dagster.definitions")
    als = definitions.defs.resources["als"]
    with DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        job = definitions.defs.resolve_job_def("batch_retrain")
        result = job.execute_in_process(instance=instance)
        total_s = time.perf_counter() - started
        assert result.success, "batch_retrain failed"
        stages = stage_seconds(instance.all_logs(result.run_id), DagsterEventType)

    evaluations = {
        family: json.loads((data_dir / "lake" / f"{family}_evaluation.json").read_text())
        for family in ("als", "ease")
    }
    figures: dict[str, float | int | str] = {
        "total_s": round(total_s, 2),
        **{f"{stage}_s": round(seconds, 2) for stage, seconds in stages.items()},
        "dataset_fetch_s": round(fetch_s, 2),
        **{
            f"{family}_{key}": round(value, 4)
            for family, evaluation in evaluations.items()
            for key, value in evaluation["metrics"].items()
        },
        **{
            f"popularity_{key}": round(value, 4)
            for key, value in evaluations["als"]["popularity_baseline"].items()
        },
        "als_settings": json.dumps(evaluations["als"]["settings"], sort_keys=True),
    }
    if not args.no_reference:
        figures["reference_plain_spark_2x_fit_and_recommend_s"] = round(
            _plain_spark_seconds(data_dir, als.rank, als.max_iter), 2
        )

    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


def stage_seconds(entries, event_type) -> dict[str, float]:
    """Resource initialisation and each step's wall time, in run order (Spark starts inside
    the first step that uses it: the Spark resource is lazy)."""
    seconds: dict[str, float] = {}
    started = None
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == event_type.RESOURCE_INIT_STARTED and started is None:
            started = entry.timestamp
        elif event.event_type == event_type.RESOURCE_INIT_SUCCESS and started is not None:
            seconds.setdefault("resources_init", entry.timestamp - started)
    for step, (begin, end) in step_windows(entries, event_type).items():
        seconds[f"step_{step}"] = end - begin
    return seconds


def step_windows(entries, event_type) -> dict[str, tuple[float, float]]:
    """Each succeeded step's (start, end) in epoch seconds, in run order."""
    starts: dict[str, float] = {}
    windows: dict[str, tuple[float, float]] = {}
    for entry in entries:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == event_type.STEP_START:
            starts[event.step_key] = entry.timestamp
        elif event.event_type == event_type.STEP_SUCCESS:
            windows[event.step_key] = (starts[event.step_key], entry.timestamp)
    return windows


def _plain_spark_seconds(data_dir: Path, rank: int, max_iter: int) -> float:
    events = data_dir / "landing" / "movielens-100k.parquet"
    output = subprocess.run(
        [sys.executable, "-c", REFERENCE_SCRIPT, str(events), str(rank), str(max_iter)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(output.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
