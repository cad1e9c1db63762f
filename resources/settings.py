"""Settings of the batch job, as Dagster resources: the Spark session, the models, the
evaluation, the gate and serving. Where files and lists live is `resources.backends`."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Literal

import pandas as pd
from dagster import ConfigurableResource
from dagster_pyspark import LazyPySparkResource
from pydantic import Field

from reco_dagster.domain.als import Confidence
from reco_dagster.domain.spark_tables import spark_split
from reco_dagster.domain.splits import SplitMethod, split_interactions
from resources.deployment import data_dir


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
        # ALS checkpoints its factors every 10 iterations only where a checkpoint folder is
        # set; without one, 20 iterations' lineage overflowed the JVM stack serializing tasks.
        "spark.checkpoint.dir": str(data_dir() / "spark-checkpoints"),
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if master.startswith("local"):
        config |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    return config | json.loads(os.environ.get("RECO_SPARK_CONF", "{}"))


def spark_session() -> Any:
    """A SparkSession with `spark_config`, for code that runs outside Dagster (tests,
    benchmarks); Dagster's runs get theirs from the `pyspark` resource."""
    from pyspark.sql import SparkSession

    return SparkSession.builder.config(map=spark_config()).getOrCreate()


class AlsSettings(ConfigurableResource):
    """The ALS settings to train with, and the first trial of the search. One set serves the
    evaluated and the served model, so the metrics describe the model users get. The defaults
    are the best rating-confidence settings on a validation split carved (chronologically) out
    of MovieLens 100K's training split (README)."""

    rank: int = 128
    max_iter: int = 6
    reg_param: float = 0.7
    alpha: float = 60.0
    implicit_prefs: bool = True
    confidence: Confidence = "rating"
    """"rating": an interaction's strength (its rating, its event type's weight) is its
    confidence; "binary": every interaction counts alike. On MovieLens 100K binary scored
    slightly higher on validation (README), but it would count a view as a purchase."""
    popularity_prior: float = 0.05
    seed: int = 42
    half_life_events: float = 2.0
    """Scoring weighs a user's history by 0.5 ** (events after this one / half-life); 0: every
    event counts the same. The search chooses it on validation."""
    half_life_days: float = 0.0
    """Likewise by age, counted back from the user's latest event; 0: off."""
    recency_floor: float = 0.0
    """The least an old event weighs: floor + (1 - floor) · decay."""


class EaseSettings(ConfigurableResource):
    l2: float = 200.0
    rating_weighted: bool = True
    item_normalization: float = 0.25
    """Each item's column of X is divided by (its squared norm)^this before fitting; 0 is
    plain EASE."""
    user_normalization: float = 0.0
    """Each user's row of X is divided by (their number of interactions)^this before fitting,
    so that long histories weigh less in the co-occurrences; 0 is plain EASE."""
    half_life_events: float = 2.0
    """As ALS's: a user's row of X is weighted by recency when scored (X_w · B)."""
    half_life_days: float = 0.0
    recency_floor: float = 0.03
    max_items: int = 5_000
    """EASE inverts an items-by-items matrix; larger catalogues are refused (use ALS). On 2
    cores EASE's steps take seconds at 5,000 items but about 140 s at 10,000 (bench/scale.py
    at 1M events), more than the rest of the batch job; raise it when the time is there."""

    def fit_settings(self) -> dict:
        """What makes the model: everything but the size limit."""
        return self.model_dump(exclude={"max_items"})


