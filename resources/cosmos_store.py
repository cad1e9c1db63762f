"""The production store: Azure Cosmos DB (NoSQL API), behind the same interface as SQLite.

Documents, in four containers of one database:
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
- `forgotten_users`, partitioned by `/id`: one tombstone per forgotten user, its id the
  user's `user_key` (a hash; the user id itself only while the erasure is pending).
- `catalog`, partitioned by `/generation`: the item catalog in chunks, each write's in a
  partition of its own, and in `models` the catalog's state (`~catalog`: its revision, the
  generation of its chunks and when its files were read), which readers follow: a write's
  chunks go first, then the state switches to them (conditionally, and only over a catalog
  read earlier), then the chunks two switches back are deleted.

Cosmos DB has no transaction across documents, so concurrent writers (a publish, the switch,
a purge, an admin's rollback, micro-batches) coordinate by conditional writes: a document is
replaced only if its etag is still the one read (If-Match), or created only if absent; a 412
or a 409 means another writer got there first: read again and decide again (`_rewrite`).
Every change to the pointer, a registry record or a user's list is such a read-decide-write,
so none undoes another's. The protocol that keeps "the pointer names a version whose lists are
complete" under any interleaving:
- `activate` claims the version first: it writes the pointer's current revision into the
  record, if the record says its lists are complete; then it moves the pointer on, if the
  pointer is still at that revision. If it moved meanwhile, `activate` claims again.
- What takes a version's lists away (a purge marks the record purging, a new publish of it
  writing) writes the record only while the pointer names another version and has moved past
  the record's last claim (a claim at the current revision may still move the pointer).
  Both writes are conditional on the record, so the second of a claim and a take-away sees
  the first: a claim after a take-away refuses a version whose lists are incomplete; a
  take-away after a claim finds the version live or about to be, and leaves it.
- A purge deletes each document only as it was listed (If-Match): one a new publish of the
  version wrote again since is kept.
- A user's list is replaced or created only over one ranked from no more of the user's events
  (`history_events`; documents written before the mark existed count as 0).
- `forget_user` writes the tombstone, then deletes the user's documents one by one (no
  transactional batch here: the local stand-in has none). Writers of lists leave out the users
  with a tombstone, and once written, look again and delete what a tombstone recorded
  meanwhile covers: a list written before the tombstone is deleted by `forget_user`, one
  written after it by its writer.

A publish's user documents may also be written by Spark's executors
(`write_version_on_executors`): each partition upserts its users' documents as the driver
would, and the record's protocol above stays on the driver, which gets back the ids of the
users written.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pandas as pd
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

from reco_dagster.domain.forgetting import user_key
from reco_dagster.domain.lists import (
    LIST_COLUMNS,
    history_marks,
    ranked_lists,
    whole_key_batches,
)
from resources.store import (
    Catalog,
    CatalogEntry,
    CatalogWrite,
    ForgetReceipt,
    Item,
    Lookup,
    ModelVersion,
    RecommendationStore,
    Tombstone,
    VersionNotPublishableError,
    WriteReport,
    split_reasons,
    unpublishable_because,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from resources.lake_tables import LakeTable

USERS, SIMILAR, MODELS, CATALOG = "user_recommendations", "similar_items", "models", "catalog"
FORGOTTEN = "forgotten_users"
_PARTITION_KEYS = {
    USERS: "/user_id",
    SIMILAR: "/item_id",
    MODELS: "/id",
    FORGOTTEN: "/id",
    CATALOG: "/generation",
}
LIVE_POINTER = "~live"
"""The pointer's id; model versions never start with "~" (see `register`)."""
CATALOG_STATE = "~catalog"
CATALOG_CHUNK_BYTES = 256 * 1024
"""About this much JSON per catalog document (Cosmos DB takes at most 2 MB)."""

