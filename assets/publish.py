"""Stage 5: the cold-start list, every family's ranked lists, and the publish to the store:
written beside the live version, then made live in one switch when the family is served."""

import time
from collections.abc import Iterator

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)
from dagster_pyspark import LazyPySparkResource

from assets.train import FAMILIES
from reco_dagster.domain.ranking import popular_items as most_popular
from reco_dagster.domain.spark_scoring import ranked_on
from resources.lake_io import StoredModel
from resources.model_archive import ModelArchive
from resources.settings import BatchScoring, Serving
from resources.store import Item, RecommendationStore

PUBLISHED_DEPTH = 100
"""Items stored per user: the API serves any k up to this without touching the model."""
SIMILAR_DEPTH = 100
"""Similar items stored per item."""


@asset(group_name="publish", kinds={"pandas"})
def popular_items(interactions: pd.DataFrame) -> Output[pd.DataFrame]:
    """The list served to users the model does not know yet."""
    popular = most_popular(interactions, PUBLISHED_DEPTH)
    return Output(popular, metadata={"dagster/row_count": len(popular)})


def build_publish(family: str) -> list[AssetsDefinition]:
    @asset(
        name=f"{family}_recommendations",
        group_name="publish",
        kinds={"pandas"},
        ins={"model": AssetIn(f"{family}_model")},
    )
    def recommendations(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        batch_scoring: BatchScoring,
        model: StoredModel,
        interactions: pd.DataFrame,
    ) -> Output[pd.DataFrame]:
        """Every known user's best unseen items, ranked from all of their history (for many
        users, on Spark's executors: see BatchScoring)."""
        started = time.perf_counter()
        users = interactions["user_id"].nunique()
        with model.scorer(batch_scoring.spark_to_rank(users, pyspark)) as scorer:
            ranked = scorer.recommend(seen=interactions, k=PUBLISHED_DEPTH)
        version = scorer.card.version
        context.log.info(f"Ranked {users} users' items on the {ranked_on(scorer)}")
        return Output(
            ranked.assign(model_version=version),
            metadata={
                "dagster/row_count": len(ranked),
                "users": ranked["user_id"].nunique(),
                "model_version": version,
                "ranked_on": ranked_on(scorer),
                "scoring_s": round(time.perf_counter() - started, 3),
            },
        )

    @asset(
        name=f"{family}_similar_items",
        group_name="publish",
        kinds={"numpy"},
        ins={"model": AssetIn(f"{family}_model")},
    )
    def similar_items(model: StoredModel) -> Output[pd.DataFrame]:
        """Each item's most similar items (cosine of the model's item factors), served by
        GET /items/{item_id}/similar."""
        started = time.perf_counter()
        similar = model.item_side().similar_items(SIMILAR_DEPTH)
        return Output(
            similar,
            metadata={
                "dagster/row_count": len(similar),
                "items": similar["source_item_id"].nunique(),
                "scoring_s": round(time.perf_counter() - started, 3),
            },
        )

    @asset(
        name=f"{family}_published",
        group_name="publish",
        kinds={"sqlite"},
        deps=[f"{family}_evaluation"],
        ins={
            "ranked": AssetIn(f"{family}_recommendations"),
            "model": AssetIn(f"{family}_model"),
            "similar": AssetIn(f"{family}_similar_items"),
        },
    )
    def published(
        context: AssetExecutionContext,
        store: RecommendationStore,
        serving: Serving,
        archive: ModelArchive,
        ranked: pd.DataFrame,
        model: StoredModel,
        similar: pd.DataFrame,
        popular_items: pd.DataFrame,
        item_catalog: pd.DataFrame,
    ) -> MaterializeResult:
        """Archives the model's item side (the micro-batch folds users into it), writes this
        version's lists beside the live ones and, if this family is the served one, makes it
        live in one switch. Then drops the lists of versions past retention."""
        version = str(ranked["model_version"].iloc[0])
        previous = store.live_version()
        titles = titles_by_item(item_catalog)
        archive.save(model.item_side())
        if previous == version:
            context.log.info(f"{version} (same data and settings) is live already")
            return MaterializeResult(metadata={"model_version": version, "outcome": "already live"})
        written = store.write_version(
            version,
            ranked_lists(ranked, "user_id", titles),
            listed_items(popular_items, titles),
            ranked_lists(similar, "source_item_id", titles),
        )
        if serving.family == family:
            store.activate(version)
            context.log.info(
                f"Model version {version} is live (was {previous}); {written.users} users"
            )
        purged = store.purge_old_versions(serving.keep_versions)
        return MaterializeResult(
            metadata={
                "model_version": version,
                "outcome": "live" if serving.family == family else "candidate (not served)",
                "previous_live_version": previous or "none",
                "users_published": written.users,
                "documents_written": written.documents,
                "write_s": round(written.seconds, 3),
                "documents_per_s": round(written.documents_per_s),
                **(
                    {"request_units": round(written.request_units, 1)}
                    if written.request_units is not None
                    else {}
                ),
                "write_retries": written.retries,
                "purged_versions": ", ".join(purged) or "none",
                "preview": MetadataValue.md(_preview(ranked, titles)),
            }
        )

    return [recommendations, similar_items, published]


def titles_by_item(catalog: pd.DataFrame) -> dict[str, str]:
    return dict(zip(catalog["item_id"], catalog["title"], strict=True))


def listed_items(ranked: pd.DataFrame, titles: dict[str, str]) -> list[Item]:
    """Ranked rows as the store keeps them: item_id, score, and the title when known."""
    items: list[Item] = []
    for item_id, score in zip(ranked["item_id"], ranked["score"], strict=True):
        item: Item = {"item_id": item_id, "score": round(float(score), 5)}
        if item_id in titles:
            item["title"] = titles[item_id]
        items.append(item)
    return items


def ranked_lists(
    ranked: pd.DataFrame, by: str, titles: dict[str, str]
) -> Iterator[tuple[str, list[Item]]]:
    """One list per value of `by` (a user, or an item for its similar items), best first."""
    ordered = ranked.sort_values([by, "rank"], kind="stable")
    for key, group in ordered.groupby(by, sort=False):
        yield key, listed_items(group, titles)


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


publish_assets = [asset_def for family in FAMILIES for asset_def in build_publish(family)]
