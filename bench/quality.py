"""Benchmark: recommendation quality on MovieLens 100K under each evaluation protocol, the
whole batch job in a fresh data dir per protocol, as `scripts/start.sh` runs it.

    .venv/bin/python bench/quality.py [--protocols chronological temporal stratified]
                                      [--extra-draws N]

For each protocol (75/25; chronological is the default the job uses, stratified is random
per user, as published figures are): P/R/nDCG/MAP@10 of ALS, EASE, the served model (the
family the job put live), the all-time popular list and the trending list; the settings the
search chose on validation (recency half-lives, family, cold-start half-life) and the wall
time of the whole job. Items seen in training are excluded; metrics as Microsoft
Recommenders defines them. Stratified also runs the job's search on the draw of that split
the issue measured its figures on, and with `--extra-draws` on more draws, each beside the
settings from before the issue. The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from reco_dagster.domain.models import FactorModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reco_dagster.domain.splits import SplitMethod, split_by_order  # noqa: E402
from resources.settings import EvaluationProtocol  # noqa: E402
from tests.conftest import dagster_job  # noqa: E402

PROTOCOLS = ("chronological", "temporal", "stratified")
METRICS = ("precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10")
HEADLINE_METRICS = ("precision_at_10", "ndcg_at_10")
"""The metrics the issue's targets name."""
TARGETS = {
    "chronological_served_precision_at_10": (">=", 0.25),
    "chronological_served_ndcg_at_10": (">=", 0.28),
    "chronological_als_precision_at_10": (">=", 0.22),
    "chronological_als_ndcg_at_10": (">=", 0.245),
    "chronological_job_s": ("<=", 60.0),
    # The issue's stratified figures, on the job's draw and on the draw they were measured on.
    **{
        f"{draw}_{family}_{metric}": (">=", target)
        for draw in ("stratified", "stratified_issue_draw")
        for family, metric, target in (
            ("als", "precision_at_10", 0.42),
            ("als", "ndcg_at_10", 0.48),
            ("ease", "precision_at_10", 0.43),
            ("ease", "ndcg_at_10", 0.49),
        )
    },
    # No regression on the same split: the pre-issue settings refitted on each draw.
    **{
        f"{draw}_{family}_{difference}_{metric}": (">=", 0.0)
        for draw, difference in (
            ("stratified", "minus_pre_issue"),
            ("stratified_issue_draw", "minus_pre_issue"),
            ("stratified_extra_draws", "mean_minus_pre_issue"),
        )
        for family in ("als", "ease")
        for metric in HEADLINE_METRICS
    },
}
STRATIFIED_TRIALS = {"als": 15, "ease": 50}
"""The stratified run's search. It is a configured run (settings chosen on chronological
validation do not carry over to random splits), ended by a trial count rather than a clock,
so that a re-run chooses the same settings; ALS's 15 trials take about 2 minutes here."""
STRATIFIED_CLOCK_CAP_S = {"als": 1800.0, "ease": 1800.0}
"""Far above what those trials take on 2 cores: the count, not the clock, ends the search."""
PRE_ISSUE_SETTINGS = {
    "als": {
        "rank": 128,
        "max_iter": 6,
        "reg_param": 1.0,
        "alpha": 20.0,
        "implicit_prefs": True,
        "confidence": "rating",
        "popularity_prior": 0.05,
        "seed": 42,
    },
    "ease": {"l2": 150.0, "rating_weighted": True, "item_normalization": 0.15},
}
"""Each family's settings before the issue (commit 96ff5e6), no recency: what the stratified
targets' figures were measured with, on `IssueDraw`. Refitted on each draw, they are its
reference for "no regression"."""
ISSUE_DRAW_SEED = 42
"""The pre-issue split's seed (the job's protocol keeps it)."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument(
        "--extra-draws",
        type=int,
        default=0,
        help="stratified: also search and compare on this many more draws of each kind, "
        "seeded 100, 200, ... (each adds two draws, about 6 minutes on 2 cores)",
    )
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from reco_dagster.datasets import main as fetch_dataset

    dataset = Path(tempfile.mkdtemp(prefix="reco-quality-dataset-"))
    os.environ["RECO_DATA_DIR"] = str(dataset)
    fetch_dataset(["movielens-100k"])
    figures: dict[str, float | str] = {}
    for protocol in args.protocols:
        figures |= run_protocol(protocol, dataset, args.extra_draws)
    width = max(map(len, figures))
    for name, value in figures.items():
        verdict = ""
        if name in TARGETS:
            sense, target = TARGETS[name]
            met = value >= target if sense == ">=" else value <= target
            verdict = f"  (target {sense} {target}: {'met' if met else 'NOT met'})"
        print(f"{name:<{width}}  {value}{verdict}")
    print(json.dumps(figures))


def run_protocol(protocol: str, dataset: Path, extra_draws: int) -> dict[str, float | str]:
    """The whole job in a fresh data dir with this protocol (stratified: with
    `STRATIFIED_TRIALS`); its figures, prefixed."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"reco-quality-{protocol}-"))
    for folder in ("landing", "catalog"):
        shutil.copytree(dataset / folder, data_dir / folder)
    dagster_home = data_dir / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    config = data_dir / "protocol.json"
    run_config: dict = {"resources": {"protocol": {"config": {"method": protocol}}}}
    figures_search: dict[str, float | str] = {}
    if protocol == "stratified":
        budget = {"max_trials": STRATIFIED_TRIALS, "time_budget_s": STRATIFIED_CLOCK_CAP_S}
        run_config["ops"] = {"model_search": {"config": budget}}
        figures_search = {f"{protocol}_{f}_search_trials": n for f, n in STRATIFIED_TRIALS.items()}
    config.write_text(json.dumps(run_config))
    env = {**os.environ, "RECO_DATA_DIR": str(data_dir), "DAGSTER_HOME": str(dagster_home)}
    started = time.perf_counter()
    result = subprocess.run(
        dagster_job("batch_retrain", "-c", str(config)),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    job_s = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"batch_retrain failed under {protocol}:\n{result.stderr[-3000:]}")
    lake = data_dir / "lake"
    evaluations = {
        family: json.loads((lake / f"{family}_evaluation.json").read_text())
        for family in ("als", "ease")
    }
    searched = json.loads((lake / "model_search.json").read_text())
    live = json.loads((lake / "live_model.json").read_text())
    served = evaluations[live["family"]]
    figures: dict[str, float | str] = {}
    for name, metrics in (
        ("als", evaluations["als"]["metrics"]),
        ("ease", evaluations["ease"]["metrics"]),
        ("served", served["metrics"]),
        ("popular", served["popularity_baseline"]),
        ("trending", served["trending_baseline"]),
    ):
        figures |= {f"{protocol}_{name}_{metric}": round(metrics[metric], 4) for metric in METRICS}
    split = tuple(
        pd.read_parquet(lake / f"{part}_interactions.parquet") for part in ("train", "test")
    )
    for family in ("als", "ease"):
        settings = searched[family]["settings"]
        figures[f"{protocol}_{family}_settings"] = json.dumps(settings, sort_keys=True)
        figures[f"{protocol}_{family}_half_life_events"] = settings["half_life_events"]
        figures[f"{protocol}_{family}_recency_floor"] = settings["recency_floor"]
        figures[f"{protocol}_{family}_validation_ndcg_at_10"] = round(
            searched[family]["validation"]["ndcg_at_10"], 4
        )
        figures |= {
            f"{protocol}_{family}_no_recency_{metric}": round(value, 4)
            for metric, value in without_recency(lake, family, split).items()
            if metric in HEADLINE_METRICS
        }
    if protocol == "stratified":
        figures |= stratified_references(
            figures, split, pd.read_parquet(lake / "interactions.parquet"), extra_draws
        )
    figures[f"{protocol}_served_family"] = live["family"]
    figures[f"{protocol}_trending_half_life_days"] = searched["cold_start"]["half_life_days"]
    figures[f"{protocol}_job_s"] = round(job_s, 1)
    return figures | figures_search


