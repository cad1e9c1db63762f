"""Generated landing files, good rows mixed with every kind of bad row, in every format: the
ingest succeeds, each good row goes into the history once, each bad row into quarantine with
a reason and its row number."""

import csv
import gzip
import io
import json
import tempfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reco_dagster.domain.events import ValidationRules
from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.ingestion import ingest_landed_files
from resources.landing_zone import LandingZone
from tests.capture_files import capture_file
from tests.conftest import nobody_forgotten

NOW = 1_700_000_000
GOOD = "good"
# Bad rows each format can hold; parquet columns have one type, so no mixed-type rows there.
JSON_BAD_ROWS = [
    "empty_user",
    "nul_in_id",
    "control_in_id",
    "rating_9",
    "future",
    "text_ts",
    "broken_line",
    "not_an_object",
    "fractional_id",
    "huge_float_id",
    "bool_id",
    "list_id",
]
BAD_ROWS = {
    ".parquet": ["empty_user", "nul_in_id", "control_in_id", "rating_9", "future"],
    ".csv": ["empty_user", "nul_in_id", "control_in_id", "rating_9", "future", "ragged", "text_ts"],
    ".jsonl": JSON_BAD_ROWS,
    # Event Hubs Capture: a JSON event in each record's body.
    ".avro": JSON_BAD_ROWS,
}

ids = st.text(
    alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=6
).filter(lambda text: text.strip() == text)


@st.composite
def landing_file(draw) -> dict:
    suffix = draw(st.sampled_from(sorted(BAD_ROWS)))
    kinds = draw(st.lists(st.one_of(st.just(GOOD), st.sampled_from(BAD_ROWS[suffix])), max_size=12))
    kinds.append(GOOD)  # a file with no rows at all is a different story (whole-file)
    rows = [
        {
            "kind": kind,
            "user_id": draw(ids),
            "item_id": "/".join(draw(st.lists(ids, min_size=1, max_size=2))),
            "rating": draw(st.one_of(st.none(), st.integers(0, 5).map(float))),
            "timestamp": draw(st.integers(0, NOW)),
        }
        for kind in draw(st.permutations(kinds))
    ]
    compression = draw(st.sampled_from(["", ".gz", ".zst"]))
    return {"suffix": suffix, "compression": compression, "rows": rows}


def spoil(row: dict) -> dict:
    """The row as written: the good row's fields, with its kind of damage."""
    kind, fields = row["kind"], {k: row[k] for k in ("user_id", "item_id", "rating", "timestamp")}
    damage = {
        "empty_user": {"user_id": ""},
        "nul_in_id": {"user_id": fields["user_id"] + "\x00"},
        "control_in_id": {"item_id": "\x1b" + fields["item_id"]},
        "rating_9": {"rating": 9.0},
        "future": {"timestamp": NOW * 1000},
        "text_ts": {"timestamp": "yesterday"},
        "fractional_id": {"user_id": 2.5},
        "huge_float_id": {"user_id": 1e20},
        "bool_id": {"user_id": True},
        "list_id": {"user_id": [1, 2]},
    }
    return {**fields, **damage.get(kind, {})}


def encode(file: dict) -> bytes:
    rows = file["rows"]
    if file["suffix"] == ".parquet":
        frame = pd.DataFrame([spoil(row) for row in rows])
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
        data = buffer.getvalue()
    elif file["suffix"] == ".csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        for row in rows:
            fields = spoil(row)
            values = ["" if value is None else value for value in fields.values()]
            writer.writerow([*values, "extra"] if row["kind"] == "ragged" else values)
        data = text.getvalue().encode()
    else:
        lines = []
        for row in rows:
            if row["kind"] == "broken_line":
                lines.append('{"user_id": "cut", "item_id": ')
            elif row["kind"] == "not_an_object":
                lines.append(json.dumps([row["user_id"], row["item_id"]]))
            else:
                lines.append(json.dumps(spoil(row)))
        if file["suffix"] == ".avro":
            data = capture_file([line.encode() for line in lines])
        else:
            data = "".join(line + "\n" for line in lines).encode()
    if file["compression"] == ".gz":
        return gzip.compress(data)
    if file["compression"] == ".zst":
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as stream:
            stream.write(data)
        return sink.getvalue().to_pybytes()
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(landing_file(), min_size=1, max_size=4))
def test_every_good_row_is_kept_once_and_every_bad_row_quarantined_with_a_reason(files):
    with tempfile.TemporaryDirectory() as root:
        zone = LandingZone(files=LocalFiles(root=root), settle_s=0)
        event_history = EventHistory(files=zone.files)
        expected_good, expected_bad = [], set()
        for n, file in enumerate(files):
            name = f"f{n}{file['suffix']}{file['compression']}"
            # Rows are told apart across files: the same good row twice is one file's duplicate.
            for index, row in enumerate(file["rows"]):
                row["user_id"] += f"#{n}.{index}"
                line = index + (2 if file["suffix"] == ".csv" else 1)
                if row["kind"] == GOOD:
                    expected_good.append((row["user_id"], row["item_id"], row["timestamp"]))
                else:
                    expected_bad.add((name, line))
            zone.land(name, encode(file))

        report = ingest_landed_files(
            zone, event_history, nobody_forgotten(), ValidationRules(), warn=lambda message: None
        )

        assert not report.quarantined_files and not report.deferred_files
        history = event_history.all_events()
        kept = list(zip(history["user_id"], history["item_id"], history["timestamp"], strict=True))
        assert sorted(kept) == sorted(expected_good)
        quarantined = [
            pd.read_csv(io.BytesIO(zone.files.read(file.name)), dtype=str, keep_default_na=False)
            for file in zone.files.list("quarantine/rows/")
        ]
        columns = ["source_file", "row_number", "reason"]
        rows = pd.concat(
            [frame[columns] for frame in quarantined] or [pd.DataFrame(columns=columns)]
        )
        assert (rows["reason"] != "").all()
        assert (
            set(zip(rows["source_file"], rows["row_number"].astype(int), strict=True))
            == expected_bad
        )
