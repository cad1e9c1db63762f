"""The lookup API: a user's precomputed top-k from the live model version.

uvicorn api.app:app   (or `reco-api`; RECO_API_HOST, RECO_API_PORT, RECO_DATA_DIR,
RECO_API_CACHE_MB; the served-list log's RECO_SERVED_*: see api/experiments.py)
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from time import monotonic
from typing import Annotated, Any, Literal, NamedTuple

import anyio
import msgspec
from cachetools import LRUCache
from litestar import Litestar, MediaType, Response, get, post
from litestar.exceptions import (
    ClientException,
    NotFoundException,
    PermissionDeniedException,
    ServiceUnavailableException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.params import Parameter
from litestar.plugins.prometheus import PrometheusController
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.deletions import deletion_routes
from api.events import events_route, require_bearer, require_short
from api.experiments import LIVE, POPULAR, Experiment, ServedLog, Variant
from api.metrics import LIVE_VERSION, TALLY, request_metrics
from api.sessions import session_route
from api.shapes import MAX_CATEGORIES, MAX_EXCLUDED, MAX_K, NOTHING_LIVE, RecommendedItem
from reco_dagster.domain.filters import CatalogIndex, ItemFilter, pick, pick_with_fill
from reco_dagster.domain.lists import Item
from reco_dagster.domain.online import SERVED
from resources.deployment import data_dir, deployment_files, recommendation_store
from resources.files import FileStore
from resources.store import ModelVersion, RecommendationStore, VersionNotPublishableError

TRENDING, POPULAR_LIST = "trending", "popular"
"""The live version's non-personal lists by name (GET /items/trending, GET /items/popular)."""


class Recommendations(msgspec.Struct, omit_defaults=True):
    user_id: str
    model_version: str
    source: Literal["personal", "popular"]
    items: list[RecommendedItem]
    filled: Annotated[
        int,
        msgspec.Meta(
            description="How many of the items (the last ones) come from the cold-start list "
            "because the filters left out items of the user's own list"
        ),
    ]
    variant: str | None = None
    """The A/B variant the user is in, while an experiment runs."""


class SimilarItems(msgspec.Struct):
    item_id: str
    model_version: str
    items: list[RecommendedItem]
    based_on: Literal["factors", "categories"] = "factors"
    """`categories` for an item the live model does not place (a new one): its neighbours
    share its catalog categories (score: the Jaccard index of the two sets)."""


class ItemList(msgspec.Struct):
    model_version: str
    items: list[RecommendedItem]


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "unavailable"]
    model_version: str | None = None
    detail: str | None = None


class ComparedVersion(msgspec.Struct):
    """The live version a new one was gated against, scored on the new one's split."""

    version: str
    metrics: dict[str, float]


class ModelRecord(msgspec.Struct):
    version: str
    status: str
    created_at: str
    activated_at: str | None
    has_lists: bool
    family: str | None
    settings: dict[str, Any]
    data_fingerprint: str | None
    protocol: str | None
    """The evaluation protocol of the split `metrics` were measured on."""
    metrics: dict[str, float]
    """On the test split."""
    validation_metrics: dict[str, float]
    """What the search chose the settings by, on validation carved out of the training split."""
    compared_with: ComparedVersion | None
    """None: there was no live version, this was it, or the live one could not be refitted."""
    rejected_because: str | None

    @classmethod
    def of(cls, record: ModelVersion) -> ModelRecord:
        info = record.info
        champion = info.get("champion")
        return cls(
            version=record.version,
            status=record.status,
            created_at=record.created_at,
            activated_at=record.activated_at,
            has_lists=record.has_lists,
            family=info.get("family"),
            settings=info.get("settings", {}),
            data_fingerprint=info.get("data_fingerprint"),
            protocol=info.get("protocol"),
            metrics=info.get("metrics", {}),
            validation_metrics=info.get("validation", {}),
            compared_with=(
                ComparedVersion(champion["version"], champion["metrics"]) if champion else None
            ),
            rejected_because=info.get("rejected_because"),
        )