# Lists states in a registry record: what a reader or `activate` may rely on.
NO_LISTS, WRITING, COMPLETE, PURGING, PURGED = "none", "writing", "complete", "purging", "purged"

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

    def _client(self) -> CosmosClient:
        credential: Any = self.key
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        return CosmosClient(
            self.endpoint,
            credential=credential,
            # The account's own endpoint only: no regional discovery (also what local
            # stand-ins of Cosmos DB need).
            enable_endpoint_discovery=False,
            connection_timeout=self.request_timeout_s,
            read_timeout=self.request_timeout_s,
        )

    def _create_containers(self) -> dict[str, ContainerProxy]:
        client = self._client()
        database = self._retrying(lambda: client.create_database_if_not_exists(self.database))
        return {
            name: self._retrying(
                lambda name=name, path=path: database.create_container_if_not_exists(
                    name, partition_key=PartitionKey(path=path)
                )
            )
            for name, path in _PARTITION_KEYS.items()
        }

    @classmethod
    @contextmanager
    def _on_executor(cls, settings: Mapping[str, Any]) -> Iterator[CosmosRecommendationStore]:
        """A store on one of Spark's executors, made from the driver's store's settings, with a
        client of its own that is closed at the end. The driver made the database and its
        containers: here only their clients are made, which sends no request."""
        store = cls(**settings)
        with store._client() as client:
            database = client.get_database_client(store.database)
            store._containers = {
                name: database.get_container_client(name) for name in _PARTITION_KEYS
            }
            yield store

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

    def _bulk(self, requests: Iterable[Callable[..., object]]) -> WriteReport:
        """Run many single-document requests, `concurrency` at a time; each is called with a
        response hook that adds up the request units the server reports. `requests` is read
        as they go (a few per thread ahead), so a generator's documents are never all in
        memory."""
        charges = _Charges()

        def run(request: Callable[..., object]) -> None:
            self._retrying(lambda: request(charges.add), on_retry=charges.retried)

        started, documents = time.perf_counter(), 0
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="cosmos-bulk") as pool:
            in_flight: set[Future[None]] = set()
            try:
                for request in requests:
                    if len(in_flight) >= 2 * self.concurrency:
                        done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        for finished in done:
                            finished.result()
                    in_flight.add(pool.submit(run, request))
                    documents += 1
                for finished in as_completed(in_flight):
                    finished.result()
            except BaseException:
                # Give up on the rest at once; a re-run completes what is missing.
                pool.shutdown(cancel_futures=True)
                raise
        return WriteReport(
            documents=documents,
            seconds=time.perf_counter() - started,
            request_units=charges.request_units,
            retries=charges.retries,
        )

    def _upserts(
        self, container: str, documents: Iterable[dict]
    ) -> Iterator[Callable[..., object]]:
        proxy = self._container(container)
        return (
            lambda hook, document=document: proxy.upsert_item(document, response_hook=hook)
            for document in documents
        )

    def _deletes(self, container: str, key: str, version: str, keep: Collection[str]) -> list:
        """Requests deleting a version's documents whose partition is not in `keep`, each as
        it is now: one written again meanwhile (a new publish of the version) stays."""
        proxy = self._container(container)
        found = self._query(container, f"SELECT c.{key}, c._etag FROM c WHERE c.id = @v", v=version)
        return [
            lambda hook, row=row: _delete(proxy, version, row[key], row["_etag"], hook)
            for row in found
            if row[key] not in keep
        ]

    def _rewrite(
        self,
        container: str,
        item: str,
        partition: str,
        change: Callable[[dict | None], dict | None],
        hook: Callable | None = None,
    ) -> dict | None:
        """Read a document and write what `change` makes of it (given None when there is
        none), conditionally: replaced only if nobody wrote it since the read, created only if
        nobody created it. When another writer got there first, read it again and let
        `change` decide again. Returns the document written, or None when `change` said to
        leave it (returned None). Transient failures are the caller's to retry."""
        proxy = self._container(container)
        while True:
            try:
                current = proxy.read_item(item, partition_key=partition, response_hook=hook)
            except CosmosResourceNotFoundError:
                current = None
            new = change(current)
            if new is None:
                return None
            try:
                if current is None:
                    return proxy.create_item(new, response_hook=hook)
                return proxy.replace_item(
                    item,
                    new,
                    etag=current["_etag"],
                    match_condition=MatchConditions.IfNotModified,
                    response_hook=hook,
                )
            except (CosmosAccessConditionFailedError, CosmosResourceExistsError):
                continue

    def _rewrite_model(
        self, item: str, change: Callable[[dict | None], dict | None]
    ) -> dict | None:
        """`_rewrite` of a registry record or the pointer, retrying transient failures."""
        return self._retrying(lambda: self._rewrite(MODELS, item, item, change))

    def _take_lists(self, version: str, change: Callable[[dict | None], dict | None]) -> bool:
        """Rewrite a version's record as `change` says, to make its lists incomplete (a purge,
        a new publish), unless the version is live or a claim to activate it may still move
        the pointer (see the module docstring). False when nothing was written."""

        def unless_live(record: dict | None) -> dict | None:
            pointer = self._pointer()
            claim = record.get("claim", -1) if record else -1
            if _live(pointer) == version or claim >= _revision(pointer):
                return None
            return change(record)

        return self._rewrite_model(version, unless_live) is not None

    def _pointer(self) -> dict | None:
        return self._read(MODELS, LIVE_POINTER, LIVE_POINTER)

    def _record(self, version: str) -> dict | None:
        record = self._read(MODELS, version, version)
        return record if record and record.get("kind") == "model" else None

    # -- the interface ----------------------------------------------------------------------

    def register(
        self, version: str, info: Mapping[str, Any], rejected_because: str | None = None
    ) -> None:
        if version.startswith("~") or any(c in version for c in "/\\?#"):
            raise ValueError(f"{version!r} cannot name a model version")

        def registered(record: dict | None) -> dict:
            live = self.live_version() == version
            return (
                record
                or {
                    "id": version,
                    "kind": "model",
                    "created_at": _now(),
                    "activated_at": None,
                    "lists": NO_LISTS,
                }
            ) | {
                "info": {**info, "rejected_because": rejected_because},
                "status": "live" if live else "rejected" if rejected_because else "candidate",
            }

        self._rewrite_model(version, registered)

    def write_version(
        self,
        version: str,
        user_lists: Iterable[tuple[str, list[Item]]],
        popular: list[Item],
        similar: Iterable[tuple[str, list[Item]]] = (),
        history_events: Mapping[str, int] | None = None,
        item_lists: Mapping[str, list[Item]] | None = None,
    ) -> WriteReport:
        attempt = self._start_writing(version)
        marks = history_events or {}
        # The ids of the users written, as many as the users but not their lists: what the
        # deletes of an earlier attempt's leftovers keep, and where users forgotten meanwhile
        # are looked for.
        users: set[str] = set()

        def user_documents() -> Iterator[dict]:
            for user, items in _leaving_out(self._forgotten_keys(), user_lists):
                _note_written(users, user)
                yield _user_document(version, user, items, marks.get(user, 0))

        items: set[str] = set()
        report = self._bulk(
            itertools.chain(
                self._upserts(USERS, user_documents()),
                self._upserts(SIMILAR, _similar_documents(version, similar, items)),
            )
        )
        return self._complete_writing(version, attempt, report, users, items, popular, item_lists)

    def write_ranked_version(
        self,
        version: str,
        ranked: LakeTable,
        titles: dict[str, str],
        popular: list[Item],
        similar: Iterable[tuple[str, list[Item]]] = (),
        item_lists: Mapping[str, list[Item]] | None = None,
        spark_session: Callable[[], Any] | None = None,
    ) -> WriteReport:
        if ranked.on_executors and spark_session is not None:
            frame = ranked.to_spark(spark_session())
            return self.write_version_on_executors(
                version, frame, titles, popular, similar, item_lists
            )
        return super().write_ranked_version(
            version, ranked, titles, popular, similar, item_lists, spark_session
        )

    def write_version_on_executors(
        self,
        version: str,
        ranked: DataFrame,
        titles: dict[str, str],
        popular: list[Item],
        similar: Iterable[tuple[str, list[Item]]] = (),
        item_lists: Mapping[str, list[Item]] | None = None,
    ) -> WriteReport:
        """`write_version` of a ranked Spark DataFrame (the columns of a ranked table, every
        row of a user in one partition and together, in the order of rank), the users' lists
        written by Spark's executors: each partition builds its users' documents as the
        driver does (`ranked_lists`, their `history_events` from the rows) and upserts them as
        `_bulk` does, through a client of its own, leaving out the users forgotten when the
        write started. Only counts and the ids of the users written come back; the record's
        protocol (taking the lists, deleting an earlier attempt's leftovers and lists of users
        forgotten meanwhile, completing) runs on the driver, as for `write_version`."""
        attempt = self._start_writing(version)
        context = ranked.sparkSession.sparkContext
        forgotten = context.broadcast(frozenset(self._forgotten_keys()))
        shared_titles = context.broadcast(titles)
        # The account and the bulk settings, for each partition's client: not the driver's
        # clients (nor its lock), which stay here.
        settings = self.model_dump()

        def write_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            yield _write_users_of_partition(
                settings, version, frames, shared_titles.value, forgotten.value
            )

        try:
            partitions = (
                ranked.select(*LIST_COLUMNS, "history_events")
                .mapInPandas(write_partition, _PARTITION_REPORT)
                .collect()
            )
        finally:
            forgotten.destroy()
            shared_titles.destroy()
        # The ids of the users written come back to the driver, for what `write_version`
        # keeps them for.
        users: set[str] = set()
        for partition in partitions:
            for user in partition.users:
                _note_written(users, user)
        items: set[str] = set()
        neighbours = self._bulk(self._upserts(SIMILAR, _similar_documents(version, similar, items)))
        written = WriteReport(
            documents=neighbours.documents + sum(partition.documents for partition in partitions),
            seconds=time.perf_counter() - attempt.started,
            request_units=(neighbours.request_units or 0.0)
            + sum(partition.request_units for partition in partitions),
            retries=neighbours.retries + sum(partition.retries for partition in partitions),
        )
        return self._complete_writing(version, attempt, written, users, items, popular, item_lists)

    def _start_writing(self, version: str) -> _Attempt:
        """Take the version's lists for a new write (see `_take_lists`)."""
        attempt, earlier_attempt = uuid.uuid4().hex, False

        def writing(record: dict | None) -> dict:
            nonlocal earlier_attempt
            if record is None or record["status"] == "rejected":
                state = record["status"] if record else "unknown"
                raise VersionNotPublishableError(
                    f"version {version} is {state}; it cannot be written"
                )
            earlier_attempt = record["lists"] != NO_LISTS
            return record | {"lists": WRITING, "writer": attempt}

        if not self._take_lists(version, writing):
            raise VersionNotPublishableError(
                f"version {version} is live (or going live); it cannot be written"
            )
        return _Attempt(attempt, earlier_attempt, time.perf_counter())

    def _complete_writing(
        self,
        version: str,
        attempt: _Attempt,
        written: WriteReport,
        users: Collection[str],
        items: Collection[str],
        popular: list[Item],
        item_lists: Mapping[str, list[Item]] | None,
    ) -> WriteReport:
        """After every document of this attempt (`users`' lists, `items`' similar items) is
        written: delete what an earlier attempt wrote that this one does not have, and the
        lists of users forgotten meanwhile; then say in the record that the lists are
        complete."""
        deleted = WriteReport(documents=0, seconds=0.0, request_units=0.0)
        if attempt.after_another:
            deleted = self._bulk(
                self._deletes(USERS, "user_id", version, users)
                + self._deletes(SIMILAR, "item_id", version, items)
            )
        self._delete_lists_of_forgotten(version, users)

        # Last: the record says the lists are complete only once every document is written,
        # and only if no purge or other publish of the version took them over meanwhile.
        def complete(record: dict | None) -> dict:
            if (
                record is None
                or record["lists"] != WRITING
                or record.get("writer") != attempt.writer
            ):
                raise VersionNotPublishableError(
                    f"version {version} was purged or written again during this publish"
                )
            return record | {
                "lists": COMPLETE,
                "status": "candidate",
                "popular": popular,
                "item_lists": dict(item_lists or {}),
                "users": len(users),
            }

        self._rewrite_model(version, complete)
        return WriteReport(
            users=len(users),
            documents=written.documents + deleted.documents + 1,
            seconds=time.perf_counter() - attempt.started,
            request_units=(written.request_units or 0.0) + (deleted.request_units or 0.0),
            retries=written.retries + deleted.retries,
        )

    def activate(self, version: str) -> None:
        while True:
            pointer = self._pointer()
            previous = _live(pointer)
            if previous == version:
                return
            if self._claim_and_switch(version, _revision(pointer)):
                break
        # Bookkeeping after the switch; if it is lost, `versions` still reads the pointer.
        self._rewrite_model(version, lambda record: _marked(record, "live", activated_at=_now()))
        if previous is not None:
            self._rewrite_model(previous, lambda record: _marked(record, "retired"))

    def _claim_and_switch(self, version: str, revision: int) -> bool:
        """Claim `version` at the pointer's `revision` (refused unless its lists are
        complete), then move the pointer from that revision to it; False when the pointer
        moved first (claim again at the new revision)."""
        self._rewrite_model(version, lambda record: _claimed(version, record, revision))
        switched = self._rewrite_model(
            LIVE_POINTER,
            lambda pointer: (
                _pointing_at(version, pointer) if _revision(pointer) == revision else None
            ),
        )
        return switched is not None

    def update_live_users(
        self,
        version: str,
        user_lists: list[tuple[str, list[Item]]],
        history_events: Mapping[str, int],
    ) -> bool:
        if self.live_version() != version:
            return False
        user_lists = list(_leaving_out(self._forgotten_keys(), user_lists))

        def refresh(hook: Callable, user: str, items: list[Item]) -> None:
            mark = history_events[user]
            document = _user_document(version, user, items, mark)
            self._rewrite(
                USERS,
                version,
                user,
                lambda stored: document if _history_events(stored) <= mark else None,
                hook,
            )

        self._bulk([partial(refresh, user=user, items=items) for user, items in user_lists])
        self._delete_lists_of_forgotten(version, [user for user, _ in user_lists])
        return self._bump_revision(version)

    def remove_from_live_lists(
        self, removed: Mapping[str, Collection[str]], new_events: Mapping[str, int]
    ) -> int:
        version = self.live_version()
        if version is None:
            return 0
        changed: list[str] = []

        def remove(hook: Callable, user: str) -> None:
            gone = set(removed.get(user, ()))

            def without_them(stored: dict | None) -> dict | None:
                if stored is None:
                    return None
                return stored | {
                    "items": [item for item in stored["items"] if item["item_id"] not in gone],
                    "history_events": _history_events(stored) + new_events[user],
                }

            if self._rewrite(USERS, version, user, without_them, hook) is not None:
                changed.append(user)

        self._bulk([partial(remove, user=user) for user in new_events])
        if changed:
            self._bump_revision(version)
        return len(changed)

    def _bump_revision(self, version: str) -> bool:
        """Move the pointer's revision on (caches in front of lookups drop what they hold)
        unless another version went live meanwhile: then the lists went to a version no
        reader follows (False)."""
        bumped = self._rewrite_model(
            LIVE_POINTER,
            lambda pointer: _pointing_at(version, pointer) if _live(pointer) == version else None,
        )
        return bumped is not None

    def live_version(self) -> str | None:
        return _live(self._pointer())

    def change_token(self) -> int:
        return _revision(self._pointer())

    def lookup(
        self, user_id: str, k: int | None, version: str | None = None, popular_only: bool = False
    ) -> Lookup | None:
        version = self._readable(version)
        if version is None:
            return None
        personal = None if popular_only else self._read(USERS, version, user_id)
        if personal is not None:
            return Lookup(version, "personal", personal["items"][:k])
        record = self._record(version)
        if record is None or "popular" not in record:
            return None
        # One more point read, for users without a list only: a forgotten user has none.
        return Lookup(version, "popular", record["popular"][:k], self.is_forgotten(user_id))

    def is_forgotten(self, user_id: str) -> bool:
        key = user_key(user_id)
        return self._read(FORGOTTEN, key, key) is not None

    def reasons(self, user_id: str, version: str) -> dict[str, list[str]]:
        found = self._read(USERS, version, user_id)
        return found.get("reasons", {}) if found else {}

    def personal_list(
        self, user_id: str, version: str | None = None
    ) -> tuple[str, list[Item] | None] | None:
        version = self._readable(version)
        if version is None:
            return None
        personal = self._read(USERS, version, user_id)
        return version, personal["items"] if personal else None

    def _readable(self, version: str | None) -> str | None:
        """The live version (None: nothing is live), or `version` if its lists are complete."""
        if version is None:
            return self.live_version()
        record = self._record(version)
        return version if record is not None and record["lists"] == COMPLETE else None

    def similar(self, item_id: str, k: int | None) -> tuple[str, list[Item] | None] | None:
        version = self.live_version()
        if version is None:
            return None
        found = self._read(SIMILAR, version, item_id)
        return version, found["items"][:k] if found else None

    def item_list(self, name: str) -> tuple[str, list[Item] | None] | None:
        version = self.live_version()
        if version is None:
            return None
        record = self._record(version) or {}
        return version, record.get("item_lists", {}).get(name)

    def write_catalog(
        self, entries: list[CatalogEntry], revision: str, read_at: float
    ) -> CatalogWrite:
        # Each write's chunks are a partition of their own: no two writers share documents.
        generation, chunks = f"{revision}-{uuid.uuid4().hex[:12]}", _chunks(entries)
        outcome: CatalogWrite = "older"
        replaced: dict | None = None
        chunks_written = False

        def switch(stored: dict | None) -> dict | None:
            nonlocal outcome, replaced, chunks_written
            if stored is not None and stored["read_at"] > read_at:
                outcome = "older"
                return None
            if stored is not None and stored["revision"] == revision:
                outcome = "unchanged"
                return stored | {"read_at": read_at}
            if not chunks_written:
                # First the chunks: the state names them only once every one is in.
                self._bulk(
                    self._upserts(
                        CATALOG,
                        (
                            {"id": str(n), "generation": generation, "entries": chunk}
                            for n, chunk in enumerate(chunks)
                        ),
                    )
                )
                chunks_written = True
            outcome, replaced = "written", stored
            return {
                "id": CATALOG_STATE,
                "kind": "catalog",
                "revision": revision,
                "read_at": read_at,
                "generation": generation,
                "chunks": len(chunks),
                "previous": stored["generation"] if stored else None,
            }

        self._rewrite_model(CATALOG_STATE, switch)
        if outcome != "written":
            if chunks_written:  # lost to a catalog read later: nobody follows these
                self._drop_catalog_generation(generation)
            return outcome
        if replaced is not None and replaced["previous"] is not None:
            # Two switches back: a reader still on it finds chunks missing and reads again.
            self._drop_catalog_generation(replaced["previous"])
        if (live := self.live_version()) is not None:
            # Readers compare the pointer's revision: move it, as for any change they serve.
            self._bump_revision(live)
        return outcome

    def _drop_catalog_generation(self, generation: str) -> None:
        proxy = self._container(CATALOG)
        found = self._query(
            CATALOG, "SELECT c.id, c._etag FROM c WHERE c.generation = @g", g=generation
        )
        self._bulk(
            [
                lambda hook, row=row: _delete(proxy, row["id"], generation, row["_etag"], hook)
                for row in found
            ]
        )

    def catalog_revision(self) -> str | None:
        state = self._read(MODELS, CATALOG_STATE, CATALOG_STATE)
        return state["revision"] if state else None

    def catalog(self) -> Catalog | None:
        while True:
            state = self._read(MODELS, CATALOG_STATE, CATALOG_STATE)
            if state is None:
                return None
            # The query names the partition key: it reads that one partition.
            chunks = self._query(
                CATALOG, "SELECT * FROM c WHERE c.generation = @g", g=state["generation"]
            )
            # Fewer chunks: two newer catalogs replaced this one while it was read.
            if len(chunks) == state["chunks"]:
                chunks.sort(key=lambda chunk: int(chunk["id"]))
                entries = [entry for chunk in chunks for entry in chunk["entries"]]
                return Catalog(state["revision"], state["read_at"], entries)

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
        records = self._query(MODELS, "SELECT * FROM c WHERE c.kind = @kind", kind="model")
        with_lists = [r for r in records if r["id"] != live and r["lists"] in (WRITING, COMPLETE)]
        with_lists.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        # And the purges that stopped half-way, to finish them.
        unfinished = [r for r in records if r["lists"] == PURGING]
        purged = []
        for listed in with_lists[keep:] + unfinished:
            version = listed["id"]
            # First the record, so nothing activates a version that is losing its lists;
            # skipped if it went live (or is going live), or was written again, since it was
            # listed.
            if not self._take_lists(version, partial(_purging, listed)):
                continue
            self._bulk(
                self._deletes(USERS, "user_id", version, set())
                + self._deletes(SIMILAR, "item_id", version, set())
            )
            self._rewrite_model(
                version,
                lambda record: (
                    record | {"lists": PURGED} if record and record["lists"] == PURGING else None
                ),
            )
            purged.append(version)
        return purged

    def forget_user(self, user_id: str) -> ForgetReceipt:
        key, now = user_key(user_id), _now()

        def forgetting(stored: dict | None) -> dict:
            first = stored or {"id": key, "requested_at": now}
            return first | {"user_id": user_id, "pending_since": now, "erased_at": None}

        # First the tombstone: from then on every writer of lists leaves the user out.
        tombstone = self._retrying(lambda: self._rewrite(FORGOTTEN, key, key, forgetting))
        versions = self._delete_lists(user_id)
        if versions:
            live = self.live_version()
            if live is not None:
                self._bump_revision(live)  # caches in front of lookups drop the user's list
        return ForgetReceipt(_tombstone(tombstone), len(versions), versions)

    def _delete_lists(self, user_id: str, versions: Collection[str] | None = None) -> list[str]:
        """Delete the user's list in these versions (all: None), whatever was written since
        they were listed; returns the versions it was deleted from."""
        listed = self._query(USERS, "SELECT VALUE c.id FROM c WHERE c.user_id = @u", u=user_id)
        doomed = sorted(version for version in listed if versions is None or version in versions)
        proxy = self._container(USERS)
        for version in doomed:
            with suppress(CosmosResourceNotFoundError):
                self._retrying(lambda v=version: proxy.delete_item(v, partition_key=user_id))
        return doomed

    def _forgotten_keys(self) -> set[str]:
        return set(self._query(FORGOTTEN, "SELECT VALUE c.id FROM c"))

    def _delete_lists_of_forgotten(self, version: str, users: Iterable[str]) -> None:
        """After writing these users' lists into `version`: delete those of users forgotten
        meanwhile (their `forget_user` may have listed the user's documents before these)."""
        forgotten = self._forgotten_keys()
        for user in users if forgotten else ():
            if user_key(user) in forgotten:
                self._delete_lists(user, [version])

    def tombstones(self) -> list[Tombstone]:
        stored = self._query(FORGOTTEN, "SELECT * FROM c")
        return sorted(
            (_tombstone(document) for document in stored),
            key=lambda tombstone: (tombstone.requested_at, tombstone.user_key),
        )

    def lift_tombstone(self, user_id: str) -> Tombstone | None:
        key = user_key(user_id)
        stored = self._read(FORGOTTEN, key, key)
        if stored is None:
            return None
        with suppress(CosmosResourceNotFoundError):
            self._retrying(lambda: self._container(FORGOTTEN).delete_item(key, partition_key=key))
        return _tombstone(stored)

    def reopen_tombstones(self, user_ids: Collection[str]) -> None:
        now = _now()
        for user in set(user_ids):
            key = user_key(user)
            self._retrying(
                lambda key=key, user=user: self._rewrite(
                    FORGOTTEN,
                    key,
                    key,
                    lambda stored: (
                        stored | {"user_id": user, "pending_since": now, "erased_at": None}
                        if stored
                        else None
                    ),
                )
            )

    def mark_erased(self, user_keys: Collection[str], swept_from: str) -> list[str]:
        # Cosmos DB itself keeps no deleted document or overwritten value to rewrite.
        def erased(stored: dict | None) -> dict | None:
            if stored is None or stored["erased_at"] is not None:
                return None
            if stored["pending_since"] > swept_from:
                return None
            return stored | {"user_id": None, "erased_at": _now()}

        return [
            key
            for key in sorted(set(user_keys))
            if self._retrying(lambda key=key: self._rewrite(FORGOTTEN, key, key, erased))
        ]


