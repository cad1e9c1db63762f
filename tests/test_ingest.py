"""The raw_events asset on a real landing zone, on local disk and in Azure Blob Storage
(azurite): quarantine, counts, ingest-once."""

import io
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster import materialize

from assets.ingest import raw_events
from resources.landing_zone import BY_USER, BY_USER_MANIFEST, LandingZone, _row_groups_holding


@pytest.fixture
def zone(files):
    return LandingZone(files=files)


def ingest(zone: LandingZone) -> dict:
    result = materialize([raw_events], resources={"landing_zone": zone})
    assert result.success
    [materialization] = result.asset_materializations_for_node("raw_events")
    return {key: value.value for key, value in materialization.metadata.items()}


def names(zone: LandingZone, folder: str) -> list[str]:
    return [file.name.removeprefix(folder) for file in zone.files.list(folder)]


GOOD_CSV = b"user_id,item_id,rating,timestamp\nu1,i1,4,1600000000\nu2,i2,5,1600000001\n"


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_go_on(zone):
    zone.land(
        "mixed.csv",
        b"user_id,item_id,rating,timestamp,extra\n"
        b"u1,i1,4,1600000000,keep\nu2,i2,abc,1600000000,x\n,i3,1,1600000000,x\n",
    )
    metadata = ingest(zone)
    assert metadata["rows_ingested"] == 1
    assert metadata["rows_quarantined"] == 2
    assert "rating is not a finite number | 1" in metadata["quarantine_reasons"]
    history = zone.event_history()
    assert history[["user_id", "item_id", "source_file"]].values.tolist() == [
        ["u1", "i1", "mixed.csv"]
    ]
    [quarantined] = zone.files.list("quarantine/rows/")
    assert quarantined.name.startswith("quarantine/rows/mixed.csv.")
    rows = pd.read_csv(io.BytesIO(zone.files.read(quarantined.name)), dtype=str)
    assert rows["reason"].tolist() == ["rating is not a finite number", "user_id is empty or null"]
    assert rows["row_number"].tolist() == ["2", "3"] and set(rows["source_file"]) == {"mixed.csv"}


def test_unreadable_files_are_quarantined_whole_and_the_run_still_succeeds(zone):
    zone.land("good.csv", GOOD_CSV)
    zone.land("empty.jsonl", b"")
    zone.land("broken.parquet", b"PAR1 garbage")
    zone.land("nested/no_item.csv", b"user_id,timestamp\nu,1\n")
    zone.land("notes.txt", b"not an event file")
    metadata = ingest(zone)
    assert metadata["rows_ingested"] == 2
    assert metadata["files_quarantined"] == 3
    assert (
        "nested/no_item.csv: missing required column(s): item_id" in metadata["quarantined_files"]
    )
    copies = names(zone, "quarantine/files/")
    assert any(name.endswith("broken.parquet") for name in copies)
    [reason] = [name for name in copies if name.endswith("empty.jsonl.reason.txt")]
    assert zone.files.read(f"quarantine/files/{reason}").decode().strip() == "file is empty"
    # Nothing is taken out of the landing zone.
    assert len(names(zone, "landing/")) == 5


def test_files_are_ingested_once_even_when_copied_under_another_name(zone):
    zone.land("day1.csv", GOOD_CSV)
    first = ingest(zone)
    assert first["new_files"] == 1
    zone.land("day1-copy.csv", GOOD_CSV)
    second = ingest(zone)
    assert second["new_files"] == 0 and second["files_repeated"] == 1
    zone.land("day2.csv", b"user_id,item_id,timestamp\nu3,i3,1600000100\n")
    third = ingest(zone)
    assert third["new_files"] == 1 and third["files_in_history"] == 2
    assert sorted(zone.event_history()["user_id"]) == ["u1", "u2", "u3"]


def test_parquet_and_jsonl_files_land_in_one_history(zone):
    buffer = io.BytesIO()
    pd.DataFrame(
        {"user_id": [1], "item_id": [2], "rating": [None], "timestamp": ["2024-01-01T00:00:00Z"]}
    ).to_parquet(buffer)
    zone.land("a.parquet", buffer.getvalue())
    zone.land("b.jsonl", b'{"user_id": "x", "item_id": "y", "timestamp": 1700000000}\n')
    ingest(zone)
    history = zone.event_history().sort_values("user_id")
    assert history["user_id"].tolist() == ["1", "x"]
    assert history["timestamp"].tolist() == [1704067200, 1700000000]


def test_a_folder_written_for_a_model_replaces_the_old_one_whole(files):
    with files.folder_to_write("lake/model/") as folder:
        (folder / "old.bin").write_bytes(b"1")
        (folder / "sub").mkdir()
        (folder / "sub" / "part.bin").write_bytes(b"2")
    with files.folder_to_write("lake/model/") as folder:
        (folder / "new.bin").write_bytes(b"3")
    with files.folder_to_read("lake/model/") as folder:
        assert sorted(p.name for p in folder.rglob("*")) == ["new.bin"]
    with pytest.raises(FileNotFoundError), files.folder_to_read("lake/none/"):
        pass


def test_user_history_reads_the_user_sorted_snapshot_and_the_files_ingested_since(zone):
    many = pd.DataFrame(
        {
            "user_id": [f"u{n % 3000}" for n in range(15_000)],
            "item_id": [f"i{n % 97}" for n in range(15_000)],
            "timestamp": 1_600_000_000 + pd.RangeIndex(15_000),
        }
    )
    zone.land("many.csv", many.to_csv(index=False).encode())
    ingest(zone)
    for _ in range(3):
        compacted = zone.compact_history()
    assert len(compacted) == 15_000
    snapshots = {file.name.split("/")[2] for file in zone.files.list(BY_USER)}
    assert len(snapshots - {"manifest.json"}) == 2, "older snapshots are removed"
    zone.land("later.csv", b"user_id,item_id,timestamp\nu7,new-item,1700000000\nnewcomer,i1,1\n")
    ingest(zone)

    wanted = ["u7", "u2999", "newcomer", "nobody"]
    history = zone.user_history(wanted)
    everything = zone.event_history()
    expected = everything[everything["user_id"].isin(wanted)]
    columns = ["user_id", "item_id", "timestamp", "source_file"]
    assert sorted(history[columns].values.tolist()) == sorted(expected[columns].values.tolist())
    assert len(history) == 5 + 5 + 1 + 1

    manifest = json.loads(zone.files.read(BY_USER_MANIFEST))
    with zone.files.open(manifest["snapshot"]) as source:
        metadata = pq.ParquetFile(source).metadata
    assert metadata.num_row_groups == 4
    assert len(_row_groups_holding(metadata, ["u7", "u8"])) == 1, "only the group holding them"
