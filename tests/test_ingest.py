"""The raw_events asset on a real landing zone, on local disk and in Azure Blob Storage
(azurite): quarantine, counts, ingest-once."""

import gzip
import io
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import materialize
from dagster_pyspark import LazyPySparkResource
from fsspec.caching import BaseCache

from assets.ingest import raw_events
from reco_dagster.domain.events import ValidationRules
from resources.blob_files import BlobFiles
from resources.event_history import (
    BY_USER,
    BY_USER_MANIFEST,
    EVENTS,
    EventHistory,
    _row_groups_holding,
)
from resources.files import ChangedWhileReadError, LocalFiles
from resources.ingestion import EventWeights, ingest_landed_files
from resources.landing_zone import LandingFile, LandingZone
from resources.settings import DataEngine, spark_config
from resources.store import RecommendationStore
from tests.capture_files import capture_file
from tests.conftest import blob_files, nobody_forgotten
from tests.servers.azure import AZURITE_KEY


@pytest.fixture
def zone(files):
    # Files are complete when land() returns: no need to wait for them to settle.
    return LandingZone(files=files, settle_s=0)


@pytest.fixture
def event_history(files):
    return EventHistory(files=files)


def ingest(zone: LandingZone, store: RecommendationStore | None = None) -> dict:
    """raw_events' metadata after materializing it on the driver (`store`: where its
    tombstones are)."""
    resources = {
        "landing_zone": zone,
        "event_history": EventHistory(files=zone.files),
        "event_weights": EventWeights(),
        "store": store or nobody_forgotten(),
        "data_engine": DataEngine(spark_from_events=10**9),
        "pyspark": LazyPySparkResource(spark_config=spark_config()),
    }
    result = materialize([raw_events], resources=resources)
    assert result.success
    [materialization] = result.asset_materializations_for_node("raw_events")
    return {key: value.value for key, value in materialization.metadata.items()}


def names(zone: LandingZone, folder: str) -> list[str]:
    return [file.name.removeprefix(folder) for file in zone.files.list(folder)]


GOOD_CSV = b"user_id,item_id,rating,timestamp\nu1,i1,4,1600000000\nu2,i2,5,1600000001\n"


def test_bad_rows_are_quarantined_with_reasons_and_good_rows_go_on(zone, event_history):
    zone.land(
        "mixed.csv",
        b"user_id,item_id,rating,timestamp,extra\n"
        b"u1,i1,4,1600000000,keep\nu2,i2,abc,1600000000,x\n,i3,1,1600000000,x\n",
    )
    metadata = ingest(zone)
    assert metadata["rows_ingested"] == 1
    assert metadata["rows_quarantined"] == 2
    assert "rating is not a finite number | 1" in metadata["quarantine_reasons"]
    history = event_history.all_events()
    assert history[["user_id", "item_id", "source_file"]].values.tolist() == [
        ["u1", "i1", "mixed.csv"]
    ]
    [quarantined] = zone.files.list("quarantine/rows/")
    assert quarantined.name.startswith("quarantine/rows/mixed.csv.")
    rows = pd.read_csv(io.BytesIO(zone.files.read(quarantined.name)), dtype=str)
    assert rows["reason"].tolist() == ["rating is not a finite number", "user_id is empty or null"]
    assert rows["row_number"].tolist() == ["3", "4"] and set(rows["source_file"]) == {"mixed.csv"}


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


