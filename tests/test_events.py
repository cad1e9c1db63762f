import io
import json

import numpy as np
import pandas as pd
import pytest

from reco_dagster.domain.events import (
    UnreadableFileError,
    ValidationRules,
    read_event_file,
    validate_events,
)

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
        2: "user_id is empty or null",
        3: "item_id is empty or null",
        4: "rating is not a finite number",
        5: "rating is outside [0, 5]",
        6: "rating is outside [0, 5]",
        7: "timestamp is neither Unix seconds nor ISO-8601",
        8: "timestamp is in the future (milliseconds instead of seconds?)",
        9: "timestamp is before 1970",
        10: "exact duplicate of an earlier row in the same file",
        11: "user_id is longer than 256 characters",
        12: "rating is not a finite number",
    }
    bad_rating = result.rejected.set_index("row_number").loc[4]
    assert bad_rating["rating"] == "great" and bad_rating["offending_value"] == "great"


def test_rating_bounds_are_configurable():
    raw = pd.DataFrame({"user_id": ["a"], "item_id": ["b"], "rating": [9.0], "timestamp": [1]})
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
    ],
)
def test_unreadable_files_say_why(name, data, message):
    with pytest.raises(UnreadableFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_event_file(name, data)
