"""Forgotten users' rows out of every kind of landing file, every other row kept as it was."""

import gzip
import io
import json

import fastavro
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reco_dagster.domain.events import (
    UnreadableFileError,
    ValidationRules,
    read_event_file,
    validate_events,
)
from reco_dagster.domain.forgetting import (
    Forgotten,
    event_file_without,
    quarantined_rows_without,
    user_key,
    without_forgotten_rows,
)
from tests.capture_files import capture_file

GONE = "forget-me-7f3a"
FORGOTTEN = Forgotten(frozenset({user_key(GONE), user_key("196")}), {user_key(GONE): GONE})
ERASED_ONLY = Forgotten(frozenset({user_key(GONE)}))
"""The same user once the erasure completed: known by the key alone."""


def events_of(name: str, data: bytes) -> pd.DataFrame:
    return validate_events(read_event_file(name, data), ValidationRules(), now_s=2e9).events


def test_a_key_is_the_ids_sha256_and_nobody_is_forgotten_without_tombstones():
    assert user_key("196") == "b4bbe448fde336bb6a7d7d765f36d3327c772b845e7b54c8282aa08c9775ddd7"
    assert user_key("a/b") != user_key("a/b ")
    nobody = Forgotten()
    assert not nobody and not nobody.mask(pd.Series(["x"], dtype="string")).any()


CSV = (
    "user_id,item_id,rating,timestamp,note\r\n"
    "u1,i1,4,1700000000\r\n"
    f"{GONE},i2,5,1700000001\r\n"
    'u2,i7,3,1700000002,"a note, with\r\na line break"\r\n'
    f"  {GONE}  ,i3,,1700000003\r\n"
    f"u3,i4,4,1700000004,,{GONE} in a row with too many fields\r\n"
    "196.0,i5,4,1700000005\r\n"
    "u4,i6,4,1700000006\r\n"
)


def test_a_csv_file_loses_the_forgotten_rows_and_keeps_every_other_byte():
    rewritten = event_file_without("day.csv", CSV.encode(), FORGOTTEN)
    assert rewritten.removed == 3
    kept = rewritten.data.decode()
    lines = CSV.splitlines(keepends=True)
    assert kept == "".join([lines[0], lines[1], lines[3], lines[4], lines[7], lines[8]])
    assert GONE not in kept
    # "196.0" is the id "196" for validation too, so its row stays: the forgotten id is "196"
    # as a string, and "196.0" is not that string in a CSV.
    users = events_of("day.csv", rewritten.data)["user_id"].tolist()
    assert users == ["u1", "u2", "196.0", "u4"]


def test_jsonl_parquet_and_compressed_files_lose_the_forgotten_rows():
    rows = [
        {"user_id": "u1", "item_id": "i1", "timestamp": 1_700_000_000},
        {"user_id": GONE, "item_id": "i2", "timestamp": 1_700_000_001},
        {"user_id": 196, "item_id": "i3", "timestamp": 1_700_000_002},
        {"user_id": "u2", "item_id": "i4", "timestamp": 1_700_000_003},
    ]
    jsonl = "".join(json.dumps(row) + "\n" for row in rows) + f'{{"broken": "{GONE}"\n'
    table = pa.table(
        {
            "user_id": pa.array([1.0, 196.0, 7.0]),
            "item_id": ["i1", "i2", "i3"],
            "timestamp": [1_700_000_000, 1_700_000_001, 1_700_000_002],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    for name, data, left in (
        ("a.jsonl", jsonl.encode(), ["u1", "u2"]),
        ("a.jsonl.gz", gzip.compress(jsonl.encode()), ["u1", "u2"]),
        ("a.parquet", buffer.getvalue(), ["1", "7"]),
    ):
        rewritten = event_file_without(name, data, FORGOTTEN)
        assert rewritten.removed == (3 if "jsonl" in name else 1), name
        assert events_of(name, rewritten.data)["user_id"].tolist() == left
        if name.endswith(".gz"):
            assert gzip.decompress(rewritten.data).decode().splitlines()[0] == json.dumps(rows[0])
    nothing_of_theirs = event_file_without("a.jsonl", jsonl.encode(), Forgotten())
    assert (nothing_of_theirs.data, nothing_of_theirs.removed) == (jsonl.encode(), 0)


def test_a_capture_file_loses_forgotten_events_and_keeps_the_rest_of_an_array_body():
    data = capture_file(
        [
            {"user_id": GONE, "item_id": "i1"},
            [{"user_id": "u1", "item_id": "i2"}, {"user_id": GONE, "item_id": "i3"}],
            b"not json, but it names " + GONE.encode(),
            b"not json either",
            {"user_id": "u2", "item_id": "i4", "timestamp": 1_700_000_500},
        ]
    )
    rewritten = event_file_without("ns/hub/0/2023/11/14/22/13/20.avro", data, FORGOTTEN)
    assert rewritten.removed == 3 and GONE.encode() not in rewritten.data
    records = list(fastavro.reader(io.BytesIO(rewritten.data)))
    assert [record["SequenceNumber"] for record in records] == [101, 103, 104]
    assert json.loads(records[0]["Body"]) == [{"user_id": "u1", "item_id": "i2"}]
    events = events_of("x.avro", rewritten.data)
    assert events[["user_id", "timestamp"]].values.tolist() == [
        ["u1", 1_700_000_000],
        ["u2", 1_700_000_500],
    ]
    # Once erased only the key is known: a body that cannot be read is no longer searched.
    assert event_file_without("x.avro", data, ERASED_ONLY).removed == 2


def test_a_file_of_only_forgotten_rows_is_left_with_none_and_an_unreadable_one_says_so():
    only_theirs = f"user_id,item_id,timestamp\n{GONE},i1,1700000000\n"
    assert event_file_without("a.csv", only_theirs.encode(), FORGOTTEN).data is None
    with pytest.raises(UnreadableFileError):
        event_file_without("a.csv", b"user;item\n" + GONE.encode(), FORGOTTEN)


def test_ingestion_leaves_forgotten_rows_out_before_validation_and_names_whom():
    rows = read_event_file("day.csv", CSV.encode())
    kept, found = without_forgotten_rows(rows, FORGOTTEN)
    assert found == {user_key(GONE): GONE}
    assert len(kept.frame) == len(rows.frame) - 2 and kept.broken.empty
    validated = validate_events(kept, ValidationRules(), now_s=2e9)
    assert GONE not in validated.rejected.to_csv() and validated.rejected.empty


def test_quarantined_rows_of_forgotten_users_go():
    text = (
        "user_id,item_id,rating,row_number,reason,offending_value,source_file\n"
        f'{GONE},i1,99,2,"rating is outside [0, 5]",99.0,day.csv\n'
        'u1,i2,99,3,"rating is outside [0, 5]",99.0,day.csv\n'
        f",,,4,line is not JSON,{{{GONE},day.jsonl\n"
    )
    kept, sources = quarantined_rows_without(text, FORGOTTEN)
    assert sources == ["day.csv", "day.jsonl"]
    assert kept == "".join(text.splitlines(keepends=True)[:3:2])
    assert quarantined_rows_without(text.replace(GONE, "u9"), FORGOTTEN) == (
        text.replace(GONE, "u9"),
        [],
    )
    header, theirs = text.splitlines(keepends=True)[:2]
    assert quarantined_rows_without(header + theirs, FORGOTTEN) == (None, ["day.csv"])