class EvaluationProtocol(ConfigurableResource):
    """How models are judged: the test split, and the validation split the search carves out
    of the training split the same way."""

    method: SplitMethod = "chronological"
    """chronological: each user's latest interactions test (what production does); temporal:
    one cut-off time for everyone; stratified: random per user (published figures' protocol;
    it hides time)."""
    train_ratio: float = 0.75
    seed: int = 42
    random_validation_folds: int = 2
    """Validation splits the search averages over under the stratified protocol: one random
    split is noisy enough to pick worse settings (the time-ordered protocols have exactly
    one)."""

    def split(self, table: pd.DataFrame, seed_offset: int = 0) -> tuple[pd.DataFrame, ...]:
        return split_interactions(table, self.method, self.train_ratio, self.seed + seed_offset)

    def split_on_spark(self, table: Any) -> tuple[Any, Any]:
        """`split` of a Spark DataFrame, on Spark: the same rows."""
        return spark_split(table, self.method, self.train_ratio, self.seed)

    def validation_folds(self, train: pd.DataFrame) -> list[tuple[pd.DataFrame, ...]]:
        """Validation splits carved out of a training split the way the test split was."""
        folds = self.random_validation_folds if self.method == "stratified" else 1
        return [self.split(train, seed_offset=fold) for fold in range(1, folds + 1)]


class QualityGate(ConfigurableResource):
    """What a new model must show before it may go live."""

    floors: dict[str, float] = Field(default_factory=dict)
    """Minimum values, e.g. {"precision_at_10": 0.3}."""
    min_lift_over_popularity: float = 1.0
    """precision@10 must be at least this multiple of the popularity baseline's."""
    tolerance: float = 0.05
    """How far below the live model's ranking metrics (a fraction) a new model may fall."""


class BatchScoring(ConfigurableResource):
    """Where the batch job ranks every user's items."""

    spark_from_users: int = 100_000
    """From this many users on, users are scored on Spark's executors: folded in from their
    histories there (SparkFoldIn), or for an ALS model that leaves histories undecayed ranked
    with the user factors Spark fitted (SparkAls); only the ranked lists reach the driver.
    Below, the driver does the same with the same numpy code and skips Spark's task overhead
    (bench/scoring.py measured the SparkAls path: at 138,000 users on 2 local cores it takes
    about as long as the driver; on a cluster the executors add cores)."""

    def spark_to_rank(self, users: int, pyspark: LazyPySparkResource) -> LazyPySparkResource | None:
        """Spark, to rank `users` users on its executors; None: rank them on the driver."""
        return pyspark if users >= self.spark_from_users else None


class DataEngine(ConfigurableResource):
    """Where the batch job's first stages (`raw_events`, `history_by_user`) work: pandas on
    the driver, fastest on small data, or Spark's executors, whose work the driver's memory
    does not follow. Each asset chooses by the events the history holds once the new files
    are in (`EventHistory.estimated_events`) and reports the choice in its metadata."""

    spark_from_events: int = Field(
        default_factory=lambda: int(os.environ.get("RECO_SPARK_FROM_EVENTS", 5_000_000)),
        description="From this many events on, Spark (RECO_SPARK_FROM_EVENTS; 0: always); "
        "always Spark too where RECO_SPARK_MASTER names a master that is not local.",
    )

    def spark_to_prepare(self, events: int, pyspark: LazyPySparkResource) -> Any | None:
        """The SparkSession to prepare `events` events with, or None: pandas on the driver. A
        remote master means a cluster was set up for the work, and a driver sized for
        little."""
        remote = not pyspark.spark_config.get("spark.master", "local").startswith("local")
        return pyspark.spark_session if remote or events >= self.spark_from_events else None

    def metadata(self, events: int, spark: Any | None) -> dict[str, object]:
        """What a materialization says of the choice."""
        return {
            "engine": "pandas" if spark is None else "spark",
            "engine_events": events,
            "spark_from_events": self.spark_from_events,
        }


class Serving(ConfigurableResource):
    family: Literal["auto", "als", "ease"] = "auto"
    """The model family whose versions go live: `auto` (the gate-passing family with the best
    validation nDCG@10 in the run), or `als` / `ease` to pin one."""
    keep_versions: int = 4
    """Versions besides the live one whose lists stay in the store (rollback, A/B)."""
    trending_half_life_days: float | None = None
    """The cold-start list counts each user's interaction 0.5 ** (age / half-life); 0: the
    all-time list; None: the half-life that predicts the validation split best. The trending
    list (GET /items/trending) takes a positive one too, else the best positive one."""
