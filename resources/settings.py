"""Settings chosen by the deployment: paths, the Spark session, the ALS model."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from reco_dagster.domain.als import Confidence
from resources.store import RecommendationStore, SqliteRecommendationStore


def data_dir() -> Path:
    return Path(os.environ.get("RECO_DATA_DIR", "data")).resolve()


def sqlite_store_path() -> Path:
    return Path(os.environ.get("RECO_SQLITE_PATH", data_dir() / "reco.sqlite")).resolve()


def spark_config() -> dict[str, str]:
    """local[*] unless RECO_SPARK_MASTER names another master; RECO_SPARK_CONF (a JSON object)
    adds or overrides any Spark setting, e.g. executor memory for a cluster."""
    master = os.environ.get("RECO_SPARK_MASTER", "local[*]")
    config = {
        "spark.master": master,
        "spark.app.name": "reco-dagster",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.memory": "4g",
        # Few cores and MovieLens-sized data: the default 200 shuffle partitions is all overhead.
        "spark.sql.shuffle.partitions": "8",
        "spark.default.parallelism": "8",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if master.startswith("local"):
        config |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    return config | json.loads(os.environ.get("RECO_SPARK_CONF", "{}"))


def recommendation_store() -> RecommendationStore:
    """The store this deployment serves from (the embedded SQLite file by default)."""
    return SqliteRecommendationStore(path=str(sqlite_store_path()))


class AlsSettings(ConfigurableResource):
    """The ALS settings to train with, and the starting point of the hyperparameter search.
    One set serves the evaluated and the served model, so the metrics describe the model users
    get. The defaults won on MovieLens 100K within the pipeline's one-minute budget (README)."""

    rank: int = 128
    max_iter: int = 6
    reg_param: float = 1.0
    alpha: float = 20.0
    implicit_prefs: bool = True
    confidence: Confidence = "rating"
    popularity_prior: float = 0.05
    seed: int = 42


class EaseSettings(ConfigurableResource):
    l2: float = 300.0
    rating_weighted: bool = True
    max_items: int = 20_000
    """EASE inverts an items-by-items matrix; larger catalogues are refused (use ALS)."""


class QualityGate(ConfigurableResource):
    """What a new model must show before it may go live."""

    floors: dict[str, float] = Field(default_factory=dict)
    """Minimum values, e.g. {"precision_at_10": 0.3}."""
    min_lift_over_popularity: float = 1.0
    """precision@10 must be at least this multiple of the popularity baseline's."""
    tolerance: float = 0.05
    """How far below the live model's ranking metrics (a fraction) a new model may fall."""


class Serving(ConfigurableResource):
    family: str = "als"
    """The model family whose versions go live when they pass the gate."""
    keep_versions: int = 4
    """Versions besides the live one whose lists stay in the store (rollback, A/B)."""
