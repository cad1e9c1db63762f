"""Settings chosen on validation data: an Optuna search per model family.

Optuna (TPE) samples the settings that change the fitted model; every fit is then scored
with each recency decay of RECENCY_GRIDS, since the decay only changes how a history is
scored (fold-in), not the fit. A trial's value is its best decay's validation nDCG@10.
The configured fit settings are always the first trial (with no budget, the configured decay
alone is scored), so a tiny budget still scores them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any

import numpy as np
import optuna
import pandas as pd

from reco_dagster.domain.foldin import fold_in
from reco_dagster.domain.metrics import ranking_metrics
from reco_dagster.domain.models import FactorModel
from reco_dagster.domain.splits import SplitMethod

OBJECTIVE = "ndcg_at_k"
K = 10
RECENCY_GRIDS = {
    "ease": ((0.0, 0.0), *product((1.0, 2.0, 3.0, 5.0, 10.0), (0.0, 0.01, 0.03, 0.1))),
    # An ALS fold-in solves a rank x rank system per user: a coarser grid keeps trials short.
    "als": ((0.0, 0.0), *product((2.0, 3.0, 5.0, 10.0), (0.0,)), (3.0, 0.03)),
}
"""(half-life over position from the end of a history, floor) pairs; (0, 0): every event
counts the same."""


Space = dict[str, tuple[Any, ...]]
"""A setting's name → ("choice", options) or ("log", low, high) or ("linear", low, high)."""

FIT_SPACES: dict[str, Space] = {
    "als": {
        "rank": ("choice", [32, 64, 128]),
        "reg_param": ("log", 0.05, 5.0),
        "alpha": ("log", 1.0, 80.0),
        "confidence": ("choice", ["binary", "rating"]),
        "popularity_prior": ("choice", [0.0, 0.05, 0.1]),
    },
    "ease": {
        # Stratified folds fit l2 10 as about 17 (`sized_for_fit_part`), near where their
        # validation peaks.
        "l2": ("log", 10.0, 3000.0),
        "item_normalization": ("linear", 0.0, 0.3),
        "user_normalization": ("linear", 0.0, 0.4),
    },
}


def _suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    for name, (kind, *bounds) in space.items():
        if kind == "choice":
            chosen[name] = trial.suggest_categorical(name, bounds[0])
        else:
            chosen[name] = trial.suggest_float(name, *bounds, log=kind == "log")
    return chosen


@dataclass
class Trial:
    settings: dict[str, Any]
    metrics: dict[str, float]
    seconds: float


@dataclass
class Search:
    family: str
    trials: list[Trial] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def best(self) -> Trial:
        return max(self.trials, key=lambda trial: trial.metrics[OBJECTIVE])

    def table(self) -> str:
        varied = [*FIT_SPACES[self.family], "half_life_events", "recency_floor"]
        lines = [
            "| trial | " + " | ".join(varied) + " | P@10 | nDCG@10 | MAP@10 | s |",
            "|---" * (len(varied) + 5) + "|",
        ]
        for number, trial in enumerate(self.trials, 1):
            m = trial.metrics
            lines.append(
                f"| {number} | "
                + " | ".join(_shown(trial.settings.get(key)) for key in varied)
                + f" | {m['precision_at_k']:.4f} | {m['ndcg_at_k']:.4f} | {m['map_at_k']:.4f}"
                f" | {trial.seconds:.1f} |"
            )
        return "\n".join(lines)

    def bar_chart(self) -> str:
        """Validation nDCG@10 per trial as text bars, the best marked: a chart the Dagster UI
        renders in its metadata."""
        return bar_chart(
            [(str(number), trial.metrics[OBJECTIVE]) for number, trial in enumerate(self.trials, 1)]
        )


def bar_chart(values: list[tuple[str, float]]) -> str:
    best = max(value for _, value in values)
    width = max(len(label) for label, _ in values)
    lines = ["```"]
    for label, value in values:
        bar = "█" * max(1, round(40 * value / best)) if best > 0 else ""
        mark = "  ← best" if value == best else ""
        lines.append(f"{label:>{width}} {bar:<40} {value:.4f}{mark}")
    return "\n".join([*lines, "```"])


def validation_metrics(
    item_side: FactorModel, fit_part: pd.DataFrame, validation: pd.DataFrame
) -> dict[str, float]:
    """Ranking metrics@10 of a model's item side on a validation split: every user of
    `fit_part` folded in from their history there, as the served lists are made."""
    users = fold_in(item_side, fit_part)
    return ranking_metrics(users.recommend(seen=fit_part, k=K), validation, K)


Fold = tuple[pd.DataFrame, pd.DataFrame]
"""(fit part, validation): one validation split carved out of a training split."""


