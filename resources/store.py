"""Where published recommendations live, and the one place the live model version is chosen.

A publish writes a complete new version beside the live one, then `activate` switches the
live pointer in a single write: readers see the old version or the new one, never a mix.

Writers race: a publish, the switch, a purge, an admin's rollback and micro-batches may run at
once in different processes. Every store keeps two promises under any interleaving:
- the live pointer only ever names a version whose lists are complete (a rollback racing a
  purge either wins, and the purge leaves that version alone, or loses and is refused);
- a user's list is only replaced by one computed from at least as many of the user's events
  (its `history_events` mark, which only grows with the history), so a refresh that read the
  history earlier never overwrites a fresher list.
SQLite keeps them by making each check and the write it guards one transaction
(`BEGIN IMMEDIATE` takes the write lock before the check); Cosmos DB by conditional writes
(see resources/cosmos_store.py). A publish writes its users' lists a chunk at a time, each
chunk a transaction of its own; the version has lists (and can be activated) only once the
last one wrote its popular list.

A third promise: a forgotten user (`forget_user`, until `lift_tombstone`) has no list in any
version, whatever writer races the deletion. The tombstone is written before the lists are
deleted, and every list write checks the tombstones: in its transaction (SQLite), or after
writing, deleting what a tombstone recorded meanwhile covers (Cosmos DB).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import msgspec
from pydantic import BaseModel, PrivateAttr

from reco_dagster.domain.catalog import CatalogEntry
from reco_dagster.domain.forgetting import Forgotten, user_key
from reco_dagster.domain.lists import (
    LIST_COLUMNS,
    Item,
    history_marks,
    ranked_lists,
    whole_key_batches,
)

if TYPE_CHECKING:
    from resources.lake_tables import LakeTable


class VersionNotPublishableError(RuntimeError):
    pass


def unpublishable_because(
    version: str, status: str | None, has_lists: bool, rejected_because: str | None
) -> str | None:
    """Why `version` (None status: not registered) may not go live; None when it may."""
    if status is None:
        return f"version {version} is not in the registry"
    if status == "rejected":
        return f"version {version} was rejected by the quality gate: {rejected_because}"
    if not has_lists:
        return f"version {version} has no complete lists in the store (it is {status})"
    return None


Status = Literal["candidate", "live", "rejected", "retired"]
T = TypeVar("T")


@dataclass(frozen=True)
class Lookup:
    model_version: str
    source: Literal["personal", "popular"]
    items: list[Item]
    forgotten: bool = False
    """The user has a tombstone (and so the popular list): nothing about them is to be kept,
    not even that they asked (the API's served-list log leaves them out)."""


@dataclass(frozen=True)
class Tombstone:
    """A forgotten user: no lists, and their events ignored, until the tombstone is lifted."""

    user_key: str
    """`user_key(user_id)`: what recognises the user's events once the id is erased."""
    user_id: str | None
    """Kept only while the erasure is pending: `forget_users` searches text that cannot be
    split into rows for it. None once erased."""
    requested_at: str
    """When the user was first forgotten (ISO-8601 UTC)."""
    pending_since: str
    """The latest request, or the latest arrival of the user's events (ingestion drops them,
    but they are in the landing files): an erasure that starts later completes it."""
    erased_at: str | None
    """When an erasure last removed everything of the user; None while one is pending."""

    @property
    def state(self) -> Literal["pending", "erased"]:
        return "pending" if self.erased_at is None else "erased"


@dataclass(frozen=True)
class ForgetReceipt:
    tombstone: Tombstone
    lists_deleted: int
    versions: list[str]
    """The versions the user had a list in."""


@dataclass(frozen=True)
class Catalog:
    """The catalog the store keeps (one, beside every version's lists)."""

    revision: str
    read_at: float
    """When the files it was made of were listed (Unix seconds)."""
    entries: list[CatalogEntry]


CatalogWrite = Literal["written", "unchanged", "older"]
"""What `write_catalog` did: replaced the catalog; found the same revision (only its read
time raised); or kept the stored one, read later."""


@dataclass(frozen=True)
class WriteReport:
    """What writing a version's lists took."""

    documents: int
    """Rows or documents written: per user, per item (similar items), the popular list."""
    seconds: float
    users: int = 0
    request_units: float | None = None
    """Cosmos DB's request charge, summed over the writes (None where nothing reports one)."""
    retries: int = 0
    """Writes retried after throttling or a transient failure."""

    @property
    def documents_per_s(self) -> float:
        return self.documents / max(self.seconds, 1e-9)


@dataclass(frozen=True)
class ModelVersion:
    """A registry record: info holds family, settings, data fingerprint, metrics, verdict."""

    version: str
    status: Status
    created_at: str
    activated_at: str | None
    has_lists: bool
    info: dict[str, Any]


class RecommendationStore(BaseModel):
    """The interface every store implements (SQLite embedded, Cosmos DB in production). A plain
    class (the API imports it without Dagster); `resources.settings` wraps it for the assets.

    A model's life: `register` (candidate, or rejected by the quality gate) → `write_version`
    (its lists, beside the live ones) → `activate` (the switch) → retired when another
    version goes live → `purge_old_versions` drops its lists, the record stays.
    """

    reads_over_network: ClassVar[bool] = False
    """Whether a lookup waits on a network round trip (the API then runs it in a thread)."""
    change_check_interval_s: ClassVar[float] = 0.001
    """How often a cache in front of `lookup` reads `change_token`: the bound on how long it
    may serve what another process's write replaced. SQLite's token is cheap, but reading it
    on every request (the GIL is released and taken back) halved lookup throughput."""

    def register(
        self, version: str, info: Mapping[str, Any], rejected_because: str | None = None
    ) -> None:
        """Record a trained model; a live version stays live (its info is refreshed)."""
        raise NotImplementedError

    def write_version(
        self,
        version: str,
        user_lists: Iterable[tuple[str, list[Item]]],
        popular: list[Item],
        similar: Iterable[tuple[str, list[Item]]] = (),
        history_events: Mapping[str, int] | None = None,
        item_lists: Mapping[str, list[Item]] | None = None,
    ) -> WriteReport:
        """Store a registered candidate's lists (per user, popular, per item similar items),
        not yet live; re-running replaces them. `popular` is the cold-start list (unknown
        users, and the fill of lists a request's filters leave short); `item_lists` are the
        version's other lists by name (`item_list`). `history_events` marks each user's list
        with the number of the user's events it was ranked from (see `update_live_users`); a
        list without a mark gets 0, which any refresh replaces. `user_lists` is read as the
        lists are written, never held whole: a generator keeps the driver's memory from
        growing with the number of users' lists."""
        raise NotImplementedError

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
        """`write_version` of the lists of a ranked table (a `<family>_recommendations` table:
        user_id, item_id, rank, score, new_item, because, history_events; every row of a user
        together, in the order of rank), read a batch at a time: the driver holds a batch's
        lists and each user's `history_events` mark, never every user's list. A store that
        can write from Spark's executors does so for a table Spark wrote, in the session
        `spark_session` gives (only called then)."""
        marks: dict[str, int] = {}
        for batch in ranked.batches(["user_id", "history_events"]):
            marks |= history_marks(batch)
        user_lists = (
            user_list
            for frame in whole_key_batches(ranked.batches(LIST_COLUMNS), "user_id")
            for user_list in ranked_lists(frame, "user_id", titles)
        )
        return self.write_version(
            version, user_lists, popular, similar, history_events=marks, item_lists=item_lists
        )

    def activate(self, version: str) -> None:
        """Make a version with stored lists live; the previous live version is retired."""
        raise NotImplementedError

    def update_live_users(
        self,
        version: str,
        user_lists: list[tuple[str, list[Item]]],
        history_events: Mapping[str, int],
    ) -> bool:
        """Replace some users' lists in `version` if, and only if, it is still the live
        version when the write happens; each user's list changes atomically, and only if the
        stored one was ranked from no more of the user's events than `history_events[user]`
        (a user's history only grows, so a smaller count means an earlier read of it).
        Returns False (nothing written) when another version went live meanwhile."""
        raise NotImplementedError

    def remove_from_live_lists(
        self, removed: Mapping[str, Collection[str]], new_events: Mapping[str, int]
    ) -> int:
        """Take items a user has just consumed (`removed[user]`) out of the user's list in the
        live version, each user atomically, and raise the list's `history_events` mark by the
        user's `new_events[user]`: a refresh ranked from a history without those events cannot
        put them back, the one that reads them replaces the list. Users without a personal
        list are left alone. Returns how many lists changed."""
        raise NotImplementedError

    def reasons(self, user_id: str, version: str) -> dict[str, list[str]]:
        """Why each item of the user's list in `version` was recommended: up to three items
        of the user's history by item id (`domain.explain`); empty for a user without a
        personal list, or one written without reasons."""
        raise NotImplementedError

    def live_version(self) -> str | None:
        raise NotImplementedError

    def change_token(self) -> int:
        """A value that changes whenever another process writes to the store (a publish, a
        switch, a micro-batch): caches in front of `lookup` compare it at least every
        `change_check_interval_s`."""
        raise NotImplementedError

    def lookup(
        self, user_id: str, k: int | None, version: str | None = None, popular_only: bool = False
    ) -> Lookup | None:
        """A version's list for a user (the live version unless one is named), or its popular
        list for an unknown user or with `popular_only`, k items (None: all); None while
        nothing is live or when the named version has no lists in the store."""
        raise NotImplementedError

    def personal_list(
        self, user_id: str, version: str | None = None
    ) -> tuple[str, list[Item] | None] | None:
        """(the version, the user's whole list or None for a user it has none for): `lookup`
        without the popular list, which an unknown user's caller has already. None while
        nothing is live or when the named version has no lists in the store."""
        raise NotImplementedError

    def similar(self, item_id: str, k: int | None) -> tuple[str, list[Item] | None] | None:
        """(live version, the item's most similar items or None for an unknown item); None
        while nothing is live. k None: all that are stored."""
        raise NotImplementedError

    def item_list(self, name: str) -> tuple[str, list[Item] | None] | None:
        """(live version, its list of that name, or None when it has none); None while nothing
        is live."""
        raise NotImplementedError

    def write_catalog(
        self, entries: list[CatalogEntry], revision: str, read_at: float
    ) -> CatalogWrite:
        """Replace the catalog with `entries` (readers see the old one or the new one, never a
        mix), unless the stored one was read from the catalog's files later than `read_at`: a
        publish that read them earlier never replaces a newer catalog. A change moves the
        change token."""
        raise NotImplementedError

    def catalog_revision(self) -> str | None:
        """The stored catalog's revision (a cheap read): what a reader compares before reading
        the catalog again. None while there is none."""
        raise NotImplementedError

    def catalog(self) -> Catalog | None:
        raise NotImplementedError

    def versions(self) -> list[ModelVersion]:
        """The registry, newest first."""
        raise NotImplementedError

    def version(self, version: str) -> ModelVersion | None:
        return next((record for record in self.versions() if record.version == version), None)

    def purge_old_versions(self, keep: int) -> list[str]:
        """Delete the lists of all but the newest `keep` versions that are not live (retired
        ones and candidates never served); returns the purged versions."""
        raise NotImplementedError

    def forget_user(self, user_id: str) -> ForgetReceipt:
        """Record a tombstone for the user (pending erasure; a user forgotten already keeps
        the first request's time), then delete the user's list in every version: from then
        on no write puts one back, and a lookup answers as for an unknown user."""
        raise NotImplementedError

    def tombstones(self) -> list[Tombstone]:
        """Every tombstone, the oldest request first."""
        raise NotImplementedError

    def is_forgotten(self, user_id: str) -> bool:
        """Whether the user has a tombstone (one read)."""
        raise NotImplementedError

    def forgotten(self) -> Forgotten:
        """The tombstones, as ingestion and the erasure use them."""
        tombstones = self.tombstones()
        return Forgotten(
            frozenset(tombstone.user_key for tombstone in tombstones),
            {t.user_key: t.user_id for t in tombstones if t.user_id is not None},
        )

    def lift_tombstone(self, user_id: str) -> Tombstone | None:
        """Stop forgetting a user (their next events count again; nothing erased comes back);
        the tombstone lifted, None when there was none."""
        raise NotImplementedError

    def reopen_tombstones(self, user_ids: Collection[str]) -> None:
        """Events of these forgotten users arrived again (ingestion left them out, the landing
        files still hold them): their erasure is pending again, with their ids."""
        raise NotImplementedError

    def mark_erased(self, user_keys: Collection[str], swept_from: str) -> list[str]:
        """The erasure that started at `swept_from` (ISO-8601 UTC) removed these users from
        every file: their tombstones say so and drop the id, unless they became pending again
        after it started. Afterwards the store keeps no copy of a deleted list or id in its
        own storage either. Returns the keys marked erased."""
        raise NotImplementedError


_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    version TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    activated_at TEXT,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_recommendations (
    version TEXT NOT NULL,
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,
    history_events INTEGER NOT NULL DEFAULT 0,
    reasons TEXT,
    PRIMARY KEY (version, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS similar_items (
    version TEXT NOT NULL,
    item_id TEXT NOT NULL,
    items TEXT NOT NULL,
    PRIMARY KEY (version, item_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS popular_items (
    version TEXT PRIMARY KEY,
    items TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS live (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (
    user_key TEXT PRIMARY KEY,
    user_id TEXT,
    requested_at TEXT NOT NULL,
    pending_since TEXT NOT NULL,
    erased_at TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS item_lists (
    version TEXT NOT NULL,
    name TEXT NOT NULL,
    items TEXT NOT NULL,
    PRIMARY KEY (version, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalog (
    item_id TEXT PRIMARY KEY,
    entry TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS version_writers (
    version TEXT PRIMARY KEY,
    writer TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalog_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision TEXT NOT NULL,
    read_at REAL NOT NULL
);
"""

_FOR_USER = """
WITH target(version) AS (SELECT COALESCE(?, (SELECT version FROM live WHERE id = 1)))
SELECT target.version, {columns}
FROM target
JOIN popular_items AS popular ON popular.version = target.version
LEFT JOIN user_recommendations AS personal
    ON personal.version = target.version AND personal.user_id = ?
"""
_LOOKUP = _FOR_USER.format(
    columns="personal.items IS NOT NULL, COALESCE(personal.items, popular.items), "
    "EXISTS (SELECT 1 FROM tombstones WHERE user_key = ?)"
)
# The popular list is not read: an unknown user's caller has it already.
_PERSONAL = _FOR_USER.format(columns="personal.items")
# The live version's: it has lists (activation requires them), so the join that checks a
# chosen version's is left out; a third of a cache miss's query time.
_LIVE_PERSONAL = (
    "SELECT live.version, personal.items FROM live LEFT JOIN user_recommendations AS personal "
    "ON personal.version = live.version AND personal.user_id = ? WHERE live.id = 1"
)


_INSERT_USER = (
    "INSERT INTO user_recommendations (version, user_id, items, history_events, reasons) "
    "VALUES (?, ?, ?, ?, ?)"
)
_REFRESH_USER = (
    _INSERT_USER + " ON CONFLICT (version, user_id) DO UPDATE SET items = excluded.items, "
    "history_events = excluded.history_events, reasons = excluded.reasons "
    "WHERE history_events <= excluded.history_events"
)
_TOMBSTONE_COLUMNS = "user_key, user_id, requested_at, pending_since, erased_at"


@contextmanager
def _writing(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: all of it happens, or none. BEGIN IMMEDIATE takes the write
    lock first, so what is read inside it cannot change before it commits: a check made
    there holds for the write it guards."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


ADDED_USER_COLUMNS = {
    "history_events": "INTEGER NOT NULL DEFAULT 0",
    "reasons": "TEXT",
}
"""Columns of user_recommendations newer than some files: such a file gets them (a list
without a mark: any refresh wins; without reasons: none to give)."""


def _add_user_columns(connection: sqlite3.Connection) -> None:
    def missing() -> list[str]:
        columns = connection.execute("PRAGMA table_info(user_recommendations)").fetchall()
        return [name for name in ADDED_USER_COLUMNS if name not in {c[1] for c in columns}]

    # Checked first outside the write lock, so opening a connection never waits on a long
    # publish; again inside it, as another process may have added them meanwhile.
    if missing():
        with _writing(connection):
            for name in missing():
                connection.execute(
                    f"ALTER TABLE user_recommendations ADD COLUMN {name} {ADDED_USER_COLUMNS[name]}"
                )


def split_reasons(items: list[Item]) -> tuple[list[Item], dict[str, list[str]]]:
    """A list as lookups serve it, and its items' `because` apart: read only when a client
    asks for explanations, so they cost the hot path nothing."""
    served, reasons = [], {}
    for item in items:
        if "because" in item:
            item = dict(item)
            reasons[item["item_id"]] = item.pop("because")
        served.append(item)
    return served, reasons


def _user_row(version: str, user_id: str, items: list[Item], mark: int) -> tuple:
    served, reasons = split_reasons(items)
    return version, user_id, _json_text(served), mark, _json_text(reasons) if reasons else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _refuse_unwritable(
    connection: sqlite3.Connection, version: str, writer: str | None = None
) -> None:
    """Refuse to write a version that is unregistered, live or rejected, or (given `writer`)
    one that another write of it has taken over since `writer` started: read inside the
    write's transaction, so it holds for the write it guards."""
    row = connection.execute(
        "SELECT status FROM model_versions WHERE version = ?", (version,)
    ).fetchone()
    if row is None or row[0] in ("live", "rejected"):
        state = "not registered" if row is None else row[0]
        raise VersionNotPublishableError(f"version {version} is {state}; it cannot be written")
    if writer is not None:
        current = connection.execute(
            "SELECT writer FROM version_writers WHERE version = ?", (version,)
        ).fetchone()
        if current is None or current[0] != writer:
            raise VersionNotPublishableError(
                f"version {version} was written again during this publish"
            )


def _in_chunks(values: Iterable[T], size: int) -> Iterator[list[T]]:
    """`values` in lists of `size` (the last one shorter), each read only when asked for."""
    remaining = iter(values)
    while chunk := list(itertools.islice(remaining, size)):
        yield chunk


def _not_forgotten(connection: sqlite3.Connection, rows: list[tuple]) -> list[tuple]:
    """User list rows (version, user_id, ...) without those of forgotten users; read inside
    the write's transaction, so a tombstone is either seen here or written after the lists."""
    forgotten = {key for (key,) in connection.execute("SELECT user_key FROM tombstones")}
    if not forgotten:
        return rows
    return [row for row in rows if user_key(row[1]) not in forgotten]


_decode_items = msgspec.json.Decoder().decode
"""json.loads, three times as fast: an unknown user's lookup decodes the whole popular list
(100 items with titles), and with the standard library that was half of its time."""
_encode_json = msgspec.json.Encoder().encode


def _json_text(value: object) -> str:
    """json.dumps, compact and five times as fast: a publish writes a list per user, and a
    micro-batch's write is its refreshed users' lists."""
    return _encode_json(value).decode()


class SqliteRecommendationStore(RecommendationStore):
    """The embedded default: one SQLite file in WAL mode, safe for one writer and many readers."""

    path: str
    users_per_transaction: int = 2_000
    """Users' lists written per transaction of `write_version`: what it holds in memory (some
    tens of MB at the published depth, with titles and reasons), and what another writer (a
    micro-batch) may wait behind for the write lock."""

    _local: threading.local = PrivateAttr(default_factory=threading.local)

    def _connection(self) -> sqlite3.Connection:
        # Read on every request: `self._local` would go through pydantic's __getattr__.
        local = self.__pydantic_private__["_local"]  # type: ignore[index]
        connection = getattr(local, "connection", None)
        if connection is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            _add_user_columns(connection)
            local.connection = connection
        return connection

    def register(
        self, version: str, info: Mapping[str, Any], rejected_because: str | None = None
    ) -> None:
        status = "rejected" if rejected_because else "candidate"
        record = {**info, "rejected_because": rejected_because}
        # One statement, so one transaction: the live check and the write are one.
        self._connection().execute(
            "INSERT INTO model_versions VALUES (?, ?, ?, NULL, ?) "
            "ON CONFLICT (version) DO UPDATE SET info = excluded.info, "
            "status = CASE WHEN status = 'live' THEN 'live' ELSE excluded.status END",
            (version, status, _now(), json.dumps(record)),
        )

    def write_version(
        self,
        version: str,
        user_lists: Iterable[tuple[str, list[Item]]],
        popular: list[Item],
        similar: Iterable[tuple[str, list[Item]]] = (),
        history_events: Mapping[str, int] | None = None,
        item_lists: Mapping[str, list[Item]] | None = None,
    ) -> WriteReport:
        """Written in transactions of `users_per_transaction` users, `user_lists` read as they
        go (never all of them at once). The first transaction takes the version's lists away
        (its popular list with them, so it cannot be activated) and names this write as its
        writer; the last writes the popular, similar and named lists back: only then is the
        version complete. Each one checks that the version may still be written and is still
        this write's, and leaves out the users forgotten by then."""
        started = time.perf_counter()
        marks = history_events or {}
        writer = uuid.uuid4().hex
        # Encoded before the transactions: the write lock is held for the writes alone.
        neighbours = [(version, item_id, _json_text(items)) for item_id, items in similar]
        named = [(version, name, _json_text(items)) for name, items in (item_lists or {}).items()]
        connection = self._connection()
        with _writing(connection):
            _refuse_unwritable(connection, version)
            for table in ("user_recommendations", "similar_items", "item_lists", "popular_items"):
                connection.execute(f"DELETE FROM {table} WHERE version = ?", (version,))
            connection.execute(
                "INSERT OR REPLACE INTO version_writers VALUES (?, ?)", (version, writer)
            )
        users = 0
        # Each list encoded as it is read: a chunk holds rows of text, not lists of items.
        encoded = (
            _user_row(version, user, items, marks.get(user, 0)) for user, items in user_lists
        )
        for rows in _in_chunks(encoded, self.users_per_transaction):
            with _writing(connection):
                _refuse_unwritable(connection, version, writer)
                kept = _not_forgotten(connection, rows)
                connection.executemany(_INSERT_USER, kept)
            users += len(kept)
        with _writing(connection):
            _refuse_unwritable(connection, version, writer)
            connection.executemany("INSERT INTO similar_items VALUES (?, ?, ?)", neighbours)
            connection.executemany("INSERT INTO item_lists VALUES (?, ?, ?)", named)
            connection.execute(
                "INSERT INTO popular_items VALUES (?, ?)", (version, _json_text(popular))
            )
            connection.execute("DELETE FROM version_writers WHERE version = ?", (version,))
            connection.execute(
                "UPDATE model_versions SET status = 'candidate' WHERE version = ?", (version,)
            )
        return WriteReport(
            documents=users + len(neighbours) + len(named) + 1,
            seconds=time.perf_counter() - started,
            users=users,
        )

    def activate(self, version: str) -> None:
        with _writing(self._connection()) as connection:
            record = self.version(version)
            if reason := unpublishable_because(
                version,
                record.status if record else None,
                bool(record and record.has_lists),
                record.info.get("rejected_because") if record else None,
            ):
                raise VersionNotPublishableError(reason)
            connection.execute(
                "UPDATE model_versions SET status = 'retired' "
                "WHERE status = 'live' AND version != ?",
                (version,),
            )
            connection.execute(
                "UPDATE model_versions SET status = 'live', activated_at = ? WHERE version = ?",
                (_now(), version),
            )
            connection.execute("INSERT OR REPLACE INTO live VALUES (1, ?)", (version,))

    def update_live_users(
        self,
        version: str,
        user_lists: list[tuple[str, list[Item]]],
        history_events: Mapping[str, int],
    ) -> bool:
        rows = [
            _user_row(version, user_id, items, history_events[user_id])
            for user_id, items in user_lists
        ]
        with _writing(self._connection()) as connection:
            live = connection.execute("SELECT version FROM live WHERE id = 1").fetchone()
            if live is None or live[0] != version:
                return False
            connection.executemany(_REFRESH_USER, _not_forgotten(connection, rows))
        return True

    def remove_from_live_lists(
        self, removed: Mapping[str, Collection[str]], new_events: Mapping[str, int]
    ) -> int:
        changed = 0
        with _writing(self._connection()) as connection:
            live = connection.execute("SELECT version FROM live WHERE id = 1").fetchone()
            if live is None:
                return 0
            for user, count in new_events.items():
                row = connection.execute(
                    "SELECT items, history_events FROM user_recommendations "
                    "WHERE version = ? AND user_id = ?",
                    (live[0], user),
                ).fetchone()
                if row is None:
                    continue
                gone = set(removed.get(user, ()))
                items = [item for item in _decode_items(row[0]) if item["item_id"] not in gone]
                connection.execute(
                    "UPDATE user_recommendations SET items = ?, history_events = ? "
                    "WHERE version = ? AND user_id = ?",
                    (_json_text(items), row[1] + count, live[0], user),
                )
                changed += 1
        return changed

    def change_token(self) -> int:
        # Changes when any other connection commits; read from shared memory, no disk I/O.
        return self._connection().execute("PRAGMA data_version").fetchone()[0]

    def reasons(self, user_id: str, version: str) -> dict[str, list[str]]:
        row = (
            self._connection()
            .execute(
                "SELECT reasons FROM user_recommendations WHERE version = ? AND user_id = ?",
                (version, user_id),
            )
            .fetchone()
        )
        return json.loads(row[0]) if row and row[0] else {}

    def live_version(self) -> str | None:
        row = self._connection().execute("SELECT version FROM live WHERE id = 1").fetchone()
        return row[0] if row else None

    def lookup(
        self, user_id: str, k: int | None, version: str | None = None, popular_only: bool = False
    ) -> Lookup | None:
        row = (
            self._connection()
            .execute(_LOOKUP, (version, user_key(user_id), None if popular_only else user_id))
            .fetchone()
        )
        if row is None:
            return None
        version, is_personal, items, forgotten = row
        return Lookup(
            model_version=version,
            source="personal" if is_personal else "popular",
            items=_decode_items(items)[:k],
            forgotten=bool(forgotten),
        )

    def personal_list(
        self, user_id: str, version: str | None = None
    ) -> tuple[str, list[Item] | None] | None:
        if version is None:
            row = self._connection().execute(_LIVE_PERSONAL, (user_id,)).fetchone()
        else:
            row = self._connection().execute(_PERSONAL, (version, user_id)).fetchone()
        if row is None:
            return None
        version, items = row
        return version, None if items is None else _decode_items(items)

    def similar(self, item_id: str, k: int | None) -> tuple[str, list[Item] | None] | None:
        row = (
            self._connection()
            .execute(
                "SELECT live.version, neighbours.items FROM live LEFT JOIN similar_items AS "
                "neighbours ON neighbours.version = live.version AND neighbours.item_id = ? "
                "WHERE live.id = 1",
                (item_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        version, items = row
        return version, _decode_items(items)[:k] if items else None

    def item_list(self, name: str) -> tuple[str, list[Item] | None] | None:
        row = (
            self._connection()
            .execute(
                "SELECT live.version, named.items FROM live LEFT JOIN item_lists AS named "
                "ON named.version = live.version AND named.name = ? WHERE live.id = 1",
                (name,),
            )
            .fetchone()
        )
        if row is None:
            return None
        version, items = row
        return version, _decode_items(items) if items else None

    def write_catalog(
        self, entries: list[CatalogEntry], revision: str, read_at: float
    ) -> CatalogWrite:
        rows = [(entry["item_id"], json.dumps(entry)) for entry in entries]
        with _writing(self._connection()) as connection:
            stored = connection.execute(
                "SELECT revision, read_at FROM catalog_state WHERE id = 1"
            ).fetchone()
            if stored is not None and stored[1] > read_at:
                return "older"
            connection.execute(
                "INSERT OR REPLACE INTO catalog_state VALUES (1, ?, ?)", (revision, read_at)
            )
            if stored is not None and stored[0] == revision:
                return "unchanged"
            connection.execute("DELETE FROM catalog")
            connection.executemany("INSERT INTO catalog VALUES (?, ?)", rows)
        return "written"

    def catalog_revision(self) -> str | None:
        row = (
            self._connection().execute("SELECT revision FROM catalog_state WHERE id = 1").fetchone()
        )
        return row[0] if row else None

    def catalog(self) -> Catalog | None:
        connection = self._connection()
        # One read transaction: the state and the rows of the same write.
        connection.execute("BEGIN")
        try:
            state = connection.execute(
                "SELECT revision, read_at FROM catalog_state WHERE id = 1"
            ).fetchone()
            rows = connection.execute("SELECT entry FROM catalog").fetchall() if state else []
        finally:
            connection.execute("COMMIT")
        if state is None:
            return None
        return Catalog(state[0], state[1], [_decode_items(entry) for (entry,) in rows])

    def versions(self) -> list[ModelVersion]:
        rows = self._connection().execute(
            "SELECT version, status, created_at, activated_at, "
            "EXISTS (SELECT 1 FROM popular_items AS p WHERE p.version = m.version), info "
            "FROM model_versions AS m ORDER BY created_at DESC, version DESC"
        )
        return [
            ModelVersion(
                version, status, created_at, activated_at, bool(has_lists), json.loads(info)
            )
            for version, status, created_at, activated_at, has_lists, info in rows
        ]

    def purge_old_versions(self, keep: int) -> list[str]:
        with _writing(self._connection()) as connection:
            kept = [v.version for v in self.versions() if v.status != "live" and v.has_lists]
            purged = kept[keep:]
            for version in purged:
                for table in (
                    "user_recommendations",
                    "similar_items",
                    "popular_items",
                    "item_lists",
                ):
                    connection.execute(f"DELETE FROM {table} WHERE version = ?", (version,))
        return purged

    def forget_user(self, user_id: str) -> ForgetReceipt:
        key, now = user_key(user_id), _now()
        with _writing(self._connection()) as connection:
            connection.execute(
                f"INSERT INTO tombstones ({_TOMBSTONE_COLUMNS}) VALUES (?, ?, ?, ?, NULL) "
                "ON CONFLICT (user_key) DO UPDATE SET user_id = excluded.user_id, "
                "pending_since = excluded.pending_since, erased_at = NULL",
                (key, user_id, now, now),
            )
            # Through the primary key, version by version, rather than a scan of every list.
            versions = connection.execute(
                "DELETE FROM user_recommendations WHERE user_id = ? "
                "AND version IN (SELECT version FROM model_versions) RETURNING version",
                (user_id,),
            ).fetchall()
            tombstone = self._tombstone(connection, key)
        return ForgetReceipt(tombstone, len(versions), sorted(version for (version,) in versions))

    @staticmethod
    def _tombstone(connection: sqlite3.Connection, key: str) -> Tombstone:
        row = connection.execute(
            f"SELECT {_TOMBSTONE_COLUMNS} FROM tombstones WHERE user_key = ?", (key,)
        ).fetchone()
        return Tombstone(*row)

    def is_forgotten(self, user_id: str) -> bool:
        read = self._connection().execute(
            "SELECT 1 FROM tombstones WHERE user_key = ?", (user_key(user_id),)
        )
        return read.fetchone() is not None

    def tombstones(self) -> list[Tombstone]:
        rows = self._connection().execute(
            f"SELECT {_TOMBSTONE_COLUMNS} FROM tombstones ORDER BY requested_at, user_key"
        )
        return [Tombstone(*row) for row in rows]

    def lift_tombstone(self, user_id: str) -> Tombstone | None:
        row = (
            self._connection()
            .execute(
                f"DELETE FROM tombstones WHERE user_key = ? RETURNING {_TOMBSTONE_COLUMNS}",
                (user_key(user_id),),
            )
            .fetchone()
        )
        return Tombstone(*row) if row else None

    def reopen_tombstones(self, user_ids: Collection[str]) -> None:
        now = _now()
        with _writing(self._connection()) as connection:
            connection.executemany(
                "UPDATE tombstones SET user_id = ?, pending_since = ?, erased_at = NULL "
                "WHERE user_key = ?",
                [(user, now, user_key(user)) for user in set(user_ids)],
            )

    def mark_erased(self, user_keys: Collection[str], swept_from: str) -> list[str]:
        connection = self._connection()
        with _writing(connection):
            marked = [
                key
                for key in sorted(set(user_keys))
                if connection.execute(
                    "UPDATE tombstones SET user_id = NULL, erased_at = ? "
                    "WHERE user_key = ? AND erased_at IS NULL AND pending_since <= ? "
                    "RETURNING user_key",
                    (_now(), key, swept_from),
                ).fetchone()
            ]
        # Deleted rows and overwritten ids stay in the file's free space and in the WAL until
        # both are rewritten: the database copied afresh, then the WAL emptied (waiting for
        # readers still on older pages, up to the connection's busy timeout).
        connection.execute("VACUUM")
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise sqlite3.OperationalError(
                f"{self.path}: readers kept the write-ahead log from being emptied; run the "
                "erasure again"
            )
        return marked
