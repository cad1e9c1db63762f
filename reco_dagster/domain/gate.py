"""The quality gate: may a newly trained model replace the live one?"""

from __future__ import annotations

from collections.abc import Mapping

COMPARED_METRICS = ("precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10")


def gate_failures(
    metrics: Mapping[str, float],
    floors: Mapping[str, float],
    live_metrics: Mapping[str, float] | None,
    live_version: str | None,
    tolerance: float,
) -> list[str]:
    """One message per failed rule, naming the metric and by how much it failed.

    Every floored metric must reach its floor; every ranking metric must not fall below the
    live model's by more than `tolerance` (a fraction of the live value).
    """
    failures = []
    for name, floor in floors.items():
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} was not measured, but it has a floor of {floor:.4f}")
        elif value < floor:
            failures.append(
                f"{name} = {value:.4f} is {floor - value:.4f} below its floor {floor:.4f}"
            )
    for name in COMPARED_METRICS:
        value, live_value = metrics.get(name), (live_metrics or {}).get(name)
        if value is None or not live_value:
            continue
        if value < live_value * (1.0 - tolerance):
            drop = live_value - value
            failures.append(
                f"{name} = {value:.4f} is {drop:.4f} ({drop / live_value:.1%}) below live "
                f"version {live_version}'s {live_value:.4f}, beyond the {tolerance:.0%} tolerance"
            )
    return failures


def gate_floors(
    floors: Mapping[str, float], popularity_precision: float, min_lift: float
) -> dict[str, float]:
    """The configured floors, with precision@10 raised to `min_lift` times the popularity
    baseline's."""
    raised = dict(floors)
    lifted = min_lift * popularity_precision
    raised["precision_at_10"] = max(raised.get("precision_at_10", 0.0), lifted)
    return raised


def choose_family(
    validation_ndcg: Mapping[str, float], passed: set[str], pinned: str | None
) -> str | None:
    """The family to serve: the pinned one if it passed the gate, else the passing family
    with the best validation nDCG@10; None when nothing may go live."""
    if pinned is not None:
        return pinned if pinned in passed else None
    ranked = sorted(passed, key=lambda family: validation_ndcg.get(family, 0.0), reverse=True)
    return ranked[0] if ranked else None
