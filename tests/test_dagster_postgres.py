"""Dagster on its production storage: the documented PostgreSQL instance file, a real
PostgreSQL server, the real CLI materializing assets."""

import os
import subprocess

import pandas as pd
import psycopg2
import pytest
import yaml

from tests.conftest import REPO, land
from tests.servers.postgres import postgres_server

pytestmark = pytest.mark.slow

POSTGRES_INSTANCE = REPO / "deploy" / "dagster" / "dagster-postgres.yaml"


def test_the_postgres_instance_file_keeps_the_embedded_run_queue():
    embedded = yaml.safe_load((REPO / "dagster.yaml").read_text())
    production = yaml.safe_load(POSTGRES_INSTANCE.read_text())
    assert production["run_queue"] == embedded["run_queue"]
    assert "storage" not in embedded and "postgres" in production["storage"]


def test_assets_materialize_with_run_and_event_storage_in_postgres(tmp_path, data_dir):
    events = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [1, 2]})
    land(data_dir, "events.csv", events)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(POSTGRES_INSTANCE.read_text())
    with postgres_server() as connection:
        result = subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "dagster"),
                "asset",
                "materialize",
                "-m",
                "reco_dagster.definitions",
                "--select",
                "raw_events,history_by_user,interactions",
            ],
            cwd=REPO,
            env={
                **os.environ,
                **connection,
                "DAGSTER_HOME": str(dagster_home),
                "RECO_DATA_DIR": str(data_dir),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with (
            psycopg2.connect(
                host=connection["DAGSTER_PG_HOST"],
                port=connection["DAGSTER_PG_PORT"],
                dbname=connection["DAGSTER_PG_DB"],
                user=connection["DAGSTER_PG_USERNAME"],
                password=connection["DAGSTER_PG_PASSWORD"],
            ) as database,
            database.cursor() as cursor,
        ):
            cursor.execute("SELECT status FROM runs")
            assert cursor.fetchall() == [("SUCCESS",)]
            cursor.execute(
                "SELECT asset_key FROM event_logs "
                "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id"
            )
            keys = [row[0] for row in cursor.fetchall()]
    assert keys == ['["raw_events"]', '["history_by_user"]', '["interactions"]']
    # Nothing went to the embedded SQLite storage.
    assert not list(dagster_home.rglob("*.db"))
