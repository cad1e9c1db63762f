"""Forgetting users (the right to erasure): DELETE /users/{user_id} deletes the user's lists in
every kept version at once and records a tombstone; GET /deletions lists the tombstones;
DELETE /deletions/{user_id} lifts one. The rest of the erasure (event history, landing files,
quarantine, served-list log, lake) is the batch location's forget_users job. All need
RECO_ADMIN_TOKEN."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import msgspec
from litestar import delete, get
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.handlers import HTTPRouteHandler
from litestar.params import Parameter

from api.events import require_bearer, require_short
from resources.store import RecommendationStore, Tombstone


class Deletion(msgspec.Struct):
    user_key: str
    """The SHA-256 of the user id: all that is kept of it once the erasure is complete."""
    user_id: str | None
    """The id, until the erasure is complete."""
    requested_at: str
    erased_at: str | None
    state: Literal["pending", "erased"]

    @classmethod
    def of(cls, tombstone: Tombstone) -> Deletion:
        return cls(
            tombstone.user_key,
            tombstone.user_id,
            tombstone.requested_at,
            tombstone.erased_at,
            tombstone.state,
        )


class Forgotten(msgspec.Struct):
    """The answer to DELETE /users/{user_id}."""

    deletion: Deletion
    lists_deleted: int
    versions: list[str]
    """The model versions the user had a list in."""


AnyId = Annotated[str, Parameter(min_length=1, description="any characters")]


def deletion_routes(
    store: RecommendationStore,
    forget_responses: Callable[[], None],
    erase_served_log: Callable[[], None],
) -> list[HTTPRouteHandler]:
    """Every route in a worker thread: a SQLite write may wait for a publish's transaction."""
    admin = [require_bearer("RECO_ADMIN_TOKEN", "forget users", PermissionDeniedException)]

    def forget(user_id: str) -> Forgotten:
        require_short("user_id", user_id)
        receipt = store.forget_user(user_id)
        # The store's change token does not move for this process's own writes.
        forget_responses()
        erase_served_log()
        return Forgotten(Deletion.of(receipt.tombstone), receipt.lists_deleted, receipt.versions)

    def lift(user_id: str) -> Deletion:
        require_short("user_id", user_id)
        lifted = store.lift_tombstone(user_id)
        if lifted is None:
            raise NotFoundException(f"user {user_id!r} is not forgotten")
        return Deletion.of(lifted)

    @delete("/users/{user_id:str}", guards=admin, sync_to_thread=True, status_code=202)
    def forget_user(user_id: str) -> Forgotten:
        """Forget a user: their lists go from every kept version at once (they get the popular
        list, as an unknown user), their events are ignored from now on, and forget_users
        erases them from every file (202: that part is under way; see GET /deletions)."""
        return forget(user_id)

    @delete("/users", guards=admin, sync_to_thread=True, status_code=202)
    def forget_user_by_query(user_id: AnyId) -> Forgotten:
        """As DELETE /users/{user_id}, for ids a path cannot carry (with "/")."""
        return forget(user_id)

    @get("/deletions", guards=admin, sync_to_thread=True)
    def deletions() -> list[Deletion]:
        """Every forgotten user, the oldest request first: pending until forget_users has
        erased them everywhere (then only the key of their id is kept), then erased."""
        return [Deletion.of(tombstone) for tombstone in store.tombstones()]

    @delete("/deletions/{user_id:str}", guards=admin, sync_to_thread=True, status_code=200)
    def lift_tombstone(user_id: str) -> Deletion:
        """Stop forgetting a user: their next events count again (nothing erased comes
        back); 404 when they are not forgotten."""
        return lift(user_id)

    @delete("/deletions", guards=admin, sync_to_thread=True, status_code=200)
    def lift_tombstone_by_query(user_id: AnyId) -> Deletion:
        """As DELETE /deletions/{user_id}, for ids a path cannot carry."""
        return lift(user_id)

    return [forget_user, forget_user_by_query, deletions, lift_tombstone, lift_tombstone_by_query]