def test_event_hubs_capture_files_are_ingested_with_bad_bodies_quarantined_by_origin(
    zone, event_history
):
    window = "capture-ns/clicks/{partition}/2023/11/14/22/10/00.avro"
    bodies = [
        {"user_id": "u1", "item_id": "i1", "rating": 5, "timestamp": 1_600_000_000},
        [{"user_id": "u2", "item_id": "i2"}, {"user_id": "u3", "item_id": "i3", "rating": 7}],
        b"not json",
    ]
    zone.land(window.format(partition=0), capture_file(bodies, first_sequence_number=7))
    zone.land(window.format(partition=1), capture_file([]))
    zone.land(window.format(partition=2), b"user_id,item_id,timestamp\nu9,i9,1\n")
    metadata = ingest(zone)
    assert metadata["new_files"] == 2 and metadata["rows_ingested"] == 2
    history = event_history.all_events().sort_values("user_id")
    assert history[["user_id", "timestamp", "source_file"]].values.tolist() == [
        ["u1", 1_600_000_000, window.format(partition=0)],
        ["u2", 1_700_000_000, window.format(partition=0)],
    ]
    [quarantined] = zone.files.list("quarantine/rows/")
    rows = pd.read_csv(io.BytesIO(zone.files.read(quarantined.name)), dtype=str)
    assert rows[["partition", "sequence_number", "row_number", "reason"]].values.tolist() == [
        ["0", "8", "3", "rating is outside [0, 5]"],
        ["0", "9", "4", "body is not JSON: Expecting value: line 1 column 1 (char 0)"],
    ]
    assert rows["offending_value"].tolist() == ["7.0", "not json"]
    not_avro = window.format(partition=2)
    assert metadata["files_quarantined"] == 1
    assert f"{not_avro}: cannot parse as avro" in metadata["quarantined_files"]
    assert any(
        name.endswith(not_avro.replace("/", "__")) for name in names(zone, "quarantine/files/")
    )


def test_files_are_ingested_once_even_when_copied_under_another_name(zone, event_history):
    zone.land("day1.csv", GOOD_CSV)
    first = ingest(zone)
    assert first["new_files"] == 1
    zone.land("day1-copy.csv", GOOD_CSV)
    second = ingest(zone)
    assert second["new_files"] == 0 and second["files_repeated"] == 1
    zone.land("day2.csv", b"user_id,item_id,timestamp\nu3,i3,1600000100\n")
    third = ingest(zone)
    assert third["new_files"] == 1 and third["files_in_history"] == 2
    assert sorted(event_history.all_events()["user_id"]) == ["u1", "u2", "u3"]


def test_parquet_and_jsonl_files_land_in_one_history(zone, event_history):
    buffer = io.BytesIO()
    pd.DataFrame(
        {"user_id": [1], "item_id": [2], "rating": [None], "timestamp": ["2024-01-01T00:00:00Z"]}
    ).to_parquet(buffer)
    zone.land("a.parquet", buffer.getvalue())
    zone.land("b.jsonl", b'{"user_id": "x", "item_id": "y", "timestamp": 1700000000}\n')
    ingest(zone)
    history = event_history.all_events().sort_values("user_id")
    assert history["user_id"].tolist() == ["1", "x"]
    assert history["timestamp"].tolist() == [1704067200, 1700000000]


def test_events_from_a_moment_are_read_from_every_file(zone, event_history):
    zone.land("early.csv", GOOD_CSV)
    zone.land("late.csv", b"user_id,item_id,timestamp\nu3,i3,1600000001\nu4,i4,1700000000\n")
    ingest(zone)
    later = event_history.events_from(1_600_000_001)
    assert sorted(later["user_id"]) == ["u2", "u3", "u4"]
    assert event_history.events_from(sys.maxsize).empty


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


def test_a_walk_skips_folders_and_an_entry_is_looked_at_alone(files):
    for name in ("landing/a.csv", "landing/2020/01/01/old.csv", "landing/2024/05/17/new.csv"):
        files.write(name, b"x")
    walked = files.entries("landing/", skip=lambda folder: folder == "landing/2020/")
    assert [file.name for file in walked] == ["landing/2024/05/17/new.csv", "landing/a.csv"]
    [listed] = files.entries("landing/2024/")
    assert files.info("landing/2024/05/17/new.csv") == listed
    files.write("landing/2024/05/17/new.csv", b"xy")
    assert files.info("landing/2024/05/17/new.csv").version != listed.version
    assert files.info("landing/none.csv") is None and files.info("landing/2024/") is None
    files.delete("landing/a.csv")
    files.delete("landing/a.csv")
    assert not files.exists("landing/a.csv")


def test_names_are_kept_as_they_are(files):
    names = ["a b.csv", "a#1.csv", "q?x=1.csv", "p%20c.csv", "ü/é.csv", "a?b#c.csv", "tab\t.csv"]
    for name in names:
        files.write(f"landing/{name}", name.encode())
    assert [file.name for file in files.list("landing/")] == sorted(f"landing/{n}" for n in names)
    for file in files.entries("landing/", skip=lambda folder: False):
        assert files.read_if_unchanged(file) == file.name.removeprefix("landing/").encode()


