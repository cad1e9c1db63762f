"""The lookup API: a user's precomputed top-k from the live model version.

uvicorn api.app:app   (or `reco-api`; RECO_API_HOST, RECO_API_PORT, RECO_DATA_DIR)
"""

from __future__ import annotations

import gc
import hmac
import os
from collections.abc import Callable
from time import monotonic
from typing import Annotated, Any, Literal

import msgspec
from litestar import Litestar, MediaType, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import Parameter
from litestar.plugins.prometheus import PrometheusController
from litestar.response.base import ASGIResponse

from api.experiments import LIVE, POPULAR, Experiment, ServedLog, Variant
from api.metrics import LIVE_VERSION, TALLY, request_metrics
from reco_dagster.domain.events import MAX_ID_LENGTH
from resources.settings import data_dir, recommendation_store, required_env
from resources.store import ModelVersion, RecommendationStore, VersionNotPublishableError

MAX_K = 100
NOTHING_LIVE = "no model has been published yet: materialize the batch_retrain job"


class RecommendedItem(msgspec.Struct, omit_defaults=True):
    item_id: str
    score: float
    title: str | None = None


class Recommendations(msgspec.Struct, omit_defaults=True):
    user_id: str
    model_version: str
    source: Literal["personal", "popular"]
    items: list[RecommendedItem]
    variant: str | None = None
    """The A/B variant the user is in, while an experiment runs."""


class SimilarItems(msgspec.Struct):
    item_id: str
    model_version: str
    items: list[RecommendedItem]


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "unavailable"]
    model_version: str | None = None
    detail: str | None = None


class ModelRecord(msgspec.Struct):
    version: str
    status: str
    created_at: str
    activated_at: str | None
    has_lists: bool
    family: str | None
    settings: dict[str, Any]
    data_fingerprint: str | None
    metrics: dict[str, float]
    rejected_because: str | None

    @classmethod
    def of(cls, record: ModelVersion) -> ModelRecord:
        info = record.info
        return cls(
            version=record.version,
            status=record.status,
            created_at=record.created_at,
            activated_at=record.activated_at,
            has_lists=record.has_lists,
            family=info.get("family"),
            settings=info.get("settings", {}),
            data_fingerprint=info.get("data_fingerprint"),
            metrics=info.get("metrics", {}),
            rejected_because=info.get("rejected_because"),
        )


class ResponseCache:
    """Encoded responses by key (route, id, k), dropped whenever the store reports a change.

    A request compares the store's change token when the last comparison is older than the
    store's `change_check_interval_s` (1 ms for SQLite, 0.5 s for Cosmos DB), so a cached
    response is never older than a write to the store (a switch, a publish, a micro-batch)
    that finished more than that interval before the request started.
    """

    def __init__(self, store: RecommendationStore, max_entries: int = 200_000) -> None:
        self.store, self.max_entries = store, max_entries
        self.token: int | None = None
        self.next_check = 0.0
        self.responses: dict[tuple[str, str, int], Rendered] = {}

    def get(
        self, key: tuple[str, str, int], render: Callable[[], Rendered | None]
    ) -> Rendered | None:
        """The cached response, or `render()`'s (cached unless None: nothing is live)."""
        now = monotonic()
        if now >= self.next_check:
            self.next_check = now + self.store.change_check_interval_s
            token = self.store.change_token()
            if token != self.token:
                self.responses.clear()
                self.token = token
                LIVE_VERSION.clear()
                LIVE_VERSION.labels(version=self.store.live_version() or "none").set(1)
        cached = self.responses.get(key)
        if cached is not None:
            TALLY.cache_hits += 1
        else:
            TALLY.cache_misses += 1
            cached = render()
            if cached is None:
                return None
            if len(self.responses) >= self.max_entries:
                self.responses.clear()
            self.responses[key] = cached
        return cached

    def clear(self) -> None:
        self.responses.clear()


_encode = msgspec.json.Encoder().encode

Rendered = tuple[ASGIResponse, str, list[str]]
"""A response ready to send (built once, sent to every request for the same key), with the
model version and the item ids it names."""


def _ready(body: bytes) -> ASGIResponse:
    return ASGIResponse(body=body, media_type=MediaType.JSON, status_code=200)


