"""The lake IO manager: every asset's output under `lake/` in the deployment's file store, so
any asset can be re-materialized on its own."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext

from reco_dagster.domain.als import TrainedAls, is_spark_model_dir, load_als_factors
from reco_dagster.domain.models import FactorModel
from resources.files import FileStore

LAKE = "lake/"


class LakeIOManager(ConfigurableIOManager):
    """DataFrames as parquet, dicts as JSON, ALS models in Spark's model format and other
    factor models as numpy arrays; every model loads as a FactorModel."""

    files: FileStore

    def _name(self, context: InputContext | OutputContext) -> str:
        return LAKE + "/".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        name = self._name(context)
        if isinstance(obj, pd.DataFrame):
            self.files.write(name + ".parquet", obj.to_parquet(index=False))
        elif isinstance(obj, TrainedAls | FactorModel):
            with self.files.folder_to_write(name + "/") as folder:
                obj.save(folder)
        elif isinstance(obj, dict):
            self.files.write(name + ".json", json.dumps(obj, indent=2, default=str).encode())
        elif obj is not None:
            raise TypeError(f"the lake cannot store {type(obj).__name__} for {context.asset_key}")

    def load_input(self, context: InputContext) -> Any:
        name = self._name(context)
        if self.files.exists(name + ".parquet"):
            return pd.read_parquet(io.BytesIO(self.files.read(name + ".parquet")))
        if self.files.exists(name + ".json"):
            return json.loads(self.files.read(name + ".json"))
        try:
            with self.files.folder_to_read(name + "/") as folder:
                if is_spark_model_dir(folder):
                    return load_als_factors(folder)
                return FactorModel.load(folder)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{context.asset_key.to_user_string()} has not been materialized yet "
                f"(looked for {self.files.location(name)})"
            ) from None