class Rendered(msgspec.Struct, frozen=True, gc=False):
    """A response's body ready to send (built once, sent to every request for the same key),
    with the model version and the item ids it names.

    Untracked by the garbage collector (`gc=False`; it holds only bytes, strings and tuples of
    them), like the keys it is cached under, so a full collection does not walk the cache.
    When entries held the response object and lists, each full collection walked millions of
    objects, and under a million users' cache churn the API stalled for up to 0.6 s every few
    seconds."""

    body: bytes
    version: str
    items: tuple[str, ...]
    keep: bool = True
    """False for an answer built for one request (an unknown user's popular list)."""
    forgotten: bool = False
    """The answer to a forgotten user: the served-list log leaves it out."""
    new_items: tuple[str, ...] = ()
    """Those of `items` in positions given to new items, for the served-list log."""

    def response(self) -> ASGIResponse:
        return JsonResponse(self.body)


class PopularPart(msgspec.Struct, frozen=True, gc=False):
    """A version's popular list at one k and filter, encoded once: every unknown user's answer
    embeds it."""

    items: msgspec.Raw
    ids: tuple[str, ...]


class Listed(NamedTuple):
    """A stored list decoded once, with each item's mask in the catalog of the cache key's
    revision: what a request's filters pick from."""

    version: str
    items: list[Item]
    masks: list[int]


Entry = Rendered | PopularPart | Listed

# Bytes an entry holds beside its body: the key with its user id, the tuples, the body's
# header and the LRU's links; and per item id, a str object and its tuple slot (measured with
# tracemalloc over 20,000 cached responses at k = 10 and k = 100). A decoded item (Listed)
# holds a dict, a float, its mask, its list slots and the str objects of its id and title
# (measured over 2,000 decoded lists of 300 items).
ENTRY_OVERHEAD, ITEM_OVERHEAD, DECODED_ITEM_OVERHEAD = 410, 57, 320


def _entry_size(entry: Entry) -> int:
    if isinstance(entry, Listed):
        return ENTRY_OVERHEAD + sum(
            DECODED_ITEM_OVERHEAD + len(item["item_id"]) + len(item.get("title", ""))
            for item in entry.items
        )
    body = entry.body if isinstance(entry, Rendered) else entry.items
    ids = entry.items if isinstance(entry, Rendered) else entry.ids
    return ENTRY_OVERHEAD + len(body) + ITEM_OVERHEAD * len(ids) + sum(map(len, ids))


class Asked(msgspec.Struct, frozen=True, gc=False):
    """A request's filters: items in one of `categories` (any, when empty), none of `exclude`,
    and unavailable ones only when asked for."""

    categories: tuple[str, ...]
    exclude: tuple[str, ...]
    include_unavailable: bool

    def item_filter(self, catalog: CatalogIndex) -> ItemFilter:
        return catalog.item_filter(self.categories, self.exclude, self.include_unavailable)

    @property
    def keep(self) -> bool:
        """Whether answers may be cached: an `exclude` list is per request (a cart, what was
        just shown) and would only crowd the cache."""
        return not self.exclude

    @property
    def decoded_kept(self) -> bool:
        """Whether a user's or an item's decoded list is worth keeping: for filtered requests,
        which pick from it again with other filters. An unfiltered answer is cached itself,
        and its decoded list (about 40 times its size at a depth of 300) would crowd out the
        answers."""
        return self != UNFILTERED


UNFILTERED = Asked((), (), False)


def _asked(category: list[str] | None, exclude: list[str] | None, unavailable: bool) -> Asked:
    if category is None and exclude is None and not unavailable:
        return UNFILTERED
    # Sorted tuples, not sets: the garbage collector stops tracking a cache key of strings and
    # tuples (see Rendered).
    return Asked(tuple(sorted(set(category or ()))), tuple(sorted(set(exclude or ()))), unavailable)


