"""Stage 5: the cold-start list, every user's ranked list, and the atomic publish to the store."""

import time

import pandas as pd
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, Output, asset

from assets.evaluate import model_evaluation
from reco_dagster.domain.als import FactorModel
from reco_dagster.domain.ranking import popular_items as most_popular
from resources.store import Item, RecommendationStore

PUBLISHED_DEPTH = 100
"""Items stored per user: the API serves any k up to this without touching the model."""


@asset(group_name="publish", kinds={"pandas"})
def popular_items(interactions: pd.DataFrame) -> Output[pd.DataFrame]:
    """The list served to users the model does not know yet."""
    popular = most_popular(interactions, PUBLISHED_DEPTH)
    return Output(popular, metadata={"dagster/row_count": len(popular)})


@asset(group_name="publish", kinds={"pandas"})
def user_recommendations(
    als_model: FactorModel, interactions: pd.DataFrame
) -> Output[pd.DataFrame]:
    """Every known user's best unseen items, ranked from all of their history."""
    started = time.perf_counter()
    ranked = als_model.recommend(seen=interactions, k=PUBLISHED_DEPTH).assign(
        model_version=als_model.version
    )
    return Output(
        ranked,
        metadata={
            "dagster/row_count": len(ranked),
            "users": ranked["user_id"].nunique(),
            "model_version": als_model.version,
            "scoring_s": round(time.perf_counter() - started, 3),
        },
    )


class PublishConfig(Config):
    keep_retired_versions: int = 2
    """Retired versions whose lists stay in the store for a quick rollback."""


@asset(group_name="publish", deps=[model_evaluation], kinds={"sqlite"})
def published_recommendations(
    context: AssetExecutionContext,
    config: PublishConfig,
    store: RecommendationStore,
    user_recommendations: pd.DataFrame,
    popular_items: pd.DataFrame,
    item_catalog: pd.DataFrame,
    model_evaluation: dict,
) -> MaterializeResult:
    """Writes the new version beside the live one, then makes it live in one switch."""
    version = str(user_recommendations["model_version"].iloc[0])
    previous = store.live_version()
    titles = dict(zip(item_catalog["item_id"], item_catalog["title"], strict=True))
    started = time.perf_counter()
    written = store.write_version(
        version,
        _user_lists(user_recommendations, titles),
        _items(popular_items, titles),
        info={"evaluation": model_evaluation},
    )
    write_s = time.perf_counter() - started
    store.activate(version)
    purged = store.purge_retired(config.keep_retired_versions)
    context.log.info(f"Model version {version} is live (was {previous}); {written} users")
    return MaterializeResult(
        metadata={
            "model_version": version,
            "previous_version": previous or "none",
            "users_published": written,
            "write_s": round(write_s, 3),
            "users_per_s": round(written / max(write_s, 1e-9)),
            "purged_versions": ", ".join(purged) or "none",
            "preview": MetadataValue.md(_preview(user_recommendations, titles)),
        }
    )


def _items(ranked: pd.DataFrame, titles: dict[str, str]) -> list[Item]:
    items: list[Item] = []
    for item_id, score in zip(ranked["item_id"], ranked["score"], strict=True):
        item: Item = {"item_id": item_id, "score": round(float(score), 5)}
        if item_id in titles:
            item["title"] = titles[item_id]
        items.append(item)
    return items


def _user_lists(ranked: pd.DataFrame, titles: dict[str, str]):
    ordered = ranked.sort_values(["user_id", "rank"], kind="stable")
    for user_id, group in ordered.groupby("user_id", sort=False):
        yield user_id, _items(group, titles)


def _preview(ranked: pd.DataFrame, titles: dict[str, str], users: int = 3, k: int = 10) -> str:
    sections = []
    for user_id in ranked["user_id"].drop_duplicates().head(users):
        top = ranked[(ranked["user_id"] == user_id) & (ranked["rank"] <= k)]
        lines = [
            f"{rank}. {titles.get(item_id, item_id)} ({score:.3f})"
            for rank, item_id, score in zip(top["rank"], top["item_id"], top["score"], strict=True)
        ]
        sections.append(f"**user {user_id}**\n\n" + "\n".join(lines))
    return "\n\n".join(sections)
