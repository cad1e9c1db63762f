"""Real servers the tests start and stop: Azure's stand-ins, PostgreSQL."""

import os
import signal
import socket
import subprocess


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process_group(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM to a process started with start_new_session=True and to all it started;
    SIGKILL to the group if it has not ended within `timeout_s`."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
