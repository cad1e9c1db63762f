"""The batch job's first stages on Spark's executors (threshold forced to 0) give what the
driver gives on the same landing files: the same event history, quarantine and ledger, and
a user-sorted history in parts from which `user_history` reads the same rows."""

import gzip
import io
import json
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import materialize
from dagster_pyspark import LazyPySparkResource

from assets.ingest import raw_events
from assets.prepare import history_by_user
from reco_dagster.domain.events import ValidationRules
from reco_dagster.domain.forgetting import Forgotten, user_key
from resources.event_history import (
    BY_USER_MANIFEST,
    BYTES_PER_EVENT,
    LEDGER,
    USERS_ROW_GROUP,
    EventHistory,
    _row_groups_holding,
)
from resources.files import LocalFiles
from resources.ingestion import EventWeights, IngestReport, ingest_landed_files
from resources.landing_zone import LandingZone
from resources.settings import DataEngine, spark_config
from resources.store import SqliteRecommendationStore
from tests.capture_files import capture_file
from tests.conftest import nobody_forgotten
from tests.test_ingest_fuzz import BAD_ROWS, GOOD, encode

GONE = "gone-user"
CORNERS = (
    "user_id,item_id,rating,timestamp,event_type\n"
    '"Zoë ☃","item ""quoted"", with comma",4,1700000000,\n'
    '"  padded  ",i/with/slash,NaN,1700000001,view\n'
    "u3,i3,inf,1700000002,\n"
    "u4,i4,-Infinity,1700000003,\n"
    "u5,i5,abc,1700000004,\n"
    "u6,i6,,1700000005,\n"
    "u7,i7,9,1700000006,\n"
    "u8,i8,1e0,2024-01-01T00:00:00Z,\n"
    "u9,i9,2.5,2024-01-01 12:00:00+02:00,\n"
    "u10,i10,3,1700000000.9,\n"
    "u11,i11,3,-5,\n"
    "u12,i12,3,99999999999,\n"
    "u13,i13,3,yesterday,\n"
    ",i14,3,1700000000,\n"
    '"   ",i15,3,1700000000,\n'
    'u16,"",3,1700000000,\n'
    '"Zoë ☃","item ""quoted"", with comma",4,1700000000,\n'
    "u17,i17,,1700000000, Purchase \n"
    "u18,i18,,1700000000,teleport\n"
    "u19,i19,,1700000000,rating\n"
    '"two\nlines",i20,1,1700000000,\n'
    "u21,i21,1,1700000000,view,extra\n"
    f"{'x' * 257},i22,1,1700000000,\n"
    "עברית,i23,2,1700000000,\n"
    "e\u0301,i24,2,1700000000,\n"
    f"{GONE},i25,2,1700000000,\n"
    "u26,i26,5,1700000000,RATING\n"
)
JSON_CORNERS = (
    '{"user_id": 196.0, "item_id": 5, "rating": NaN, "timestamp": 1700000000}\n'
    '{"user_id": 1.5, "item_id": "i", "timestamp": 1700000000}\n'
    '{"user_id": true, "item_id": "i", "timestamp": 1700000000}\n'
    '{"user_id": [1], "item_id": "i", "timestamp": 1700000000}\n'
    '{"user_id": 12345678901234567890, "item_id": "i", "timestamp": 1700000000}\n'
    '{"user_id": "ok", "item_id": "x", "rating": "4", "timestamp": "2024-02-29T23:59:59+00:00"}\n'
    '{"user_id": "ok", "item_id": "y", "rating": Infinity, "timestamp": 1700000000}\n'
    '{"user_id": "\\u00e9", "item_id": "\\"q\\"", "rating": null, "timestamp": 1700000000, '
    '"event_type": "CLICK"}\n'
    f'{{"user_id": "{GONE}", "item_id": "i", "timestamp": 1700000000}}\n'
    "not json\n"
    "[1, 2]\n"
)


