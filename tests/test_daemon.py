"""The Dagster daemon for real: a file dropped into the landing zone reaches the API through
landing_zone_sensor and a micro_batch run, with no hand in between."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.conftest import REPO, land, live_world, running_api
from tests.servers import stop_process_group

pytestmark = pytest.mark.slow


def test_a_dropped_file_changes_what_the_api_serves(data_dir, tmp_path):
    live_world(data_dir)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    env = {
        **os.environ,
        "RECO_DATA_DIR": str(data_dir),
        "DAGSTER_HOME": str(dagster_home),
        # This test is about micro-batches: the new file must not also start a full retrain.
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
        with running_api(data_dir) as url:
            assert (
                httpx.get(f"{url}/users/late-comer/recommendations").json()["source"] == "popular"
            )
            land(
                data_dir,
                "arrivals.csv",
                pd.DataFrame(
                    {
                        "user_id": ["late-comer"] * 3,
                        "item_id": ["i1", "i2", "i3"],
                        "rating": 5.0,
                        "timestamp": 1_700_000_000,
                    }
                ),
            )
            deadline = time.monotonic() + 120
            while True:
                body = httpx.get(f"{url}/users/late-comer/recommendations").json()
                if body["source"] == "personal":
                    break
                assert daemon.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            assert not {item["item_id"] for item in body["items"]} & {"i1", "i2", "i3"}
    finally:
        stop_process_group(daemon)
