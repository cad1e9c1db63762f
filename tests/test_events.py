import io
import json

import fastavro
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reco_dagster.domain import events
from reco_dagster.domain.capture import enqueued_seconds, partition_of
from reco_dagster.domain.events import (
    RawRows,
    UnreadableFileError,
    ValidationRules,
    is_event_file,
    read_event_file,
    validate_events,
)
from tests.capture_files import ENQUEUED, capture_file

NOW = 1_700_000_000
RULES = ValidationRules(min_rating=0, max_rating=5, max_future_skew_s=86_400)


def csv_bytes(text: str) -> bytes:
    return text.strip().encode() + b"\n"


def test_csv_ids_stay_text_and_timestamps_accept_unix_and_iso():
    raw = read_event_file(
        "a.csv",
        csv_bytes(
            """
user_id,item_id,rating,timestamp,device
007,42,4.5,1600000000,phone
8,43,,2020-09-13T12:26:40Z,web
"""
        ),
    )
    result = validate_events(raw, RULES, now_s=NOW)
    assert result.rejected.empty
    events = result.events
    assert events["user_id"].tolist() == ["007", "8"]
    assert events["item_id"].tolist() == ["42", "43"]
    assert events["rating"].iloc[0] == 4.5 and np.isnan(events["rating"].iloc[1])
    assert events["timestamp"].tolist() == [1_600_000_000, 1_600_000_000]


def test_parquet_integer_ids_are_read_as_strings():
    buffer = io.BytesIO()
    pd.DataFrame({"user_id": [1, 2], "item_id": [10.0, 11.0], "timestamp": [5, 6]}).to_parquet(
        buffer
    )
    result = validate_events(read_event_file("p.parquet", buffer.getvalue()), RULES, now_s=NOW)
    assert result.events["user_id"].tolist() == ["1", "2"]
    assert result.events["item_id"].tolist() == ["10", "11"]
    assert result.events["rating"].isna().all()


