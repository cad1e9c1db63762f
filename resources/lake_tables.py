"""Tables of the lake as their consumers read them, whichever engine wrote them: one parquet
file the driver wrote, or parts Spark's executors wrote (`write_parts`), each through the
deployment's file store, so no Hadoop file-system connector is needed to reach Blob Storage.
A consumer reads one whole, a batch at a time, or on Spark.
"""

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from resources.files import FileStore

PARTS_FILE = "parts.json"
BATCH_ROWS = 65_536
"""Rows per frame `LakeTable.batches` gives (pyarrow's default): a few hundred users' lists
of the published depth."""


@dataclass(frozen=True)
class LakeTable:
    """A table in the lake: `parts` (parquet files, in order) and its Spark schema (JSON) when
    Spark wrote it."""

    files: FileStore
    parts: tuple[str, ...]
    spark_schema: str | None = None

    @property
    def on_executors(self) -> bool:
        """Whether Spark wrote it: what reads it then stays on Spark."""
        return self.spark_schema is not None

    def frame(self, pyspark: Any) -> Any:
        """The table where its engine works with it: a Spark DataFrame if Spark wrote it
        (`pyspark` a LazyPySparkResource: its session starts only then), else pandas."""
        return self.to_spark(pyspark.spark_session) if self.on_executors else self.to_pandas()

    def to_pandas(self) -> pd.DataFrame:
        tables = [pq.read_table(io.BytesIO(self.files.read(part))) for part in self.parts]
        return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame()

    def batches(
        self, columns: Sequence[str] | None = None, rows: int = BATCH_ROWS
    ) -> Iterator[pd.DataFrame]:
        """The table as pandas frames of at most `rows` rows, in order, only `columns` when
        named: what reads a table too big for the driver's memory reads it this way. Each part
        is opened, not read whole (on Blob Storage it is read in ranges), and read a row group
        at a time."""
        for part in self.parts:
            with self.files.open(part) as source:
                parquet = pq.ParquetFile(source)
                for batch in parquet.iter_batches(batch_size=rows, columns=columns):
                    yield batch.to_pandas()

    def to_spark(self, spark: Any) -> Any:
        """The table as a Spark DataFrame, each part read by an executor."""
        from pyspark.sql.types import StructType

        if self.spark_schema is None:
            raise ValueError(f"{self.parts[0]} was written by the driver: read it with to_pandas")
        files = self.files

        def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for part in batch.column("part").to_pylist():
                    yield from pq.read_table(io.BytesIO(files.read(part))).to_batches()

        names = spark.createDataFrame(
            spark.sparkContext.parallelize([(part,) for part in self.parts], len(self.parts) or 1),
            "part string",
        )
        return names.mapInArrow(read, StructType.fromJson(json.loads(self.spark_schema)))


def forget_parts(files: FileStore, name: str) -> None:
    """Drop what Spark wrote as `name`: the driver has written it as one file since."""
    if files.exists(f"{name}/{PARTS_FILE}"):
        files.delete_folder(f"{name}/")


def read_table(files: FileStore, name: str) -> LakeTable | None:
    """The table the lake holds as `name` (without an extension), or None."""
    manifest = files.read_json(f"{name}/{PARTS_FILE}")
    if manifest is not None:
        return LakeTable(files, tuple(manifest["parts"]), manifest["schema"])
    if files.exists(f"{name}.parquet"):
        return LakeTable(files, (f"{name}.parquet",))
    return None


def write_parts(files: FileStore, name: str, frame: Any) -> tuple[LakeTable, int]:
    """A Spark DataFrame written as `name`: each partition by its executor as one part of a
    new folder, then the manifest naming them (what readers go by), then the older folders
    and a single-file copy deleted. Returns the table and its number of rows."""
    from pyspark import TaskContext

    folder = f"{name}/{datetime.now(UTC):%Y%m%dT%H%M%S%f}/"

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches([batch for batch in batches if batch.num_rows])
        if table.num_rows:
            part = f"{folder}part-{TaskContext.get().partitionId():05d}.parquet"
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            files.write(part, buffer.getvalue())
            yield pa.RecordBatch.from_pylist([{"part": part, "rows": table.num_rows}])

    found = frame.mapInArrow(write, "part string, rows long").collect()
    written = sorted(row.part for row in found)
    manifest = {"parts": written, "schema": frame.schema.json()}
    files.write(f"{name}/{PARTS_FILE}", json.dumps(manifest).encode())
    generation = folder.removeprefix(f"{name}/").rstrip("/")
    for stale in {
        file.name.removeprefix(f"{name}/").split("/")[0]
        for file in files.list(f"{name}/")
        if "/" in file.name.removeprefix(f"{name}/")
    } - {generation}:
        files.delete_folder(f"{name}/{stale}/")
    files.delete(f"{name}.parquet")
    return LakeTable(files, tuple(written), manifest["schema"]), sum(row.rows for row in found)
