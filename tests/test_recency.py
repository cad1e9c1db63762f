"""Evaluation protocols, recency weights and the search's choices, on hand-made and generated
data (no Spark: the search runs EASE, whose fit is a matrix inverse)."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from assets.live import champion_on_split
from reco_dagster.domain import search
from reco_dagster.domain.evaluation import evaluate
from reco_dagster.domain.families import fit_model
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions
from reco_dagster.domain.recency import DAY_S, recency_weights
from reco_dagster.domain.search import search_settings
from reco_dagster.domain.splits import SplitMethod, split_interactions
from resources.files import LocalFiles
from resources.lake_tables import read_table
from resources.settings import EaseSettings
from resources.store import SqliteRecommendationStore

EASE = {
    "l2": 50.0,
    "rating_weighted": False,
    "item_normalization": 0.0,
    "user_normalization": 0.0,
    "half_life_events": 0.0,
    "half_life_days": 0.0,
    "recency_floor": 0.0,
}


def table(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(rating=np.nan)
    return build_interactions(events)[0]


HAND_MADE = table(
    [
        ("a", "x", 10), ("a", "y", 20), ("a", "z", 20), ("a", "w", 40),  # a tie in time
        ("b", "x", 15),  # one event
        ("c", "y", 5), ("c", "x", 30), ("c", "w", 35), ("c", "v", 50),
    ]
)  # fmt: skip


def pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["user_id"], frame["item_id"], strict=True))


def test_chronological_split_tests_each_users_latest_and_keeps_single_events_in_training():
    train, test = split_interactions(HAND_MADE, "chronological", 0.75)
    assert pairs(test) == {("a", "w"), ("c", "v")}
    assert ("b", "x") in pairs(train) and len(train) + len(test) == len(HAND_MADE)
    # d's last two events tie in time across the 3-of-4 boundary: the item id decides.
    tied = table([("d", "m", 1), ("d", "n", 2), ("d", "q", 3), ("d", "p", 3)])
    for seed in range(4):
        shuffled = tied.sample(frac=1.0, random_state=seed)
        _, tested = split_interactions(shuffled, "chronological", 0.75)
        assert pairs(tested) == {("d", "q")}, "ties in time must not make the split random"


def test_temporal_split_cuts_everyone_at_one_time_and_tests_known_users_and_items_only():
    train, test = split_interactions(HAND_MADE, "temporal", 0.75)
    cut_off = train["timestamp"].max()
    assert cut_off == 35 and (test["timestamp"] > cut_off).all()
    # (a, w) at 40 is later, known user and item; (c, v) at 50 names an item nobody trained on.
    assert pairs(test) == {("a", "w")}


def test_stratified_split_is_random_per_user_but_seeded():
    train, _ = split_interactions(HAND_MADE, "stratified", 0.75, seed=1)
    assert train.groupby("user_id").size().to_dict() == {"a": 3, "b": 1, "c": 3}
    again, _ = split_interactions(HAND_MADE, "stratified", 0.75, seed=1)
    assert pairs(again) == pairs(train)
    with pytest.raises(ValueError, match="unknown split method"):
        split_interactions(HAND_MADE, "random")


def test_recency_weights_halve_per_half_life_of_later_events_and_of_age():
    users = pd.Series(["u", "u", "u", "u", "v"])
    times = pd.Series([10.0, 20.0, 20.0, 30.0, 99.0])
    # Events after each: 3, 1, 1, 0 (the two at 20 share a position); v's only event: 0.
    by_position = recency_weights(users, times, half_life_events=1.0, half_life_days=0.0)
    assert by_position == pytest.approx([0.125, 0.5, 0.5, 1.0, 1.0])
    floored = recency_weights(users, times, 1.0, 0.0, floor=0.2)
    assert floored == pytest.approx([0.2 + 0.8 * 0.125, 0.6, 0.6, 1.0, 1.0])
    days = pd.Series([0.0, DAY_S, 2 * DAY_S, 2 * DAY_S, 5.0])
    by_age = recency_weights(users, days, 0.0, half_life_days=1.0)
    assert by_age == pytest.approx([0.25, 0.5, 1.0, 1.0, 1.0])
    assert recency_weights(users, times, 0.0, 0.0) == pytest.approx(np.ones(5))


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 5).map(float)), min_size=1, max_size=30
    ),
    st.sampled_from([0.0, 0.5, 2.0]),
    st.sampled_from([0.0, 1.0]),
)
def test_recency_weights_match_their_definition_on_any_history(events, per_event, per_day):
    """Interleaved users, ties and any order: each event's weight is that of its rank among
    the user's events from the latest (ties share the lowest), and of its age."""
    users = pd.Series([user for user, _ in events])
    times = pd.Series([at * DAY_S for _, at in events])
    later = times.groupby(users).rank(method="min", ascending=False) - 1
    age_days = (times.groupby(users).transform("max") - times) / DAY_S
    expected = np.ones(len(events))
    if per_event:
        expected *= 0.5 ** (later / per_event)
    if per_day:
        expected *= 0.5 ** (age_days / per_day)
    assert recency_weights(users, times, per_event, per_day) == pytest.approx(expected)


