"""Where published recommendations live, and the one place the live model version is chosen.

A publish writes a complete new version beside the live one, then `activate` switches the
live pointer in a single write: readers see the old version or the new one, never a mix.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from dagster import ConfigurableResource
from pydantic import PrivateAttr

Item = dict[str, Any]
"""{"item_id": str, "score": float, "title": str (when the catalogue has one)}"""


class VersionNotPublishableError(RuntimeError):
    pass


@dataclass(frozen=True)
class Lookup:
    model_version: str
    source: Literal["personal", "popular"]
    items: list[Item]


@dataclass(frozen=True)
class ModelVersion:
    version: str
    status: Literal["writing", "candidate", "live", "retired"]
    created_at: str
    activated_at: str | None
    info: dict[str, Any]


class RecommendationStore(ConfigurableResource):
    """The interface every store implements (SQLite embedded, Cosmos DB in production)."""

    def write_version(
        self,
        version: str,
        user_lists: Iterable[tuple[str, list[Item]]],
        popular: list[Item],
        info: Mapping[str, Any],
    ) -> int:
        """Store a complete version, not yet live; re-running replaces it. Returns users."""
        raise NotImplementedError

    def activate(self, version: str) -> None:
        """Make a completely written version live; the previous live version is retired."""
        raise NotImplementedError

    def live_version(self) -> str | None:
        raise NotImplementedError

    def lookup(self, user_id: str, k: int) -> Lookup | None:
        """The live version's list for a user, or its popular list for an unknown user;
        None while nothing is live."""
        raise NotImplementedError

    def versions(self) -> list[ModelVersion]:
        """All versions ever written, newest first."""
        raise NotImplementedError

    def purge_retired(self, keep: int) -> list[str]:
        """Delete the lists of all but the newest `keep` retired versions; returns the purged."""
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
    PRIMARY KEY (version, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS popular_items (
    version TEXT PRIMARY KEY,
    items TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS live (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version TEXT NOT NULL
);
"""

_LOOKUP = """
SELECT live.version, personal.items IS NOT NULL, COALESCE(personal.items, popular.items)
FROM live
LEFT JOIN user_recommendations AS personal
    ON personal.version = live.version AND personal.user_id = ?
LEFT JOIN popular_items AS popular ON popular.version = live.version
WHERE live.id = 1
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class SqliteRecommendationStore(RecommendationStore):
    """The embedded default: one SQLite file in WAL mode, safe for one writer and many readers."""

    path: str

    _local: threading.local = PrivateAttr(default_factory=threading.local)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            self._local.connection = connection
        return connection

    def write_version(
        self,
        version: str,
        user_lists: Iterable[tuple[str, list[Item]]],
        popular: list[Item],
        info: Mapping[str, Any],
    ) -> int:
        connection = self._connection()
        if self.live_version() == version:
            raise VersionNotPublishableError(f"version {version} is live; publish a new version")
        rows = [(version, user_id, json.dumps(items)) for user_id, items in user_lists]
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute("DELETE FROM user_recommendations WHERE version = ?", (version,))
            connection.executemany("INSERT INTO user_recommendations VALUES (?, ?, ?)", rows)
            connection.execute(
                "INSERT OR REPLACE INTO popular_items VALUES (?, ?)", (version, json.dumps(popular))
            )
            connection.execute(
                "INSERT OR REPLACE INTO model_versions VALUES (?, 'candidate', ?, NULL, ?)",
                (version, _now(), json.dumps(dict(info))),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return len(rows)

    def activate(self, version: str) -> None:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            complete = connection.execute(
                "SELECT 1 FROM model_versions JOIN popular_items USING (version) WHERE version = ?",
                (version,),
            ).fetchone()
            if complete is None:
                raise VersionNotPublishableError(
                    f"version {version} has not been written completely"
                )
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
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def live_version(self) -> str | None:
        row = self._connection().execute("SELECT version FROM live WHERE id = 1").fetchone()
        return row[0] if row else None

    def lookup(self, user_id: str, k: int) -> Lookup | None:
        row = self._connection().execute(_LOOKUP, (user_id,)).fetchone()
        if row is None:
            return None
        version, is_personal, items = row
        return Lookup(
            model_version=version,
            source="personal" if is_personal else "popular",
            items=json.loads(items)[:k],
        )

    def versions(self) -> list[ModelVersion]:
        rows = self._connection().execute(
            "SELECT version, status, created_at, activated_at, info FROM model_versions "
            "ORDER BY created_at DESC, version DESC"
        )
        return [
            ModelVersion(version, status, created_at, activated_at, json.loads(info))
            for version, status, created_at, activated_at, info in rows
        ]

    def purge_retired(self, keep: int) -> list[str]:
        connection = self._connection()
        retired_with_lists = connection.execute(
            "SELECT version FROM model_versions JOIN popular_items USING (version) "
            "WHERE status = 'retired' ORDER BY created_at DESC, version DESC"
        ).fetchall()
        purged = [version for (version,) in retired_with_lists[keep:]]
        connection.execute("BEGIN IMMEDIATE")
        for version in purged:
            connection.execute("DELETE FROM user_recommendations WHERE version = ?", (version,))
            connection.execute("DELETE FROM popular_items WHERE version = ?", (version,))
        connection.execute("COMMIT")
        return purged
