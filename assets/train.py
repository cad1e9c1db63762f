"""Stage 3: model families, each fitted once on the training split (to be evaluated) and once
on every interaction (to be served), with the same settings.

- ALS (Spark ML): scales out on any Spark cluster; settings from `als_hyperparameters`.
- EASE (numpy): closed-form item-item model for catalogues that fit one machine.
"""

import time
from collections.abc import Iterator

import pandas as pd
from dagster import AssetExecutionContext, AssetIn, Config, MetadataValue, Output, asset
from dagster_pyspark import LazyPySparkResource

from reco_dagster.domain.als import TrainedAls, fit_als
from reco_dagster.domain.ease import CatalogueTooLargeError, fit_ease
from reco_dagster.domain.hyperparameters import search_als
from reco_dagster.domain.metrics import ranking_metrics
from reco_dagster.domain.models import FactorModel, ModelCard
from reco_dagster.domain.splits import stratified_random_split
from resources.settings import AlsSettings, BatchScoring, EaseSettings

FAMILIES = ("als", "ease")


class SearchConfig(Config):
    time_budget_s: float = 0.0
    """0 trains with the configured `als` settings as they are; the full search is opt-in
    (e.g. 600)."""
    max_trials: int = 50
    validation_ratio: float = 0.25
    """Share of each user's training interactions held out to score trials."""


@asset(group_name="train", kinds={"spark"})
def als_hyperparameters(
    context: AssetExecutionContext,
    config: SearchConfig,
    pyspark: LazyPySparkResource,
    als: AlsSettings,
    batch_scoring: BatchScoring,
    train_interactions: pd.DataFrame,
) -> Output[dict]:
    """The ALS settings to train with: the configured ones, or the best of a time-boxed
    search scored on a validation split carved out of the training split (never the test
    split)."""
    configured = als.model_dump()
    if config.time_budget_s <= 0:
        return Output(
            configured,
            metadata={
                "search": "skipped: time_budget_s is 0, the configured settings are used",
                **_settings_metadata(configured),
            },
        )
    fit_part, validation = stratified_random_split(
        train_interactions, 1.0 - config.validation_ratio, seed=configured["seed"] + 1
    )

    ranking_spark = batch_scoring.spark_to_rank(fit_part["user_id"].nunique(), pyspark)

    def score(settings: dict) -> dict[str, float]:
        card = ModelCard.describe("als", settings, fit_part)
        trained = fit_als(pyspark.spark_session, fit_part, card, **settings)
        model = (
            trained.on_spark(ranking_spark.spark_session)
            if ranking_spark
            else trained.factor_model()
        )
        return ranking_metrics(model.recommend(fit_part, 10), validation, 10)

    search = search_als(configured, score, config.time_budget_s, config.max_trials)
    context.log.info(f"{len(search.trials)} trials; best: {search.best}")
    return Output(
        search.best,
        metadata={
            "search": f"{len(search.trials)} trials in {search.elapsed_s:.0f} s",
            "trials": MetadataValue.md(search.table()),
            "validation_ndcg_by_trial": MetadataValue.md(search.bar_chart()),
            **_settings_metadata(search.best),
        },
    )


def _settings_metadata(settings: dict, family: str = "als") -> dict:
    return {f"{family}_{key}": value for key, value in settings.items()}


def _trained(model: TrainedAls | FactorModel, started: float, **metadata) -> Output:
    """A fitted model with what identifies it and what it cost."""
    return Output(
        model,
        metadata={
            "model_version": model.card.version,
            "data_fingerprint": model.card.data_fingerprint,
            "fit_s": round(time.perf_counter() - started, 2),
            **metadata,
            **_settings_metadata(model.card.settings, model.card.family),
        },
    )


def _fit_als(
    pyspark: LazyPySparkResource,
    settings: dict,
    table: pd.DataFrame,
) -> Output[TrainedAls]:
    started = time.perf_counter()
    card = ModelCard.describe("als", settings, table)
    trained = fit_als(pyspark.spark_session, table, card, **settings)
    return _trained(
        trained, started, interactions=len(table), spark_master=pyspark.spark_context.master
    )


@asset(group_name="train", kinds={"spark"})
def als_evaluation_model(
    pyspark: LazyPySparkResource,
    als_hyperparameters: dict,
    train_interactions: pd.DataFrame,
) -> Output[TrainedAls]:
    """ALS fitted on the training split only; `als_evaluation` scores it on the test split."""
    return _fit_als(pyspark, als_hyperparameters, train_interactions)


@asset(group_name="train", kinds={"spark"})
def als_model(
    pyspark: LazyPySparkResource,
    als_hyperparameters: dict,
    interactions: pd.DataFrame,
) -> Output[TrainedAls]:
    """ALS fitted on every interaction: the model whose recommendations are served."""
    return _fit_als(pyspark, als_hyperparameters, interactions)


def _fit_ease(
    context: AssetExecutionContext, ease: EaseSettings, table: pd.DataFrame
) -> Iterator[Output[FactorModel]]:
    """The fitted model, or nothing (EASE's downstream assets are then skipped and the run goes
    on with ALS) when the catalogue is too large for EASE."""
    started = time.perf_counter()
    settings = ease.model_dump()
    del settings["max_items"]  # a limit, not part of what makes the model
    card = ModelCard.describe("ease", settings, table)
    try:
        model = fit_ease(table, card, max_items=ease.max_items, **settings)
    except CatalogueTooLargeError as error:
        context.log.warning(f"EASE skipped: {error}")
        return
    yield _trained(model, started, interactions=len(table), items=len(model.item_ids))


@asset(group_name="train", kinds={"numpy"}, output_required=False)
def ease_evaluation_model(
    context: AssetExecutionContext, ease: EaseSettings, train_interactions: pd.DataFrame
) -> Iterator[Output[FactorModel]]:
    """EASE fitted on the training split only; `ease_evaluation` scores it on the test split."""
    yield from _fit_ease(context, ease, train_interactions)


@asset(group_name="train", kinds={"numpy"}, ins={"interactions": AssetIn()}, output_required=False)
def ease_model(
    context: AssetExecutionContext, ease: EaseSettings, interactions: pd.DataFrame
) -> Iterator[Output[FactorModel]]:
    """EASE fitted on every interaction (skipped, with a warning, for too large a catalogue)."""
    yield from _fit_ease(context, ease, interactions)