class ResponseCache:
    """Encoded responses by key (route, id, k, filters), and the decoded lists they are made
    from, in an LRU of at most `max_bytes`, dropped whenever the store reports a change.

    A request compares the store's change token when the last comparison is older than the
    store's `change_check_interval_s` (1 ms for SQLite, 0.5 s for Cosmos DB), so a cached
    response is never older than a write to the store (a switch, a publish, a micro-batch)
    that finished more than that interval before the request started.

    Each change starts a new generation. A response is inserted only under the generation it
    was rendered in: on a store served from threads, a response rendered from the old data
    while another thread saw the change would otherwise outlive the change in the cache.
    """

    def __init__(self, store: RecommendationStore, max_bytes: int) -> None:
        self.store, self.max_bytes = store, max_bytes
        self.catalog = CatalogIndex(None, ())
        """The store's item catalog, read again when the change token moved and the catalog's
        revision with it; renders read it once and key what they cache by its revision."""
        self.token: int | None = None
        self.next_check = 0.0
        self.generation = 0
        self.responses: LRUCache[tuple, Entry] = LRUCache(max_bytes, getsizeof=_entry_size)
        # LRUCache reorders itself on every read: lookups on a threaded store share it.
        self._lock = threading.Lock()

    def current_generation(self) -> int:
        """The generation after comparing the change token, if that is due."""
        now = monotonic()
        if now >= self.next_check:
            self.next_check = now + self.store.change_check_interval_s
            token = self.store.change_token()
            if token != self.token:
                # Before the clear: what is rendered in the new generation uses the new one.
                self.catalog = self._catalog_now()
                self.clear()
                self.token = token
                LIVE_VERSION.clear()
                LIVE_VERSION.labels(version=self.store.live_version() or "none").set(1)
        return self.generation

    def _catalog_now(self) -> CatalogIndex:
        """The store's catalog, read whole only when its revision moved (a cheap read)."""
        if self.store.catalog_revision() == self.catalog.revision:
            return self.catalog
        found = self.store.catalog()
        return CatalogIndex(found.revision, found.entries) if found else CatalogIndex(None, ())

    def get(self, key: tuple, render: Callable[[int], Rendered | None]) -> Rendered | None:
        """The cached response, or `render(generation)`'s (None: nothing is live), kept unless
        it says otherwise."""
        generation = self.current_generation()
        with self._lock:
            cached = self.responses.get(key)
        if cached is not None:
            TALLY.cache_hits += 1
            return cached  # type: ignore[return-value]
        TALLY.cache_misses += 1
        rendered = render(generation)
        if rendered is not None and rendered.keep:
            self.put(key, rendered, generation)
        return rendered

    def peek(self, key: tuple) -> Entry | None:
        with self._lock:
            return self.responses.get(key)

    def put(self, key: tuple, entry: Entry, generation: int) -> None:
        """Keep an entry rendered in `generation`, unless the store has changed since."""
        with self._lock, suppress(ValueError):  # ValueError: larger than the whole cache
            if generation == self.generation:
                self.responses[key] = entry

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
            self.responses.clear()


_encode = msgspec.json.Encoder().encode


class JsonResponse(ASGIResponse):
    """A 200 with a JSON body, its headers encoded once. ASGIResponse's own constructor
    spent a third of a cache miss searching the headers it had just added."""

    def __init__(self, body: bytes) -> None:
        self.body, self.content_length, self.status_code = body, len(body), 200
        self.background, self.is_head_response, self.encoding = None, False, "utf-8"
        self._encoded_cookies = ()
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]

    def encode_headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers


def _ready(
    body: bytes,
    version: str,
    items: Iterable[str],
    keep: bool = True,
    forgotten: bool = False,
    new_items: Iterable[str] = (),
) -> Rendered:
    return Rendered(body, version, tuple(items), keep, forgotten, tuple(new_items))


