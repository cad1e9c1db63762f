"""`reco-api`: serve api.app:app on RECO_API_HOST:RECO_API_PORT.

Granian by default: on these 2 cores it serves the lookup route about 1.7 times as fast as uvicorn
and keeps its tail at 200 connections (uvicorn lets a few requests wait over 2 s; see
bench/api_load.py). RECO_API_SERVER=uvicorn switches back.

A client gets RECO_API_HEADER_TIMEOUT_S (default 5) to send a request's headers, then the
connection is closed; granian holds at most RECO_API_MAX_CONNECTIONS (default 8192)
connections at once. With granian's defaults (30 s, 1,024), 1,100 half-sent requests
(slowloris) took every slot and the API answered nobody for 30 s. In production a reverse
proxy in front (README: "Behind nginx") buffers requests whole before they reach the API.
"""

from __future__ import annotations

import asyncio
import os

APP = "api.app:app"


def header_timeout_s() -> float:
    return float(os.environ.get("RECO_API_HEADER_TIMEOUT_S", "5"))


def max_connections() -> int:
    return int(os.environ.get("RECO_API_MAX_CONNECTIONS", "8192"))


def main() -> None:
    host = os.environ.get("RECO_API_HOST", "127.0.0.1")
    port = int(os.environ.get("RECO_API_PORT", "8000"))
    log_level = os.environ.get("RECO_API_LOG_LEVEL", "warning")
    if os.environ.get("RECO_API_SERVER", "granian") == "uvicorn":
        import uvicorn

        uvicorn.run(APP, host=host, port=port, log_level=log_level, http=header_timeout_protocol())
        return
    from granian import Granian
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings

    Granian(
        APP,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        log_level=log_level,
        backpressure=max_connections(),
        http1_settings=HTTP1Settings(header_read_timeout=round(header_timeout_s() * 1000)),
    ).serve()


def header_timeout_protocol() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline for each request's headers, which uvicorn
    lacks: it waits for a half-sent request as long as the client likes."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    timeout = header_timeout_s()

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def _await_headers(self) -> None:
            self._cancel_deadline()
            self._deadline = self.loop.call_later(timeout, self.transport.close)

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def on_headers_complete(self) -> None:
            self._cancel_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)  # the next request's headers are in already
            super().on_response_complete()
            # The next request on a kept-alive connection gets its own deadline.
            if not pipelined and not self.transport.is_closing():
                self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


if __name__ == "__main__":
    main()