@dataclass(frozen=True)
class _Attempt:
    """A write of a version's lists, as its record names it."""

    writer: str
    after_another: bool
    """Whether an earlier attempt may have written documents of the version."""
    started: float


class _Charges:
    """The request units and retries of concurrent requests, added up as they come."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.request_units = 0.0
        self.retries = 0

    def add(self, headers: Mapping[str, str], _body: object) -> None:
        """A response hook: the request's charge."""
        with self._lock:
            self.request_units += float(headers.get("x-ms-request-charge", 0.0))

    def retried(self) -> None:
        with self._lock:
            self.retries += 1


_PARTITION_REPORT = "users array<string>, documents long, request_units double, retries long"
"""What each partition of `write_version_on_executors` answers: the users written and what
writing them took."""


def _write_users_of_partition(
    settings: Mapping[str, Any],
    version: str,
    frames: Iterator[pd.DataFrame],
    titles: dict[str, str],
    forgotten: Collection[str],
) -> pd.DataFrame:
    """On an executor: the users' lists of one partition of a ranked table, read a frame at a
    time, upserted into `version` through a client of this partition's own; returns
    `_PARTITION_REPORT`'s one row."""
    users: list[str] = []

    def documents() -> Iterator[dict]:
        for frame in whole_key_batches(frames, "user_id"):
            marks = history_marks(frame)
            for user, items in _leaving_out(forgotten, ranked_lists(frame, "user_id", titles)):
                users.append(user)
                yield _user_document(version, user, items, marks[user])

    with CosmosRecommendationStore._on_executor(settings) as store:
        report = store._bulk(store._upserts(USERS, documents()))
    return pd.DataFrame(
        {
            "users": [users],
            "documents": [report.documents],
            "request_units": [report.request_units],
            "retries": [report.retries],
        }
    )


