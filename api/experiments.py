"""A/B tests: deterministic assignment of users to variants, and the log of served lists."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import msgspec

from api.metrics import TALLY

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
    (`reco_dagster.domain.online.SERVED_COLUMNS`, which online evaluation reads them by).

    Memory stays bounded whatever happens to the disk: at most `capacity` records wait (the
    oldest are dropped and counted beyond that), a failed write is retried at the next flush,
    and files of hours older than `retention_days` are deleted when a new hour's file starts.
    """

    def __init__(
        self, directory: Path, capacity: int = 200_000, retention_days: float = 30
    ) -> None:
        self.directory, self.capacity, self.retention_days = directory, capacity, retention_days
        self.pending: deque[tuple] = deque(maxlen=capacity)
        self._encoder = msgspec.json.Encoder()
        self._task: asyncio.Task | None = None
        self._hour: str | None = None
        self._failing = False

    @classmethod
    def from_environment(cls, directory: Path) -> ServedLog:
        """RECO_SERVED_BUFFER (records, default 200,000) and RECO_SERVED_RETENTION_DAYS (30)."""
        return cls(
            directory,
            capacity=int(os.environ.get("RECO_SERVED_BUFFER", "200000")),
            retention_days=float(os.environ.get("RECO_SERVED_RETENTION_DAYS", "30")),
        )

    def record(self, user_id: str, variant: str | None, version: str, items: list[str]) -> None:
        if len(self.pending) == self.capacity:
            TALLY.served_dropped += 1  # the deque drops its oldest record to take this one
        self.pending.append((time.time(), user_id, variant, version, items))

    def flush(self) -> None:
        """Write what waits; on an I/O error keep it (as far as the capacity allows) for the
        next flush."""
        # popleft, not a swap of the deque: on a threaded store, requests append meanwhile.
        records = [self.pending.popleft() for _ in range(len(self.pending))]
        if not records:
            return
        hour = time.strftime("%Y%m%d%H", time.gmtime())
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / f"served-{hour}.jsonl").open("ab") as handle:
                handle.write(self._encoder.encode_lines(records))
        except OSError as error:
            TALLY.served_write_errors += 1
            room = max(self.capacity - len(self.pending), 0)
            kept = records[len(records) - room :] if room else []
            TALLY.served_dropped += len(records) - len(kept)
            self.pending.extendleft(reversed(kept))
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
        self._task = asyncio.get_running_loop().create_task(self._flush_often())

    def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.flush()
