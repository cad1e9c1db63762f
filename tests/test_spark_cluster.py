"""Training and scoring on a real Spark standalone cluster, a master and a worker started from
the installed pyspark on loopback, give what local mode gives: no code change, only
RECO_SPARK_MASTER."""

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pyspark
import pytest

from reco_dagster.domain.synthetic import synthetic_events
from resources.event_history import BY_USER_MANIFEST
from resources.files import LocalFiles
from resources.lake_tables import read_table
from tests.conftest import run_batch_retrain
from tests.servers import free_port, stop_process_group

pytestmark = pytest.mark.slow


@contextmanager
def standalone_cluster(work_dir: Path) -> Iterator[tuple[str, str]]:
    """(master URL, master's web UI URL) of a one-worker cluster; both stopped by PID."""
    spark_home = Path(pyspark.__file__).parent
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1"}
    port, ui_port = free_port(), free_port()
    master_url, ui_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    spark_class = str(spark_home / "bin" / "spark-class")
    master = f"org.apache.spark.deploy.master.Master --host 127.0.0.1 --port {port} "
    master += f"--webui-port {ui_port}"
    worker = f"org.apache.spark.deploy.worker.Worker {master_url} --host 127.0.0.1 --cores 2 "
    worker += f"--memory 3g --webui-port {free_port()} --work-dir {work_dir}"
    commands = [[spark_class, *master.split()], [spark_class, *worker.split()]]
    processes = []
    try:
        for command, log in zip(commands, ("master.log", "worker.log"), strict=True):
            with open(work_dir.parent / log, "w") as output:
                processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 90
        while _cluster_state(ui_url).get("aliveworkers") != 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker registered; see {work_dir.parent}/*.log")
            time.sleep(0.5)
        yield master_url, ui_url
    finally:
        for process in reversed(processes):
            stop_process_group(process)


def _cluster_state(ui_url: str) -> dict:
    try:
        return httpx.get(f"{ui_url}/json/", timeout=5).json()
    except (httpx.TransportError, ValueError):
        return {}


def _application_names(ui_url: str) -> list[str]:
    """The applications the master has run or runs; its web UI may answer late under load."""
    deadline = time.monotonic() + 30
    while True:
        state = _cluster_state(ui_url)
        names = [
            app["name"] for app in state.get("completedapps", []) + state.get("activeapps", [])
        ]
        if names or time.monotonic() > deadline:
            return names
        time.sleep(0.5)


def _top10(data_dir: Path) -> pd.Series:
    ranked = read_table(LocalFiles(root=str(data_dir)), "lake/als_recommendations").to_pandas()
    top = ranked[ranked["rank"] <= 10]
    return top.groupby("user_id")["item_id"].apply(frozenset)


def test_the_batch_flow_trains_and_scores_on_a_standalone_cluster_as_in_local_mode(tmp_path):
    events = synthetic_events(300, 400, 40, seed=3)
    runs = {}
    for mode in ("local", "cluster"):
        (tmp_path / mode / "data" / "landing").mkdir(parents=True)
        events.to_parquet(tmp_path / mode / "data" / "landing" / "events.parquet", index=False)
    (tmp_path / "spark-work").mkdir()
    with standalone_cluster(tmp_path / "spark-work") as (master_url, ui_url):
        # Every user ranked on the cluster's executors; the local run ranks on its driver.
        runs["cluster"] = run_batch_retrain(
            tmp_path / "cluster" / "data",
            tmp_path / "cluster",
            spark_from_users=0,
            RECO_SPARK_MASTER=master_url,
        )
        apps = _application_names(ui_url)
    runs["local"] = run_batch_retrain(tmp_path / "local" / "data", tmp_path / "local")
    for mode, result in runs.items():
        assert result.returncode == 0, mode + result.stdout[-2000:] + result.stderr[-2000:]
    assert apps == ["reco-dagster"]
    assert "Ranking every user's items on the Spark executors" in runs["cluster"].stderr
    # A remote master takes the large-data path whatever the size: the user-sorted history
    # in parts of user ranges...
    manifests = {
        mode: json.loads((tmp_path / mode / "data" / BY_USER_MANIFEST).read_text()) for mode in runs
    }
    assert len(manifests["cluster"]["parts"]) > 1 and len(manifests["local"]["parts"]) == 1
    # ... and the interactions, their splits and the lists, written by the executors in parts.
    for table in ("interactions", "train_interactions", "test_interactions", "als_recommendations"):
        assert (tmp_path / "cluster" / "data" / "lake" / table / "parts.json").exists(), table
        assert (tmp_path / "local" / "data" / "lake" / f"{table}.parquet").exists(), table

    evaluations = {
        mode: pd.read_json(tmp_path / mode / "data" / "lake" / "als_evaluation.json", typ="series")
        for mode in runs
    }
    assert evaluations["cluster"]["model_version"] == evaluations["local"]["model_version"]
    for metric in ("precision_at_10", "ndcg_at_10", "map_at_10"):
        local, cluster = (evaluations[mode]["metrics"][metric] for mode in ("local", "cluster"))
        assert cluster == pytest.approx(local, abs=0.02), metric
    # EASE is fitted and scored alike on either engine: the same version, the same metrics
    # (ALS's factors depend on how Spark partitions the data).
    ease = {
        mode: pd.read_json(tmp_path / mode / "data" / "lake" / "ease_evaluation.json", typ="series")
        for mode in runs
    }
    assert ease["cluster"]["model_version"] == ease["local"]["model_version"]
    assert ease["cluster"]["metrics"] == pytest.approx(ease["local"]["metrics"], rel=1e-9)
    assert ease["cluster"]["popularity_baseline"] == pytest.approx(
        ease["local"]["popularity_baseline"], rel=1e-9
    )
    local_top, cluster_top = (
        _top10(tmp_path / "local" / "data"),
        _top10(tmp_path / "cluster" / "data"),
    )
    assert list(cluster_top.index) == list(local_top.index)
    overlap = [len(a & b) / 10 for a, b in zip(local_top, cluster_top, strict=True)]
    assert sum(overlap) / len(overlap) >= 0.8
