"""Local stand-ins for Azure, from the npm registry (package.json), run as real servers on
free loopback ports and stopped by PID: cosmosdb-server (Cosmos DB's NoSQL API) and azurite
(Blob Storage)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
NODE_BIN = REPO / "node_modules" / ".bin"

# The documented, public keys of the Cosmos DB emulator and of Azurite's development account.
COSMOS_EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): connections hang, as with a server that went away."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


def _require(installed: Path) -> None:
    if not installed.exists():
        raise RuntimeError(
            f"{installed} is missing: run `npm ci` in {REPO} (scripts/setup.sh does)"
        )


@contextmanager
def _serving(command: list[str], port: int, url: str, env: dict[str, str]) -> Iterator[Server]:
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(command)} did not start") from None
                time.sleep(0.1)
        yield Server(url, process)
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # azurite waits for idle client connections
            process.kill()
            process.wait(timeout=5)


@contextmanager
def cosmosdb_server(**env: str) -> Iterator[Server]:
    """cosmosdb-server through tests/servers/cosmosdb-server.js (which says what it changes);
    `env` may ask it for injected faults (COSMOS_FAULT_EVERY, COSMOS_FAULT_STATUS)."""
    port = free_port()
    script = REPO / "tests" / "servers" / "cosmosdb-server.js"
    _require(REPO / "node_modules" / "@vercel" / "cosmosdb-server")
    with _serving(["node", str(script), str(port)], port, f"http://127.0.0.1:{port}", env) as s:
        yield s


@contextmanager
def azurite() -> Iterator[Server]:
    port = free_port()
    binary = NODE_BIN / "azurite-blob"
    _require(binary)
    with (
        tempfile.TemporaryDirectory(prefix="azurite-") as location,
        _serving(
            [
                str(binary),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--location",
                location,
                "--skipApiVersionCheck",
                "--silent",
            ],
            port,
            f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}",
            {},
        ) as server,
    ):
        yield server