Split = tuple[pd.DataFrame, pd.DataFrame]
"""The run's (training, test) split."""


def without_recency(lake: Path, family: str, split: Split) -> dict[str, float]:
    """The family's evaluation model scored with every event of a history counting alike:
    what recency adds, on the same fit and split."""
    from resources.files import LocalFiles
    from resources.lake_io import StoredModel

    files = LocalFiles(root=str(lake.parent))
    model = StoredModel(files, f"lake/{family}_evaluation_model/").item_side()
    undecayed = {**model.card.settings, **NO_RECENCY}
    return metrics_on_test_split(
        replace(model, card=replace(model.card, settings=undecayed)), split
    )


def stratified_references(
    figures: dict[str, float | str], split: Split, interactions: pd.DataFrame, extra_draws: int
) -> dict[str, float | str]:
    """What the stratified run is held against, as figures. On the run's split: the pre-issue
    settings refitted. On the draw the issue's figures were measured on (`IssueDraw`), and on
    `extra_draws` more draws of each kind: the job's search and fit beside the pre-issue
    settings (`searched_beside_pre_issue`), and the mean differences over the extra draws."""
    from resources.settings import spark_session

    spark = spark_session()
    try:
        references: dict[str, float | str] = compared_with_pre_issue(
            "stratified", figures, pre_issue_metrics(split, spark)
        )
        references |= searched_beside_pre_issue(
            "stratified_issue_draw", IssueDraw(seed=ISSUE_DRAW_SEED), interactions, spark
        )
        extra: dict[str, float | str] = {}
        for seed in range(100, 100 * extra_draws + 1, 100):
            for kind, protocol in (
                ("hashed", EvaluationProtocol(method="stratified", seed=seed)),
                ("numpy", IssueDraw(seed=seed)),
            ):
                extra |= searched_beside_pre_issue(
                    f"stratified_{kind}_seed_{seed}", protocol, interactions, spark
                )
    finally:
        spark.stop()
    for family, metric in product(STRATIFIED_TRIALS, HEADLINE_METRICS):
        suffix = f"_{family}_minus_pre_issue_{metric}"
        if differences := [value for name, value in extra.items() if name.endswith(suffix)]:
            references[f"stratified_extra_draws_{family}_mean_minus_pre_issue_{metric}"] = round(
                float(np.mean(differences)), 4
            )
    return references | extra