def drifting_events(shuffle_time: bool, users: int = 300, seed: int = 0) -> pd.DataFrame:
    """Each user walks through a ring of 12 item groups, five events in a group before the
    next, so what they do next follows what they did last; with `shuffle_time` the same
    events in random order, so nothing in time predicts anything."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        start = rng.integers(12)
        picks = [f"g{(start + step // 5) % 12}-{rng.integers(8)}" for step in range(20)]
        times = rng.permutation(20) if shuffle_time else np.arange(20)
        rows += [(f"u{user}", item, int(t)) for item, t in zip(picks, times, strict=True)]
    return table(rows)


@pytest.mark.parametrize("shuffle_time", [False, True], ids=["drifting", "no-time-structure"])
def test_the_search_chooses_a_short_half_life_only_where_users_drift(shuffle_time):
    interactions = drifting_events(shuffle_time)
    train, _ = split_interactions(interactions, "chronological")
    fit_part, validation = split_interactions(train, "chronological", seed=43)
    search = search_settings(
        "ease",
        EASE,
        lambda settings, part: fit_model("ease", settings, part),
        [(fit_part, validation)],
        time_budget_s=30.0,
        max_trials=3,
        split_method="chronological",
    )
    half_life = search.best.settings["half_life_events"]
    if shuffle_time:
        assert half_life == 0.0, f"recency chosen without time structure: {search.best.settings}"
    else:
        assert 0 < half_life <= 5, search.best.settings


def test_the_champion_is_scored_on_the_challengers_split_not_its_own_old_one(tmp_path):
    """The live version's settings are refitted on this run's training split and scored on
    its test split; a challenger with the same settings lends its metrics instead, also when
    the live version was registered before a setting existed and the challenger has its
    default."""
    interactions = drifting_events(shuffle_time=False, users=120)
    train, test = split_interactions(interactions, "chronological")
    store = SqliteRecommendationStore(path=str(tmp_path / "reco.sqlite"))
    before_user_normalization = {k: v for k, v in EASE.items() if k != "user_normalization"}
    live_settings = {**before_user_normalization, "l2": 80.0, "half_life_events": 2.0}
    stale = {"precision_at_10": 0.99, "recall_at_10": 0.99, "ndcg_at_10": 0.99, "map_at_10": 0.9}
    store.register("ease-live", {"family": "ease", "settings": live_settings, "metrics": stale})
    store.write_version("ease-live", [("u0", [{"item_id": "g0-0", "score": 1.0}])], [])
    store.activate("ease-live")
    ease = EaseSettings()
    challenger = {"family": "ease", "settings": {**EASE, "l2": 500.0}, "metrics": {"x": 1.0}}
    files = LocalFiles(root=str(tmp_path / "data"))
    for name, table in (("train", train), ("test", test)):
        files.write(f"lake/{name}.parquet", table.to_parquet(index=False))
    lake = {name: read_table(files, f"lake/{name}") for name in ("train", "test")}

    champion = champion_on_split(None, ease, store, {"ease": challenger}, *lake.values())
    refitted = fit_model("ease", live_settings, train)
    assert champion["version"] == "ease-live"
    assert champion["metrics"] == evaluate(fold_in(refitted, train), train, test) != stale

    with_default = {**live_settings, "user_normalization": 0.0, "rating_scale": 1.0}
    alike = {**challenger, "settings": with_default}
    reused = champion_on_split(None, ease, store, {"ease": alike}, *lake.values())
    assert reused["metrics"] == {"x": 1.0}


def test_the_search_scores_a_seeded_sample_of_validation_users_on_large_data():
    interactions = drifting_events(shuffle_time=False, users=120)
    fit_part, validation = split_interactions(interactions, "chronological")
    history, sampled = search._sampled(fit_part, validation, max_users=40, seed=3)
    assert sampled["user_id"].nunique() == 40
    assert set(history["user_id"]) == set(sampled["user_id"])
    again, _ = search._sampled(fit_part, validation, max_users=40, seed=3)
    assert again.equals(history)
    found = search_settings(
        "ease",
        EASE,
        lambda settings, part: fit_model("ease", settings, part),
        [(fit_part, validation)],
        time_budget_s=0.0,
        max_trials=1,
        max_validation_users=40,
        split_method="chronological",
    )
    assert 0 < found.best.metrics["ndcg_at_k"] <= 1


def six_of_eight_rows() -> search.Fold:
    """A fit part holding 6 of a table's 8 rows, and its validation."""
    rows = [("u1", f"i{n}", n) for n in range(6)] + [("u2", f"i{n}", n) for n in range(2)]
    whole = table(rows)
    return whole[whole["timestamp"] < 4], whole[whole["timestamp"] >= 4]


