"""Prometheus metrics at a cost the hot path can afford.

Litestar's PrometheusMiddleware halved this API's throughput, and even prometheus_client's
labelled counters and histograms, updated on every request, cost a quarter of it (locks and
label lookups). Requests are therefore tallied in plain dicts and turned into Prometheus
metric families only when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Collection, Iterator
from time import perf_counter

from cachetools import Cache
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LIVE_VERSION = Gauge("reco_api_live_model", "The live model version (label), value 1", ["version"])

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
"""The label of any method or route outside the known ones: a client picks the method and the
path, and every new label value would be a new series for as long as the process lives."""


class RequestTally(Collector):
    """Requests by (route template, method, status), latency histograms by route, the
    response cache's hits and misses, and the served-list log's failed writes and dropped
    records."""

    def __init__(self) -> None:
        self.cache_hits = 0
        self.cache_misses = 0
        self.served_write_errors = 0
        self.served_dropped = 0
        self.cache: Cache | None = None
        """The response cache, whose size is read when scraped."""
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        # per route: one count per bucket (the last one is +Inf), then the sum of seconds
        self.latency: defaultdict[str, list[float]] = defaultdict(
            lambda: [0] * (len(BUCKETS) + 1) + [0.0]
        )

    def note(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(route, method, str(status))] += 1
        histogram = self.latency[route]
        histogram[bisect_left(BUCKETS, seconds)] += 1
        histogram[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "reco_api_requests", "Requests answered", labels=["method", "route", "status"]
        )
        for (route, method, status), count in list(self.requests.items()):
            requests.add_metric([method, route, status], count)
        yield requests
        latency = HistogramMetricFamily(
            "reco_api_request_duration_seconds",
            "Time from the request reaching the app to its response being sent",
            labels=["route"],
        )
        for route, histogram in list(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), histogram[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, histogram[-1])
        yield latency
        yield CounterMetricFamily(
            "reco_api_cache_hits", "Lookups answered from the response cache", self.cache_hits
        )
        yield CounterMetricFamily(
            "reco_api_cache_misses", "Lookups that read the store", self.cache_misses
        )
        if self.cache is not None:
            yield GaugeMetricFamily(
                "reco_api_cache_bytes",
                "Bytes the response cache holds (estimated; bounded by RECO_API_CACHE_MB)",
                self.cache.currsize,
            )
            yield GaugeMetricFamily(
                "reco_api_cache_entries", "Entries in the response cache", len(self.cache)
            )
        yield CounterMetricFamily(
            "reco_api_served_log_write_errors",
            "Flushes of the served-list log that failed (retried at the next flush)",
            self.served_write_errors,
        )
        yield CounterMetricFamily(
            "reco_api_served_log_dropped",
            "Served-list records dropped, oldest first, while the log could not keep up",
            self.served_dropped,
        )


TALLY = RequestTally()
REGISTRY.register(TALLY)


def request_metrics(app: ASGIApp, routes: Collection[str]) -> ASGIApp:
    """Tally every HTTP request by route template (one of `routes`, else "other"), method
    (one of METHODS, else "other") and status."""
    known = frozenset(routes)

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
            route, method = scope.get("path_template"), scope["method"]
            TALLY.note(
                route if route in known else OTHER,
                method if method in METHODS else OTHER,
                status,
                perf_counter() - started,
            )

    return middleware