def search_settings(
    family: str,
    configured: dict[str, Any],
    fit: Callable[[dict[str, Any], pd.DataFrame], FactorModel],
    folds: list[Fold],
    time_budget_s: float,
    max_trials: int,
    seed: int = 0,
    max_validation_users: int = 10_000,
    *,
    split_method: SplitMethod,
) -> Search:
    """The best settings for `family`, by validation metrics averaged over `folds` (carved
    by `split_method`). `fit` fits the family with the given settings on a fit part (sized for
    it: `sized_for_fit_part`) and returns its item side; a seeded sample of at most
    `max_validation_users` users is scored (scoring every user of a large catalogue for every
    decay would cost more than the fits). With no time budget only the configured settings
    are scored, as they are."""
    search, started = Search(family), time.perf_counter()
    scored_users = [
        _sampled(fit_part, validation, max_validation_users, seed) for fit_part, validation in folds
    ]

    def score(settings: dict[str, Any], decays: Iterable[tuple[float, float]]) -> Trial:
        trial_started = time.perf_counter()
        fitted = [
            (
                fit(sized_for_fit_part(family, settings, fold, split_method), fold[0]),
                history,
                validation,
            )
            for fold, (history, validation) in zip(folds, scored_users, strict=True)
        ]
        scored = []
        for half_life, floor in decays:
            decay = {"half_life_events": half_life, "recency_floor": floor}
            per_fold = pd.DataFrame(
                [
                    validation_metrics(_decayed(item_side, decay), history, validation)
                    for item_side, history, validation in fitted
                ]
            )
            scored.append(Trial({**settings, **decay}, per_fold.mean().to_dict(), 0.0))
        best = max(scored, key=lambda trial: trial.metrics[OBJECTIVE])
        best.seconds = time.perf_counter() - trial_started
        search.trials.append(best)
        return best

    if time_budget_s <= 0:
        score(configured, [(configured["half_life_events"], configured["recency_floor"])])
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        study.enqueue_trial({key: configured[key] for key in FIT_SPACES[family]})
        study.optimize(
            lambda trial: score(
                {**configured, **_suggest(trial, FIT_SPACES[family])}, RECENCY_GRIDS[family]
            ).metrics[OBJECTIVE],
            n_trials=max_trials,
            timeout=time_budget_s,
        )
    search.elapsed_s = time.perf_counter() - started
    return search


def sized_for_fit_part(
    family: str, settings: dict[str, Any], fold: Fold, split_method: SplitMethod
) -> dict[str, Any]:
    """Settings meant for the table a fold was carved from, to fit the fold's smaller fit part
    alike, so that the settings validation chooses are the ones that suit the whole table.

    Spark's implicit ALS adds reg_param times a user's (an item's) interactions to their
    normal equations (ALS-WR), while the data side, YᵀY over every item plus the
    confidence-weighted interactions, grows more slowly: the same reg_param regularizes the
    whole table more than its fit part. Scaling it by the ratio of their rows lets validation
    judge each reg_param about as the whole table will be fitted with it (exactly where YᵀY
    dominates; the README has the measurement). Explicit ALS's data side grows as its
    regularization does, so its reg_param carries over as it is.

    A stratified fold thins every history at random to about a share f of its rows, and
    EASE's l2 needs scaling for it twice. N and D are computed from the thinned rows: N
    divides a row by f^u more, a column's squared norm keeps share f of its entries, each
    scaled by f^-2u, so D divides a column by f^(i·(1 - 2u)) more, and Z = N·X·D's entries
    scale by f^-(u + i·(1 - 2u)) (u, i: user and item normalization); a ridge penalty must
    scale by their square to weigh the same. And each target column keeps share f of its
    nonzeros: the weights that predict it shrink by about f (their variance by f²) while its
    noise variance shrinks by f only, so the best penalty, noise over weight variance, grows
    by 1/f. A fit part is therefore fitted with l2 times ratio^(1 + 2u + 2i·(1 - 2u)), ratio
    the whole table's rows over the fit part's (the README has the measurement). A
    time-ordered fold drops the latest rows, not a random share, so the argument does not
    hold and l2 carries over as it is."""
    if family == "als" and settings["implicit_prefs"]:
        return {**settings, "reg_param": settings["reg_param"] * _rows_ratio(fold)}
    if family == "ease" and split_method == "stratified":
        users, items = settings["user_normalization"], settings["item_normalization"]
        exponent = 1 + 2 * users + 2 * items * (1 - 2 * users)
        return {**settings, "l2": settings["l2"] * _rows_ratio(fold) ** exponent}
    return settings


def _rows_ratio(fold: Fold) -> float:
    """The rows of the table a fold was carved from over its fit part's."""
    fit_part, validation = fold
    return (len(fit_part) + len(validation)) / len(fit_part)


def _sampled(
    fit_part: pd.DataFrame, validation: pd.DataFrame, max_users: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The histories and validation rows of at most `max_users` validation users."""
    users = validation["user_id"].unique()
    if len(users) <= max_users:
        return fit_part, validation
    chosen = np.random.default_rng(seed).choice(users, max_users, replace=False)
    return (
        fit_part[fit_part["user_id"].isin(chosen)],
        validation[validation["user_id"].isin(chosen)],
    )


def _decayed(item_side: FactorModel, decay: dict[str, float]) -> FactorModel:
    card = item_side.card
    return replace(item_side, card=replace(card, settings={**card.settings, **decay}))


def _shown(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