def test_jsonl_without_rating_column_is_implicit_feedback():
    lines = [
        {"user_id": "a", "item_id": "x", "timestamp": 10},
        {"user_id": "b", "item_id": "y", "timestamp": 11},
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    result = validate_events(read_event_file("e.jsonl", data), RULES, now_s=NOW)
    assert len(result.events) == 2 and result.events["rating"].isna().all()


def test_every_bad_row_is_rejected_with_its_reason_and_good_rows_survive():
    raw = read_event_file(
        "mixed.csv",
        csv_bytes(
            f"""
user_id,item_id,rating,timestamp
u1,i1,4,1600000000
,i2,4,1600000000
u3,,4,1600000000
u4,i4,great,1600000000
u5,i5,9,1600000000
u6,i6,-1,1600000000
u7,i7,3,yesterday
u8,i8,3,{NOW * 1000}
u9,i9,3,-5
u1,i1,4,1600000000
{"u" * 300},i10,3,1600000000
u11,i11,inf,1600000000
u12,i12,2,1600000001
"""
        ),
    )
    result = validate_events(raw, RULES, now_s=NOW)
    assert result.events["user_id"].tolist() == ["u1", "u12"]
    reasons = dict(zip(result.rejected["row_number"], result.rejected["reason"], strict=True))
    assert reasons == {
        3: "user_id is empty or null",
        4: "item_id is empty or null",
        5: "rating is not a finite number",
        6: "rating is outside [0, 5]",
        7: "rating is outside [0, 5]",
        8: "timestamp is neither Unix seconds nor ISO-8601",
        9: "timestamp is in the future (milliseconds instead of seconds?)",
        10: "timestamp is before 1970",
        11: "exact duplicate of an earlier row in the same file",
        12: "user_id is longer than 256 characters",
        13: "rating is not a finite number",
    }
    bad_rating = result.rejected.set_index("row_number").loc[5]
    assert bad_rating["rating"] == "great" and bad_rating["offending_value"] == "great"


def test_rating_bounds_are_configurable():
    raw = RawRows(
        pd.DataFrame({"user_id": ["a"], "item_id": ["b"], "rating": [9.0], "timestamp": [1]})
    )
    assert validate_events(raw, ValidationRules(max_rating=10), now_s=NOW).rejected.empty


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.csv", b"", "file is empty"),
        ("blank.jsonl", b"\n\n", "file is empty"),
        ("header.csv", b"user_id,item_id,timestamp\n", "header but no rows"),
        ("no_ts.csv", b"user_id,item_id\nu,i\n", "missing required column(s): timestamp"),
        ("junk.parquet", b"definitely not parquet", "cannot parse as parquet"),
        ("junk.jsonl", b"{not json", "cannot parse as jsonl"),
        ("junk.avro", b"user_id,item_id,timestamp\nu,i,1\n", "cannot parse as avro"),
    ],
)
def test_unreadable_files_say_why(name, data, message):
    with pytest.raises(UnreadableFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_event_file(name, data)


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("zone", [None, "UTC", "Europe/Paris"])
def test_parquet_timestamps_are_read_as_unix_seconds_in_any_unit_and_zone(unit, zone):
    moment = pd.Timestamp("2023-11-14T22:13:20.750Z")
    times = pa.array([moment.value, None], pa.timestamp("ns")).cast(
        pa.timestamp(unit, zone), safe=False
    )
    table = pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": times})
    result = validate_events(read_event_file("t.parquet", parquet_bytes(table)), RULES, now_s=NOW)
    assert result.events["timestamp"].tolist() == [1_700_000_000]
    assert result.rejected["reason"].tolist() == ["timestamp is neither Unix seconds nor ISO-8601"]


def test_ids_are_text_or_integers_and_anything_else_is_rejected_per_row():
    table = pa.table(
        {
            "user_id": pa.array([1.0, 2.5, 1e20, 2.0**53, -7.0, None, 9.0]),
            "item_id": pa.array([b"a/b", b"c", b"d", b"e", b"f", b"g", b"bad\xff"]),
            "timestamp": [1] * 7,
        }
    )
    result = validate_events(read_event_file("f.parquet", parquet_bytes(table)), RULES, now_s=NOW)
    assert result.events[["user_id", "item_id"]].values.tolist() == [["1", "a/b"], ["-7", "f"]]
    not_integer = "user_id is a float that is not an integer below 2^53"
    assert dict(zip(result.rejected["row_number"], result.rejected["reason"], strict=True)) == {
        2: not_integer,
        3: not_integer,
        4: not_integer,
        6: "user_id is empty or null",
        7: "item_id is not valid UTF-8",
    }

    lines = [
        {"user_id": 12345678901234567890123, "item_id": "x", "timestamp": 1},
        {"user_id": True, "item_id": "x", "timestamp": 1},
        {"user_id": [1, 2], "item_id": "x", "timestamp": 1},
        {"user_id": {"id": 1}, "item_id": "x", "timestamp": 1},
        {"user_id": "u\u0000", "item_id": "x", "timestamp": 1},
        {"user_id": "u", "item_id": "x\u001f", "timestamp": 1},
        {"user_id": "u", "item_id": "x", "timestamp": True},
        {"user_id": "u", "item_id": "x", "rating": False, "timestamp": 2},
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    result = validate_events(read_event_file("j.jsonl", data), RULES, now_s=NOW)
    assert result.events["user_id"].tolist() == ["12345678901234567890123"]
    assert result.rejected["reason"].tolist() == [
        "user_id is a boolean",
        "user_id is a list, not text or an integer",
        "user_id is a dict, not text or an integer",
        "user_id holds a control character",
        "item_id holds a control character",
        "timestamp is neither Unix seconds nor ISO-8601",
        "rating is not a finite number",
    ]


@pytest.mark.parametrize(
    "column",
    [pa.array([True, False]), pa.array([[1], [2]]), pa.array([{"a": 1}, {"a": 2}])],
    ids=["bool", "list", "struct"],
)
def test_parquet_id_columns_of_other_types_are_rejected_row_by_row(column):
    table = pa.table({"user_id": column, "item_id": ["x", "y"], "timestamp": [1, 2]})
    result = validate_events(read_event_file("c.parquet", parquet_bytes(table)), RULES, now_s=NOW)
    assert result.events.empty and len(result.rejected) == 2
    assert result.rejected["reason"].str.startswith("user_id is a").all()


def test_a_broken_line_or_ragged_row_is_rejected_alone_with_its_line_number():
    jsonl = (
        b'{"user_id": "a", "item_id": "x", "timestamp": 1}\n'
        b'{"user_id": "b", "item_id": \n'
        b"[1, 2]\n"
        b'{"user_id": "c", "item_id": "z", "timestamp": 3}\n'
    )
    result = validate_events(read_event_file("j.jsonl", jsonl), RULES, now_s=NOW)
    assert result.events["user_id"].tolist() == ["a", "c"]
    assert result.rejected["row_number"].tolist() == [2, 3]
    assert result.rejected["reason"].iloc[0].startswith("line is not JSON")
    assert result.rejected["reason"].iloc[1] == "line is not a JSON object"

    ragged = b"user_id,item_id,timestamp\na,x,1\nb,y,2,extra\nc,z\nd,w,4\n"
    result = validate_events(read_event_file("r.csv", ragged), RULES, now_s=NOW)
    assert result.events["user_id"].tolist() == ["a", "d"]
    assert dict(zip(result.rejected["row_number"], result.rejected["reason"], strict=True)) == {
        3: "row has 4 fields, the header 3",
        4: "timestamp is neither Unix seconds nor ISO-8601",
    }
    assert result.rejected["offending_value"].iloc[0] == "b,y,2,extra"


CAPTURED = "capture-ns/clicks/3/2023/11/14/22/10/00.avro"
"""A Capture file's name in Capture's default layout: partition 3 of event hub `clicks`."""


def test_capture_bodies_hold_events_and_a_body_without_any_is_one_row_with_its_origin():
    data = capture_file(
        [
            {"user_id": "a", "item_id": "x", "rating": 4, "timestamp": 1_600_000_000},
            [{"user_id": "b", "item_id": "y"}, {"user_id": "c", "item_id": "z", "rating": 9}],
            b"{not json",
            b"\xff\xfe{}",
            None,
            [{"user_id": "d", "item_id": "w"}, 7],
            {"user_id": "e", "item_id": "v", "timestamp": None, "partition": "theirs"},
        ]
    )
    result = validate_events(read_event_file(CAPTURED, data), RULES, now_s=NOW)
    # A body without a timestamp (or a null one) takes the time Event Hubs accepted it.
    assert result.events[["user_id", "rating", "timestamp"]].fillna(-1).values.tolist() == [
        ["a", 4, 1_600_000_000],
        ["b", -1, NOW],
        ["e", -1, NOW],
    ]
    rejected = result.rejected.set_index("row_number")
    assert rejected["reason"].str.split(":").str[0].to_dict() == {
        3: "rating is outside [0, 5]",
        4: "body is not JSON",
        5: "body is not UTF-8",
        6: "record has no body",
        7: "body is not a JSON object or an array of objects",
    }
    assert (rejected["partition"] == "3").all()
    assert rejected["sequence_number"].tolist() == [101, 102, 103, 104, 105]
    assert rejected.loc[4, "offending_value"] == "{not json"
    assert "partition (in file)" in rejected.columns


def test_capture_times_and_partitions_are_read_as_capture_writes_them():
    assert enqueued_seconds(ENQUEUED) == NOW
    # Left to validation, which takes ISO-8601 and rejects the rest.
    assert enqueued_seconds("2023-11-14T22:13:20Z") == "2023-11-14T22:13:20Z"
    assert partition_of(CAPTURED) == "3"
    assert partition_of("landing/ns/hub/12/2024/01/02/03/04/05.avro") == "12"
    assert partition_of("exports/2024/01/02/events.avro") == ""


def test_a_capture_file_without_records_is_a_quiet_window_not_damage():
    result = validate_events(read_event_file(CAPTURED, capture_file([])), RULES, now_s=NOW)
    assert result.events.empty and result.rejected.empty


def test_an_avro_file_cut_short_or_of_another_schema_is_unreadable():
    data = capture_file([{"user_id": "a", "item_id": "x"}] * 50)
    with pytest.raises(UnreadableFileError, match="cannot parse as avro"):
        read_event_file(CAPTURED, data[:-10])
    other = io.BytesIO()
    schema = {"type": "record", "name": "Click", "fields": [{"name": "Body", "type": "bytes"}]}
    fastavro.writer(other, fastavro.parse_schema(schema), [{"Body": b"{}"}])
    with pytest.raises(
        UnreadableFileError,
        match="not an Event Hubs Capture file: its records have no SequenceNumber, EnqueuedTimeUtc",
    ):
        read_event_file(CAPTURED, other.getvalue())


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".avro"])
def test_compressed_files_are_read(suffix, compression):
    frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1, 2]})
    plain = {
        ".csv": frame.to_csv(index=False).encode(),
        ".jsonl": frame.to_json(orient="records", lines=True).encode(),
        ".parquet": frame.to_parquet(),
        ".avro": capture_file(frame.to_dict("records")),
    }[suffix]
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, compression) as stream:
        stream.write(plain)
    name = "f" + suffix + {"gzip": ".gz", "zstd": ".zst"}[compression]
    assert is_event_file(name) and not is_event_file("f.gz") and not is_event_file("f.txt")
    result = validate_events(read_event_file(name, sink.getvalue().to_pybytes()), RULES, NOW)
    assert result.events["user_id"].tolist() == ["a", "b"] and result.rejected.empty
    with pytest.raises(UnreadableFileError, match="cannot decompress"):
        read_event_file(name, sink.getvalue().to_pybytes()[:-8])


