"""`reco-api`: serve api.app:app on RECO_API_HOST:RECO_API_PORT.

Granian by default: on these 2 cores it serves the lookup route about 1.7 times as fast as uvicorn
and keeps its tail at 200 connections (uvicorn lets a few requests wait over 2 s; see
bench/api_load.py). RECO_API_SERVER=uvicorn switches back.
"""

from __future__ import annotations

import os

APP = "api.app:app"


def main() -> None:
    host = os.environ.get("RECO_API_HOST", "127.0.0.1")
    port = int(os.environ.get("RECO_API_PORT", "8000"))
    log_level = os.environ.get("RECO_API_LOG_LEVEL", "warning")
    if os.environ.get("RECO_API_SERVER", "granian") == "uvicorn":
        import uvicorn

        uvicorn.run(APP, host=host, port=port, log_level=log_level)
        return
    from granian import Granian
    from granian.constants import Interfaces

    Granian(APP, address=host, port=port, interface=Interfaces.ASGI, log_level=log_level).serve()


if __name__ == "__main__":
    main()
