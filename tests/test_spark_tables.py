"""The batch flow gives the same on Spark as in pandas (issue #18): the same interactions,
the same three splits, the same cold-start lists, fingerprints, search samples, fitted
models, metrics and published lists, on a real local Spark session, for generated data and
hand-made corner cases (ties in time, unrated and typed events, exact duplicates, one-event
users, unicode ids)."""

import numpy as np
import pandas as pd
import pytest
from dagster import materialize
from dagster_pyspark import LazyPySparkResource

from assets.ingest import raw_events
from assets.prepare import history_by_user, interactions, train_test_split
from reco_dagster.domain.ease import CatalogueTooLargeError
from reco_dagster.domain.evaluation import (
    MODEL,
    evaluate,
    evaluate_on_spark,
    popularity_baseline,
)
from reco_dagster.domain.families import fit_model, item_side
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import INTERACTION_COLUMNS, build_interactions
from reco_dagster.domain.models import data_fingerprint
from reco_dagster.domain.ranking import popular_items
from reco_dagster.domain.spark_tables import (
    exact_lower_quantile,
    spark_data_fingerprint,
    spark_interactions,
    spark_popular_items,
    spark_sample_users,
    spark_split,
)
from reco_dagster.domain.splits import SPLIT_METHODS, sample_users, split_interactions
from reco_dagster.domain.synthetic import synthetic_event_log
from reco_dagster.domain.user_lists import as_published, spark_published_lists, users_lists
from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.ingestion import EventWeights
from resources.lake_io import LakeIOManager
from resources.lake_tables import read_table
from resources.landing_zone import LandingZone
from resources.settings import DataEngine, EvaluationProtocol, spark_config
from tests.conftest import nobody_forgotten

WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0}


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    """Generated events with typed and unrated ones, ties in time, exact duplicates and the
    corner cases by hand."""
    rng = np.random.default_rng(3)
    log = synthetic_event_log(6_000, 150, 300, seed=5)
    log["event_type"] = rng.choice([None, "view", "cart", "purchase", "unknown"], len(log))
    log.loc[rng.random(len(log)) < 0.3, "rating"] = np.nan
    log["timestamp"] = log["timestamp"] // 86_400  # days: many ties in time
    corner = pd.DataFrame(
        {
            "user_id": ["ünï", "ünï", "ünï", "solo", '"quoted"', '"quoted"', "tie", "tie"],
            "item_id": ["é", "é", "b", "x", "a,b", "a,b", "t", "t"],
            "rating": [4.0, 4.0, np.nan, 2.0, 1.0, 5.0, 3.0, 1.0],
            "timestamp": [10, 10, 11, 5, 7, 7, 9, 9],
            "event_type": [None, None, "view", None, None, None, None, None],
        }
    )
    return pd.concat([log, log.head(50), corner], ignore_index=True)


def on_spark(spark, frame: pd.DataFrame):
    return spark.createDataFrame(frame.astype({"timestamp": "int64"}))


def rows(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns].sort_values(["user_id", "item_id"], ignore_index=True)


def test_interactions_are_the_same_on_spark(spark, events):
    expected, expected_duplicates = build_interactions(events, WEIGHTS)
    table, duplicates = spark_interactions(on_spark(spark, events), WEIGHTS)
    got = table.toPandas()
    assert duplicates == expected_duplicates >= 51
    columns = list(INTERACTION_COLUMNS)
    pd.testing.assert_frame_equal(
        rows(got, columns), rows(expected, columns), check_dtype=False, check_exact=False
    )
    # The latest rating; the higher one at the same second.
    tie = got[got["user_id"] == "tie"].iloc[0]
    assert tie["rating"] == 3.0 and tie["events"] == 2


