"""POST /recommendations: the live model's top k for a history the request brings (an
anonymous visitor's session so far), scored on the fly as the batch job scores a user.

RECO_SESSION_MAX_ITEMS (500) events per request.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
import pandas as pd
from cachetools import LRUCache
from litestar import post
from litestar.exceptions import ServiceUnavailableException, ValidationException
from litestar.handlers import HTTPRouteHandler

from api.experiments import ServedLog
from api.shapes import MAX_CATEGORIES, MAX_EXCLUDED, MAX_K, NOTHING_LIVE, RecommendedItem
from reco_dagster.domain.events import (
    MAX_ID_LENGTH,
    RATING_EVENT,
    ValidationRules,
    event_types_weighed_by,
)
from reco_dagster.domain.explain import explain_lists
from reco_dagster.domain.filters import CatalogIndex, pick, pick_with_fill
from reco_dagster.domain.lists import SCORE_DECIMALS
from reco_dagster.domain.models import ARCHIVE_FOLDER, CARD_FILE, FACTORS_FILE, FactorModel
from reco_dagster.domain.session import (
    SESSION_USER,
    SessionEvent,
    SessionScorer,
    session_history,
)
from resources.deployment import event_weights, published_depth
from resources.files import FileStore
from resources.store import Item, RecommendationStore

ItemId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
RULES = ValidationRules()


class SessionItem(msgspec.Struct, forbid_unknown_fields=True):
    item_id: ItemId
    event_type: str | None = None
    """One of the deployment's event types (RECO_EVENT_WEIGHTS), or `rating`."""
    rating: Annotated[float, msgspec.Meta(ge=RULES.min_rating, le=RULES.max_rating)] | None = None
    timestamp: float | None = None
    """Unix seconds; given for every item or for none (then the order alone counts)."""


class Session(msgspec.Struct, forbid_unknown_fields=True):
    items: list[ItemId | SessionItem]
    """The visitor's items so far, most recent last: ids, or objects with an event type, a
    rating and a time."""
    user_id: ItemId | None = None
    """Who the visitor is, when known: the served list is logged for online evaluation."""
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = 10
    category: Annotated[list[str], msgspec.Meta(max_length=MAX_CATEGORIES)] = []
    """Only items in one of these catalog categories (as GET's `category`)."""
    exclude: Annotated[list[str], msgspec.Meta(max_length=MAX_EXCLUDED)] = []
    """Item ids not to return (the session's own items never are)."""
    include_unavailable: bool = False
    """Also items the catalog marks unavailable, never served otherwise."""
    explain: bool = False
    """Add `because` to each item: up to three of the session's items that raised its score
    most, the largest first."""


class SessionRecommendations(msgspec.Struct, omit_defaults=True):
    model_version: str
    source: Literal["session", "popular"]
    """`popular` when the session names no item the model knows."""
    items: list[RecommendedItem]
    filled: int
    """How many of the items (the last ones) came from the popular list, where the filters
    left out items the answer would have had."""
    user_id: str | None = None


class LiveScorer:
    """The live version's `SessionScorer`, loaded from the model archive once per version,
    and the version's popular list for sessions the model cannot score."""

    def __init__(
        self, store: RecommendationStore, files: FileStore, generation: Callable[[], int]
    ) -> None:
        # Generations are the API response cache's: they move with every change to the store.
        self.store, self.files, self.generation = store, files, generation
        self.live: tuple[int, str | None] = (-1, None)
        self.scorers: LRUCache[str, tuple[SessionScorer, list[Item]]] = LRUCache(2)
        # One load per version: concurrent first requests wait for it rather than repeat it.
        self._lock = threading.Lock()

    def current(self) -> tuple[SessionScorer, list[Item]] | None:
        generation = self.generation()
        if self.live[0] != generation:
            self.live = (generation, self.store.live_version())
        version = self.live[1]
        if version is None:
            return None
        with self._lock:
            loaded = self.scorers.get(version)
            if loaded is None:
                loaded = self.scorers[version] = self._load(version)
        return loaded

    def _load(self, version: str) -> tuple[SessionScorer, list[Item]]:
        folder = f"{ARCHIVE_FOLDER}{version}/"
        try:
            card = self.files.read(folder + CARD_FILE)
            factors = self.files.read(folder + FACTORS_FILE)
        except FileNotFoundError:
            raise ServiceUnavailableException(
                f"live version {version} is not in the model archive ({folder})"
            ) from None
        model = FactorModel.read(card, io.BytesIO(factors), users=False)
        found = self.store.lookup("", None, version=version, popular_only=True)
        popular = found.items if found else []
        return SessionScorer(model, [item["item_id"] for item in popular]), popular


