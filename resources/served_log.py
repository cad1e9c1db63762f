"""The API's log of served lists, read for online evaluation."""

from collections.abc import Collection, Iterator
from pathlib import Path

import msgspec
import pandas as pd
from dagster import ConfigurableResource, ResourceDependency

from api.experiments import erase_served_lines, served_lines_without
from reco_dagster.domain.online import SERVED, SERVED_COLUMNS
from resources.files import FileStore, LocalFiles


class ServedListLog(ConfigurableResource):
    """The folder served/ in a file store, where the API logs every list it serves
    (`api.experiments.ServedLog`: a JSON-lines file an hour), read by online_evaluation."""

    files: ResourceDependency[FileStore]

    def served_lists(self, chunk_rows: int = 20_000) -> Iterator[pd.DataFrame]:
        """The served lists (time, user_id, variant, version, items, new_items), oldest hour
        first, in frames of at most `chunk_rows` lists: the log can outgrow memory (a list of
        100 item ids is about 40 times its line's size as Python objects)."""
        decode = msgspec.json.Decoder(tuple).decode
        for file in self.files.list(SERVED):
            if not (file.name.endswith(".jsonl") and file.size):
                continue
            rows: list[tuple] = []
            with self.files.open(file.name) as source:
                for line in source:
                    if not line.endswith(b"\n"):
                        break  # the API is appending this line right now
                    row = decode(line)
                    # Lines logged before new items were marked: none were.
                    rows.append(row if len(row) == len(SERVED_COLUMNS) else (*row, []))
                    if len(rows) == chunk_rows:
                        yield pd.DataFrame(rows, columns=SERVED_COLUMNS)
                        rows = []
            if rows:
                yield pd.DataFrame(rows, columns=SERVED_COLUMNS)

    def first_served_at(self) -> float | None:
        """When the oldest logged list was served (None: nothing logged)."""
        first = next(self.served_lists(chunk_rows=1), None)
        return None if first is None else float(first["time"].iloc[0])

    def erase(self, user_keys: Collection[str]) -> int:
        """These users' lines out of the log (by `user_key`); returns how many went. On local
        disk the API may be appending: each file is rewritten under the lock its flushes take."""
        if isinstance(self.files, LocalFiles):
            return erase_served_lines(Path(self.files.location(SERVED)), user_keys)
        erased = 0
        for file in self.files.list(SERVED):
            kept, gone = served_lines_without(self.files.read(file.name), user_keys)
            if gone:
                self.files.write(file.name, kept)
                erased += gone
        return erased