@pytest.mark.parametrize("method", SPLIT_METHODS)
def test_each_split_is_the_same_on_spark(spark, events, method):
    interactions, _ = build_interactions(events, WEIGHTS)
    train, test = split_interactions(interactions, method, 0.75, seed=11)
    spark_train, spark_test = spark_split(on_spark(spark, interactions), method, 0.75, seed=11)
    key = ["user_id", "item_id"]
    assert len(test) > 0
    for expected, got in ((train, spark_train), (test, spark_test)):
        pd.testing.assert_frame_equal(rows(got.toPandas(), key), rows(expected, key))


@pytest.mark.parametrize("half_life_days", [0.0, 30.0])
def test_the_cold_start_lists_are_the_same_on_spark(spark, events, half_life_days):
    interactions, _ = build_interactions(events, WEIGHTS)
    expected = popular_items(interactions, 40, half_life_days)
    got = spark_popular_items(on_spark(spark, interactions), 40, half_life_days).toPandas()
    assert got["item_id"].tolist() == expected["item_id"].tolist()
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-9)


def test_the_temporal_cut_off_is_numpys_lower_quantile_exactly(spark):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 500, 20_000)  # many duplicates
    table = spark.createDataFrame(pd.DataFrame({"t": values}))
    for q in (0.0, 0.1, 0.5, 0.75, 0.999, 1.0):
        expected = np.quantile(values, q, method="lower")
        assert exact_lower_quantile(table, "t", q, band=0.0005) == expected, q


def test_the_prepare_assets_give_the_same_lake_tables_on_either_engine(tmp_path, events):
    """raw_events → history_by_user → interactions → train_test_split (the default protocol;
    each protocol's Spark split is compared above), once on the driver and once on Spark
    (threshold 0): the same tables, the Spark ones in parts."""
    tables = {}
    for engine, spark_from_events in (("pandas", 10**9), ("spark", 0)):
        files = LocalFiles(root=str(tmp_path / engine))
        zone = LandingZone(files=files, settle_s=0)
        for part in range(2):
            zone.land(f"events-{part}.parquet", events.iloc[part::2].to_parquet(index=False))
        result = materialize(
            [raw_events, history_by_user, interactions, train_test_split],
            resources={
                "landing_zone": zone,
                "event_history": EventHistory(files=files),
                "event_weights": EventWeights(weights=WEIGHTS),
                "store": nobody_forgotten(),
                "pyspark": LazyPySparkResource(spark_config=spark_config()),
                "data_engine": DataEngine(spark_from_events=spark_from_events),
                "protocol": EvaluationProtocol(),
                "io_manager": LakeIOManager(files=files),
            },
        )
        [built] = result.asset_materializations_for_node("interactions")
        assert built.metadata["engine"].value == engine
        found = {
            name: read_table(files, f"lake/{name}")
            for name in ("interactions", "train_interactions", "test_interactions")
        }
        assert all(table.on_executors == (engine == "spark") for table in found.values())
        tables[engine] = {name: table.to_pandas() for name, table in found.items()}
    for name, expected in tables["pandas"].items():
        pd.testing.assert_frame_equal(
            rows(tables["spark"][name], list(INTERACTION_COLUMNS)),
            rows(expected, list(INTERACTION_COLUMNS)),
            check_dtype=False,
        )


@pytest.fixture(scope="module")
def both_engines(spark, events):
    """The interactions and the default split of `events`, built by each engine."""
    table, _ = build_interactions(events, WEIGHTS)
    spark_table, _ = spark_interactions(on_spark(spark, events), WEIGHTS)
    spark_table = spark_table.persist()
    return {
        "pandas": (table, *split_interactions(table, "chronological")),
        "spark": (spark_table, *spark_split(spark_table, "chronological")),
    }


EASE_SETTINGS = {
    "l2": 50.0,
    "rating_weighted": True,
    "item_normalization": 0.25,
    "user_normalization": 0.2,
}
ALS_SETTINGS = {
    "rank": 8,
    "max_iter": 4,
    "reg_param": 0.1,
    "alpha": 10.0,
    "implicit_prefs": True,
    "confidence": "rating",
    "popularity_prior": 0.5,
    "seed": 0,
}


