"""The production store: Azure Cosmos DB (NoSQL API), behind the same interface as SQLite.

Documents, in three containers of one database:
- `user_recommendations`, partitioned by `/user_id`: one document per (user, version) with
  `id` = version, so a lookup is one point read (id, partition key) and a re-run of a publish
  overwrites the same documents: no duplicates.
- `similar_items`, partitioned by `/item_id`, the same way per (item, version).
- `models`, partitioned by `/id`: one registry record per version (with its popular list and
  the state of its lists), and the live pointer. Readers follow the pointer, so a version
  being written is invisible until `activate` replaces the pointer: the switch is that single
  write. A version is only switched to once its record says its lists are complete, and the
  record says so only after the last document was written: a publish that died half-way is
  never served, and running it again completes it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.cosmos import ContainerProxy, CosmosClient, PartitionKey
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)
from pydantic import PrivateAttr

from resources.store import (
    Item,
    Lookup,
    ModelVersion,
    RecommendationStore,
    VersionNotPublishableError,
    WriteReport,
)

USERS, SIMILAR, MODELS = "user_recommendations", "similar_items", "models"
LIVE_POINTER = "~live"
"""The pointer's id; model versions never start with "~" (see `register`)."""

# Lists states in a registry record: what a reader or `activate` may rely on.
NO_LISTS, WRITING, COMPLETE, PURGED = "none", "writing", "complete", "purged"

# Throttled (429), unavailable (503), timed out (408), gone (410), retry-with (449).
_TRANSIENT = {408, 410, 429, 449, 503}
T = TypeVar("T")