def lookup_routes(
    cache: ResponseCache, experiment: Experiment | None, served: ServedLog
) -> list[HTTPRouteHandler]:
    """The hot paths, bound to their cache directly: Litestar's `state` injection costs a
    fifth of a lookup's throughput."""

    @get(
        "/users/{user_id:str}/recommendations",
        sync_to_thread=cache.store.reads_over_network,
        media_type=MediaType.JSON,
        responses={200: ResponseSpec(Recommendations, description="the user's list")},
    )
    def user_recommendations(
        user_id: str,
        k: Annotated[int, Parameter(ge=1, le=MAX_K, description="how many items")] = 10,
    ) -> ASGIResponse:
        """The user's top-k unseen items; users the model does not know get the popular
        list. Under an A/B test (RECO_AB_TEST) the user's variant decides the version and the
        response names it. Every served list is logged for online evaluation."""
        _require_short("user_id", user_id)
        variant = experiment.assign(user_id) if experiment else None
        rendered = cache.get(
            ("user", user_id, k), lambda: _render_user(cache.store, user_id, k, variant)
        )
        if rendered is None:
            raise ServiceUnavailableException(NOTHING_LIVE)
        response, version, items = rendered
        served.record(user_id, variant.name if variant else None, version, items)
        return response

    @get(
        "/items/{item_id:str}/similar",
        sync_to_thread=cache.store.reads_over_network,
        media_type=MediaType.JSON,
        responses={200: ResponseSpec(SimilarItems, description="the item's neighbours")},
    )
    def similar_items(
        item_id: str,
        k: Annotated[int, Parameter(ge=1, le=MAX_K, description="how many items")] = 10,
    ) -> ASGIResponse:
        """The items most like this one (cosine of the live model's item factors)."""
        _require_short("item_id", item_id)
        rendered = cache.get(
            ("similar", item_id, k), lambda: _render_similar(cache.store, item_id, k)
        )
        if rendered is None:
            raise ServiceUnavailableException(NOTHING_LIVE)
        return rendered[0]

    return [user_recommendations, similar_items]


def _require_short(name: str, value: str) -> None:
    if len(value) > MAX_ID_LENGTH:
        raise ValidationException(f"{name} is longer than {MAX_ID_LENGTH} characters")


def _render_user(
    store: RecommendationStore, user_id: str, k: int, variant: Variant | None
) -> Rendered | None:
    if variant is None or variant.version == LIVE:
        found = store.lookup(user_id, k)
    elif variant.version == POPULAR:
        found = store.lookup(user_id, k, popular_only=True)
    else:
        # A variant's version whose lists were purged falls back to the live version; the
        # response (and the served-list log) names the version actually served.
        found = store.lookup(user_id, k, version=variant.version) or store.lookup(user_id, k)
    if found is None:
        return None
    body = _encode(
        Recommendations(
            user_id=user_id,
            model_version=found.model_version,
            source=found.source,
            items=[RecommendedItem(**item) for item in found.items],
            variant=variant.name if variant else None,
        )
    )
    return _ready(body), found.model_version, [item["item_id"] for item in found.items]


def _render_similar(store: RecommendationStore, item_id: str, k: int) -> Rendered | None:
    found = store.similar(item_id, k)
    if found is None:
        return None
    version, items = found
    if items is None:
        raise NotFoundException(f"item {item_id!r} is not in live model version {version}")
    body = _encode(
        SimilarItems(
            item_id=item_id,
            model_version=version,
            items=[RecommendedItem(**item) for item in items],
        )
    )
    return _ready(body), version, [item["item_id"] for item in items]


@get("/health", sync_to_thread=False)
def health(state: State) -> Response[Health]:
    version = state.store.live_version()
    if version is None:
        return Response(Health("unavailable", detail=NOTHING_LIVE), status_code=503)
    return Response(Health("ok", model_version=version))


@get("/models", sync_to_thread=False)
def models(state: State) -> list[ModelRecord]:
    """The model registry, newest first."""
    return [ModelRecord.of(record) for record in state.store.versions()]


@get("/models/{version:str}", sync_to_thread=False)
def model(state: State, version: str) -> ModelRecord:
    record = state.store.version(version)
    if record is None:
        raise NotFoundException(f"no model version {version!r}")
    return ModelRecord.of(record)


def require_admin_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Bearer RECO_ADMIN_TOKEN; with no token configured nobody may change the live model."""
    expected = os.environ.get("RECO_ADMIN_TOKEN", "")
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise NotAuthorizedException("a bearer token is required")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise PermissionDeniedException(
            "this token may not activate models"
            if expected
            else "activation is disabled: RECO_ADMIN_TOKEN is not set on the server"
        )


@post(
    "/models/{version:str}/activate",
    guards=[require_admin_token],
    sync_to_thread=False,
    status_code=200,
)
def activate(state: State, version: str) -> ModelRecord:
    """Roll back or forward to a kept version: it goes live in one switch."""
    store: RecommendationStore = state.store
    if store.version(version) is None:
        raise NotFoundException(f"no model version {version!r}")
    try:
        store.activate(version)
    except VersionNotPublishableError as error:
        raise ClientException(str(error), status_code=409) from error
    state.cache.clear()  # the store's token does not move for this process's own writes
    return ModelRecord.of(store.version(version))


def create_app(store: RecommendationStore | None = None) -> Litestar:
    store = store or recommendation_store(secret=required_env)
    cache = ResponseCache(store)
    served = ServedLog(data_dir() / "served")
    return Litestar(
        route_handlers=[
            *lookup_routes(cache, Experiment.from_environment(), served),
            health,
            models,
            model,
            activate,
            PrometheusController,
        ],
        state=State({"store": store, "cache": cache}),
        # Everything imported so far lives as long as the process: keep the collector from
        # walking it again and again under load (fewer, shorter pauses).
        on_startup=[gc.freeze, served.start],
        on_shutdown=[served.stop],
        openapi_config=OpenAPIConfig(title="reco-dagster recommendations", version="1.0.0"),
    )


# Metrics wrap the whole app from outside: inside Litestar's middleware stack the same
# wrapper costs a quarter of the lookup throughput.
app = request_metrics(create_app())
