"""The lake IO manager: every asset's output under `lake/` in the deployment's file store, so
any asset can be re-materialized on its own."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency
from dagster_pyspark import LazyPySparkResource

from reco_dagster.domain.als import (
    TrainedAls,
    is_spark_model_dir,
    load_als_factors,
    load_als_on_spark,
)
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.models import CARD_FILE, FactorModel, ModelCard, Scorer
from reco_dagster.domain.recency import decays
from reco_dagster.domain.spark_scoring import SparkFoldIn
from resources.files import FileStore
from resources.lake_tables import LakeTable, forget_parts, read_table, write_parts

LAKE = "lake/"


@dataclass(frozen=True)
class StoredModel:
    """A model in the lake, read only as far as a step needs: its card, its item side, or all
    of it to score with (on the driver, or for an ALS model on Spark's executors)."""

    files: FileStore
    prefix: str

    @property
    def card(self) -> ModelCard:
        return ModelCard.from_json(self.files.read(self.prefix + CARD_FILE))

    def item_side(self) -> FactorModel:
        """The card and the item factors, no user factors: what similar items, the archive
        and the micro-batch's fold-in need."""
        with self.files.folder_to_read(self.prefix) as folder:
            return _item_side(folder)

    @contextmanager
    def scorer(
        self, history: pd.DataFrame, spark: LazyPySparkResource | None = None
    ) -> Iterator[Scorer]:
        """The model with the users of `history` to rank and predict with, each folded in from
        their history as the micro-batch scores them: on the driver, or given Spark on its
        executors. An ALS model that leaves histories undecayed ranks on the executors with
        the user factors Spark fitted (fold-in would reproduce them)."""
        with self.files.folder_to_read(self.prefix) as folder:
            settings = ModelCard.load(folder).settings
            if spark is not None and is_spark_model_dir(folder) and not decays(settings):
                yield load_als_on_spark(spark.spark_session, folder)
                return
            item_side = _item_side(folder)
            if spark is None:
                yield fold_in(item_side, history)
            else:
                yield SparkFoldIn(spark.spark_session, item_side)


def _is_spark_frame(obj: object) -> bool:
    # Not an isinstance check: that would import pyspark in every process.
    return type(obj).__module__.startswith("pyspark.sql") and hasattr(obj, "mapInArrow")


def _item_side(folder: Path) -> FactorModel:
    """A stored model's card and item factors, whatever format its family saves in."""
    if is_spark_model_dir(folder):
        return load_als_factors(folder, users=False)
    return FactorModel.load(folder, users=False)


class LakeIOManager(ConfigurableIOManager):
    """DataFrames as parquet (a pandas one as one file, a Spark one in parts its executors
    write: `resources.lake_tables`), dicts as JSON, ALS models in Spark's model format and
    other factor models as numpy arrays; every model loads as a StoredModel (read when used),
    a table as a pandas DataFrame, or as a LakeTable where the consumer asks for one."""

    files: ResourceDependency[FileStore]

    def _name(self, context: InputContext | OutputContext) -> str:
        return LAKE + "/".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        name = self._name(context)
        if isinstance(obj, pd.DataFrame):
            self.files.write(name + ".parquet", obj.to_parquet(index=False))
            forget_parts(self.files, name)
        elif _is_spark_frame(obj):
            table, rows = write_parts(self.files, name, obj)
            context.add_output_metadata({"parts": len(table.parts), "rows_written": rows})
        elif isinstance(obj, TrainedAls | FactorModel):
            with self.files.folder_to_write(name + "/") as folder:
                obj.save(folder)
        elif isinstance(obj, dict):
            self.files.write(name + ".json", json.dumps(obj, indent=2, default=str).encode())
        elif obj is not None:
            raise TypeError(f"the lake cannot store {type(obj).__name__} for {context.asset_key}")

    def load_input(self, context: InputContext) -> Any:
        name = self._name(context)
        table = read_table(self.files, name)
        if table is not None:
            # A consumer that reads either engine's tables asks for a LakeTable.
            wants_table = context.dagster_type.typing_type is LakeTable
            return table if wants_table else table.to_pandas()
        if self.files.exists(name + ".json"):
            return json.loads(self.files.read(name + ".json"))
        if self.files.exists(name + "/" + CARD_FILE):
            return StoredModel(self.files, name + "/")
        raise FileNotFoundError(
            f"{context.asset_key.to_user_string()} has not been materialized yet "
            f"(looked for {self.files.location(name)})"
        )