K = Annotated[int, Parameter(ge=1, le=MAX_K, description="how many items")]
Explain = Annotated[
    bool,
    Parameter(
        description="add `because` to each personal item: up to three items of the user's "
        "history that raised its score most"
    ),
]
Exclude = Annotated[
    list[str] | None,
    Parameter(
        description="Item ids not to return (what is in the cart, what was just shown); "
        "repeat the parameter: exclude=sku-1&exclude=sku-2",
        max_items=MAX_EXCLUDED,
    ),
]
Category = Annotated[
    list[str] | None,
    Parameter(
        description="Only items in one of these catalog categories; repeat the parameter: "
        "category=shoes&category=bags. A category the catalog does not name matches no item",
        max_items=MAX_CATEGORIES,
    ),
]
IncludeUnavailable = Annotated[
    bool,
    Parameter(
        description="Also items the catalog marks unavailable (available=false), which are "
        "never served otherwise"
    ),
]


def lookup_routes(
    cache: ResponseCache, experiment: Experiment | None, served: ServedLog
) -> list[HTTPRouteHandler]:
    """The hot paths, bound to their cache directly: Litestar's `state` injection costs a
    fifth of a lookup's throughput."""
    in_thread = cache.store.reads_over_network

    def recommend(user_id: str, k: int, asked: Asked, explain: bool) -> ASGIResponse:
        require_short("user_id", user_id)
        variant = experiment.assign(user_id) if experiment else None
        rendered = cache.get(
            ("user", user_id, k, asked, explain),
            lambda generation: _render_user(cache, generation, user_id, k, variant, asked, explain),
        )
        if rendered is None:
            raise ServiceUnavailableException(NOTHING_LIVE)
        if not rendered.forgotten:
            served.record(
                user_id,
                variant.name if variant else None,
                rendered.version,
                rendered.items,
                rendered.new_items,
            )
        return rendered.response()

    def similar(item_id: str, k: int, asked: Asked) -> ASGIResponse:
        require_short("item_id", item_id)
        rendered = cache.get(
            ("similar", item_id, k, asked),
            lambda generation: _render_similar(cache, generation, item_id, k, asked),
        )
        if rendered is None:
            raise ServiceUnavailableException(NOTHING_LIVE)
        return rendered.response()

    def non_personal(name: str, k: int, asked: Asked) -> ASGIResponse:
        rendered = cache.get(
            ("items", name, k, asked),
            lambda generation: _render_items(cache, generation, name, k, asked),
        )
        if rendered is None:
            raise ServiceUnavailableException(NOTHING_LIVE)
        return rendered.response()

    user_doc = ResponseSpec(Recommendations, description="the user's list")
    similar_doc = ResponseSpec(SimilarItems, description="the item's neighbours")
    list_doc = ResponseSpec(ItemList, description="the live version's list")

    @get(
        "/users/{user_id:str}/recommendations",
        sync_to_thread=in_thread,
        media_type=MediaType.JSON,
        responses={200: user_doc},
    )
    def user_recommendations(
        user_id: str,
        k: K = 10,
        exclude: Exclude = None,
        category: Category = None,
        include_unavailable: IncludeUnavailable = False,
        explain: Explain = False,
    ) -> ASGIResponse:
        """The user's top-k unseen items; users the model does not know get the popular
        list. The filters pick from the user's precomputed list (kept deeper than k); where
        they leave out items the answer would have had, the cold-start list under the same
        filters fills in and `filled` says how many. Under an A/B test (RECO_AB_TEST) the
        user's variant decides the version and the response names it. Every served list is
        logged for online evaluation."""
        return recommend(user_id, k, _asked(category, exclude, include_unavailable), explain)

    @get("/recommendations", media_type=MediaType.JSON, responses={200: user_doc})
    async def recommendations_by_query(
        user_id: Annotated[str, Parameter(min_length=1, description="any characters")],
        k: K = 10,
        exclude: Exclude = None,
        category: Category = None,
        include_unavailable: IncludeUnavailable = False,
        explain: Explain = False,
    ) -> ASGIResponse:
        """As /users/{user_id}/recommendations, for ids a path cannot carry (with "/")."""
        asked = _asked(category, exclude, include_unavailable)
        # Offloaded by hand: Litestar 2.25 never awaits a sync_to_thread handler that returns
        # an ASGIResponse when another method (POST, sessions) shares its path.
        if in_thread:
            return await anyio.to_thread.run_sync(recommend, user_id, k, asked, explain)
        return recommend(user_id, k, asked, explain)

    @get(
        "/items/{item_id:str}/similar",
        sync_to_thread=in_thread,
        media_type=MediaType.JSON,
        responses={200: similar_doc},
    )
    def similar_items(
        item_id: str,
        k: K = 10,
        exclude: Exclude = None,
        category: Category = None,
        include_unavailable: IncludeUnavailable = False,
    ) -> ASGIResponse:
        """The items most like this one (cosine of the live model's item factors), under
        the same filters as recommendations (no fill)."""
        return similar(item_id, k, _asked(category, exclude, include_unavailable))

    @get(
        "/similar",
        sync_to_thread=in_thread,
        media_type=MediaType.JSON,
        responses={200: similar_doc},
    )
    def similar_by_query(
        item_id: Annotated[str, Parameter(min_length=1, description="any characters")],
        k: K = 10,
        exclude: Exclude = None,
        category: Category = None,
        include_unavailable: IncludeUnavailable = False,
    ) -> ASGIResponse:
        """As /items/{item_id}/similar, for ids a path cannot carry (with "/")."""
        return similar(item_id, k, _asked(category, exclude, include_unavailable))

    @get(
        "/items/trending",
        sync_to_thread=in_thread,
        media_type=MediaType.JSON,
        responses={200: list_doc},
    )
    def trending_items(
        k: K = 10,
        exclude: Exclude = None,
        category: Category = None,
        include_unavailable: IncludeUnavailable = False,
    ) -> ASGIResponse:
        """What many users took up lately: users counted with a half-life in days, chosen on
        validation (or serving.trending_half_life_days), under the same filters."""
        return non_personal(TRENDING, k, _asked(category, exclude, include_unavailable))

    @get(
        "/items/popular",
        sync_to_thread=in_thread,
        media_type=MediaType.JSON,
        responses={200: list_doc},
    )
    def popular_items(
        k: K = 10,
        exclude: Exclude = None,
        category: Category = None,
        include_unavailable: IncludeUnavailable = False,
    ) -> ASGIResponse:
        """The most popular items of all time (distinct users), under the same filters."""
        return non_personal(POPULAR_LIST, k, _asked(category, exclude, include_unavailable))

    return [
        user_recommendations,
        recommendations_by_query,
        similar_items,
        similar_by_query,
        trending_items,
        popular_items,
    ]


