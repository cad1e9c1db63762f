"""Stage 3: settings chosen on validation, then every model family fitted once on the training
split (to be evaluated) and once on every interaction (to be served), with those settings.

- ALS (Spark ML): scales out on any Spark cluster.
- EASE (numpy): closed-form item-item model for catalogues that fit one machine.
"""

import time
from typing import Any

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue, Output, asset
from dagster_pyspark import LazyPySparkResource
from pydantic import Field

from reco_dagster.domain.als import TrainedAls
from reco_dagster.domain.ease import CatalogueTooLargeError
from reco_dagster.domain.evaluation import named, popularity_baseline
from reco_dagster.domain.families import FAMILIES, card_of, fit_model, item_side
from reco_dagster.domain.models import FactorModel
from reco_dagster.domain.search import OBJECTIVE, Search, bar_chart, search_settings
from reco_dagster.domain.spark_tables import spark_sample_users
from reco_dagster.domain.splits import sample_users
from resources.lake_tables import LakeTable
from resources.settings import AlsSettings, EaseSettings, EvaluationProtocol, Serving

TRENDING_GRID_DAYS = (0.0, 7.0, 30.0, 90.0)
"""Cold-start half-lives the search compares (0: the all-time list)."""


class SearchConfig(Config):
    max_trials: dict[str, int] = Field(default_factory=lambda: {"als": 1, "ease": 6})
    """Trials per family (each fit scored with every decay of the grid). A seeded count, not a
    clock, ends the search, so the same data chooses the same settings and so the same
    version. The default keeps MovieLens 100K's whole batch job within a minute on 2 cores
    (an EASE trial, its fit and 21 decays scored, takes about 1.7 s there): ALS keeps its
    validated fit settings and searches the decay."""
    time_budget_s: dict[str, float] = Field(default_factory=lambda: {"als": 120.0, "ease": 60.0})
    """A cap on each family's search, for slow machines; 0 scores the configured settings as
    they are."""
    seed: int = 0
    max_validation_users: int = 10_000
    """Validation users scored per trial (a seeded sample): bounds a trial's scoring cost on
    large data; MovieLens 100K's 943 users are all scored."""
    max_search_users: int = 20_000
    """Users whose training rows the search fits and validates on (a seeded sample, the same
    in either engine): settings are chosen on the driver, whose memory this bounds however
    large the training split; the chosen settings are then fitted on every user."""


def configured_settings(family: str, als: AlsSettings, ease: EaseSettings) -> dict[str, Any]:
    return als.model_dump() if family == "als" else ease.fit_settings()


@asset(group_name="train", kinds={"spark", "optuna"})
def model_search(
    context: AssetExecutionContext,
    config: SearchConfig,
    pyspark: LazyPySparkResource,
    als: AlsSettings,
    ease: EaseSettings,
    protocol: EvaluationProtocol,
    serving: Serving,
    train_interactions: LakeTable,
) -> Output[dict]:
    """Each family's settings (recency half-life included) and the cold-start list's
    half-life, chosen on a validation split carved out of the training split by the same
    protocol as the test split (never the test split itself), on at most
    `max_search_users` users. The validation nDCG@10 also decides which family goes live."""
    searched = _search_sample(train_interactions, config, pyspark)
    folds = protocol.validation_folds(searched)
    chosen: dict[str, Any] = {}
    searches: list[Search] = []
    for family in FAMILIES:

        def fit(settings: dict, fit_part: pd.DataFrame, family: str = family) -> FactorModel:
            spark = pyspark.spark_session if family == "als" else None
            return item_side(fit_model(family, settings, fit_part, spark, ease.max_items))

        try:
            search = search_settings(
                family,
                configured_settings(family, als, ease),
                fit,
                folds,
                config.time_budget_s.get(family, 0.0),
                config.max_trials.get(family, 1),
                config.seed,
                config.max_validation_users,
                split_method=protocol.method,
            )
        except CatalogueTooLargeError as error:
            context.log.warning(f"{family} is no candidate: {error}")
            chosen[family] = {"skipped": str(error)}
            continue
        searches.append(search)
        best = search.best
        context.log.info(
            f"{family}: {len(search.trials)} trial(s) in {search.elapsed_s:.1f} s; best "
            f"validation nDCG@10 {best.metrics['ndcg_at_k']:.4f} with {best.settings}"
        )
        chosen[family] = {
            "settings": best.settings,
            "validation": named(best.metrics),
            "trials": len(search.trials),
        }
    chosen["cold_start"] = _choose_trending(serving, *folds[0])
    return Output(
        chosen,
        metadata={
            "protocol": protocol.method,
            "search_users": searched["user_id"].nunique(),
            "validation_folds": len(folds),
            "validation_rows": len(folds[0][1]),
            **{f"{search.family}_trials": MetadataValue.md(search.table()) for search in searches},
            **{
                f"{search.family}_validation_ndcg_by_trial": MetadataValue.md(search.bar_chart())
                for search in searches
            },
            "validation_ndcg_by_family": MetadataValue.md(
                bar_chart([(found.family, found.best.metrics[OBJECTIVE]) for found in searches])
            ),
            "cold_start_half_life_days": chosen["cold_start"]["half_life_days"],
            "trending_half_life_days": chosen["cold_start"]["trending_half_life_days"],
        },
    )


