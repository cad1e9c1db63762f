"""A set of users' published lists, made the same way wherever they are made: the batch job
on the driver or on Spark's executors (a few users at a time), and the micro-batch."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from reco_dagster.domain.explain import explain_lists
from reco_dagster.domain.exposure import expose_new_items
from reco_dagster.domain.foldin import fold_in, history_weights
from reco_dagster.domain.interactions import history_events
from reco_dagster.domain.models import FactorModel, Scorer
from reco_dagster.domain.ranking import fill_short_lists
from reco_dagster.domain.spark_tables import UserBatches, map_user_batches, partitions_for


def personal_users(item_side: FactorModel, history: pd.DataFrame) -> pd.Index:
    """The users of `history` with at least one item the model knows: those it can rank (an
    ALS popularity prior makes every folded-in vector non-zero, so the vector cannot tell)."""
    known = history["item_id"].isin(item_side.item_ids).groupby(history["user_id"]).any()
    return known.index[known.to_numpy()]


def users_lists(
    item_side: FactorModel,
    scorer: Scorer,
    history: pd.DataFrame,
    cold_start: pd.DataFrame,
    new_items: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    every: int,
    depth: int,
) -> pd.DataFrame:
    """The lists of the users of `history` (interactions: every row of each of them) that
    the model can rank: their best unseen items by `scorer`, continued from the cold-start
    list when short, new items at their positions (`domain.exposure`), and the history items
    that explain each one (`because`)."""
    ranked = scorer.recommend(seen=history, k=depth)
    ranked = ranked[ranked["user_id"].isin(personal_users(item_side, history))]
    ranked = fill_short_lists(ranked, cold_start, history, depth)
    card = item_side.card
    ranked = expose_new_items(
        ranked,
        history,
        history_weights(history, card.family, card.settings),
        new_items,
        categories,
        every,
        card.version,
        depth,
    )
    ranked["because"] = explain_lists(item_side, history, ranked)
    return ranked


def as_published(ranked: pd.DataFrame, version: str, history: pd.DataFrame) -> pd.DataFrame:
    """`users_lists` as the batch job stores them (PUBLISHED_LIST_SCHEMA): with the model
    version and each user's `history_events`, the freshness mark of a list ranked from them."""
    return ranked.assign(
        model_version=version, history_events=ranked["user_id"].map(history_events(history))
    )


PUBLISHED_LIST_SCHEMA = (
    "user_id string, item_id string, rank smallint, score double, new_item boolean, "
    "because array<string>, model_version string, history_events long"
)
PUBLISHED_COLUMNS = [field.split()[0] for field in PUBLISHED_LIST_SCHEMA.split(", ")]
USERS_PER_PART = 5_000
"""Users per partition of the lists Spark makes: a part of their lists (300 items each) is
what a writer of the store holds at a time."""


def spark_published_lists(
    item_side: FactorModel,
    history: Any,
    cold_start: pd.DataFrame,
    new_items: Sequence[str],
    categories: Mapping[str, Sequence[str]],
    every: int,
    depth: int,
) -> Any:
    """The published lists (`users_lists`, `as_published`) of every user of `history` (a
    Spark DataFrame of interactions), made on Spark's executors a few users at a time, each
    user folded in from their history: a Spark DataFrame whose partitions hold whole users."""

    spark = history.sparkSession
    # Broadcast: sent to each executor once, not with every task.
    shared = spark.sparkContext.broadcast(item_side)

    def lists(batches: UserBatches) -> Iterator[pd.DataFrame]:
        model = shared.value
        for batch in batches:
            users = batch["history"]
            ranked = users_lists(
                model,
                fold_in(model, users),
                users,
                cold_start,
                new_items,
                categories,
                every,
                depth,
            )
            yield as_published(ranked, model.card.version, users)

    users = history.select("user_id").distinct().count()
    partitions = partitions_for(users, USERS_PER_PART, spark)
    return map_user_batches({"history": history}, lists, PUBLISHED_LIST_SCHEMA, partitions)
