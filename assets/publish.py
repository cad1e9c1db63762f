"""Stage 5: the cold-start, trending and popular lists, every family's ranked lists, and the
publish to the store: written beside the live version, then made live in one switch when the
family is served; and the item catalog, which reaches the store on its own (no retrain)."""

import time
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)
from dagster_pyspark import LazyPySparkResource

from reco_dagster.domain.catalog import catalog_entries, catalog_revision
from reco_dagster.domain.exposure import NEW_ITEMS
from reco_dagster.domain.exposure import new_items as find_new_items
from reco_dagster.domain.families import FAMILIES
from reco_dagster.domain.interactions import item_users
from reco_dagster.domain.lists import (
    NON_PERSONAL_DEPTH,
    SIMILAR_DEPTH,
    listed_items,
    ranked_lists,
    titles_by_item,
)
from reco_dagster.domain.ranking import popular_items as most_popular
from reco_dagster.domain.spark_scoring import ranked_on
from reco_dagster.domain.spark_tables import spark_popular_items
from reco_dagster.domain.user_lists import (
    PUBLISHED_COLUMNS,
    as_published,
    spark_published_lists,
    users_lists,
)
from resources.deployment import new_item_exposure, published_depth
from resources.event_history import EventHistory
from resources.lake_io import StoredModel
from resources.lake_tables import LakeTable
from resources.model_archive import ModelArchive
from resources.settings import BatchScoring
from resources.store import RecommendationStore


@asset(group_name="publish", kinds={"pandas", "spark"})
def popular_items(
    pyspark: LazyPySparkResource, interactions: LakeTable, model_search: dict
) -> Output[pd.DataFrame]:
    """The cold-start list, served to users the model does not know yet and continuing lists
    that run short (in the batch, and at request time when filters leave too few items):
    trending (the half-life chosen on validation) or all-time popular."""
    half_life_days = model_search["cold_start"]["half_life_days"]
    table = interactions.frame(pyspark)
    popular = _most_popular(table, _non_personal_depth(), half_life_days)
    return Output(
        popular,
        metadata={
            "dagster/row_count": len(popular),
            "kind": f"trending, half-life {half_life_days:g} d" if half_life_days else "all-time",
        },
    )


@asset(group_name="publish", kinds={"pandas", "spark"})
def non_personal_lists(
    pyspark: LazyPySparkResource, interactions: LakeTable, model_search: dict
) -> Output[pd.DataFrame]:
    """The lists GET /items/trending and GET /items/popular serve (`list`, item_id, score):
    trending counts each user 0.5 ** (age / half-life), a positive half-life chosen on
    validation (or `serving.trending_half_life_days`); popular counts distinct users of all
    time. One of them is the cold-start list."""
    half_life_days = model_search["cold_start"]["trending_half_life_days"]
    depth = _non_personal_depth()
    table = interactions.frame(pyspark)
    lists = pd.concat(
        [
            _most_popular(table, depth, half_life_days).assign(list="trending"),
            _most_popular(table, depth).assign(list="popular"),
        ],
        ignore_index=True,
    )
    return Output(
        lists,
        metadata={
            "dagster/row_count": len(lists),
            "trending_half_life_days": half_life_days,
            "depth": depth,
        },
    )


def _most_popular(table: Any, k: int, half_life_days: float = 0.0) -> pd.DataFrame:
    if isinstance(table, pd.DataFrame):
        return most_popular(table, k, half_life_days)
    return spark_popular_items(table, k, half_life_days).toPandas()


def _non_personal_depth() -> int:
    # At least as deep as the personal lists, which the cold-start list continues.
    return max(published_depth(), NON_PERSONAL_DEPTH)


@asset(group_name="publish", kinds={"sqlite"})
def published_catalog(
    context: AssetExecutionContext,
    store: ResourceParam[RecommendationStore],
    item_catalog: pd.DataFrame,
) -> MaterializeResult:
    """The catalog where the API reads it: each item's categories and availability (and
    title, attributes). It replaces the store's unless that one was read from `catalog/`
    later; the API applies it to what it serves within its change check, without a retrain
    (the `catalog_refresh` job, which `catalog_sensor` runs when `catalog/` changes)."""
    entries = catalog_entries(item_catalog)
    revision = catalog_revision(entries)
    # An item_catalog written before catalogs carried their read time counts as the oldest.
    read_at = item_catalog.attrs.get("read_at", 0.0)
    outcome = store.write_catalog(entries, revision, read_at)
    if outcome == "older":
        context.log.info(f"The store's catalog was read later than {revision}'s: kept")
    return MaterializeResult(
        metadata={
            "revision": revision,
            "outcome": outcome,
            "items": len(entries),
            "unavailable": sum(not entry["available"] for entry in entries),
        }
    )


