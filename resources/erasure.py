"""The erasure of forgotten users: every file that holds their events or their ids rewritten
without them, then their tombstones marked erased (only the key of each id stays). Run by the
`erasure` asset: the forget_users job, and every batch_retrain first."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reco_dagster.domain.forgetting import Forgotten
from reco_dagster.domain.models import FACTORS_FILE
from resources.event_history import LEDGER, EventHistory
from resources.files import FileStore
from resources.lake_io import LAKE
from resources.landing_zone import ATTEMPTS, GIVEN_UP, LandingFile, LandingZone
from resources.served_log import ServedListLog
from resources.store import RecommendationStore

NOTES = (LEDGER, ATTEMPTS, GIVEN_UP)
"""Bookkeeping whose reasons and errors may quote an id."""
FAILED_RUNS = "failed_runs.jsonl"


def erase_forgotten_users(
    landing_zone: LandingZone,
    event_history: EventHistory,
    served_log: ServedListLog,
    store: RecommendationStore,
    log: Callable[[str], None],
) -> Counter[str]:
    """Every user whose erasure is pending out of: the event history and its user-sorted
    copies; the landing files that hold their rows (found through the history and the
    ledger; the API's files among them), each rewritten without them or deleted when nothing
    else is left; quarantine; the served-list log; the lake's tables and models; the reasons
    and errors of bookkeeping notes. Then their tombstones say erased (unless their events
    came again meanwhile) and the store rewrites its own storage. Returns what it took out."""
    started = datetime.now(UTC).isoformat()
    forgotten = store.forgotten()
    taken: Counter[str] = Counter(users_pending=len(forgotten.pending))
    if not forgotten.pending:
        return taken
    for digest in event_history.files_holding(set(forgotten.pending.values())):
        event_history.forget_in_events(digest, forgotten)
        taken["event_files_rewritten"] += 1
    taken["history_copy_events_removed"] = event_history.forget_in_snapshots(forgotten)
    quarantined, named_in_quarantine = landing_zone.forget_in_quarantine(forgotten)
    taken += quarantined
    # Landing files holding their rows: those whose events were in the history or were left
    # out by ingestion, those their quarantined rows came from, and those that could not be
    # read at all (searched for their ids).
    ledger = event_history.ingested()
    flagged = [d for d, entry in ledger.items() if entry.get("forgotten_rows")]
    unreadable = {entry["file"] for entry in ledger.values() if entry["status"] == "quarantined"}
    landed = {ledger[digest]["file"] for digest in flagged} | named_in_quarantine | unreadable
    for name in sorted(landed):
        taken += _forget_in_landing_file(landing_zone, event_history, name, forgotten)
    for digest in flagged:
        event_history.landing_file_erased(digest)
    taken["served_lines_removed"] = served_log.erase(forgotten.keys)
    taken += _forget_in_lake(event_history.files, forgotten)
    taken["notes_redacted"] = sum(
        landing_zone.redact(file.name, forgotten)
        for folder in NOTES
        for file in event_history.files.list(folder)
    ) + landing_zone.redact(FAILED_RUNS, forgotten)
    taken["tombstones_erased"] = len(store.mark_erased(forgotten.pending, started))
    message = f"Erased {taken['tombstones_erased']} forgotten user(s)"
    again = len(forgotten.pending) - taken["tombstones_erased"]
    if again:
        message += f"; {again} had events come again meanwhile: the next erasure takes them"
    log(message)
    return taken


def _forget_in_landing_file(
    landing_zone: LandingZone, event_history: EventHistory, name: str, forgotten: Forgotten
) -> Counter[str]:
    """A landing file without forgotten users' rows. When what it held was ingested, the
    ledger keeps the rewritten content as done, so that it is not ingested again; a file not
    ingested yet is ingested later, without their rows."""
    outcome = landing_zone.forget_in_landed(name, forgotten)
    if outcome is None:  # gone already
        return Counter()
    had, rewritten = outcome
    if rewritten.removed and rewritten.data is not None and event_history.ledger_entry(had):
        event_history.record_rewritten(had, LandingFile(name, rewritten.data, 0))
    return Counter(
        landing_rows_removed=rewritten.removed,
        landing_files_rewritten=bool(rewritten.removed and rewritten.data is not None),
        landing_files_deleted=bool(rewritten.removed and rewritten.data is None),
    )


def _forget_in_lake(files: FileStore, forgotten: Forgotten) -> Counter[str]:
    """Forgotten users out of what the batch job keeps in the lake: the rows of every table
    (interactions, splits, ranked lists) and the user side of every model (fitted models'
    user ids and factors; archived versions have none)."""
    taken: Counter[str] = Counter()
    for file in files.list(LAKE):
        path = PurePosixPath(file.name)
        if path.parent == PurePosixPath(LAKE) and path.suffix == ".parquet":
            removed = _forget_in_table(files, file.name, forgotten)
            taken["lake_rows_removed"] += removed
            taken["lake_tables_rewritten"] += removed > 0
        elif path.name == FACTORS_FILE:
            taken["models_rewritten"] += _forget_in_factors(files, file.name, forgotten)
        elif path.name == "user_ids.parquet":
            taken["models_rewritten"] += _forget_in_spark_model(files, file.name, forgotten)
    return taken


def _forgotten_mask(forgotten: Forgotten, user_ids: pa.ChunkedArray | np.ndarray) -> np.ndarray:
    ids = user_ids.to_pandas() if isinstance(user_ids, pa.ChunkedArray) else user_ids
    return forgotten.mask(pd.Series(ids, dtype="string")).to_numpy()


def _forget_in_table(files: FileStore, name: str, forgotten: Forgotten) -> int:
    table = pq.read_table(pa.BufferReader(files.read(name)))
    if "user_id" not in table.column_names:
        return 0
    doomed = _forgotten_mask(forgotten, table["user_id"])
    if doomed.any():
        files.write(name, _parquet(table.filter(pa.array(~doomed))))
    return int(doomed.sum())


def _forget_in_factors(files: FileStore, name: str, forgotten: Forgotten) -> bool:
    """A saved FactorModel (`factors.npz`) without the rows of forgotten users."""
    with np.load(io.BytesIO(files.read(name))) as saved:
        arrays = dict(saved)
    doomed = _forgotten_mask(forgotten, arrays["user_ids"])
    if not doomed.any():
        return False
    arrays["user_ids"] = arrays["user_ids"][~doomed]
    arrays["user_factors"] = arrays["user_factors"][~doomed]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    files.write(name, buffer.getvalue())
    return True


def _forget_in_spark_model(files: FileStore, name: str, forgotten: Forgotten) -> bool:
    """A saved Spark ALS model without forgotten users: their ids blanked in
    `user_ids.parquet` (as indices no user has are), their rows out of Spark's user factors,
    whose checksum files go with them (Hadoop refuses a file that no longer matches one)."""
    ids = pq.read_table(pa.BufferReader(files.read(name)))
    doomed = _forgotten_mask(forgotten, ids["user_id"])
    if not doomed.any():
        return False
    blanked = pa.array(np.where(doomed, "", ids["user_id"].to_numpy(zero_copy_only=False)))
    column = ids.column_names.index("user_id")
    files.write(name, _parquet(ids.set_column(column, "user_id", blanked)))
    gone = pa.array(np.flatnonzero(doomed), type=pa.int32())
    folder = name.removesuffix("user_ids.parquet") + "spark_model/userFactors/"
    for part in files.list(folder):
        if part.name.endswith(".parquet"):
            factors = pq.read_table(pa.BufferReader(files.read(part.name)))
            kept = factors.filter(pc.invert(pc.is_in(factors["id"], value_set=gone)))
            files.write(part.name, _parquet(kept))
            path = PurePosixPath(part.name)
            files.delete(str(path.with_name(f".{path.name}.crc")))
    return True


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
