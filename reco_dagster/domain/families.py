"""The model families, fitted by name: what the search, the assets and the champion refit
share."""

from __future__ import annotations

from typing import Any

import pandas as pd

from reco_dagster.domain.als import TrainedAls, fit_als
from reco_dagster.domain.ease import fit_ease, rating_scale
from reco_dagster.domain.models import FactorModel, ModelCard

FAMILIES = ("als", "ease")


def fit_model(
    family: str,
    settings: dict[str, Any],
    table: pd.DataFrame,
    spark: Any = None,
    max_items: int = 5_000,
) -> TrainedAls | FactorModel:
    """`family` fitted on `table` with `settings`. ALS needs a SparkSession; EASE raises
    CatalogueTooLargeError above `max_items` items."""
    if family == "als":
        return fit_als(spark, table, ModelCard.describe("als", settings, table), **settings)
    if family == "ease":
        settings = {**settings, "rating_scale": rating_scale(table["rating"])}
        card = ModelCard.describe("ease", settings, table)
        return fit_ease(table, card, max_items=max_items, **settings)
    raise ValueError(f"unknown model family {family!r}: choose one of {', '.join(FAMILIES)}")


def item_side(model: TrainedAls | FactorModel) -> FactorModel:
    """What fold-in scores users against: the fitted model without user factors."""
    return model.factor_model(users=False) if isinstance(model, TrainedAls) else model