def test_a_text_file_whose_last_line_has_no_newline_says_so():
    assert read_event_file("a.csv", b"user_id,item_id,timestamp\nu,i,17000").unterminated
    assert not read_event_file("a.csv", b"user_id,item_id,timestamp\nu,i,1700000000\n").unterminated
    assert read_event_file(
        "a.jsonl", b'{"user_id": "u", "item_id": "i", "timestamp": 1}'
    ).unterminated


def test_a_file_column_named_like_a_quarantine_column_is_kept_apart():
    data = b"reason,user_id,item_id,timestamp,row_number\nclick,u,,1,x\nview,v,i,1,y\n"
    result = validate_events(read_event_file("a.csv", data), RULES, now_s=NOW)
    assert result.rejected.drop(columns="offending_value").to_dict("records") == [
        {
            "reason (in file)": "click",
            "user_id": "u",
            "item_id": "",
            "timestamp": "1",
            "row_number (in file)": "x",
            "row_number": 2,
            "reason": "item_id is empty or null",
        }
    ]


def test_a_compressed_file_that_expands_too_far_is_refused_whole(monkeypatch):
    """A decompression bomb is one bad file: refused with its reason, memory untouched."""
    header = b"user_id,item_id,timestamp\n"
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "gzip") as stream:
        stream.write(header + b"u,i,1\n" * 200_000)
    bomb = sink.getvalue().to_pybytes()
    assert len(bomb) < 20_000
    monkeypatch.setattr(events, "MAX_EXPANDED_BYTES", 1_000_000)
    with pytest.raises(UnreadableFileError, match="expands past 1,000,000 bytes"):
        read_event_file("bomb.csv.gz", bomb)
    monkeypatch.setattr(events, "MAX_EXPANDED_BYTES", 2_000_000)
    assert len(read_event_file("bomb.csv.gz", bomb).frame) == 200_000