def _search_sample(
    train: LakeTable, config: SearchConfig, pyspark: LazyPySparkResource
) -> pd.DataFrame:
    if train.on_executors:
        return spark_sample_users(
            train.to_spark(pyspark.spark_session), config.max_search_users, config.seed
        )
    return sample_users(train.to_pandas(), config.max_search_users, config.seed)


def _choose_trending(
    serving: Serving, fit_part: pd.DataFrame, validation: pd.DataFrame
) -> dict[str, Any]:
    """The cold-start half-life: configured, or the one whose list best predicts validation
    (0: the all-time list); and the trending list's (GET /items/trending), which weighs by
    recency whatever the cold start chose: the configured one when positive, else the best
    positive one of the grid."""
    configured = serving.trending_half_life_days
    grid = TRENDING_GRID_DAYS if configured is None else (configured,)
    recent = (configured,) if configured else tuple(h for h in TRENDING_GRID_DAYS if h > 0)
    scored = {
        half_life: popularity_baseline(fit_part, validation, half_life)["ndcg_at_10"]
        for half_life in {*grid, *recent}
    }
    best = max(grid, key=scored.__getitem__)
    return {
        "half_life_days": best,
        "validation_ndcg_at_10": scored[best],
        "trending_half_life_days": max(recent, key=scored.__getitem__),
    }


def _settings_metadata(settings: dict, family: str) -> dict:
    return {f"{family}_{key}": value for key, value in settings.items()}


def _fit(
    context: AssetExecutionContext,
    family: str,
    model_search: dict,
    interactions: LakeTable,
    pyspark: LazyPySparkResource,
    ease: EaseSettings,
) -> Output[TrainedAls | FactorModel]:
    """The family fitted with the searched settings, on the driver or, for a table Spark
    wrote, with its rows on the executors. A family the search could not use (EASE on too
    large a catalogue) yields a model with no items: it recommends nothing, and its
    evaluation says why, so the run goes on with the others."""
    started = time.perf_counter()
    table = interactions.frame(pyspark)
    candidate = model_search[family]
    skipped = candidate.get("skipped")
    if skipped is None:
        spark = pyspark.spark_session if family == "als" else None
        try:
            model = fit_model(family, candidate["settings"], table, spark, ease.max_items)
        except CatalogueTooLargeError as error:  # this table has items the search's had not
            skipped = str(error)
    if skipped is not None:
        context.log.warning(f"{family} skipped: {skipped}")
        card = card_of(family, {"skipped": skipped}, table)
        no_items = np.empty(0, dtype=object)
        empty = FactorModel.item_side_of(card, no_items, np.empty((0, 0), np.float32))
        return Output(empty, metadata={"skipped": skipped})
    return Output(
        model,
        metadata={
            "model_version": model.card.version,
            "data_fingerprint": model.card.data_fingerprint,
            "fit_s": round(time.perf_counter() - started, 2),
            "interactions": model.card.training_rows,
            "engine": "spark" if interactions.on_executors else "pandas",
            **({"spark_master": pyspark.spark_context.master} if family == "als" else {}),
            **_settings_metadata(model.card.settings, family),
        },
    )


def build_training(family: str) -> list:
    kinds = {"spark"} if family == "als" else {"numpy"}

    @asset(name=f"{family}_evaluation_model", group_name="train", kinds=kinds)
    def evaluation_model(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        ease: EaseSettings,
        model_search: dict,
        train_interactions: LakeTable,
    ) -> Output:
        """The family fitted on the training split only; its evaluation scores it on the test
        split."""
        return _fit(context, family, model_search, train_interactions, pyspark, ease)

    @asset(name=f"{family}_model", group_name="train", kinds=kinds)
    def served_model(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        ease: EaseSettings,
        model_search: dict,
        interactions: LakeTable,
    ) -> Output:
        """The family fitted on every interaction: the model whose lists are served."""
        return _fit(context, family, model_search, interactions, pyspark, ease)

    return [evaluation_model, served_model]


training_assets = [asset_def for family in FAMILIES for asset_def in build_training(family)]