def typed_parquet() -> bytes:
    table = pa.table(
        {
            "user_id": pa.array([1, None, 3, 4, 5], pa.int64()),
            "item_id": pa.array(["a", "b", "c", "d", "e"]),
            "rating": pa.array([1.0, 2.0, float("nan"), float("inf"), None]),
            "timestamp": pa.array(
                [1_700_000_000_000, 1, 2, 3, 1_700_000_000_500], pa.timestamp("ms", tz="UTC")
            ),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def every_kind_of_row(suffix: str, compression: str) -> bytes:
    """A file of each format with every bad row it can hold between good ones (as the fuzz
    test writes them)."""
    kinds = [GOOD, *BAD_ROWS[suffix], GOOD]
    rows = [
        {
            "kind": kind,
            "user_id": f"{suffix}{n}",
            "item_id": f"i{n}",
            "rating": float(n % 6),
            "timestamp": 1_600_000_000 + n,
        }
        for n, kind in enumerate(kinds)
    ]
    return encode({"suffix": suffix, "compression": compression, "rows": rows})


def landing_files() -> dict[str, bytes]:
    corners = CORNERS.encode()
    files = {
        "corners.csv": corners,
        "corners.jsonl": JSON_CORNERS.encode(),
        "corners.csv.gz": gzip.compress(corners + b"u99,i99,1,1700000000,\n"),
        "typed.parquet": typed_parquet(),
        "capture/0/2023/11/14/22/10/00.avro": capture_file(
            [{"user_id": "c1", "item_id": "i1", "timestamp": 1_600_000_000}, b"not json"]
        ),
        "broken.parquet": b"PAR1 garbage",
        "empty.csv": b"",
        "no_item.csv": b"user_id,timestamp\nu,1\n",
        "unterminated.csv": b"user_id,item_id,timestamp\nu1,i1,1700000000",
        "z-copy-of-corners.csv": corners,
    }
    for suffix, compression in (
        (".csv", ".gz"),
        (".jsonl", ".zst"),
        (".parquet", ""),
        (".avro", ""),
    ):
        files[f"kinds/all{suffix}{compression}"] = every_kind_of_row(suffix, compression)
    return files


def forgetting_store(path: Path) -> SqliteRecommendationStore:
    """A store where GONE was forgotten and erased: their rows are left out of ingestion."""
    store = SqliteRecommendationStore(path=str(path))
    key = store.forget_user(GONE).tombstone.user_key
    store.mark_erased([key], datetime.now(UTC).isoformat())
    return store


def landed(root: Path, files: dict[str, bytes]) -> LandingZone:
    zone = LandingZone(files=LocalFiles(root=str(root)), settle_s=0)
    for name, data in files.items():
        zone.land(name, data)
    return zone


def stored(zone: LandingZone, folder: str) -> dict[str, bytes]:
    return {file.name: zone.files.read(file.name) for file in zone.files.list(folder)}


def ledger(zone: LandingZone) -> dict[str, dict]:
    return {
        name: {k: v for k, v in json.loads(data).items() if k != "ingested_at"}
        for name, data in stored(zone, LEDGER).items()
    }


def ingest(zone: LandingZone, store, spark) -> IngestReport:
    return ingest_landed_files(
        zone, EventHistory(files=zone.files), store, ValidationRules(), lambda _: None, spark=spark
    )


def test_ingest_on_spark_gives_the_drivers_history_quarantine_and_ledger(spark, tmp_path):
    files = landing_files()
    runs = {}
    for engine in ("pandas", "spark"):
        zone = landed(tmp_path / engine, files)
        store = forgetting_store(tmp_path / f"{engine}.sqlite")
        report = ingest(zone, store, None if engine == "pandas" else spark)
        runs[engine] = (zone, store, report)
    (zone, store, report), (on_spark, spark_store, spark_report) = runs.values()

    assert spark_report == report
    assert report.repeated_files == ["z-copy-of-corners.csv"]
    assert report.deferred_files == ["unterminated.csv: its last line has no newline yet"]
    assert (len(report.ingested_files), report.rows_ingested) == (9, 35)
    assert len(report.quarantined_files) == 3 and report.forgotten_rows == 3
    assert {
        "rating is not a finite number",
        "exact duplicate of an earlier row in the same file",
        "timestamp is neither Unix seconds nor ISO-8601",
        "user_id is empty or null",
        "user_id holds a control character",
        "user_id is a boolean",
    } <= set(report.reasons)
    for folder in ("quarantine/", "lake/events/"):
        assert stored(on_spark, folder).keys() == stored(zone, folder).keys()
    assert stored(on_spark, "quarantine/") == stored(zone, "quarantine/")
    pd.testing.assert_frame_equal(
        EventHistory(files=on_spark.files).all_events(), EventHistory(files=zone.files).all_events()
    )
    assert ledger(on_spark) == ledger(zone)
    assert [t.state for t in spark_store.tombstones()] == [t.state for t in store.tombstones()]
    assert store.tombstones()[0].state == "pending"

    # Once more: every file is known by its content, nothing is ingested twice.
    again = ingest(on_spark, spark_store, spark)
    assert not again.ingested_files and not again.quarantined_files
    assert again.contents == report.contents
    assert ledger(on_spark) == ledger(zone)


def test_the_assets_choose_the_engine_by_size_and_report_it(spark, tmp_path):
    zone = landed(tmp_path / "data", {"a.csv": b"user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\n"})
    resources = {
        "landing_zone": zone,
        "event_history": EventHistory(files=zone.files),
        "event_weights": EventWeights(),
        "store": nobody_forgotten(),
        "pyspark": LazyPySparkResource(spark_config=spark_config()),
    }

    def engines(spark_from_events: int) -> dict[str, tuple[str, int]]:
        result = materialize(
            [raw_events, history_by_user],
            resources={**resources, "data_engine": DataEngine(spark_from_events=spark_from_events)},
        )
        chosen = {}
        for asset in ("raw_events", "history_by_user"):
            [materialization] = result.asset_materializations_for_node(asset)
            metadata = materialization.metadata
            chosen[asset] = (metadata["engine"].value, metadata["engine_events"].value)
        return chosen

    # raw_events estimates the new file's events from its size; history_by_user counts.
    assert engines(3) == {"raw_events": ("spark", 4), "history_by_user": ("pandas", 2)}
    zone.land("b.csv", b"user_id,item_id,timestamp\nu3,i3,3\nu4,i4,4\n")
    assert engines(0) == {"raw_events": ("spark", 4), "history_by_user": ("spark", 4)}
    assert len(EventHistory(files=zone.files).snapshot_events()) == 4
    remote = SimpleNamespace(spark_config={"spark.master": "spark://x:7077"}, spark_session=spark)
    assert DataEngine(spark_from_events=10**9).spark_to_prepare(1, remote) is spark


def test_estimated_events_count_the_ledger_and_new_files_by_size(tmp_path):
    zone = landed(tmp_path, {"a.csv": b"user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\n"})
    history = EventHistory(files=zone.files)
    [listed] = zone.landed()
    assert history.estimated_events([listed]) == round(listed.size / BYTES_PER_EVENT)
    ingest_landed_files(zone, history, nobody_forgotten(), ValidationRules(), print)
    zone.land("b.csv", b"user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\nu3,i3,3\nu4,i4,4\n")
    assert history.estimated_events(zone.landed()) == 2 + round(
        zone.files.info("landing/b.csv").size / (listed.size / 2)
    )


def test_user_history_reads_the_same_rows_from_a_history_sorted_on_spark(spark, tmp_path):
    rng = np.random.default_rng(7)
    files = {}
    for n in range(3):
        users = rng.integers(0, 2000, 6000)
        frame = pd.DataFrame(
            {
                # Users in every file, so that each user's order is by file, then by row.
                "user_id": [f"ü{user}" for user in users],
                "item_id": [f"i{item}" for item in rng.integers(0, 50, 6000)],
                "timestamp": 1_600_000_000 + np.arange(6000),
            }
        )
        files[f"day{n}.csv"] = frame.to_csv(index=False).encode()
    zone = landed(tmp_path, files)
    history = EventHistory(files=zone.files)
    ingest_landed_files(zone, history, nobody_forgotten(), ValidationRules(), print)
    wanted = ["ü7", "ü1999", "ü500", "nobody"]

    on_driver = history.compact_history()
    whole, users = history.snapshot_events(), history.user_history(wanted)
    on_executors = history.compact_history(spark)
    assert (on_executors.events, on_executors.users) == (on_driver.events, on_driver.users)
    pd.testing.assert_frame_equal(history.snapshot_events(), whole)
    pd.testing.assert_frame_equal(history.user_history(wanted), users)
    assert set(users["user_id"]) == {"ü7", "ü1999", "ü500"}

    parts = json.loads(zone.files.read(BY_USER_MANIFEST))["parts"]
    assert len(parts) > 1
    read, ranges = 0, []
    for part in parts:
        with zone.files.open(part) as source:
            metadata = pq.ParquetFile(source).metadata
        groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
        assert all(group.num_rows <= USERS_ROW_GROUP for group in groups)
        ranges.append((groups[0].column(0).statistics.min, groups[-1].column(0).statistics.max))
        read += len(_row_groups_holding(metadata, sorted(wanted)))
    assert read <= 3, "only the row groups holding the wanted users"
    assert ranges == sorted(ranges) and all(a[1] < b[0] for a, b in pairwise(ranges))

    forgotten = Forgotten(frozenset({user_key("ü7")}), {user_key("ü7"): "ü7"})
    assert history.forget_in_snapshots(forgotten) == 2 * (users["user_id"] == "ü7").sum()
    assert "ü7" not in set(history.user_history(wanted)["user_id"])