def build_publish(family: str) -> list[AssetsDefinition]:
    @asset(
        name=f"{family}_new_items",
        group_name="publish",
        kinds={"pandas"},
        ins={"model": AssetIn(f"{family}_model")},
    )
    def new_items(
        pyspark: LazyPySparkResource,
        model: StoredModel,
        interactions: LakeTable,
        item_catalog: pd.DataFrame,
    ) -> Output[pd.DataFrame]:
        """The available catalogue items this version cannot rank yet (unknown to it, or with
        fewer than RECO_NEW_ITEM_MIN_INTERACTIONS users): what its exposure positions offer,
        in lists and in micro-batch refreshes alike (item_id, categories)."""
        _, least = new_item_exposure()
        available = item_catalog.loc[item_catalog["available"], "item_id"].astype(str)
        users = item_users(interactions.frame(pyspark))
        fresh = find_new_items(available, model.item_side().item_ids, users, least)
        table = item_catalog.set_index(item_catalog["item_id"].astype(str)).loc[fresh]
        table = table.reset_index(drop=True)[["item_id", "categories"]]
        return Output(
            table,
            metadata={
                "dagster/row_count": len(table),
                "min_interactions": least,
                "preview": MetadataValue.md(table.head(10).to_markdown(index=False)),
            },
        )

    @asset(
        name=f"{family}_recommendations",
        group_name="publish",
        kinds={"pandas"},
        ins={"model": AssetIn(f"{family}_model"), "new_items": AssetIn(f"{family}_new_items")},
    )
    def recommendations(
        context: AssetExecutionContext,
        pyspark: LazyPySparkResource,
        batch_scoring: BatchScoring,
        model: StoredModel,
        interactions: LakeTable,
        popular_items: pd.DataFrame,
        new_items: pd.DataFrame,
    ) -> Output:
        """Every known user's best unseen items, scored from all of their history (for many
        users, on Spark's executors: see BatchScoring, and where Spark wrote the
        interactions); a list that runs short goes on with the cold-start list. `because`
        names the history items that explain each one (`domain.explain`), `history_events`
        how many of the user's events it was ranked from."""
        started = time.perf_counter()
        item_side = model.item_side()
        if "skipped" in item_side.card.settings:  # a family that could not be fitted
            return Output(
                pd.DataFrame(columns=PUBLISHED_COLUMNS), metadata={"dagster/row_count": 0}
            )
        history = interactions.frame(pyspark)
        making = {
            "cold_start": popular_items,
            "new_items": list(new_items["item_id"]),
            "categories": dict(zip(new_items["item_id"], new_items["categories"], strict=True)),
            "every": new_item_exposure()[0],
            "depth": published_depth(),
        }
        if not isinstance(history, pd.DataFrame):
            context.log.info("Ranking every user's items on the Spark executors")
            ranked = spark_published_lists(item_side, history, **making)
            return Output(ranked, metadata={"ranked_on": "spark executors"})
        users = history["user_id"].nunique()
        with model.scorer(history, batch_scoring.spark_to_rank(users, pyspark)) as scorer:
            ranked = users_lists(item_side, scorer, history, **making)
        ranked = as_published(ranked, item_side.card.version, history)
        context.log.info(f"Ranked {users} users' items on the {ranked_on(scorer)}")
        return Output(
            ranked,
            metadata={
                "dagster/row_count": len(ranked),
                "users": ranked["user_id"].nunique(),
                "model_version": item_side.card.version,
                "ranked_on": ranked_on(scorer),
                "scoring_s": round(time.perf_counter() - started, 3),
                "new_item_positions": int(ranked["new_item"].sum()),
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
        name=f"{family}_archived_model",
        group_name="publish",
        kinds={"numpy"},
        ins={"evaluation": AssetIn(f"{family}_evaluation"), "model": AssetIn(f"{family}_model")},
    )
    def archived_model(
        archive: ModelArchive, event_history: EventHistory, evaluation: dict, model: StoredModel
    ) -> MaterializeResult:
        """The version's item side (card and item factors), written once under its version id
        and never rewritten in place: what micro-batches fold users into while it is live."""
        version = evaluation["model_version"]
        if evaluation["skipped"]:
            outcome = f"skipped: {evaluation['skipped']}"
        else:
            snapshot_at = event_history.snapshot_written_at()
            written = archive.save(model.item_side(), snapshot_at)
            outcome = "written" if written else "archived already"
        return MaterializeResult(
            metadata={
                "model_version": version,
                "outcome": outcome,
                "path": MetadataValue.path(archive.location(version)),
            }
        )

    @asset(
        name=f"{family}_published",
        group_name="publish",
        kinds={"sqlite"},
        deps=[f"{family}_archived_model"],
        ins={
            "evaluation": AssetIn(f"{family}_evaluation"),
            "ranked": AssetIn(f"{family}_recommendations"),
            "similar": AssetIn(f"{family}_similar_items"),
            "new_items": AssetIn(f"{family}_new_items"),
        },
    )
    def published(
        context: AssetExecutionContext,
        store: ResourceParam[RecommendationStore],
        pyspark: LazyPySparkResource,
        evaluation: dict,
        ranked: LakeTable,
        similar: pd.DataFrame,
        new_items: pd.DataFrame,
        popular_items: pd.DataFrame,
        non_personal_lists: pd.DataFrame,
        item_catalog: pd.DataFrame,
    ) -> MaterializeResult:
        """Registers the version and writes its lists beside the live ones; `live_model`
        decides what goes live. The ranked table is read a batch at a time, or, where Spark
        wrote it and the store can take writes from Spark's executors (Cosmos DB), written
        from there: the driver never holds every user's list."""
        version = evaluation["model_version"]
        if evaluation["skipped"]:
            return MaterializeResult(
                metadata={"model_version": version, "outcome": f"skipped: {evaluation['skipped']}"}
            )
        if store.live_version() == version:
            context.log.info(f"{version} (same data, settings and code) is live already")
            return MaterializeResult(metadata={"model_version": version, "outcome": "already live"})
        titles = titles_by_item(item_catalog)
        store.register(version, evaluation)
        # The store marks each list with the table's `history_events`: a micro-batch refresh
        # ranked from fewer of a user's events (one that read the history before this run's
        # snapshot) must not replace it.
        written = store.write_ranked_version(
            version,
            ranked,
            titles,
            listed_items(popular_items, titles),
            ranked_lists(similar, "source_item_id", titles),
            item_lists={
                **{
                    name: listed_items(ranked_items, titles)
                    for name, ranked_items in non_personal_lists.groupby("list", sort=False)
                },
                # What micro-batches expose while this version is live.
                NEW_ITEMS: [{"item_id": item, "score": 0.0} for item in new_items["item_id"]],
            },
            # Spark starts only for a store that writes from its executors a table it wrote.
            spark_session=lambda: pyspark.spark_session,
        )
        return MaterializeResult(
            metadata={
                "model_version": version,
                "outcome": "written",
                "users_published": written.users,
                "depth": published_depth(),
                "documents_written": written.documents,
                "write_s": round(written.seconds, 3),
                "documents_per_s": round(written.documents_per_s),
                **(
                    {"request_units": round(written.request_units, 1)}
                    if written.request_units is not None
                    else {}
                ),
                "write_retries": written.retries,
                "preview": MetadataValue.md(_preview(ranked, titles)),
            }
        )

    return [new_items, recommendations, similar_items, archived_model, published]


PREVIEW_COLUMNS = ["user_id", "item_id", "rank", "score", "history_events"]


def _preview(ranked: LakeTable, titles: dict[str, str], users: int = 3, k: int = 10) -> str:
    """The first few users' lists, the users unnamed: the run history keeps metadata for
    good, and a forgotten user's id must not stay there. Read from the table's first batch
    alone, which holds the first users' top k (a user's rows are together, by rank)."""
    batch = next(ranked.batches(PREVIEW_COLUMNS), pd.DataFrame(columns=PREVIEW_COLUMNS))
    sections = []
    first = batch["user_id"].drop_duplicates().head(users)
    for number, user_id in enumerate(first, start=1):
        top = batch[(batch["user_id"] == user_id) & (batch["rank"] <= k)]
        lines = [
            f"{rank}. {titles.get(item_id, item_id)} ({score:.3f})"
            for rank, item_id, score in zip(top["rank"], top["item_id"], top["score"], strict=True)
        ]
        events = top["history_events"].iloc[0]
        sections.append(f"**user {number}** ({events} events)\n\n" + "\n".join(lines))
    return "\n\n".join(sections)


publish_assets = [asset_def for family in FAMILIES for asset_def in build_publish(family)]
