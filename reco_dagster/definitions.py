"""The batch code location: every asset, the batch job, its schedule and sensors, with the
deployment's resources. Micro-batches are the streaming location's (`reco_dagster.streaming`)."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    in_process_executor,
    load_assets_from_modules,
)
from dagster_pyspark import LazyPySparkResource

from assets import evaluate, ingest, live, prepare, publish, train
from reco_dagster.automation import (
    BATCH_RETRAIN,
    CATALOG_REFRESH,
    FORGET_USERS,
    catalog_sensor,
    erasure_pending,
    nightly_retrain,
    record_failed_runs,
    retrain_on_new_data,
)
from reco_dagster.streaming import streaming_resources
from resources.backends import file_store
from resources.lake_io import LakeIOManager
from resources.served_log import ServedListLog
from resources.settings import (
    AlsSettings,
    BatchScoring,
    DataEngine,
    EaseSettings,
    EvaluationProtocol,
    QualityGate,
    Serving,
    spark_config,
)

batch_assets = load_assets_from_modules([ingest, prepare, train, evaluate, publish, live])

batch_retrain = define_asset_job(
    BATCH_RETRAIN,
    selection=AssetSelection.all(),
    # dagster.yaml allows one run per value of this tag at a time: never two retrains.
    tags={"reco/run": "batch-retrain"},
    description=(
        "Erase forgotten users, ingest new landing files, choose settings on validation, fit "
        "and evaluate every model family, publish their lists and switch to the best one that "
        "passes the gate."
    ),
)

forget_users = define_asset_job(
    FORGET_USERS,
    selection=AssetSelection.assets(ingest.erasure),
    # It rewrites what a retrain reads: never beside one (a micro-batch may run).
    tags={"reco/run": "batch-retrain"},
    description=(
        "Take forgotten users (DELETE /users/{user_id}) out of every file: landing files, the "
        "event history, quarantine, the served-list log, the lake; then mark them erased."
    ),
)

# In this location, beside the assets it materializes (the streaming location loads none):
# a catalog change is not in a hurry the way new events are.
catalog_refresh = define_asset_job(
    CATALOG_REFRESH,
    selection=AssetSelection.assets(prepare.item_catalog, publish.published_catalog),
    tags={"reco/run": "catalog"},
    description=(
        "Read catalog/ and publish the item catalog to the store: categories and availability "
        "reach the API without a retrain."
    ),
)


def build_resources() -> dict[str, object]:
    """The resources of the deployment RECO_DEPLOYMENT names (embedded by default)."""
    files = file_store()
    return {
        **streaming_resources(),
        "served_log": ServedListLog(files=files),
        "io_manager": LakeIOManager(files=files),
        "pyspark": LazyPySparkResource(spark_config=spark_config()),
        "data_engine": DataEngine(),
        "batch_scoring": BatchScoring(),
        "als": AlsSettings(),
        "ease": EaseSettings(),
        "protocol": EvaluationProtocol(),
        "quality_gate": QualityGate(),
        "serving": Serving(),
    }


defs = Definitions(
    assets=batch_assets,
    jobs=[batch_retrain, forget_users, catalog_refresh],
    schedules=[nightly_retrain],
    sensors=[retrain_on_new_data, erasure_pending, catalog_sensor, record_failed_runs],
    resources=build_resources(),
    # Each Spark step in its own process would start its own JVM (~30 s each): keep one run
    # in one process, so one SparkSession serves every step.
    executor=in_process_executor,
)