def test_a_write_that_fails_or_dies_leaves_nothing_a_listing_gives(data_dir):
    files = LocalFiles(root=str(data_dir))
    files.write("lake/ledger/a.json", b"{}")
    with pytest.raises(TypeError):
        files.write("lake/ledger/b.json", 123)  # type: ignore[arg-type]
    # What a writer killed between its write and its rename leaves behind.
    (data_dir / "lake" / "ledger" / f".c.json.{'0' * 32}.tmp").write_bytes(b"{")
    assert [file.name for file in files.list("lake/")] == ["lake/ledger/a.json"]
    assert len(list((data_dir / "lake" / "ledger").iterdir())) == 2


def test_a_blob_rewritten_or_deleted_while_read_fails_as_a_file_would(blob_server):
    files = blob_files(blob_server)
    files.write("lake/a.parquet", b"x" * 300_000)
    for change, error in (
        (lambda: files.write("lake/a.parquet", b"y" * 300_000), ChangedWhileReadError),
        # Azure answers 404, azurite (like a rewrite) 412: an OSError either way.
        (lambda: files.delete("lake/a.parquet"), OSError),
    ):
        with files.open("lake/a.parquet") as blob:
            blob.read(10)  # the first block only
            change()
            with pytest.raises(error):
                blob.read()


def test_user_history_reads_the_user_sorted_snapshot_and_the_files_ingested_since(
    zone, event_history
):
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
        compacted = event_history.compact_history()
    assert (compacted.events, compacted.users, compacted.event_files) == (15_000, 3000, 1)
    assert len(event_history.snapshot_events()) == 15_000
    snapshots = {file.name.split("/")[2] for file in zone.files.list(BY_USER)}
    assert len(snapshots - {"manifest.json"}) == 2, "older snapshots are removed"
    zone.land("later.csv", b"user_id,item_id,timestamp\nu7,new-item,1700000000\nnewcomer,i1,1\n")
    ingest(zone)

    wanted = ["u7", "u2999", "newcomer", "nobody"]
    history = event_history.user_history(wanted)
    everything = event_history.all_events()
    expected = everything[everything["user_id"].isin(wanted)]
    columns = ["user_id", "item_id", "timestamp", "source_file"]
    assert sorted(history[columns].values.tolist()) == sorted(expected[columns].values.tolist())
    assert len(history) == 5 + 5 + 1 + 1

    manifest = json.loads(zone.files.read(BY_USER_MANIFEST))
    with zone.files.open(manifest["parts"][0]) as source:
        metadata = pq.ParquetFile(source).metadata
    assert metadata.num_row_groups == 4
    assert len(_row_groups_holding(metadata, ["u7", "u8"])) == 1, "only the group holding them"


class CountedBlobFiles(BlobFiles):
    """Blob files that keep the read cache of each file they open (fsspec's, which counts the
    bytes the file fetched, and outlives the file)."""

    def __init__(self, account_url: str, container: str, key: str) -> None:
        super().__init__(account_url, container, key)
        self.caches: list[BaseCache] = []

    def open(self, name: str) -> BinaryIO:
        opened = super().open(name)
        self.caches.append(opened.cache)
        return opened


def test_a_few_users_history_on_blob_storage_reads_a_small_part_of_the_sorted_file(blob_server):
    files = CountedBlobFiles(blob_server.url, f"t{uuid.uuid4().hex}", AZURITE_KEY)
    event_history = EventHistory(files=files)
    rng = np.random.default_rng(0)
    events = pd.DataFrame(
        {
            "user_id": [f"u{n}" for n in rng.integers(0, 200_000, 1_000_000)],
            "item_id": [f"i{n}" for n in rng.integers(0, 20_000, 1_000_000)],
            "rating": np.nan,
            "timestamp": 1_600_000_000 + np.arange(1_000_000),
            "event_type": None,
        }
    )
    big = LandingFile("big.csv", b"big", 0)
    event_history.write_events(big, events)
    event_history.record_ingested(big.sha256, big.name, len(big.data), len(events), 0, 0)
    event_history.compact_history()

    wanted = ["u7", "u100000", "u199999"]
    history = event_history.user_history(wanted)
    expected = events[events["user_id"].isin(wanted)]
    assert sorted(history["item_id"]) == sorted(expected["item_id"]) and len(expected) > 10
    [snapshot] = files.caches
    fetched = snapshot.total_requested_bytes
    assert fetched < snapshot.size / 20, f"{fetched} bytes fetched of {snapshot.size}"


