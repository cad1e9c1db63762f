"""The lookup API: a user's precomputed top-k from the live model version.

uvicorn api.app:app   (or `reco-api`; RECO_API_HOST, RECO_API_PORT, RECO_DATA_DIR)
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import Parameter

from reco_dagster.domain.events import MAX_ID_LENGTH
from resources.settings import recommendation_store
from resources.store import RecommendationStore

MAX_K = 100
NOTHING_LIVE = "no model has been published yet: materialize the batch_retrain job"


class RecommendedItem(msgspec.Struct, omit_defaults=True):
    item_id: str
    score: float
    title: str | None = None


class Recommendations(msgspec.Struct):
    user_id: str
    model_version: str
    source: Literal["personal", "popular"]
    items: list[RecommendedItem]


class Health(msgspec.Struct, omit_defaults=True):
    status: Literal["ok", "unavailable"]
    model_version: str | None = None
    detail: str | None = None


class Problem(msgspec.Struct):
    status_code: int
    detail: str


@get("/users/{user_id:str}/recommendations", sync_to_thread=False)
def user_recommendations(
    state: State,
    user_id: str,
    k: Annotated[int, Parameter(ge=1, le=MAX_K, description="how many items")] = 10,
) -> Response[Recommendations | Problem]:
    """The user's top-k unseen items; users the model does not know get the popular list."""
    if len(user_id) > MAX_ID_LENGTH:
        raise ValidationException(f"user_id is longer than {MAX_ID_LENGTH} characters")
    store: RecommendationStore = state.store
    found = store.lookup(user_id, k)
    if found is None:
        return Response(Problem(503, NOTHING_LIVE), status_code=503)
    return Response(
        Recommendations(
            user_id=user_id,
            model_version=found.model_version,
            source=found.source,
            items=[RecommendedItem(**item) for item in found.items],
        )
    )


@get("/health", sync_to_thread=False)
def health(state: State) -> Response[Health]:
    version = state.store.live_version()
    if version is None:
        return Response(Health("unavailable", detail=NOTHING_LIVE), status_code=503)
    return Response(Health("ok", model_version=version))


def create_app(store: RecommendationStore | None = None) -> Litestar:
    return Litestar(
        route_handlers=[user_recommendations, health],
        state=State({"store": store or recommendation_store()}),
        openapi_config=OpenAPIConfig(title="reco-dagster recommendations", version="1.0.0"),
    )


app = create_app()
