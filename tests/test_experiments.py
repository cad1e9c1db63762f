"""A/B assignment, the served-list log over real HTTP, and the online evaluation asset."""

import json
import time

import httpx
import pandas as pd
import pytest
from dagster import materialize

from api.experiments import Experiment, ServedLog
from assets.evaluate import online_evaluation
from reco_dagster.domain.online import served_hit_rate
from resources.event_history import EventHistory
from resources.files import LocalFiles
from resources.ingestion import EventWeights
from resources.landing_zone import LandingZone
from resources.served_log import ServedListLog
from resources.store import SqliteRecommendationStore
from tests.conftest import land, running_api


def experiment(name="exp", shares=(0.3, 0.7), second="popular") -> Experiment:
    return Experiment.from_json(
        json.dumps(
            {
                "name": name,
                "variants": [
                    {"name": "control", "version": "live", "share": shares[0]},
                    {"name": "treatment", "version": second, "share": shares[1]},
                ],
            }
        )
    )


def test_assignment_is_stable_and_follows_the_split():
    users = [f"user-{n}" for n in range(20_000)]
    first = [experiment().assign(u).name for u in users]
    assert first == [experiment().assign(u).name for u in users]
    assert first.count("treatment") / len(users) == pytest.approx(0.7, abs=0.015)
    other = [experiment(name="another").assign(u).name for u in users]
    agreement = sum(a == b for a, b in zip(first, other, strict=True)) / len(users)
    assert agreement == pytest.approx(0.3 * 0.3 + 0.7 * 0.7, abs=0.02)  # independent


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"name": "x", "variants": [{"name": "a", "version": "live", "share": 1.0}]},
            "two or more",
        ),
        (
            {
                "name": "x",
                "variants": [
                    {"name": "a", "version": "live", "share": 0.5},
                    {"name": "b", "version": "popular", "share": 0.6},
                ],
            },
            "sum to 1",
        ),
        ({"name": "", "variants": []}, "needs a name"),
    ],
)
def test_bad_experiments_are_refused_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        Experiment.from_json(json.dumps(config))


def test_hit_rate_counts_later_interactions_within_the_window():
    served = pd.DataFrame(
        {
            "time": [100.0, 100.0, 100.0, 500.0],
            "user_id": ["a", "b", "c", "a"],
            "variant": ["control", "control", "treatment", None],
            "version": ["v1", "v1", "v1", "v2"],
            "items": [["x", "y"], ["x"], ["z"], ["y"]],
        }
    )
    events = pd.DataFrame(
        {
            "user_id": ["a", "b", "c", "a"],
            "item_id": ["y", "x", "z", "y"],
            "timestamp": [150, 50, 10_000, 600],  # a: hit; b: before serving; c: too late
        }
    )
    summary = served_hit_rate(served, events, window_s=1_000).set_index(["variant", "version"])
    assert summary.loc[("control", "v1"), "lists_served"] == 2
    assert summary.loc[("control", "v1"), "hit_rate"] == 0.5
    assert summary.loc[("treatment", "v1"), "hit_rate"] == 0.0
    assert summary.loc[("none", "v2"), "hit_rate"] == 1.0


def test_the_api_names_variants_logs_served_lists_and_the_asset_scores_them(data_dir):
    store = SqliteRecommendationStore(path=str(data_dir / "reco.sqlite"))
    users = [f"u{n}" for n in range(40)]
    store.register("v1", {"family": "als"})
    store.write_version(
        "v1",
        [(u, [{"item_id": "i1", "score": 1.0}]) for u in users],
        [{"item_id": "i9", "score": 5.0}],
    )
    store.activate("v1")
    test = experiment()
    with running_api(
        data_dir,
        RECO_AB_TEST=json.dumps(
            {
                "name": "exp",
                "variants": [
                    {"name": "control", "version": "live", "share": 0.3},
                    {"name": "treatment", "version": "popular", "share": 0.7},
                ],
            }
        ),
    ) as url:
        for user in users:
            body = httpx.get(f"{url}/users/{user}/recommendations").json()
            expected = test.assign(user).name
            assert body["variant"] == expected
            assert body["items"][0]["item_id"] == ("i1" if expected == "control" else "i9")
        time.sleep(1.5)  # the log is written once a second
    files = LocalFiles(root=str(data_dir))
    served_log = ServedListLog(files=files)
    served = pd.concat(served_log.served_lists())
    assert len(served) == len(users) and set(served["version"]) == {"v1"}
    land(
        data_dir,
        "later.csv",
        pd.DataFrame({"user_id": users, "item_id": "i1", "timestamp": int(time.time()) + 60}),
    )
    from dagster_pyspark import LazyPySparkResource

    from assets.ingest import raw_events
    from resources.settings import DataEngine, spark_config

    resources = {
        "landing_zone": LandingZone(files=files),
        "event_history": EventHistory(files=files),
        "event_weights": EventWeights(),
        "served_log": served_log,
        "store": store,
        "data_engine": DataEngine(spark_from_events=10**9),
        "pyspark": LazyPySparkResource(spark_config=spark_config()),
    }
    result = materialize([raw_events, online_evaluation], resources=resources)
    summary = result.output_for_node("online_evaluation").set_index("variant")
    assert summary.loc["control", "hit_rate"] == 1.0  # they were shown i1 and took it
    assert summary.loc["treatment", "hit_rate"] == 0.0


def test_a_failed_flush_puts_back_every_record_that_fits(tmp_path):
    blocker = tmp_path / "served"
    blocker.write_text("a file where the log's folder should be\n")
    log = ServedLog(blocker, capacity=50)
    for n in range(30):
        log.record(f"u{n}", None, "v1", ["i1"])
    log.flush()  # cannot create the folder: the records wait for the next flush
    assert [record[1] for record in log.pending] == [f"u{n}" for n in range(30)]
