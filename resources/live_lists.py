"""Some users' lists in the live version, refreshed from their whole history: what the
micro-batch does for users with new events, and what a switch does for the users whose
events arrived after the new version's data snapshot (else the switch would serve lists
built without them)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
from threadpoolctl import threadpool_limits

from reco_dagster.domain.exposure import NEW_ITEMS
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.interactions import build_interactions, history_events
from reco_dagster.domain.lists import ranked_lists, titles_by_item
from reco_dagster.domain.models import FactorModel
from reco_dagster.domain.user_lists import personal_users, users_lists
from resources.deployment import new_item_exposure, published_depth
from resources.event_history import EventHistory
from resources.landing_zone import LandingZone
from resources.model_archive import ModelArchive
from resources.store import RecommendationStore


class LiveVersionChangedError(RuntimeError):
    """The live version changed twice while users were being refreshed."""


COUNTS = (
    "users_refreshed",
    "users_without_known_items",
    "events_applied",
    "unknown_item_events",
    "first_time_users",
)
"""What a refresh counts (`Refresh.counts`)."""


@dataclass
class Refresh:
    version: str | None
    """The version the lists went into; None while nothing is live."""
    counts: dict[str, int] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)


def refresh_live_users(
    landing_zone: LandingZone,
    event_history: EventHistory,
    store: RecommendationStore,
    archive: ModelArchive,
    new_events: pd.DataFrame,
    weights: Mapping[str, float],
    warn: Callable[[str], None],
) -> Refresh:
    """Fold the users of `new_events` into the live version from their whole event history
    (typed events weighed by `weights`, as the batch job's interactions weigh them),
    rank their unseen items as the batch job does, and write their lists into the live
    version, each user atomically. A switch during the work is noticed at the write (the
    store writes only into the version that is still live) and the users are scored again
    against the new version."""
    refresh, clock = Refresh(None), time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        refresh.stages_ms[f"{stage}_ms"] = round(1000 * (now - clock), 1)
        clock = now

    # Forgotten users are refreshed no more (and their erasure may still be to come).
    forgotten = store.forgotten()
    new_events = new_events[~forgotten.mask(new_events["user_id"].astype("string")).to_numpy()]
    if new_events.empty:
        return Refresh(store.live_version(), dict.fromkeys(COUNTS, 0))
    events = event_history.user_history(new_events["user_id"].unique())
    history, _ = build_interactions(events, weights)
    # What the lists are ranked from: a concurrent refresh that read more of a user's events
    # keeps its list (the store compares these marks).
    marks = history_events(history)
    catalog, _ = landing_zone.item_catalog()
    titles = titles_by_item(catalog)
    categories = dict(zip(catalog["item_id"], catalog["categories"], strict=True))
    lap("read_history")
    for _ in range(2):
        version = store.live_version()
        if version is None:
            return refresh
        model = archive.load(version)
        lap("load_model")
        # Many small matrices: BLAS threads only fight the API for the same cores.
        with threadpool_limits(limits=1):
            ranked, counts = _rerank(
                model,
                history,
                new_events,
                _cold_start(store, version),
                _new_items(store, version),
                categories,
            )
        lap("fold_in_and_rank")
        user_lists = list(ranked_lists(ranked, "user_id", titles))
        if store.update_live_users(version, user_lists, marks):
            lap("write")
            refresh.version = version
            refresh.counts = {**counts, "first_time_users": _first_time_users(events, new_events)}
            return refresh
        warn(f"{version} stopped being live while its users were refreshed; scoring again")
    raise LiveVersionChangedError("the live version changed twice during one refresh")


def fold_in_unlisted_files(
    landing_zone: LandingZone,
    event_history: EventHistory,
    store: RecommendationStore,
    archive: ModelArchive,
    weights: Mapping[str, float],
    warn: Callable[[str], None],
) -> Refresh:
    """Bring the live version's lists up to every ingested event: fold in the users of each
    file ingested after the data snapshot the live version was trained on whose lists were
    not written into it. Those are the files that landed after a retrain's snapshot (their
    micro-batches wrote into the version live then), files a retrain ingested when its gate
    kept the old version live, and files ingested while nothing was live. Run after every
    switch (and every gate that kept the live version): together with the micro-batches,
    which write only into the version live at their write, no order loses an event."""
    version = store.live_version()
    if version is None:
        return Refresh(None)
    since = archive.data_snapshot_at(version) or store.version(version).created_at
    unlisted = event_history.files_not_listed_in(version, since)
    events = event_history.events_of(unlisted)
    if events.empty:
        event_history.record_lists(unlisted, version)
        return Refresh(version, {"users_refreshed": 0})
    refresh = refresh_live_users(landing_zone, event_history, store, archive, events, weights, warn)
    event_history.record_lists(unlisted, refresh.version)
    return refresh


def _first_time_users(history: pd.DataFrame, new_events: pd.DataFrame) -> int:
    """Users all of whose events are these new ones."""
    ever = history["user_id"].value_counts()
    now = new_events["user_id"].value_counts()
    return int((ever.reindex(now.index) == now).sum())


def _cold_start(store: RecommendationStore, version: str) -> pd.DataFrame:
    """The version's cold-start list, which continues lists that run short."""
    found = store.lookup("", None, version=version, popular_only=True)
    return pd.DataFrame(found.items if found else [], columns=["item_id", "score"])


def _new_items(store: RecommendationStore, version: str) -> list[str]:
    """What the version's exposure positions offer (the batch job chose them)."""
    found = store.item_list(NEW_ITEMS)
    if found is None or found[0] != version or found[1] is None:
        return []
    return [item["item_id"] for item in found[1]]


def _rerank(
    model: FactorModel,
    history: pd.DataFrame,
    new_events: pd.DataFrame,
    cold_start: pd.DataFrame,
    new_items: list[str],
    categories: Mapping[str, Sequence[str]],
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Fold the users of `history` (interactions) into `model` and rank their unseen items,
    give new items their positions and name each item's reasons, exactly as the batch job
    ranks a user with that history."""
    refolded = fold_in(model, history)
    personal = personal_users(model, history)
    ranked = users_lists(
        model,
        refolded,
        history,
        cold_start,
        new_items,
        categories,
        new_item_exposure()[0],
        published_depth(),
    )
    known_items = new_events["item_id"].isin(model.item_ids)
    return ranked, {
        "users_refreshed": len(personal),
        "users_without_known_items": len(refolded.user_ids) - len(personal),
        "events_applied": int(known_items.sum()),
        "unknown_item_events": int((~known_items).sum()),
    }
