"""Stage 6: the live model and every challenger judged on this run's split, each family's
quality gate, and the switch: the gate-passing family with the best validation nDCG@10 goes
live (unless `serving.family` pins one)."""

from collections.abc import Iterator

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Failure,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
)
from dagster_pyspark import LazyPySparkResource

from reco_dagster.domain.evaluation import MODEL, evaluate, evaluate_on_spark
from reco_dagster.domain.families import FAMILIES, fit_model, fitted_alike, item_side
from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.gate import choose_family, gate_failures, gate_floors
from reco_dagster.domain.search import bar_chart
from resources.event_history import EventHistory
from resources.ingestion import EventWeights
from resources.lake_tables import LakeTable
from resources.landing_zone import LandingZone
from resources.live_lists import fold_in_unlisted_files
from resources.model_archive import ModelArchive
from resources.settings import EaseSettings, QualityGate, Serving
from resources.store import RecommendationStore


@asset(
    group_name="publish",
    kinds={"sqlite"},
    deps=[f"{family}_published" for family in FAMILIES],
    check_specs=[
        AssetCheckSpec(
            f"{family}_quality_gate",
            asset="live_model",
            description=f"May {family}'s new version go live? Floors, lift over popularity, and "
            "no regression beyond the tolerance against the live model on the same split.",
        )
        for family in FAMILIES
    ],
)
def live_model(
    context: AssetExecutionContext,
    pyspark: LazyPySparkResource,
    store: ResourceParam[RecommendationStore],
    landing_zone: LandingZone,
    event_history: EventHistory,
    event_weights: EventWeights,
    archive: ModelArchive,
    serving: Serving,
    quality_gate: QualityGate,
    ease: EaseSettings,
    als_evaluation: dict,
    ease_evaluation: dict,
    train_interactions: LakeTable,
    test_interactions: LakeTable,
) -> Iterator:
    """Scores the live model's family and settings (the champion) on this run's split beside
    the challengers, gates every family, and switches to the chosen version; then folds the
    users whose events arrived after this run's data snapshot into it. When no family may go
    live the run fails and the live version keeps serving."""
    evaluations = {"als": als_evaluation, "ease": ease_evaluation}
    candidates = {family: ev for family, ev in evaluations.items() if not ev["skipped"]}
    try:
        champion = champion_on_split(
            pyspark, ease, store, candidates, train_interactions, test_interactions
        )
    except Exception as error:  # the comparison is advisory: never let it block a switch
        context.log.warning(f"The live model could not be refitted for comparison: {error!r}")
        champion = None
    failures: dict[str, list[str]] = {}
    for family, evaluation in evaluations.items():
        if evaluation["skipped"]:
            failures[family] = [f"skipped: {evaluation['skipped']}"]
            continue
        floors = gate_floors(
            quality_gate.floors,
            evaluation["popularity_baseline"]["precision_at_10"],
            quality_gate.min_lift_over_popularity,
        )
        is_champion = champion and champion["version"] == evaluation["model_version"]
        compared = None if is_champion else champion
        failures[family] = gate_failures(
            evaluation["metrics"],
            floors,
            compared["metrics"] if compared else None,
            compared["version"] if compared else None,
            quality_gate.tolerance,
        )
        store.register(
            evaluation["model_version"],
            {**evaluation, "champion": compared},
            rejected_because="; ".join(failures[family]) or None,
        )
    passed = {family for family in candidates if not failures[family]}
    pinned = None if serving.family == "auto" else serving.family
    chosen = choose_family(
        {family: ev["validation"].get("ndcg_at_10", 0.0) for family, ev in candidates.items()},
        passed,
        pinned,
    )
    # A challenger that loses while another goes live is the gate at work: a warning. When
    # none may go live, the run fails, and these lines name why.
    log_rejection = context.log.warning if chosen else context.log.error
    for family, evaluation in evaluations.items():
        for failure in failures[family]:
            log_rejection(f"{evaluation['model_version']} rejected: {failure}")
        yield AssetCheckResult(
            check_name=f"{family}_quality_gate",
            passed=not failures[family],
            # A family skipped for the catalogue's size is expected at scale, not an alarm.
            severity=AssetCheckSeverity.WARN if evaluation["skipped"] else AssetCheckSeverity.ERROR,
            description="; ".join(failures[family]) or "passed every floor and the comparison",
            metadata={
                "model_version": evaluation["model_version"],
                "compared_with": champion["version"] if champion else "no live version",
                "failures": MetadataValue.md(
                    "\n".join(f"- {f}" for f in failures[family]) or "none"
                ),
            },
        )
    previous = store.live_version()
    table = _comparison(evaluations, champion, failures, chosen)
    if chosen is None:
        # This run ingested files the live version's lists do not hold yet.
        fold_in_unlisted_files(
            landing_zone, event_history, store, archive, event_weights.weights, context.log.warning
        )
        # Rejected versions' lists were written before the gate: retention still applies.
        store.purge_old_versions(serving.keep_versions)
        raise Failure(
            "no model version may go live"
            + (f" (serving.family pins {pinned})" if pinned else "")
            + f"; {previous or 'nothing'} stays live",
            metadata={"comparison": MetadataValue.md(table)},
        )
    version = evaluations[chosen]["model_version"]
    if version != previous:
        store.activate(version)
        context.log.info(f"Model version {version} ({chosen}) is live (was {previous})")
    # Events that landed after this run's data snapshot went into the old version; fold their
    # users into the new one, or the switch would serve lists built without them.
    refresh = fold_in_unlisted_files(
        landing_zone, event_history, store, archive, event_weights.weights, context.log.warning
    )
    late_users = refresh.counts.get("users_refreshed", 0)
    if late_users:
        context.log.info(f"Folded {late_users} users with later events into {version}")
    purged = store.purge_old_versions(serving.keep_versions)
    yield Output(
        {"version": version, "family": chosen, "previous": previous},
        metadata={
            "model_version": version,
            "family": chosen,
            "chosen_by": f"pinned by serving.family={pinned}" if pinned else "validation nDCG@10",
            "previous_live_version": previous or "none",
            "users_with_later_events_refolded": late_users,
            "comparison": MetadataValue.md(table),
            "test_ndcg_at_10": MetadataValue.md(
                bar_chart(
                    [(family, ev["metrics"]["ndcg_at_10"]) for family, ev in candidates.items()]
                    + ([("live (champion)", champion["metrics"]["ndcg_at_10"])] if champion else [])
                )
            ),
            "purged_versions": ", ".join(purged) or "none",
        },
    )