def _note_written(users: set[str], user: str) -> None:
    """Add a user to those written; a second list for one user means that its ranked rows
    were not together, and one of the two would silently replace the other."""
    if user in users:
        raise ValueError("two lists for one user: a ranked table's rows of a user go together")
    users.add(user)


def _similar_documents(
    version: str, similar: Iterable[tuple[str, list[Item]]], items: set[str]
) -> Iterator[dict]:
    """The version's similar-items documents, each item added to `items` as it goes."""
    for item, neighbours in similar:
        items.add(item)
        yield {"id": version, "item_id": item, "items": neighbours}


def _leaving_out(
    forgotten: Collection[str], pairs: Iterable[tuple[str, T]]
) -> Iterable[tuple[str, T]]:
    """The (user, ...) pairs of users not forgotten; without tombstones no id is hashed."""
    if not forgotten:
        return pairs
    return ((user, value) for user, value in pairs if user_key(user) not in forgotten)


def _tombstone(document: dict) -> Tombstone:
    return Tombstone(
        user_key=document["id"],
        user_id=document["user_id"],
        requested_at=document["requested_at"],
        pending_since=document["pending_since"],
        erased_at=document["erased_at"],
    )


def _delete(proxy: ContainerProxy, item: str, partition: str, etag: str, hook: Callable) -> None:
    # Gone already (an earlier attempt), or written again since it was listed: leave it.
    with suppress(CosmosResourceNotFoundError, CosmosAccessConditionFailedError):
        proxy.delete_item(
            item,
            partition_key=partition,
            etag=etag,
            match_condition=MatchConditions.IfNotModified,
            response_hook=hook,
        )


