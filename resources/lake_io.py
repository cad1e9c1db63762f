"""The lake IO manager: every asset's output under `$RECO_DATA_DIR/lake/`, so any asset can
be re-materialized on its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManager, InputContext, OutputContext

from reco_dagster.domain.als import TrainedAls, is_spark_model_dir, load_als_factors
from reco_dagster.domain.models import FactorModel


class LakeIOManager(ConfigurableIOManager):
    """DataFrames as parquet, dicts as JSON, ALS models in Spark's model format and other
    factor models as numpy arrays; every model loads as a FactorModel."""

    base_dir: str

    def _path(self, context: InputContext | OutputContext) -> Path:
        return Path(self.base_dir).joinpath(*context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(obj, pd.DataFrame):
            obj.to_parquet(path.with_suffix(".parquet"), index=False)
        elif isinstance(obj, TrainedAls | FactorModel):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            obj.save(path)
        elif isinstance(obj, dict):
            path.with_suffix(".json").write_text(json.dumps(obj, indent=2, default=str))
        elif obj is not None:
            raise TypeError(f"the lake cannot store {type(obj).__name__} for {context.asset_key}")

    def load_input(self, context: InputContext) -> Any:
        path = self._path(context)
        if path.with_suffix(".parquet").exists():
            return pd.read_parquet(path.with_suffix(".parquet"))
        if path.is_dir():
            return load_als_factors(path) if is_spark_model_dir(path) else FactorModel.load(path)
        if path.with_suffix(".json").exists():
            return json.loads(path.with_suffix(".json").read_text())
        raise FileNotFoundError(
            f"{context.asset_key.to_user_string()} has not been materialized yet (looked in {path})"
        )
