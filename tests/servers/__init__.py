"""Real servers the tests start and stop: Azure's stand-ins, PostgreSQL."""

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
