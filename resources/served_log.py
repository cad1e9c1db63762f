"""The API's log of served lists, read for online evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pandas as pd
from dagster import ConfigurableResource

from reco_dagster.domain.online import SERVED, SERVED_COLUMNS
from resources.files import FileStore


class ServedListLog(ConfigurableResource):
    """The folder served/ in a file store, where the API logs every list it serves
    (`api.experiments.ServedLog`: a JSON-lines file an hour), read by online_evaluation."""

    files: FileStore

    def served_lists(self, chunk_rows: int = 20_000) -> Iterator[pd.DataFrame]:
        """The served lists (time, user_id, variant, version, items), oldest hour first, in
        frames of at most `chunk_rows` lists: the log can outgrow memory (a list of 100 item
        ids is about 40 times its line's size as Python objects)."""
        decode = msgspec.json.Decoder(tuple).decode
        for file in self.files.list(SERVED):
            if not (file.name.endswith(".jsonl") and file.size):
                continue
            rows: list[tuple] = []
            with self.files.open(file.name) as source:
                for line in source:
                    if not line.endswith(b"\n"):
                        break  # the API is appending this line right now
                    rows.append(decode(line))
                    if len(rows) == chunk_rows:
                        yield pd.DataFrame(rows, columns=SERVED_COLUMNS)
                        rows = []
            if rows:
                yield pd.DataFrame(rows, columns=SERVED_COLUMNS)