def test_event_types_are_lower_cased_and_stripped_and_unknown_ones_quarantined():
    raw = read_event_file(
        "typed.csv",
        csv_bytes(
            """
user_id,item_id,rating,timestamp,event_type
u1,i1,,1600000000,View
u1,i2,,1600000001, add_to_cart
u1,i3,4,1600000002,RATING
u1,i4,,1600000003,
u1,i5,,1600000004,wishlist
u1,i6,,1600000005,rating
"""
        ),
    )
    result = validate_events(raw, RULES, now_s=NOW)
    typed = result.events["event_type"].fillna("untyped").tolist()
    assert typed == ["view", "add_to_cart", "rating", "untyped"]
    rejected = result.rejected.set_index("row_number")
    assert rejected.loc[6, "reason"] == (
        "unknown event type (configured: add_to_cart, click, purchase, rating, view)"
    )
    assert rejected.loc[6, "offending_value"] == "wishlist"
    assert rejected.loc[7, "reason"] == "a rating event has no rating"


def test_the_configured_types_decide_and_a_type_must_be_text():
    data = b'{"user_id": "u", "item_id": "i", "timestamp": 1, "event_type": 3}\n'
    data += b'{"user_id": "u", "item_id": "j", "timestamp": 1, "event_type": "view"}\n'
    data += b'{"user_id": "u", "item_id": "k", "timestamp": 1, "event_type": "like"}\n'
    rules = ValidationRules(event_types=frozenset({"like", "rating"}))
    result = validate_events(read_event_file("j.jsonl", data), rules, now_s=NOW)
    assert result.events["event_type"].tolist() == ["like"]
    assert result.rejected["reason"].tolist() == [
        "event_type is not text",
        "unknown event type (configured: like, rating)",
    ]


def test_a_file_without_event_types_gives_untyped_events():
    raw = read_event_file("plain.csv", csv_bytes("user_id,item_id,rating,timestamp\nu,i,4,1"))
    result = validate_events(raw, RULES, now_s=NOW)
    assert result.rejected.empty and result.events["event_type"].isna().all()