def fitted_and_reported(
    family: str, configured: dict, setting: str, split_method: SplitMethod
) -> tuple[float, float]:
    """One search trial of `configured` on `six_of_eight_rows`: the value of `setting` the
    fit part was fitted with, and the one the search reports."""
    fitted_with: list[float] = []

    def fit(settings: dict, part: pd.DataFrame):
        fitted_with.append(settings[setting])
        # An EASE fit stands in for ALS's: only the settings it was handed are checked.
        return fit_model("ease", settings if family == "ease" else EASE, part)

    no_decay = {"half_life_events": 0.0, "recency_floor": 0.0}
    found = search_settings(
        family,
        {**configured, **no_decay},
        fit,
        [six_of_eight_rows()],
        0.0,
        1,
        split_method=split_method,
    )
    (fitted,) = fitted_with
    return fitted, found.best.settings[setting]


def test_the_search_fits_als_parts_with_the_regularization_the_whole_table_will_get():
    """Spark's implicit ALS regularizes a user by reg_param times their interactions: a fit
    part with 6 of a table's 8 rows is fitted with reg_param · 8/6, and the search reports
    the reg_param meant for the whole table."""
    als = {"reg_param": 0.6, "alpha": 10.0, "implicit_prefs": True}
    fold = six_of_eight_rows()
    sized = search.sized_for_fit_part("als", als, fold, "chronological")
    assert sized == {**als, "reg_param": pytest.approx(0.8)}
    explicit = {**als, "implicit_prefs": False}
    assert search.sized_for_fit_part("als", explicit, fold, "stratified") == explicit
    fitted = fitted_and_reported("als", als, "reg_param", "chronological")
    assert fitted == (pytest.approx(0.8), 0.6)


@pytest.mark.parametrize(
    ("split_method", "fold_l2"),
    [("stratified", 81.07), ("chronological", 50.0), ("temporal", 50.0)],
)
def test_the_search_fits_ease_on_randomly_thinned_histories_with_a_larger_l2(split_method, fold_l2):
    """A fit part keeps 6 of a table's 8 rows. Carved by the stratified protocol (rows
    dropped at random), with item normalization 0.3 and user normalization 0.1, it is fitted
    with l2 · (8/6)^(1 + 0.2 + 0.6 · 0.8) = 50 · 1.6214; carved by time, with l2 as it is.
    The search reports the l2 meant for the whole table."""
    ease = {**EASE, "item_normalization": 0.3, "user_normalization": 0.1}
    fitted = fitted_and_reported("ease", ease, "l2", split_method)
    assert fitted == (pytest.approx(fold_l2, abs=0.01), 50.0)
