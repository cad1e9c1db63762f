import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_api(data_dir: Path, **extra_env: str) -> Iterator[str]:
    """The real API in its own uvicorn process over `data_dir`; yields its base URL."""
    port = free_port()
    env = {**os.environ, "RECO_DATA_DIR": str(data_dir), "RECO_API_PORT": str(port), **extra_env}
    env.pop("RECO_ADMIN_TOKEN", None) if "RECO_ADMIN_TOKEN" not in extra_env else None
    server = subprocess.Popen(
        [sys.executable, "-m", "api.serve"], cwd=REPO, env=env, start_new_session=True
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base_url}/schema/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.1)
        yield base_url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