def _listed(
    cache: ResponseCache,
    generation: int,
    catalog: CatalogIndex,
    key: tuple,
    read: Callable[[], tuple[str, list[Item] | None] | None],
    keep: bool = True,
) -> tuple[str, Listed | None] | None:
    """A stored list, decoded and masked once per catalog revision (the key ends with it),
    and kept unless told otherwise: (version, the list or None when the version has none),
    None while nothing is live."""
    cached = cache.peek((*key, catalog.revision))
    if isinstance(cached, Listed):
        return cached.version, cached
    found = read()
    if found is None:
        return None
    version, items = found
    if items is None:
        return version, None
    listed = Listed(version, items, catalog.masks_of(items))
    if keep:
        cache.put((*key, catalog.revision), listed, generation)
    return version, listed


def _render_user(
    cache: ResponseCache,
    generation: int,
    user_id: str,
    k: int,
    variant: Variant | None,
    asked: Asked,
    explain: bool = False,
) -> Rendered | None:
    store, catalog = cache.store, cache.catalog
    chosen = None if variant is None or variant.version == LIVE else variant.version
    if chosen == POPULAR:
        live = store.live_version()
        found: tuple[str, Listed | None] | None = None if live is None else (live, None)
    else:
        # A variant's version whose lists were purged falls back to the live version; the
        # response (and the served-list log) names the version actually served.
        found = _listed(
            cache,
            generation,
            catalog,
            ("listed", "user", user_id, chosen),
            lambda: (
                store.personal_list(user_id, chosen)
                or (store.personal_list(user_id) if chosen else None)
            ),
            keep=asked.decoded_kept,
        )
    if found is None:
        return None
    version, personal = found

    def cold_start() -> tuple[list[Item], list[int]]:
        """The version's cold-start list, read only when an answer needs it."""
        return _cold_start(cache, generation, catalog, version)

    wanted = asked.item_filter(catalog)
    variant_name = variant.name if variant else None
    if personal is None:
        # Shared by every unknown user: cached per user, random ids would fill the cache.
        key = ("popular", version, k, asked)
        part = cache.peek(key)
        if not isinstance(part, PopularPart):
            items = pick(*cold_start(), wanted, k)
            part = PopularPart(
                msgspec.Raw(_encode(items)), tuple(item["item_id"] for item in items)
            )
            if asked.keep:
                cache.put(key, part, generation)
        body = _encode(Recommendations(user_id, version, "popular", part.items, 0, variant_name))
        # Built per request: a forgotten user has no list, and is told apart here.
        forgotten = store.is_forgotten(user_id)
        return _ready(body, version, part.ids, keep=False, forgotten=forgotten)
    items, filled = pick_with_fill(personal.items, personal.masks, cold_start, wanted, k)
    if explain:
        reasons = store.reasons(user_id, version)
        items = [{**item, "because": reasons.get(item["item_id"], [])} for item in items]
    # The store keeps items in RecommendedItem's shape: encoding them as they are skips
    # building a Struct per item, a fifth of a cache miss's Python time.
    body = _encode(Recommendations(user_id, version, "personal", items, filled, variant_name))
    new_items = (item["item_id"] for item in items if "new_item" in item)
    return _ready(body, version, (item["item_id"] for item in items), asked.keep, False, new_items)


