"""A time-boxed random search over ALS settings around the configured ones."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SEARCH_SPACE: dict[str, list[Any]] = {
    "rank": [64, 128, 200],
    "max_iter": [6, 10],
    "reg_param": [0.5, 1.0, 2.0],
    "alpha": [10.0, 20.0, 40.0],
    "confidence": ["binary", "rating"],
    "popularity_prior": [0.0, 0.05, 0.1],
}
OBJECTIVE = "ndcg_at_k"


@dataclass
class Trial:
    settings: dict[str, Any]
    metrics: dict[str, float]
    seconds: float


@dataclass
class Search:
    trials: list[Trial] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def best(self) -> dict[str, Any]:
        return max(self.trials, key=lambda trial: trial.metrics[OBJECTIVE]).settings

    def table(self) -> str:
        varied = list(SEARCH_SPACE)
        lines = [
            "| trial | " + " | ".join(varied) + " | P@10 | nDCG@10 | MAP@10 | s |",
            "|---" * (len(varied) + 5) + "|",
        ]
        for number, trial in enumerate(self.trials, 1):
            m = trial.metrics
            lines.append(
                f"| {number} | "
                + " | ".join(str(trial.settings[key]) for key in varied)
                + f" | {m['precision_at_k']:.4f} | {m['ndcg_at_k']:.4f} | {m['map_at_k']:.4f}"
                f" | {trial.seconds:.1f} |"
            )
        return "\n".join(lines)

    def bar_chart(self) -> str:
        """nDCG@10 per trial as text bars, the best marked: a plot the Dagster UI renders."""
        best = max(trial.metrics[OBJECTIVE] for trial in self.trials)
        lines = ["```"]
        for number, trial in enumerate(self.trials, 1):
            value = trial.metrics[OBJECTIVE]
            bar = "█" * max(1, round(40 * value / best))
            lines.append(f"{number:>3} {bar:<40} {value:.4f}{'  ← best' if value == best else ''}")
        return "\n".join([*lines, "```"])


def search_als(
    configured: dict[str, Any],
    score: Callable[[dict[str, Any]], dict[str, float]],
    time_budget_s: float,
    max_trials: int,
    seed: int = 0,
) -> Search:
    """Score the configured settings, then random neighbours from SEARCH_SPACE, until
    `max_trials` or until the next trial would likely overrun the budget. `score` fits and
    returns ranking metrics."""
    grid = [
        {**configured, **dict(zip(SEARCH_SPACE, values, strict=True))}
        for values in itertools.product(*SEARCH_SPACE.values())
    ]
    random.Random(seed).shuffle(grid)
    candidates = [configured, *(settings for settings in grid if settings != configured)]
    search, started = Search(), time.perf_counter()
    for settings in candidates[:max_trials]:
        elapsed = time.perf_counter() - started
        slowest = max((trial.seconds for trial in search.trials), default=0.0)
        if search.trials and elapsed + slowest > time_budget_s:
            break
        trial_started = time.perf_counter()
        metrics = score(settings)
        search.trials.append(Trial(settings, metrics, time.perf_counter() - trial_started))
    search.elapsed_s = time.perf_counter() - started
    return search
