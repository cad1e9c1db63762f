"""`reco-api`: serve api.app:app with uvicorn on RECO_API_HOST:RECO_API_PORT."""

from __future__ import annotations

import os

import uvicorn


def main() -> None:
    uvicorn.run(
        "api.app:app",
        host=os.environ.get("RECO_API_HOST", "127.0.0.1"),
        port=int(os.environ.get("RECO_API_PORT", "8000")),
        log_level=os.environ.get("RECO_API_LOG_LEVEL", "warning"),
    )


if __name__ == "__main__":
    main()