def _chunks(entries: list[CatalogEntry]) -> list[list[CatalogEntry]]:
    """The catalog's entries in documents of about CATALOG_CHUNK_BYTES of JSON each."""
    chunks: list[list[CatalogEntry]] = [[]]
    size = 0
    for entry in entries:
        entry_size = len(json.dumps(entry))
        if chunks[-1] and size + entry_size > CATALOG_CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += entry_size
    return chunks


def _live(pointer: dict | None) -> str | None:
    return pointer["version"] if pointer else None


def _revision(pointer: dict | None) -> int:
    return pointer["revision"] if pointer else 0


def _pointing_at(version: str, pointer: dict | None) -> dict:
    """The live pointer moved to `version`, its revision one higher."""
    return {
        "id": LIVE_POINTER,
        "kind": "pointer",
        "version": version,
        "revision": _revision(pointer) + 1,
    }


def _claimed(version: str, record: dict | None, revision: int) -> dict:
    """The record with a claim to go live at the pointer's `revision`, if it may go live."""
    registered = record is not None and record.get("kind") == "model"
    if reason := unpublishable_because(
        version,
        record["status"] if registered else None,
        registered and record["lists"] == COMPLETE,
        record["info"].get("rejected_because") if registered else None,
    ):
        raise VersionNotPublishableError(reason)
    return record | {"claim": revision}


def _purging(listed: dict, record: dict | None) -> dict | None:
    """The record marked purging, if its lists are still as they were listed."""
    if record is None or _lists_state(record) != _lists_state(listed):
        return None
    return record | {"lists": PURGING}


def _lists_state(record: dict) -> tuple[str, str | None]:
    return record["lists"], record.get("writer")


def _marked(record: dict | None, status: str, **fields: str) -> dict | None:
    return record | {"status": status, **fields} if record else None


def _user_document(version: str, user: str, items: list[Item], mark: int) -> dict:
    served, reasons = split_reasons(items)
    document = {"id": version, "user_id": user, "items": served, "history_events": mark}
    return document | {"reasons": reasons} if reasons else document


def _history_events(stored: dict | None) -> int:
    return stored.get("history_events", 0) if stored else 0


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
