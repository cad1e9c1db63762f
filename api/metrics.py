"""Prometheus metrics at a cost the hot path can afford.

Litestar's PrometheusMiddleware halves this API's throughput (it builds a Request and a
label dict per call); this ASGI middleware times each request with two counters' worth of
work, labelled by route template, method and status.
"""

from __future__ import annotations

from time import perf_counter

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("reco_api_requests", "Requests answered", ["route", "method", "status"])
LATENCY = Histogram(
    "reco_api_request_duration_seconds",
    "Time from the request reaching the app to its response being sent",
    ["route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
CACHE_HITS = Counter("reco_api_cache_hits", "Lookups answered from the response cache")
CACHE_MISSES = Counter("reco_api_cache_misses", "Lookups that read the store")
LIVE_VERSION = Gauge("reco_api_live_model", "The live model version (label), value 1", ["version"])


def request_metrics(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_and_note)
        finally:
            route = scope.get("path_template", "unrouted")
            REQUESTS.labels(route, scope["method"], status).inc()
            LATENCY.labels(route).observe(perf_counter() - started)

    return middleware