def local(zone: LandingZone) -> Path:
    """The landing folder of a local zone, for what only a file system has (links, FIFOs)."""
    if not isinstance(zone.files, LocalFiles):
        pytest.skip("Blob Storage has no links, special files or undecodable names")
    folder = Path(zone.files.root) / "landing"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_a_file_that_trips_the_reader_is_quarantined_and_later_files_still_go_in(
    zone, event_history
):
    folder = local(zone)
    descriptor = os.open(bytes(folder) + b"/bad\xff.csv", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(descriptor, GOOD_CSV)
    os.close(descriptor)
    zone.land(
        "binary.parquet",
        parquet(
            pa.table({"user_id": [b"ok", b"no\xff"], "item_id": [b"i", b"i"], "timestamp": [1, 2]})
        ),
    )
    zone.land("header.csv", b"user_id,it\xffem_id,timestamp\nu,i,1600000000\n")
    zone.land("z-after.csv", b"user_id,item_id,timestamp\nlater,i9,1600000000\n")
    metadata = ingest(zone)
    assert sorted(event_history.all_events()["user_id"]) == ["later", "ok"]
    assert "bad\\xff.csv: file name is not valid UTF-8" in metadata["quarantined_files"]
    assert "found: user_id, it\\xffem_id, timestamp" in metadata["quarantined_files"]
    assert metadata["rows_quarantined"] == 1
    [rows] = zone.files.list("quarantine/rows/")
    assert "no\\xff" in zone.files.read(rows.name).decode()
    again = ingest(zone)
    assert again["files_quarantined"] == 0 and again["new_files"] == 0, "refused once"


def test_links_and_special_files_are_refused_without_reading_them(zone, tmp_path, event_history):
    folder = local(zone)
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"user_id,item_id,timestamp\nintruder,i1,1600000000\n")
    (folder / "passwd.csv").symlink_to("/etc/passwd")
    (folder / "outside.csv").symlink_to(outside)
    (folder / "linked-folder").symlink_to(tmp_path)
    os.mkfifo(folder / "pipe.csv")
    zone.land("good.csv", GOOD_CSV)
    metadata = ingest(zone)
    assert sorted(event_history.all_events()["user_id"]) == ["u1", "u2"]
    assert metadata["files_quarantined"] == 4
    quarantined = names(zone, "quarantine/files/")
    assert all(name.endswith(".reason.txt") for name in quarantined), "no target is copied"
    [passwd] = [name for name in quarantined if "passwd" in name]
    assert zone.files.read(f"quarantine/files/{passwd}").decode() == (
        "passwd.csv: a symbolic link: not followed, its target not read\n"
    )
    assert (
        "pipe.csv: not a regular file (a FIFO, socket or device)" in (metadata["quarantined_files"])
    )
    assert "root:" not in "".join(
        zone.files.read(f"quarantine/files/{name}").decode() for name in quarantined
    )


def test_a_link_swapped_in_after_the_listing_is_not_followed(zone, tmp_path):
    folder = local(zone)
    zone.land("swap.csv", GOOD_CSV)
    [listed] = zone.landed()
    (folder / "swap.csv").unlink()
    (folder / "swap.csv").symlink_to("/etc/passwd")
    with pytest.raises(OSError):
        zone.read_landed(listed)


def test_compressed_files_are_ingested_and_other_files_reported_not_read(zone, event_history):
    zone.land("a.csv.gz", gzip.compress(b"user_id,item_id,timestamp\ngz,i1,1600000000\n"))
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as stream:
        stream.write(b'{"user_id": "zst", "item_id": "i1", "timestamp": 1600000000}\n')
    zone.land("b.jsonl.zst", sink.getvalue().to_pybytes())
    zone.land("notes.txt", b"user_id,item_id,timestamp\nnope,i1,1600000000\n")
    zone.land("export.csv.tmp", b"user_id,item_id,timestamp\nnope,i1,1600000000\n")
    zone.land("_staging/c.csv", b"user_id,item_id,timestamp\nnope,i1,1600000000\n")
    zone.land(".hidden.csv", b"user_id,item_id,timestamp\nnope,i1,1600000000\n")
    metadata = ingest(zone)
    assert sorted(event_history.all_events()["user_id"]) == ["gz", "zst"]
    assert metadata["files_unsupported"] == 1 and metadata["unsupported_files"] == "- notes.txt"
    assert metadata["files_quarantined"] == 0
    assert names(zone, "quarantine/files/") == [], "reported, not copied"
    assert ingest(zone)["unsupported_files"] == "- notes.txt", "reported every run"


