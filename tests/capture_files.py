"""Event Hubs Capture files as Capture writes them, for the tests to land."""

import io
import json

import fastavro

# Microsoft's documented schema of Capture's Avro files ("Exploring captured Avro files in
# Azure Event Hubs"): one EventData record per event.
CAPTURE_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "EventData",
        "namespace": "Microsoft.ServiceBus.Messaging",
        "fields": [
            {"name": "SequenceNumber", "type": "long"},
            {"name": "Offset", "type": "string"},
            {"name": "EnqueuedTimeUtc", "type": "string"},
            {
                "name": "SystemProperties",
                "type": {"type": "map", "values": ["long", "double", "string", "bytes"]},
            },
            {
                "name": "Properties",
                "type": {"type": "map", "values": ["long", "double", "string", "bytes"]},
            },
            {"name": "Body", "type": ["null", "bytes"]},
        ],
    }
)
ENQUEUED = "11/14/2023 10:13:20 PM"
"""EnqueuedTimeUtc as Capture writes it (.NET's invariant form): Unix second 1_700_000_000."""


def capture_file(bodies: list[object], first_sequence_number: int = 100) -> bytes:
    """A Capture file of one record per body, sequence numbers counting up from the first. A
    body given as bytes (or None) is written as it is, anything else as its JSON."""
    records = [
        {
            "SequenceNumber": first_sequence_number + position,
            "Offset": str(4096 * (first_sequence_number + position)),
            "EnqueuedTimeUtc": ENQUEUED,
            "SystemProperties": {"x-opt-enqueued-time": 1_700_000_000_000},
            "Properties": {},
            "Body": body if body is None or isinstance(body, bytes) else json.dumps(body).encode(),
        }
        for position, body in enumerate(bodies)
    ]
    buffer = io.BytesIO()
    fastavro.writer(buffer, CAPTURE_SCHEMA, records, codec="deflate")
    return buffer.getvalue()
