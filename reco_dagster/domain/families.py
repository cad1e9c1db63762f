"""The model families, fitted by name: what the search, the assets and the champion refit
share."""

from __future__ import annotations

import inspect
from typing import Any

import pandas as pd

from reco_dagster.domain.als import TrainedAls, fit_als
from reco_dagster.domain.ease import fit_ease, rating_scale
from reco_dagster.domain.models import FactorModel, ModelCard
from reco_dagster.domain.spark_tables import spark_data_fingerprint

FIT_FUNCTIONS = {"als": fit_als, "ease": fit_ease}
"""Each family's fit, whose signature's defaults are its settings' defaults."""
FAMILIES = tuple(FIT_FUNCTIONS)


def fit_model(
    family: str,
    settings: dict[str, Any],
    table: Any,
    spark: Any = None,
    max_items: int = 5_000,
) -> TrainedAls | FactorModel:
    """`family` fitted on `table` (a pandas DataFrame, or a Spark one that stays on the
    executors) with `settings`. ALS needs a SparkSession; EASE raises CatalogueTooLargeError
    above `max_items` items."""
    if family == "als":
        return fit_als(spark, table, card_of("als", settings, table), **settings)
    if family == "ease":
        settings = {**settings, "rating_scale": rating_scale(top_rating(table))}
        return fit_ease(table, card_of("ease", settings, table), max_items=max_items, **settings)
    raise ValueError(f"unknown model family {family!r}: choose one of {', '.join(FAMILIES)}")


def fitted_alike(family: str, one: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two settings of `family` fit the same model. A fit setting with a default in
    the fit function's signature (one added after versions were registered without it) counts
    as that default when left out; what the data decides (EASE's rating scale) is not a
    setting."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(FIT_FUNCTIONS[family]).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }

    def fitted(settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in {**defaults, **settings}.items() if k != "rating_scale"}

    return fitted(one) == fitted(other)


def card_of(family: str, settings: dict[str, Any], table: Any) -> ModelCard:
    if isinstance(table, pd.DataFrame):
        return ModelCard.describe(family, settings, table)
    return ModelCard.identified(family, settings, *spark_data_fingerprint(table))


def top_rating(table: Any) -> pd.Series:
    """The ratings `rating_scale` needs: all of them, or on Spark their maximum."""
    if isinstance(table, pd.DataFrame):
        return table["rating"]
    from pyspark.sql import functions as F

    rated = table.filter(~F.isnan("rating"))
    return pd.Series([rated.agg(F.max("rating")).first()[0]], dtype="float64")


def item_side(model: TrainedAls | FactorModel) -> FactorModel:
    """What fold-in scores users against: the fitted model without user factors."""
    return model.factor_model(users=False) if isinstance(model, TrainedAls) else model