def champion_on_split(
    pyspark: LazyPySparkResource,
    ease: EaseSettings,
    store: RecommendationStore,
    candidates: dict[str, dict],
    train_interactions: LakeTable,
    test_interactions: LakeTable,
) -> dict | None:
    """The live version's family and settings scored on this run's split: reused from a
    challenger with the same family and settings, else refitted on the training split (read
    only then; scored on the executors where Spark wrote it)."""
    live = store.version(store.live_version() or "")
    if live is None or "family" not in live.info:
        return None
    family, settings = live.info["family"], live.info["settings"]
    same = next(
        (
            ev
            for ev in candidates.values()
            if ev["family"] == family and fitted_alike(family, ev["settings"], settings)
        ),
        None,
    )
    if same is not None:
        metrics = same["metrics"]
    else:
        spark = pyspark.spark_session if family == "als" else None
        train, test = train_interactions.frame(pyspark), test_interactions.frame(pyspark)
        refit = item_side(fit_model(family, settings, train, spark, ease.max_items))
        if isinstance(train, pd.DataFrame):
            metrics = evaluate(fold_in(refit, train), train, test)
        else:
            metrics = evaluate_on_spark(refit, train, test, {})[MODEL]
    return {"version": live.version, "family": family, "settings": settings, "metrics": metrics}


def _comparison(
    evaluations: dict[str, dict], champion: dict | None, failures: dict, chosen: str | None
) -> str:
    lines = [
        "| model | version | validation nDCG@10 | P@10 | nDCG@10 | MAP@10 | gate |",
        "|---|---|---|---|---|---|---|",
    ]
    if champion:
        m = champion["metrics"]
        lines.append(
            f"| live ({champion['family']}) | {champion['version']} | | "
            f"{m['precision_at_10']:.4f} | {m['ndcg_at_10']:.4f} | {m['map_at_10']:.4f} | |"
        )
    for family, ev in evaluations.items():
        if ev["skipped"]:
            lines.append(f"| {family} | | | | | | skipped |")
            continue
        m, validation = ev["metrics"], ev["validation"].get("ndcg_at_10", float("nan"))
        verdict = "passed" if not failures[family] else "rejected"
        mark = " ← goes live" if family == chosen else ""
        lines.append(
            f"| {family}{mark} | {ev['model_version']} | {validation:.4f} | "
            f"{m['precision_at_10']:.4f} | {m['ndcg_at_10']:.4f} | {m['map_at_10']:.4f} | "
            f"{verdict} |"
        )
    return "\n".join(lines)
