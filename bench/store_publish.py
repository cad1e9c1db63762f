"""Publish top-10 lists for 100,000 users to each store and print documents per second.

SQLite is the embedded file; Cosmos DB is a local cosmosdb-server (a single Node process), so
its figure measures the store's client side (documents, threads, retries, request charges),
not Azure's service. Run: .venv/bin/python bench/store_publish.py [--users N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.cosmos_store import CosmosRecommendationStore
from resources.store import RecommendationStore, SqliteRecommendationStore
from tests.servers.azure import COSMOS_EMULATOR_KEY, cosmosdb_server

POPULAR = [{"item_id": f"i{n}", "score": 1.0 - n / 100} for n in range(100)]


def top10_lists(users: int) -> list[tuple[str, list[dict]]]:
    return [
        (
            f"user-{n}",
            [
                {"item_id": f"i{(n * 7 + r) % 1682}", "score": round(1.0 - r / 10, 5)}
                for r in range(10)
            ],
        )
        for n in range(users)
    ]


def publish(store: RecommendationStore, lists: list[tuple[str, list[dict]]]) -> dict:
    store.register("v1", {"family": "bench"})
    started = time.perf_counter()
    report = store.write_version("v1", lists, POPULAR)
    store.activate("v1")
    total_s = time.perf_counter() - started
    assert store.lookup(lists[-1][0], 10).items == lists[-1][1]
    return {
        "documents": report.documents,
        "total_s": round(total_s, 2),
        "documents_per_s": round(report.documents / total_s),
        "request_units": report.request_units,
        "retries": report.retries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    lists = top10_lists(args.users)
    with tempfile.TemporaryDirectory(prefix="reco-store-bench-") as folder:
        sqlite = publish(SqliteRecommendationStore(path=f"{folder}/reco.sqlite"), lists)
    print(f"sqlite: {sqlite}", flush=True)
    with cosmosdb_server() as server:
        store = CosmosRecommendationStore(
            endpoint=server.url, key=COSMOS_EMULATOR_KEY, concurrency=args.concurrency
        )
        cosmos = publish(store, lists)
    print(f"cosmosdb-server: {cosmos}", flush=True)
    print(
        json.dumps(
            {
                "users": args.users,
                "sqlite_documents_per_s": sqlite["documents_per_s"],
                "sqlite_total_s": sqlite["total_s"],
                "cosmos_documents_per_s": cosmos["documents_per_s"],
                "cosmos_total_s": cosmos["total_s"],
                "cosmos_request_units": cosmos["request_units"],
                "cosmos_retries": cosmos["retries"],
                "cosmos_concurrency": args.concurrency,
            }
        )
    )


if __name__ == "__main__":
    main()