class CosmosRecommendationStore(RecommendationStore):
    """Azure Cosmos DB; the database and containers are created when missing."""

    reads_over_network: ClassVar[bool] = True
    # The token is a point read of the live pointer: a round trip and a request unit.
    change_check_interval_s: ClassVar[float] = 0.5

    endpoint: str
    key: str | None = None
    """The account key; None signs in with DefaultAzureCredential (managed identity)."""
    database: str = "reco"
    concurrency: int = 16
    """Writes in flight during a publish."""
    max_attempts: int = 8
    """Tries per request on throttling, unavailability and dropped connections."""
    request_timeout_s: float = 10.0

    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _containers: dict[str, ContainerProxy] | None = PrivateAttr(default=None)

    # -- plumbing ---------------------------------------------------------------------------

    def _container(self, name: str) -> ContainerProxy:
        with self._lock:
            if self._containers is None:
                self._containers = self._create_containers()
        return self._containers[name]

    def _create_containers(self) -> dict[str, ContainerProxy]:
        credential: Any = self.key
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = CosmosClient(
            self.endpoint,
            credential=credential,
            # The account's own endpoint only: no regional discovery (also what local
            # stand-ins of Cosmos DB need).
            enable_endpoint_discovery=False,
            connection_timeout=self.request_timeout_s,
            read_timeout=self.request_timeout_s,
        )
        database = self._retrying(lambda: client.create_database_if_not_exists(self.database))
        keys = {USERS: "/user_id", SIMILAR: "/item_id", MODELS: "/id"}
        return {
            name: self._retrying(
                lambda name=name, path=path: database.create_container_if_not_exists(
                    name, partition_key=PartitionKey(path=path)
                )
            )
            for name, path in keys.items()
        }

    def _retrying(self, request: Callable[[], T], on_retry: Callable[[], None] = lambda: None) -> T:
        """Run a request, retrying transient failures: after the server's retry-after when it
        gives one, else after an exponential backoff with jitter. (The SDK retries throttling
        itself first; this covers what it gives up on and what it does not retry.)"""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return request()
            except CosmosHttpResponseError as error:
                if error.status_code not in _TRANSIENT or attempt == self.max_attempts:
                    raise
                headers = error.response.headers if error.response is not None else {}
                wait_ms = headers.get("x-ms-retry-after-ms")
                delay = float(wait_ms) / 1000 if wait_ms else _backoff(attempt)
            except (ServiceRequestError, ServiceResponseError):
                if attempt == self.max_attempts:
                    raise
                delay = _backoff(attempt)
            on_retry()
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _read(self, container: str, item: str, partition: str) -> dict | None:
        try:
            return self._retrying(
                lambda: self._container(container).read_item(item, partition_key=partition)
            )
        except CosmosResourceNotFoundError:
            return None

    def _query(self, container: str, query: str, **parameters: str) -> list[dict]:
        return self._retrying(
            lambda: list(
                self._container(container).query_items(
                    query,
                    parameters=[{"name": f"@{k}", "value": v} for k, v in parameters.items()],
                    enable_cross_partition_query=True,
                )
            )
        )

    def _bulk(self, requests: list[Callable[..., object]]) -> WriteReport:
        """Run many single-document requests concurrently; each is called with a response hook
        that adds up the request units the server reports."""
        charges: list[float] = []
        retries: list[int] = []

        def charge(headers: Mapping[str, str], _body: object) -> None:
            charges.append(float(headers.get("x-ms-request-charge", 0.0)))

        def run(request: Callable[..., object]) -> None:
            self._retrying(lambda: request(charge), on_retry=lambda: retries.append(1))

        started = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="cosmos-bulk") as pool:
            try:
                for done in as_completed([pool.submit(run, request) for request in requests]):
                    done.result()
            except BaseException:
                # Give up on the rest at once; a re-run completes what is missing.
                pool.shutdown(cancel_futures=True)
                raise
        return WriteReport(
            documents=len(requests),
            seconds=time.perf_counter() - started,
            request_units=sum(charges),
            retries=len(retries),
        )

    def _upserts(self, container: str, documents: Iterable[dict]) -> list[Callable[..., object]]:
        proxy = self._container(container)
        return [
            lambda hook, document=document: proxy.upsert_item(document, response_hook=hook)
            for document in documents
        ]

    def _deletes(self, container: str, key: str, version: str, keep: set[str]) -> list:
        """Requests deleting a version's documents whose partition is not in `keep`."""
        proxy = self._container(container)
        found = self._query(container, f"SELECT c.{key} FROM c WHERE c.id = @v", v=version)
        return [
            lambda hook, partition=row[key]: _delete(proxy, version, partition, hook)
            for row in found
            if row[key] not in keep
        ]

    def _pointer(self) -> dict | None:
        return self._read(MODELS, LIVE_POINTER, LIVE_POINTER)

    def _record(self, version: str) -> dict | None:
        record = self._read(MODELS, version, version)
        return record if record and record.get("kind") == "model" else None

    def _save_record(self, record: dict) -> None:
        self._retrying(lambda: self._container(MODELS).upsert_item(record))

    # -- the interface ----------------------------------------------------------------------

    def register(
        self, version: str, info: Mapping[str, Any], rejected_because: str | None = None
    ) -> None:
        if version.startswith("~") or any(c in version for c in "/\\?#"):
            raise ValueError(f"{version!r} cannot name a model version")
        record = self._record(version) or {
            "id": version,
            "kind": "model",
            "created_at": _now(),
            "activated_at": None,
            "lists": NO_LISTS,
        }
        live = (self._pointer() or {}).get("version") == version
        record |= {
            "info": {**info, "rejected_because": rejected_because},
            "status": "live" if live else "rejected" if rejected_because else "candidate",
        }
        self._save_record(record)

    def write_version(
        self,
        version: str,
        user_lists: Iterable[tuple[str, list[Item]]],
        popular: list[Item],
        similar: Iterable[tuple[str, list[Item]]] = (),
    ) -> WriteReport:
        record = self._record(version)
        live = (self._pointer() or {}).get("version")
        if record is None or record["status"] == "rejected" or live == version:
            state = "live" if live == version else record["status"] if record else "unknown"
            raise VersionNotPublishableError(f"version {version} is {state}; it cannot be written")
        earlier_attempt = record["lists"] != NO_LISTS
        self._save_record(record | {"lists": WRITING})
        users = {user: items for user, items in user_lists}
        neighbours = {item: items for item, items in similar}
        requests = self._upserts(
            USERS, ({"id": version, "user_id": u, "items": i} for u, i in users.items())
        ) + self._upserts(
            SIMILAR, ({"id": version, "item_id": s, "items": i} for s, i in neighbours.items())
        )
        if earlier_attempt:
            # An earlier attempt may have written users or items this one does not have.
            requests += self._deletes(USERS, "user_id", version, set(users))
            requests += self._deletes(SIMILAR, "item_id", version, set(neighbours))
        report = self._bulk(requests)
        # Last: the record says the lists are complete only once every document is written.
        self._save_record(
            record
            | {"lists": COMPLETE, "status": "candidate", "popular": popular, "users": len(users)}
        )
        return WriteReport(
            users=len(users),
            documents=report.documents + 1,
            seconds=report.seconds,
            request_units=report.request_units,
            retries=report.retries,
        )

    def activate(self, version: str) -> None:
        record = self._record(version)
        if record is None or record["lists"] != COMPLETE or record["status"] == "rejected":
            raise VersionNotPublishableError(
                f"version {version} has no complete lists in the store"
                + (f" (it is {record['status']})" if record else " (unknown version)")
            )
        previous = self._switch_pointer(lambda pointer: version)
        if previous == version:
            return
        # Bookkeeping after the switch; if it is lost, `versions` still reads the pointer.
        self._save_record(record | {"status": "live", "activated_at": _now()})
        retired = self._record(previous) if previous else None
        if retired is not None:
            self._save_record(retired | {"status": "retired"})

    def _switch_pointer(self, new_version: Callable[[str | None], str | None]) -> str | None:
        """Replace the live pointer, its revision one higher, in one conditional write;
        `new_version` maps the current live version to the next (None: leave the pointer
        alone). Returns the version that was live."""
        models = self._container(MODELS)
        while True:
            pointer = self._pointer()
            current = pointer["version"] if pointer else None
            target = new_version(current)
            if target is None:
                return current
            body = {
                "id": LIVE_POINTER,
                "kind": "pointer",
                "version": target,
                "revision": (pointer["revision"] if pointer else 0) + 1,
            }
            try:
                if pointer is None:
                    self._retrying(lambda body=body: models.create_item(body))
                else:
                    self._retrying(
                        lambda body=body, etag=pointer["_etag"]: models.replace_item(
                            LIVE_POINTER,
                            body,
                            etag=etag,
                            match_condition=MatchConditions.IfNotModified,
                        )
                    )
                return current
            except (CosmosAccessConditionFailedError, CosmosResourceExistsError):
                continue  # another writer moved the pointer first: decide again

    def update_live_users(self, version: str, user_lists: list[tuple[str, list[Item]]]) -> bool:
        if (self._pointer() or {}).get("version") != version:
            return False
        self._bulk(
            self._upserts(USERS, ({"id": version, "user_id": u, "items": i} for u, i in user_lists))
        )
        # Bump the revision (caches in front of lookups drop what they hold) unless another
        # version went live meanwhile: then the lists went to a version no reader follows.
        still_live = self._switch_pointer(lambda live: live if live == version else None)
        return still_live == version

    def live_version(self) -> str | None:
        pointer = self._pointer()
        return pointer["version"] if pointer else None

    def change_token(self) -> int:
        pointer = self._pointer()
        return pointer["revision"] if pointer else 0

    def lookup(
        self, user_id: str, k: int, version: str | None = None, popular_only: bool = False
    ) -> Lookup | None:
        if version is None:
            version = self.live_version()
            if version is None:
                return None
        else:
            record = self._record(version)
            if record is None or record["lists"] != COMPLETE:
                return None
        personal = None if popular_only else self._read(USERS, version, user_id)
        if personal is not None:
            return Lookup(version, "personal", personal["items"][:k])
        record = self._record(version)
        if record is None or "popular" not in record:
            return None
        return Lookup(version, "popular", record["popular"][:k])

    def similar(self, item_id: str, k: int) -> tuple[str, list[Item] | None] | None:
        version = self.live_version()
        if version is None:
            return None
        found = self._read(SIMILAR, version, item_id)
        return version, found["items"][:k] if found else None

    def versions(self) -> list[ModelVersion]:
        live = self.live_version()
        records = self._query(MODELS, "SELECT * FROM c WHERE c.kind = @kind", kind="model")
        records.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return [_model_version(record, live) for record in records]

    def version(self, version: str) -> ModelVersion | None:
        record = self._record(version)
        return _model_version(record, self.live_version()) if record else None

    def purge_old_versions(self, keep: int) -> list[str]:
        live = self.live_version()
        with_documents = [
            record
            for record in self._query(MODELS, "SELECT * FROM c WHERE c.kind = @kind", kind="model")
            if record["id"] != live and record["lists"] in (WRITING, COMPLETE)
        ]
        with_documents.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        purged = with_documents[keep:]
        for record in purged:
            # First the record, so nothing activates a version that is losing its lists.
            self._save_record(record | {"lists": PURGED})
            self._bulk(
                self._deletes(USERS, "user_id", record["id"], set())
                + self._deletes(SIMILAR, "item_id", record["id"], set())
            )
        return [record["id"] for record in purged]


def _delete(proxy: ContainerProxy, item: str, partition: str, hook: Callable) -> None:
    with suppress(CosmosResourceNotFoundError):  # deleted already, by an earlier attempt
        proxy.delete_item(item, partition_key=partition, response_hook=hook)


def _model_version(record: dict, live: str | None) -> ModelVersion:
    status = record["status"]
    if record["id"] == live:
        status = "live"
    elif status == "live":
        status = "retired"  # the pointer moved on; the bookkeeping after the switch was lost
    return ModelVersion(
        version=record["id"],
        status=status,
        created_at=record["created_at"],
        activated_at=record["activated_at"],
        has_lists=record["lists"] == COMPLETE,
        info=record["info"],
    )


def _backoff(attempt: int) -> float:
    return min(8.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