def _cold_start(
    cache: ResponseCache, generation: int, catalog: CatalogIndex, version: str
) -> tuple[list[Item], list[int]]:
    """The version's cold-start list and its items' masks in `catalog` (the one the request's
    filter was made from), decoded once per catalog revision; empty when the version has
    none."""
    cold = _listed(
        cache,
        generation,
        catalog,
        ("listed", "cold-start", version),
        lambda: _popular_list(cache.store, version),
    )
    return (cold[1].items, cold[1].masks) if cold is not None and cold[1] else ([], [])


def _popular_list(store: RecommendationStore, version: str) -> tuple[str, list[Item]] | None:
    """A version's cold-start list, whole."""
    found = store.lookup("", None, version=version, popular_only=True)
    return None if found is None else (version, found.items)


def _render_similar(
    cache: ResponseCache, generation: int, item_id: str, k: int, asked: Asked
) -> Rendered | None:
    catalog = cache.catalog
    found = _listed(
        cache,
        generation,
        catalog,
        ("listed", "similar", item_id),
        lambda: cache.store.similar(item_id, None),
        keep=asked.decoded_kept,
    )
    if found is None:
        return None
    version, listed = found
    based_on: Literal["factors", "categories"] = "factors"
    if listed is None:
        popular = [item["item_id"] for item in _cold_start(cache, generation, catalog, version)[0]]
        alike = catalog.alike(item_id, popular)
        if not alike:
            raise NotFoundException(
                f"item {item_id!r} is not in live model version {version}, and the catalog "
                "gives it no category"
            )
        listed, based_on = Listed(version, alike, catalog.masks_of(alike)), "categories"
    items = pick(listed.items, listed.masks, asked.item_filter(catalog), k)
    body = _encode(SimilarItems(item_id, version, items, based_on))
    return _ready(body, version, (item["item_id"] for item in items), asked.keep)


