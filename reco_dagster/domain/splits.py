"""Per-user train/test splits, as Microsoft Recommenders' python_stratified_split and
python_chrono_split do them: every user keeps round(ratio * n) interactions for training."""

from __future__ import annotations

import numpy as np
import pandas as pd


def stratified_random_split(
    interactions: pd.DataFrame, ratio: float = 0.75, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame]:
    shuffle_key = np.random.default_rng(seed).random(len(interactions))
    return _split_by_order(interactions, shuffle_key, ratio)


def chronological_split(
    interactions: pd.DataFrame, ratio: float = 0.75
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's earliest interactions train, the latest ones test."""
    return _split_by_order(interactions, interactions["timestamp"].to_numpy(), ratio)


def _split_by_order(
    interactions: pd.DataFrame, order_key: np.ndarray, ratio: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"split ratio must be between 0 and 1, got {ratio}")
    keyed = interactions.assign(_key=order_key)
    position = keyed.sort_values(["user_id", "_key"], kind="stable").groupby("user_id").cumcount()
    counts = keyed.groupby("user_id")["user_id"].transform("size")
    in_train = position.reindex(keyed.index) < np.round(ratio * counts)
    return (
        interactions[in_train].reset_index(drop=True),
        interactions[~in_train].reset_index(drop=True),
    )
