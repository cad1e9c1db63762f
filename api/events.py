"""POST /events: a batch of events into the landing zone, validated as landing files are,
and the items they name out of their users' live lists at once.

RECO_INGEST_TOKEN (bearer; none set: refused), RECO_INGEST_MAX_EVENTS (1,000) and
RECO_INGEST_MAX_BYTES (1 MB) per request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import pandas as pd
from litestar import Request, Response, post
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler

from reco_dagster.domain.events import (
    EVENT_COLUMNS,
    MAX_ID_LENGTH,
    REQUIRED_COLUMNS,
    RawRows,
    ValidationRules,
    broken_rows,
    event_types_weighed_by,
    validate_events,
)
from resources.deployment import event_weights
from resources.files import FileStore
from resources.store import RecommendationStore

LANDING_FOLDER = "landing/api"
REQUESTS_FOLDER = "api-requests"
"""First answers by idempotency key: outside landing/, so never read as events."""
MAX_KEY_LENGTH = 256


class Rejection(msgspec.Struct):
    index: int
    """The event's position in the batch, from 0."""
    reason: str


class Accepted(msgspec.Struct):
    request_id: str
    accepted: int
    rejected: int
    rejections: list[Rejection]


class Answered(msgspec.Struct):
    """What a request with an idempotency key answered, kept to answer its retries."""

    body_sha256: str
    answer: Accepted


def require_bearer(
    variable: str, action: str, wrong: type[HTTPException]
) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    """A guard: `Authorization: Bearer $<variable>` (missing → 401, another token → `wrong`);
    with no token configured nobody may `action` (403)."""

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        expected = os.environ.get(variable, "")
        scheme, _, given = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise NotAuthorizedException("a bearer token is required")
        if not expected:
            raise PermissionDeniedException(f"nobody may {action}: {variable} is not set")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise wrong(f"this token may not {action}")

    return guard


def require_short(name: str, value: str) -> None:
    """400 for an id longer than any id the pipeline takes."""
    if len(value) > MAX_ID_LENGTH:
        raise ValidationException(f"{name} is longer than {MAX_ID_LENGTH} characters")


def events_route(
    store: RecommendationStore, files: FileStore, forget_responses: Callable[[], None]
) -> HTTPRouteHandler:
    max_events = int(os.environ.get("RECO_INGEST_MAX_EVENTS", "1000"))
    max_bytes = int(os.environ.get("RECO_INGEST_MAX_BYTES", str(2**20)))
    rules = ValidationRules(event_types=event_types_weighed_by(event_weights()))

    @post(
        "/events",
        guards=[require_bearer("RECO_INGEST_TOKEN", "send events", NotAuthorizedException)],
        # File syncs and store writes: never on the event loop.
        sync_to_thread=True,
        status_code=202,
        request_max_body_size=max_bytes,
    )
    def post_events(request: Request, body: bytes) -> Response[Accepted]:
        """A JSON array of events (`user_id`, `item_id`, `rating`?, `timestamp`: the landing
        files' contract), each validated as a landing row is; the valid ones are written to
        the landing zone as one file before the answer (202), and their items leave their
        users' live lists. An `Idempotency-Key` header makes retries safe: a repeat gets
        the first answer, another body under a used key 422."""
        key = request.headers.get("idempotency-key")
        if key is not None and not 0 < len(key) <= MAX_KEY_LENGTH:
            raise ValidationException(f"Idempotency-Key must have 1 to {MAX_KEY_LENGTH} chars")
        body_sha256 = hashlib.sha256(body).hexdigest()
        request_id = hashlib.sha256(key.encode()).hexdigest() if key else uuid.uuid4().hex
        record_name = f"{REQUESTS_FOLDER}/{request_id}.json"
        if key is not None and (earlier := files.read_json(record_name)) is not None:
            answered = msgspec.convert(earlier, Answered)
            if answered.body_sha256 != body_sha256:
                raise ClientException(
                    "this Idempotency-Key was used with another body", status_code=422
                )
            return Response(answered.answer, status_code=202)
        events, rejections = _validated(body, max_events, rules)
        if events.empty:
            raise ValidationException(
                "no valid event in the batch",
                extra=[msgspec.to_builtins(rejection) for rejection in rejections],
            )
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        files.write(f"{LANDING_FOLDER}/{day}/{request_id}.jsonl", _jsonl(events))
        answer = Accepted(request_id, len(events), len(rejections), rejections)
        if key is not None:
            # Kept before the lists change: a retry after a failure below is answered, and
            # does not raise the users' marks twice.
            files.write(record_name, msgspec.json.encode(Answered(body_sha256, answer)))
        by_user = events.groupby("user_id")["item_id"]
        store.remove_from_live_lists(
            {user: set(items) for user, items in by_user},
            by_user.size().to_dict(),
        )
        # The store's change token does not move for this process's own writes.
        forget_responses()
        return Response(answer, status_code=202)

    return post_events


def _validated(
    body: bytes, max_events: int, rules: ValidationRules
) -> tuple[pd.DataFrame, list[Rejection]]:
    """The batch's valid events, and why each other one was refused."""
    try:
        batch = json.loads(body)
    except ValueError as error:
        raise ValidationException(f"the body is not JSON: {error}") from error
    if not isinstance(batch, list):
        raise ValidationException("the body must be a JSON array of events")
    if len(batch) > max_events:
        raise ClientException(
            f"{len(batch):,} events; at most {max_events:,} per request", status_code=413
        )
    if not batch:
        raise ValidationException("the batch holds no events")
    objects = {index: event for index, event in enumerate(batch) if isinstance(event, dict)}
    frame = pd.DataFrame(list(objects.values()), index=list(objects), dtype=object)
    # A column no event has is null in every row: each such row is refused for it.
    frame = frame.reindex(columns=[*frame.columns.difference(REQUIRED_COLUMNS), *REQUIRED_COLUMNS])
    broken = broken_rows(
        {
            index: ("event is not a JSON object", json.dumps(event))
            for index, event in enumerate(batch)
            if index not in objects
        }
    )
    validated = validate_events(RawRows(frame, broken), rules)
    rejections = [
        Rejection(int(row.row_number), str(row.reason))
        for row in validated.rejected.itertuples(index=False)
    ]
    return validated.events, rejections


def _jsonl(events: pd.DataFrame) -> bytes:
    """One line per event in the landing contract's columns, each line ended (an unended last
    line makes ingestion wait for more)."""
    rows = events[list(EVENT_COLUMNS)].astype(object)
    rows["rating"] = rows["rating"].where(rows["rating"].notna(), None)
    return "".join(json.dumps(row) + "\n" for row in rows.to_dict("records")).encode()