def _render_items(
    cache: ResponseCache, generation: int, name: str, k: int, asked: Asked
) -> Rendered | None:
    catalog = cache.catalog
    found = _listed(
        cache, generation, catalog, ("listed", name), lambda: cache.store.item_list(name)
    )
    if found is None:
        return None
    version, listed = found
    if listed is None:
        raise NotFoundException(
            f"live model version {version} has no {name} list (published from this release "
            "on: run batch_retrain)"
        )
    items = pick(listed.items, listed.masks, asked.item_filter(catalog), k)
    body = _encode(ItemList(model_version=version, items=items))
    return _ready(body, version, (item["item_id"] for item in items), asked.keep)


def registry_routes(store: RecommendationStore, cache: ResponseCache) -> list[HTTPRouteHandler]:
    """Health, the registry and activation, in a worker thread when the store is across a
    network: a slow round trip on the event loop would hold up every request."""
    in_thread = store.reads_over_network

    @get("/health", sync_to_thread=in_thread)
    def health() -> Response[Health]:
        version = store.live_version()
        if version is None:
            return Response(Health("unavailable", detail=NOTHING_LIVE), status_code=503)
        return Response(Health("ok", model_version=version))

    @get("/models", sync_to_thread=in_thread)
    def models() -> list[ModelRecord]:
        """The model registry, newest first."""
        return [ModelRecord.of(record) for record in store.versions()]

    @get("/models/{version:str}", sync_to_thread=in_thread)
    def model(version: str) -> ModelRecord:
        record = store.version(version)
        if record is None:
            raise NotFoundException(f"no model version {version!r}")
        return ModelRecord.of(record)

    @post(
        "/models/{version:str}/activate",
        guards=[require_bearer("RECO_ADMIN_TOKEN", "activate models", PermissionDeniedException)],
        sync_to_thread=in_thread,
        status_code=200,
    )
    def activate(version: str) -> ModelRecord:
        """Roll back or forward to a kept version: it goes live in one switch."""
        if store.version(version) is None:
            raise NotFoundException(f"no model version {version!r}")
        try:
            store.activate(version)
        except VersionNotPublishableError as error:
            raise ClientException(str(error), status_code=409) from error
        cache.clear()  # the store's token does not move for this process's own writes
        return ModelRecord.of(store.version(version))

    return [health, models, model, activate]


def create_app(
    store: RecommendationStore | None = None, files: FileStore | None = None
) -> Litestar:
    store = store or recommendation_store()
    cache = ResponseCache(
        store, max_bytes=int(float(os.environ.get("RECO_API_CACHE_MB", "256")) * 2**20)
    )
    served = ServedLog.from_environment(data_dir() / SERVED, lambda: store.forgotten().keys)
    TALLY.cache = cache.responses
    files = files or deployment_files()
    return Litestar(
        route_handlers=[
            *lookup_routes(cache, Experiment.from_environment(), served),
            *registry_routes(store, cache),
            events_route(store, files, cache.clear),
            session_route(store, files, cache.current_generation, lambda: cache.catalog, served),
            *deletion_routes(store, cache.clear, served.erase_soon),
            PrometheusController,
        ],
        # Everything imported so far lives as long as the process: keep the collector from
        # walking it again and again under load (fewer, shorter pauses).
        on_startup=[gc.freeze, served.start],
        on_shutdown=[served.stop],
        openapi_config=OpenAPIConfig(title="reco-dagster recommendations", version="1.0.0"),
    )


def head_as_get(app: ASGIApp) -> ASGIApp:
    """HEAD wherever GET: the app answers a GET and the body is left out (the headers, the
    length included, are the GET's, as HTTP wants)."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get: Scope = {**scope, "method": "GET"}  # type: ignore[typeddict-item]
        try:
            await app(as_get, receive, without_body)
        finally:
            # Where the request metrics find the route it matched.
            scope["path_template"] = as_get.get("path_template")  # type: ignore[typeddict-unknown-key]

    return serve


def _serving() -> ASGIApp:
    litestar = create_app()
    routes = {route.path_format for route in litestar.routes}
    # Metrics wrap the whole app from outside: inside Litestar's middleware stack the same
    # wrapper costs a quarter of the lookup throughput.
    return request_metrics(head_as_get(litestar), routes)


app = _serving()