def test_a_tables_fingerprint_is_the_same_on_spark(both_engines):
    for pandas_table, spark_table in zip(*both_engines.values(), strict=True):
        fingerprint, rows = spark_data_fingerprint(spark_table)
        assert fingerprint == data_fingerprint(pandas_table)
        assert rows == len(pandas_table)


def test_the_search_samples_the_same_users_on_spark(both_engines):
    train, spark_train = both_engines["pandas"][1], both_engines["spark"][1]
    sample = sample_users(train, 40, seed=3)
    assert sample["user_id"].nunique() == 40
    pd.testing.assert_frame_equal(
        rows(spark_sample_users(spark_train, 40, seed=3), list(INTERACTION_COLUMNS)),
        rows(sample, list(INTERACTION_COLUMNS)),
        check_dtype=False,
    )


def test_models_fitted_on_spark_tables_are_the_models_fitted_on_pandas(spark, both_engines):
    train, spark_train = both_engines["pandas"][1], both_engines["spark"][1]
    ease, spark_ease = (fit_model("ease", EASE_SETTINGS, table) for table in (train, spark_train))
    assert spark_ease.card == ease.card
    assert list(spark_ease.item_ids) == list(ease.item_ids)
    np.testing.assert_allclose(spark_ease.item_factors, ease.item_factors, atol=1e-6)
    with pytest.raises(CatalogueTooLargeError):
        fit_model("ease", EASE_SETTINGS, spark_train, max_items=10)
    als, spark_als = (
        fit_model("als", ALS_SETTINGS, table, spark) for table in (train, spark_train)
    )
    assert spark_als.card == als.card
    for ids in ("user_ids", "item_ids", "item_users"):
        assert list(getattr(spark_als, ids)) == list(getattr(als, ids)), ids


def test_evaluation_on_spark_gives_the_drivers_metrics(spark, both_engines):
    _, train, test = both_engines["pandas"]
    _, spark_train, spark_test = both_engines["spark"]
    model = fit_model("ease", EASE_SETTINGS, train)
    trending = popular_items(train, train["item_id"].nunique(), 7.0)
    found = evaluate_on_spark(model, spark_train, spark_test, {"trending": trending})
    expected = evaluate(fold_in(model, train), train, test)
    assert expected["ndcg_at_10"] > 0
    assert found[MODEL] == pytest.approx(expected, rel=1e-9)
    assert found["trending"] == pytest.approx(popularity_baseline(train, test, 7.0), rel=1e-9)
    explicit = fit_model("als", {**ALS_SETTINGS, "implicit_prefs": False}, train, spark)
    side = item_side(explicit)
    expected = evaluate(fold_in(side, train), train, test)
    assert {"rmse", "mae"} <= expected.keys()
    assert evaluate_on_spark(side, spark_train, spark_test, {})[MODEL] == pytest.approx(
        expected, rel=1e-6
    )


def test_lists_made_on_spark_are_the_lists_made_on_the_driver(both_engines):
    table, spark_table = both_engines["pandas"][0], both_engines["spark"][0]
    model = fit_model("ease", EASE_SETTINGS, table)
    new = ["new-1", "new-2", "new-3"]
    making = {
        "cold_start": popular_items(table, 60),
        "new_items": new,
        "categories": {"new-1": ["a"], "new-2": ["b"]},
        "every": 5,
        "depth": 40,
    }
    ranked = users_lists(model, fold_in(model, table), table, **making)
    expected = as_published(ranked, model.card.version, table)
    got = spark_published_lists(model, spark_table, **making).toPandas()
    order = ["user_id", "rank"]
    expected = expected.sort_values(order, ignore_index=True)
    got = got.sort_values(order, ignore_index=True)[list(expected.columns)]
    assert got["new_item"].any() and got["because"].map(len).gt(0).any()
    got["because"] = got["because"].map(list)
    expected["because"] = expected["because"].map(list)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