def test_a_file_written_half_way_is_read_once_complete(zone, event_history):
    folder = local(zone)
    zone_now = zone.model_copy(update={"settle_s": 0.2})
    half = b"user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,17000"
    (folder / "growing.csv").write_bytes(half)
    first = ingest(zone_now)
    assert first["new_files"] == 0 and first["files_deferred"] == 1
    assert "growing.csv: its last line has no newline yet" in first["deferred_files"]
    # A writer that stalls past the settle time: the cut-off row still is not read.
    past = time.time_ns() - 30 * 10**9
    os.utime(folder / "growing.csv", ns=(past, past))
    assert ingest(zone_now)["new_files"] == 0
    with (folder / "growing.csv").open("ab") as handle:
        handle.write(b"00000\nu3,i3,1700000001\n")
    second = ingest(zone_now)
    assert second["new_files"] == 1 and second["rows_ingested"] == 3
    assert ingest(zone_now)["new_files"] == 0
    assert sorted(event_history.all_events()["timestamp"]) == [1700000000, 1700000000, 1700000001]


def test_a_file_that_changed_since_the_listing_waits(zone):
    zone.land("moving.csv", GOOD_CSV)
    [listed] = zone.landed()
    zone.land("moving.csv", GOOD_CSV + b"u3,i3,1,1600000002\n")
    assert zone.read_landed(listed) is None
    [relisted] = zone.landed()
    assert zone.read_landed(relisted).data.endswith(b"1600000002\n")


def test_a_new_file_that_grows_while_ingest_waits_for_it_to_settle_waits_for_a_later_run(
    zone, event_history
):
    folder = local(zone)
    patient = zone.model_copy(update={"settle_s": 1.5})
    (folder / "growing.csv").write_bytes(GOOD_CSV)
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(
            ingest_landed_files,
            patient,
            event_history,
            nobody_forgotten(),
            ValidationRules(),
            warn=lambda _: None,
        )
        time.sleep(0.5)
        with (folder / "growing.csv").open("ab") as handle:
            handle.write(b"u3,i3,3,1600000002\n")
        report = run.result()
    assert report.deferred_files == ["growing.csv: it changed while being read"]
    store = nobody_forgotten()
    report = ingest_landed_files(patient, event_history, store, ValidationRules(), print)
    assert report.rows_ingested == 3


def test_event_files_and_snapshots_stored_before_event_types_still_read(zone, event_history):
    zone.land("typed.csv", b"user_id,item_id,timestamp,event_type\nnew,i1,1,Purchase\n")
    ingest(zone)
    old = pa.table(
        {
            "user_id": ["old"],
            "item_id": ["i2"],
            "rating": [4.0],
            "timestamp": pa.array([2], pa.int64()),
            "source_file": ["old.csv"],
        }
    )
    zone.files.write(f"{EVENTS}old.parquet", parquet(old))
    zone.files.write(f"{BY_USER}old/events.parquet", parquet(old))
    manifest = {
        "snapshot": f"{BY_USER}old/events.parquet",
        "event_files": [f"{EVENTS}old.parquet"],
        "written_at": "2020-01-01T00:00:00+00:00",
    }
    zone.files.write(BY_USER_MANIFEST, json.dumps(manifest).encode())

    def types(events: pd.DataFrame) -> dict:
        return dict(zip(events["user_id"], events["event_type"].fillna("untyped"), strict=True))

    assert types(event_history.all_events()) == {"new": "purchase", "old": "untyped"}
    assert types(event_history.snapshot_events()) == {"old": "untyped"}
    assert types(event_history.user_history(["new", "old"])) == {
        "new": "purchase",
        "old": "untyped",
    }
    event_history.compact_history()
    assert types(event_history.snapshot_events()) == {"new": "purchase", "old": "untyped"}
