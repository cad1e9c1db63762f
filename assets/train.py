"""Stage 3: Spark ML ALS, once on the training split (to evaluate) and once on everything
(to serve), with the same settings."""

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Output, asset
from dagster_pyspark import PySparkResource

from reco_dagster.domain.als import TrainedAls, fit_als
from resources.settings import AlsSettings


def _train(
    context: AssetExecutionContext,
    pyspark: PySparkResource,
    als: AlsSettings,
    table: pd.DataFrame,
) -> Output[TrainedAls]:
    started = time.perf_counter()
    model = fit_als(pyspark.spark_session, table, **als.model_dump())
    fit_s = time.perf_counter() - started
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
    trained = TrainedAls(
        version=version,
        spark_model=model,
        user_ids=_ids_by_index(table, "user"),
        item_ids=_ids_by_index(table, "item"),
        settings=als.model_dump(),
    )
    return Output(
        trained,
        metadata={
            "model_version": version,
            "fit_s": round(fit_s, 2),
            "interactions": len(table),
            "users": table["user_id"].nunique(),
            "items": table["item_id"].nunique(),
            "spark_master": pyspark.spark_context.master,
            **{f"als_{key}": value for key, value in als.model_dump().items()},
        },
    )


def _ids_by_index(table: pd.DataFrame, entity: str) -> np.ndarray:
    """The string id for every integer index (a split may leave gaps: those stay empty)."""
    index = table[f"{entity}_idx"].to_numpy()
    ids = np.full(index.max() + 1, "", dtype=object)
    ids[index] = table[f"{entity}_id"].to_numpy()
    return ids


@asset(group_name="train", kinds={"spark"})
def evaluation_model(
    context: AssetExecutionContext,
    pyspark: PySparkResource,
    als: AlsSettings,
    train_interactions: pd.DataFrame,
) -> Output[TrainedAls]:
    """ALS fitted on the training split only; the evaluation scores it on the test split."""
    return _train(context, pyspark, als, train_interactions)


@asset(group_name="train", kinds={"spark"})
def als_model(
    context: AssetExecutionContext,
    pyspark: PySparkResource,
    als: AlsSettings,
    interactions: pd.DataFrame,
) -> Output[TrainedAls]:
    """ALS fitted on every interaction: the model whose recommendations are served."""
    return _train(context, pyspark, als, interactions)
