"""A real PostgreSQL server from Debian's packages (`postgresql`), in a temporary folder on a
free loopback port, stopped by PID."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import free_port


@contextmanager
def postgres_server(database: str = "dagster") -> Iterator[dict[str, str]]:
    """Yields the connection as DAGSTER_PG_* variables (a fresh password each time)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (on Debian: apt-get install postgresql)")
    bindir = versions[-1].parent
    # PostgreSQL refuses to run as root: run it as Debian's postgres user then.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="reco-postgres-"))
    if as_owner:
        shutil.chown(folder, "postgres", "postgres")
    password, port = secrets.token_urlsafe(16), free_port()
    (folder / "password").write_text(password)
    if as_owner:
        shutil.chown(folder / "password", "postgres", "postgres")
    data = folder / "data"

    def run(*command: str) -> None:
        subprocess.run([*as_owner, *command], check=True, capture_output=True, cwd=folder)

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "reco",
            "--pwfile",
            str(folder / "password"),
            "--auth=scram-sha-256",
        )
        run(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "server.log"),
            "-w",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "start",
        )
        connection = {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_DB": database,
            "DAGSTER_PG_USERNAME": "reco",
            "DAGSTER_PG_PASSWORD": password,
        }
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "reco", database],
            check=True,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": password},
        )
        yield connection
    finally:
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
            deadline = time.monotonic() + 30
            while pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)
