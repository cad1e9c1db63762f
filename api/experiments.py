"""A/B tests: deterministic assignment of users to variants, and the log of served lists."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from api.metrics import TALLY
from reco_dagster.domain.forgetting import user_key

LIVE, POPULAR = "live", "popular"


@dataclass(frozen=True)
class Variant:
    name: str
    version: str
    """"live", "popular" (the live version's popular list) or a model version id."""
    share: float


@dataclass(frozen=True)
class Experiment:
    """Configured by RECO_AB_TEST, e.g. {"name": "als-vs-ease", "variants": [{"name":
    "control", "version": "live", "share": 0.5}, {"name": "ease", "version": "ease-…",
    "share": 0.5}]}."""

    name: str
    variants: tuple[Variant, ...]

    @classmethod
    def from_json(cls, text: str) -> Experiment:
        config = json.loads(text)
        variants = tuple(
            Variant(v["name"], v["version"], float(v["share"])) for v in config["variants"]
        )
        if not config.get("name"):
            raise ValueError("RECO_AB_TEST needs a name: it seeds the assignment")
        if len({v.name for v in variants}) != len(variants) or len(variants) < 2:
            raise ValueError("RECO_AB_TEST needs two or more variants with distinct names")
        if abs(sum(v.share for v in variants) - 1.0) > 1e-9 or min(v.share for v in variants) < 0:
            raise ValueError("RECO_AB_TEST variant shares must be non-negative and sum to 1")
        return cls(config["name"], variants)

    @classmethod
    def from_environment(cls) -> Experiment | None:
        text = os.environ.get("RECO_AB_TEST")
        return cls.from_json(text) if text else None

    def assign(self, user_id: str) -> Variant:
        """The same user always gets the same variant of the same experiment."""
        digest = hashlib.sha256(f"{self.name}\0{user_id}".encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        cumulative = 0.0
        for variant in self.variants:
            cumulative += variant.share
            if position < cumulative:
                return variant
        return self.variants[-1]


FLUSH_INTERVAL_S = 0.2
LOG_NAME = re.compile(r"served-(\d{10})\.jsonl")
"""A log file's name: the UTC hour (YYYYMMDDHH) its records were written in."""

log = logging.getLogger(__name__)


class ServedLog:
    """Every served list, appended in memory and written every FLUSH_INTERVAL_S to
    `<directory>/served-<UTC hour>.jsonl` as [time, user, variant, version, item ids]
    and the new items among them (`reco_dagster.domain.online.SERVED_COLUMNS`, which online
    evaluation reads them by).

    Memory stays bounded whatever happens to the disk: at most `capacity` records wait (the
    oldest are dropped and counted beyond that), a failed write is retried at the next flush,
    and files of hours older than `retention_days` are deleted when a new hour's file starts.

    Forgotten users' lines are erased from the files and the buffer whenever `forgotten_keys`
    (the store's tombstones) names new users, looked at every `erase_interval_s` and at once
    on `erase_soon`: each replica erases its own log, also one on a disk of its own.
    """

    def __init__(
        self,
        directory: Path,
        capacity: int = 200_000,
        retention_days: float = 30,
        forgotten_keys: Callable[[], Collection[str]] = frozenset,
        erase_interval_s: float = 60.0,
    ) -> None:
        self.directory, self.capacity, self.retention_days = directory, capacity, retention_days
        self.forgotten_keys, self.erase_interval_s = forgotten_keys, erase_interval_s
        self.pending: deque[tuple] = deque(maxlen=capacity)
        self._encoder = msgspec.json.Encoder()
        self._tasks: list[asyncio.Task] = []
        self._hour: str | None = None
        self._failing = False
        # Held by a flush from taking records to writing them, and by an erasure: records a
        # flush holds would otherwise miss the erasure of both the buffer and the files.
        self._writing = threading.Lock()
        self._erased: frozenset[str] = frozenset()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_environment(
        cls, directory: Path, forgotten_keys: Callable[[], Collection[str]]
    ) -> ServedLog:
        """RECO_SERVED_BUFFER (records, default 200,000), RECO_SERVED_RETENTION_DAYS (30) and
        RECO_SERVED_ERASE_INTERVAL_S (60)."""
        return cls(
            directory,
            capacity=int(os.environ.get("RECO_SERVED_BUFFER", "200000")),
            retention_days=float(os.environ.get("RECO_SERVED_RETENTION_DAYS", "30")),
            forgotten_keys=forgotten_keys,
            erase_interval_s=float(os.environ.get("RECO_SERVED_ERASE_INTERVAL_S", "60")),
        )

    def record(
        self,
        user_id: str,
        variant: str | None,
        version: str,
        items: Sequence[str],
        new_items: Sequence[str] = (),
    ) -> None:
        """`new_items`: those of `items` in positions given to new items."""
        if len(self.pending) == self.capacity:
            TALLY.served_dropped += 1  # the deque drops its oldest record to take this one
        self.pending.append((time.time(), user_id, variant, version, items, new_items))

    def flush(self) -> None:
        """Write what waits; on an I/O error keep it (as far as the capacity allows) for the
        next flush, and while an erasure runs leave it for the next flush."""
        if not self._writing.acquire(blocking=False):
            return
        try:
            self._flush()
        finally:
            self._writing.release()

    def _flush(self) -> None:
        # popleft, not a swap of the deque: on a threaded store, requests append meanwhile.
        records = [self.pending.popleft() for _ in range(len(self.pending))]
        if not records:
            return
        hour = time.strftime("%Y%m%d%H", time.gmtime())
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with locked_log(self.directory / f"served-{hour}.jsonl", "ab", wait=False) as file:
                if file is None:  # another process erases from this file: next flush
                    self._put_back(records)
                    return
                file.write(self._encoder.encode_lines(records))
        except OSError as error:
            TALLY.served_write_errors += 1
            TALLY.served_dropped += len(records) - self._put_back(records)
            if not self._failing:
                log.error(
                    "served-list log: cannot write to %s (%s); retrying", self.directory, error
                )
            self._failing = True
            return
        if self._failing:
            log.warning("served-list log: writing to %s again", self.directory)
            self._failing = False
        if hour != self._hour:
            self._hour = hour
            self._delete_expired()

    def _put_back(self, records: list[tuple]) -> int:
        """Return taken records to the front of the buffer, the newest of them as far as its
        room allows; how many went back."""
        room = max(self.capacity - len(self.pending), 0)
        # The newest `room` of them (all, when they fit): a negative start would drop some.
        kept = records[max(len(records) - room, 0) :] if room else []
        self.pending.extendleft(reversed(kept))
        return len(kept)

    def erase(self, user_keys: Collection[str]) -> int:
        """Take these users' records out of the buffer and their lines out of the files;
        returns how many went."""
        with self._writing:
            records = [self.pending.popleft() for _ in range(len(self.pending))]
            kept = [record for record in records if user_key(record[1]) not in user_keys]
            self._put_back(kept)
            return len(records) - len(kept) + erase_served_lines(self.directory, user_keys)

    def erase_soon(self) -> None:
        """Look at the tombstones now rather than at the next interval (from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _erase_when_forgotten(self) -> None:
        assert self._wake is not None
        while True:
            try:
                keys = frozenset(await asyncio.to_thread(self.forgotten_keys))
                if keys - self._erased:
                    await asyncio.to_thread(self.erase, keys - self._erased)
                # Lifted tombstones leave the set: a user forgotten again is erased again.
                self._erased = keys
            except Exception:  # the store or the disk: tried again at the next interval
                log.exception("served-list log: cannot erase forgotten users' lines")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.erase_interval_s)
            self._wake.clear()

    def _delete_expired(self) -> None:
        oldest_kept = time.strftime(
            "%Y%m%d%H", time.gmtime(time.time() - self.retention_days * 86_400)
        )
        try:
            for path in self.directory.iterdir():
                name = LOG_NAME.fullmatch(path.name)
                if name and name.group(1) < oldest_kept:
                    path.unlink(missing_ok=True)
        except OSError as error:  # tried again when the next hour's file starts
            log.error("served-list log: cannot delete expired files (%s)", error)

    async def _flush_often(self) -> None:
        # Small, frequent writes: a flush holds up every request in flight, and a second's
        # worth at 25,000 requests/s took 12 ms, the whole of the API's p99 budget.
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._tasks = [
            self._loop.create_task(self._flush_often()),
            self._loop.create_task(self._erase_when_forgotten()),
        ]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.flush()


@contextmanager
def locked_log(path: Path, mode: str, wait: bool = True) -> Iterator[BinaryIO | None]:
    """A log file opened and locked (flock) against every other process writing the folder:
    the API's flushes, other replicas', an erasure. Without `wait`, None when another holds
    it. A file an erasure replaced while this waited for its lock is opened again; FileNotFoundError
    when it is gone."""
    while True:
        file = path.open(mode)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            file.close()
            yield None
            return
        try:
            replaced = os.fstat(file.fileno()).st_ino != os.stat(path).st_ino
        except FileNotFoundError:
            replaced = True
        if replaced:
            file.close()
            continue
        try:
            yield file
        finally:
            file.close()
        return


def served_lines_without(data: bytes, user_keys: Collection[str]) -> tuple[bytes, int]:
    """A log file's lines without those of these users (by `user_key`); and how many went."""
    decode = msgspec.json.Decoder(tuple).decode
    keys_of: dict[str, bool] = {}
    lines = data.splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            user = decode(line)[1]
        except (msgspec.DecodeError, IndexError):
            kept.append(line)
            continue
        if user not in keys_of:
            keys_of[user] = user_key(str(user)) in user_keys
        if not keys_of[user]:
            kept.append(line)
    return b"".join(kept), len(lines) - len(kept)


def erase_served_lines(directory: Path, user_keys: Collection[str]) -> int:
    """Rewrite the log files of `directory` without these users' lines, each under its lock
    (`locked_log`) and replaced whole; returns the lines erased."""
    erased = 0
    for path in sorted(directory.glob("served-*.jsonl")) if user_keys else ():
        with suppress(FileNotFoundError), locked_log(path, "rb") as file:
            kept, gone = served_lines_without(file.read(), user_keys)
            if gone:
                partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
                partial.write_bytes(kept)
                partial.replace(path)
                erased += gone
    return erased
