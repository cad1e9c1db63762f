"""Scoring on Spark's executors gives the driver's answers: the same top-k, seen items
excluded, the same predictions; for a freshly fitted model and for a saved one."""

import numpy as np
import pandas as pd
import pytest

from reco_dagster.domain import families
from reco_dagster.domain.als import fit_als, load_als_factors, load_als_on_spark
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.models import ModelCard
from reco_dagster.domain.ranking import top_k_items
from reco_dagster.domain.spark_scoring import SparkFoldIn, spark_top_k
from reco_dagster.domain.splits import stratified_random_split
from reco_dagster.domain.synthetic import synthetic_events


def test_executor_scoring_matches_the_driver_and_excludes_seen_items(spark):
    rng = np.random.default_rng(4)
    users, items, rank, k = 300, 80, 6, 10
    user_factors = rng.normal(size=(users, rank)).astype(np.float32)
    item_factors = rng.normal(size=(items, rank)).astype(np.float32)
    seen_rows = rng.integers(0, users, 2000)
    seen_cols = rng.integers(0, items, 2000)
    # Spark's user ids need not be 0..n-1: shift them.
    user_ids = np.arange(users) * 3 + 1
    seen = pd.DataFrame({"user": user_ids[seen_rows], "item": seen_cols}).astype("int32")
    frame = pd.DataFrame({"id": user_ids.astype(np.int32), "features": list(user_factors)})

    ranked = spark_top_k(
        spark,
        spark.createDataFrame(frame, "id int, features array<float>").repartition(3),
        item_factors,
        spark.createDataFrame(seen),
        k,
    ).toPandas()

    best, scores = top_k_items(user_factors, item_factors, seen_rows, seen_cols, k)
    expected = pd.DataFrame(
        {
            "user": np.repeat(user_ids, k),
            "item": best.ravel(),
            "rank": np.tile(np.arange(1, k + 1), users),
        }
    )
    got = ranked.sort_values(["user", "rank"]).reset_index(drop=True)
    assert got[["user", "item", "rank"]].astype("int64").equals(expected.astype("int64"))
    assert np.allclose(got["score"], scores.ravel(), atol=1e-5)
    assert not set(zip(got["user"], got["item"], strict=True)) & set(
        zip(seen["user"], seen["item"], strict=True)
    )


SETTINGS = {
    "rank": 6,
    "max_iter": 4,
    "reg_param": 0.1,
    "alpha": 10.0,
    "confidence": "rating",
    "seed": 3,
}


@pytest.mark.parametrize(
    "feedback",
    [
        {"implicit_prefs": True, "popularity_prior": 0.3},
        {"implicit_prefs": False, "popularity_prior": 0.0},
    ],
    ids=["implicit-with-popularity-prior", "explicit"],
)
def test_a_model_ranked_on_spark_answers_as_on_the_driver(spark, tmp_path, feedback):
    interactions = build_interactions(synthetic_events(120, 60, 12, seed=8))[0]
    train, test = stratified_random_split(interactions, 0.7, seed=1)
    # A user and an item with no training rows leave gaps in the indices: ids must line up.
    train = train[(train["user_id"] != "u7") & (train["item_id"] != "i5")]
    assert {"u7", "i5"} <= set(test["user_id"]) | set(test["item_id"])
    settings = SETTINGS | feedback
    trained = fit_als(spark, train, ModelCard.describe("als", settings, train), **settings)
    trained.save(tmp_path)
    on_driver = load_als_factors(tmp_path)
    pairs = pd.concat([test, pd.DataFrame({"user_id": ["stranger", "u1"], "item_id": ["i1", "?"]})])
    expected_ranked = on_driver.recommend(train, k=8)
    expected_predicted = on_driver.predict(pairs["user_id"], pairs["item_id"])
    assert np.isnan(expected_predicted[-2:]).all()

    for on_spark in (trained.on_spark(spark), load_als_on_spark(spark, tmp_path)):
        ranked = on_spark.recommend(train, k=8)
        assert on_spark.card == on_driver.card
        pd.testing.assert_frame_equal(
            ranked.drop(columns="score"), expected_ranked.drop(columns="score")
        )
        assert np.allclose(ranked["score"], expected_ranked["score"], atol=1e-5)
        assert ranked.merge(train, on=["user_id", "item_id"]).empty
        predicted = on_spark.predict(pairs["user_id"], pairs["item_id"])
        assert np.allclose(predicted, expected_predicted, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("family", ["als", "ease"])
def test_users_folded_in_on_the_executors_get_the_drivers_lists(spark, family):
    """Decayed histories folded in and ranked on Spark equal the driver's fold-in, also when
    a user's rows straddle Arrow batches (three rows a batch here)."""
    interactions, _ = build_interactions(synthetic_events(60, 50, 12, seed=8))
    decay = {"half_life_events": 2.0, "half_life_days": 0.0, "recency_floor": 0.03}
    if family == "als":
        settings = {**SETTINGS, "implicit_prefs": True, "popularity_prior": 0.05, **decay}
    else:
        settings = {"l2": 20.0, "rating_weighted": True, "item_normalization": 0.1, **decay}
    item_side = families.item_side(families.fit_model(family, settings, interactions, spark))
    on_driver = fold_in(item_side, interactions).recommend(seen=interactions, k=7)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "3")
    try:
        on_spark = SparkFoldIn(spark, item_side).recommend(seen=interactions, k=7)
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    pd.testing.assert_frame_equal(
        on_spark[["user_id", "item_id", "rank"]],
        on_driver[["user_id", "item_id", "rank"]],
        check_dtype=False,
    )
    assert np.allclose(on_spark["score"], on_driver["score"], atol=1e-5)
