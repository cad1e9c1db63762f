"""The raw_events asset on a real landing zone directory: quarantine, counts, ingest-once."""

import io
from pathlib import Path

import pandas as pd
from dagster import materialize

from assets.ingest import raw_events
from resources.landing_zone import LandingZone


def land(data_dir: Path, name: str, data: bytes) -> None:
    path = data_dir / "landing" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def ingest(data_dir: Path):
    zone = LandingZone(data_dir=str(data_dir))
    result = materialize([raw_events], resources={"landing_zone": zone})
    assert result.success
    [materialization] = result.asset_materializations_for_node("raw_events")
    return zone, {key: value.value for key, value in materialization.metadata.items()}


GOOD_CSV = b"user_id,item_id,rating,timestamp\nu1,i1,4,1600000000\nu2,i2,5,1600000001\n"


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_go_on(data_dir):
    land(
        data_dir,
        "mixed.csv",
        b"user_id,item_id,rating,timestamp,extra\n"
        b"u1,i1,4,1600000000,keep\nu2,i2,abc,1600000000,x\n,i3,1,1600000000,x\n",
    )
    zone, metadata = ingest(data_dir)
    assert metadata["rows_ingested"] == 1
    assert metadata["rows_quarantined"] == 2
    assert "rating is not a finite number | 1" in metadata["quarantine_reasons"]
    history = zone.event_history()
    assert history[["user_id", "item_id", "source_file"]].values.tolist() == [
        ["u1", "i1", "mixed.csv"]
    ]
    [quarantined] = (data_dir / "quarantine" / "rows").glob("mixed.csv.*.csv")
    rows = pd.read_csv(quarantined, dtype=str)
    assert rows["reason"].tolist() == ["rating is not a finite number", "user_id is empty or null"]
    assert rows["row_number"].tolist() == ["2", "3"] and set(rows["source_file"]) == {"mixed.csv"}


def test_unreadable_files_are_quarantined_whole_and_the_run_still_succeeds(data_dir):
    land(data_dir, "good.csv", GOOD_CSV)
    land(data_dir, "empty.jsonl", b"")
    land(data_dir, "broken.parquet", b"PAR1 garbage")
    land(data_dir, "nested/no_item.csv", b"user_id,timestamp\nu,1\n")
    land(data_dir, "notes.txt", b"not an event file")
    _, metadata = ingest(data_dir)
    assert metadata["rows_ingested"] == 2
    assert metadata["files_quarantined"] == 3
    assert (
        "nested/no_item.csv: missing required column(s): item_id" in metadata["quarantined_files"]
    )
    copies = sorted(p.name for p in (data_dir / "quarantine" / "files").iterdir())
    assert any(name.endswith("broken.parquet") for name in copies)
    reason = next(p for p in (data_dir / "quarantine" / "files").glob("*empty.jsonl.reason.txt"))
    assert reason.read_text().strip() == "file is empty"
    # Nothing is taken out of the landing zone.
    assert len([p for p in (data_dir / "landing").rglob("*") if p.is_file()]) == 5


def test_files_are_ingested_once_even_when_copied_under_another_name(data_dir):
    land(data_dir, "day1.csv", GOOD_CSV)
    zone, first = ingest(data_dir)
    assert first["new_files"] == 1
    land(data_dir, "day1-copy.csv", GOOD_CSV)
    _, second = ingest(data_dir)
    assert second["new_files"] == 0 and second["files_repeated"] == 1
    land(data_dir, "day2.csv", b"user_id,item_id,timestamp\nu3,i3,1600000100\n")
    _, third = ingest(data_dir)
    assert third["new_files"] == 1 and third["files_in_history"] == 2
    assert sorted(zone.event_history()["user_id"]) == ["u1", "u2", "u3"]


def test_parquet_and_jsonl_files_land_in_one_history(data_dir):
    buffer = io.BytesIO()
    pd.DataFrame(
        {"user_id": [1], "item_id": [2], "rating": [None], "timestamp": ["2024-01-01T00:00:00Z"]}
    ).to_parquet(buffer)
    land(data_dir, "a.parquet", buffer.getvalue())
    land(data_dir, "b.jsonl", b'{"user_id": "x", "item_id": "y", "timestamp": 1700000000}\n')
    zone, _ = ingest(data_dir)
    history = zone.event_history().sort_values("user_id")
    assert history["user_id"].tolist() == ["1", "x"]
    assert history["timestamp"].tolist() == [1704067200, 1700000000]
