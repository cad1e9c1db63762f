"""Forgetting a user (issue #16, part 5): ingestion leaves their events out, the API deletes
their lists and lists the deletions, and the erasure takes them out of every file."""

from datetime import UTC, datetime

import pandas as pd
import pytest

from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.landing_zone import LandingZone
from resources.store import SqliteRecommendationStore
from tests.conftest import land
from tests.test_ingest import ingest

GONE = "forget-me-7f3a"
"""A user id no other text contains, so that a byte search finds every copy of it."""


def events(*users: str, rating: float = 4.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": list(users),
            "item_id": [f"i{n}" for n in range(len(users))],
            "rating": rating,
            "timestamp": 1_700_000_000 + pd.RangeIndex(len(users)),
        }
    )


def test_ingestion_leaves_a_forgotten_users_rows_out_and_their_erasure_pending_again(data_dir):
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    key = store.forget_user(GONE).tombstone.user_key
    store.mark_erased([key], datetime.now(UTC).isoformat())
    land(data_dir, "day.csv", pd.concat([events(GONE, "u1"), events(GONE, rating=99.0)]))
    files = LocalFiles(root=str(data_dir))
    metadata = ingest(LandingZone(files=files, settle_s=0), store)
    assert (metadata["forgotten_user_rows"], metadata["rows_ingested"]) == (2, 1)
    assert metadata["rows_quarantined"] == 0
    history = EventHistory(files=files)
    assert history.all_events()["user_id"].tolist() == ["u1"]
    [entry] = history.ingested().values()
    assert entry["forgotten_rows"] == 2
    [tombstone] = store.tombstones()
    assert (tombstone.state, tombstone.user_id) == ("pending", GONE)


def test_a_user_forgotten_while_ingestion_reads_their_file_is_taken_back_out(data_dir, monkeypatch):
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    land(data_dir, "day.csv", events(GONE, "u1", GONE))
    record = EventHistory.record_events

    def recorded_then_forgotten(history, *args):
        record(history, *args)
        store.forget_user(GONE)

    monkeypatch.setattr(EventHistory, "record_events", recorded_then_forgotten)
    files = LocalFiles(root=str(data_dir))
    assert ingest(LandingZone(files=files, settle_s=0), store)["rows_ingested"] == 3
    history = EventHistory(files=files)
    assert history.all_events()["user_id"].tolist() == ["u1"]
    assert [entry["forgotten_rows"] for entry in history.ingested().values()] == [2]
    assert store.tombstones()[0].pending_since > store.tombstones()[0].requested_at


@pytest.fixture(autouse=True)
def no_inherited_tokens(monkeypatch):
    monkeypatch.delenv("RECO_ADMIN_TOKEN", raising=False)