def searched_beside_pre_issue(
    prefix: str, protocol: EvaluationProtocol, interactions: pd.DataFrame, spark: Any
) -> dict[str, float | str]:
    """One draw of the stratified split (`protocol`'s): each family's search as the job runs
    it (its configured settings first, `STRATIFIED_TRIALS`, the protocol's validation folds),
    its best settings fitted on the training split and scored on the test split, beside the
    pre-issue settings refitted there."""
    from reco_dagster.domain.families import fit_model, item_side
    from reco_dagster.domain.gate import choose_family
    from reco_dagster.domain.search import search_settings
    from resources.settings import AlsSettings, EaseSettings

    drawn = protocol.split(interactions)
    folds = protocol.validation_folds(drawn[0])
    configured = {"als": AlsSettings().model_dump(), "ease": EaseSettings().fit_settings()}
    searched: dict[str, float | str] = {}
    validation_ndcg: dict[str, float] = {}
    for family, trials in STRATIFIED_TRIALS.items():

        def fit(settings: dict, fit_part: pd.DataFrame, family: str = family) -> FactorModel:
            return item_side(fit_model(family, settings, fit_part, spark))

        best = search_settings(
            family,
            configured[family],
            fit,
            folds,
            STRATIFIED_CLOCK_CAP_S[family],
            trials,
            split_method=protocol.method,
        ).best
        metrics = metrics_on_test_split(fit(best.settings, drawn[0]), drawn)
        searched |= {f"{prefix}_{family}_{metric}": round(metrics[metric], 4) for metric in METRICS}
        validation_ndcg[family] = best.metrics["ndcg_at_k"]
        searched[f"{prefix}_{family}_validation_ndcg_at_10"] = round(validation_ndcg[family], 4)
        searched[f"{prefix}_{family}_settings"] = json.dumps(best.settings, sort_keys=True)
    # What the job would serve (every family passing the gate).
    searched[f"{prefix}_served_family"] = str(
        choose_family(validation_ndcg, set(validation_ndcg), pinned=None)
    )
    return searched | compared_with_pre_issue(prefix, searched, pre_issue_metrics(drawn, spark))


class IssueDraw(EvaluationProtocol):
    """The stratified protocol with its split drawn as the code before the issue (commit
    96ff5e6) drew it, on which the issue measured its figures: numpy's seeded uniform key per
    row of the interactions in (user id, item id) order. The job draws a keyed hash of each
    pair instead, which Spark reproduces whatever a table's order; this draw depends on row
    order. Validation folds are carved by the same draw (`validation_folds` calls `split`)."""

    method: SplitMethod = "stratified"

    def split(self, table: pd.DataFrame, seed_offset: int = 0) -> tuple[pd.DataFrame, ...]:
        ordered = table.sort_values(["user_id", "item_id"], ignore_index=True)
        keys = np.random.default_rng(self.seed + seed_offset).random(len(ordered))
        return split_by_order(ordered, keys, self.train_ratio)


def pre_issue_metrics(split: Split, spark: Any) -> dict[str, dict[str, float]]:
    """Each family fitted with `PRE_ISSUE_SETTINGS` on a training split, its metrics on the
    test split."""
    from reco_dagster.domain.families import fit_model, item_side

    return {
        family: metrics_on_test_split(
            item_side(fit_model(family, {**settings, **NO_RECENCY}, split[0], spark)), split
        )
        for family, settings in PRE_ISSUE_SETTINGS.items()
    }


def compared_with_pre_issue(
    prefix: str, figures: dict[str, float | str], pre_issue: dict[str, dict[str, float]]
) -> dict[str, float]:
    """The pre-issue settings' P and nDCG@10 on a split, and by how much the figures
    `{prefix}_{family}_{metric}` of the same split exceed them."""
    compared: dict[str, float] = {}
    for family, metrics in pre_issue.items():
        for metric in HEADLINE_METRICS:
            reference = round(metrics[metric], 4)
            compared[f"{prefix}_{family}_pre_issue_settings_{metric}"] = reference
            compared[f"{prefix}_{family}_minus_pre_issue_{metric}"] = round(
                float(figures[f"{prefix}_{family}_{metric}"]) - reference, 4
            )
    return compared


NO_RECENCY = {"half_life_events": 0.0, "half_life_days": 0.0, "recency_floor": 0.0}


def metrics_on_test_split(item_side: FactorModel, split: Split) -> dict[str, float]:
    """A model's item side scored on the run's test split, each user folded in from their
    training history."""
    from reco_dagster.domain.evaluation import evaluate
    from reco_dagster.domain.foldin import fold_in

    train, test = split
    return evaluate(fold_in(item_side, train), train, test)


if __name__ == "__main__":
    main()