def session_route(
    store: RecommendationStore,
    files: FileStore,
    generation: Callable[[], int],
    catalog: Callable[[], CatalogIndex],
    served: ServedLog,
) -> HTTPRouteHandler:
    """`generation` moves with every change to the store (and refreshes what `catalog`
    gives, the store's item catalog)."""
    max_items = int(os.environ.get("RECO_SESSION_MAX_ITEMS", "500"))
    depth = published_depth()
    weights = event_weights()
    types = event_types_weighed_by(weights)
    live = LiveScorer(store, files, generation)

    @post(
        "/recommendations",
        # Loading a version and the popular list cross the network on Azure.
        sync_to_thread=store.reads_over_network,
        status_code=200,
    )
    def session_recommendations(data: Session) -> SessionRecommendations:
        """The live model's top k unseen items for the history in the body (most recent
        last), scored now as the batch job scores a user with that history (fold-in for
        ALS, X·B for EASE, the same recency weighting); the popular list when no item is
        known to the model."""
        events = _session_events(data.items, max_items, types)
        loaded = live.current()
        if loaded is None:
            raise ServiceUnavailableException(NOTHING_LIVE)
        scorer, popular = loaded
        index = catalog()
        # The session's own items are never offered back, by the fill either.
        seen = {event.item_id for event in events}
        wanted = index.item_filter(
            data.category, seen.union(data.exclude), data.include_unavailable
        )
        history = session_history(events, weights)
        # As deep as a user's published list, so the filters pick from as many items.
        ranked = scorer.recommend(history, depth)
        if ranked is None:
            picked = pick(popular, index.masks_of(popular), wanted, data.k)
            items, filled = [RecommendedItem(**item) for item in picked], 0
            source: Literal["session", "popular"] = "popular"
        else:
            scored = [{"item_id": item_id, "score": score} for item_id, score in ranked]
            chosen, filled = pick_with_fill(
                scored,
                index.masks_of(scored),
                lambda: (popular, index.masks_of(popular)),
                wanted,
                data.k,
            )
            # Titled and rounded as stored lists are (a fill item from the popular list is).
            items = [
                RecommendedItem(
                    item["item_id"],
                    round(item["score"], SCORE_DECIMALS),
                    item.get("title") or index.titles.get(item["item_id"]),
                )
                for item in chosen
            ]
            source = "session"
            if data.explain:
                listed = pd.DataFrame(
                    {"user_id": SESSION_USER, "item_id": [item.item_id for item in items]}
                )
                for item, because in zip(
                    items, explain_lists(scorer.model, history, listed), strict=True
                ):
                    item.because = because
        if data.user_id is not None and not store.is_forgotten(data.user_id):
            served.record(data.user_id, None, scorer.version, [item.item_id for item in items])
        return SessionRecommendations(scorer.version, source, items, filled, data.user_id)

    return session_recommendations


def _session_events(
    items: list[str | SessionItem], max_items: int, types: frozenset[str]
) -> list[SessionEvent]:
    if not 0 < len(items) <= max_items:
        raise ValidationException(f"a session holds 1 to {max_items} items")
    timed = [isinstance(item, SessionItem) and item.timestamp is not None for item in items]
    if any(timed) and not all(timed):
        raise ValidationException("give every item a timestamp, or none")
    events = []
    for position, item in enumerate(items):
        if isinstance(item, str):
            events.append(SessionEvent(item, float(position)))
            continue
        kind = item.event_type.strip().lower() if item.event_type is not None else None
        if kind is not None and kind not in types:
            known = ", ".join(sorted(types))
            raise ValidationException(
                f"items[{position}]: unknown event type (configured: {known})"
            )
        if kind == RATING_EVENT and item.rating is None:
            raise ValidationException(f"items[{position}]: a rating event has no rating")
        at = item.timestamp if item.timestamp is not None else float(position)
        if not math.isfinite(at):
            raise ValidationException(f"items[{position}]: timestamp is not a number")
        events.append(SessionEvent(item.item_id, at, item.rating, kind))
    return events
