"""Benchmark: recommendation quality on MovieLens 100K, full flow in a fresh data dir.

    .venv/bin/python bench/quality.py

Protocol: per-user stratified random 75/25 split (seed 42), k = 10, items seen in training
excluded from the rankings, metrics as Microsoft Recommenders defines them. Prints the
production Spark ALS, EASE, the popularity baseline, and an explicit-rating ALS (RMSE), each
trained by the project's own assets. The last line is one JSON object of the figures.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RATING_MODEL = {
    "implicit_prefs": False,
    "rank": 20,
    "max_iter": 20,
    "reg_param": 0.15,
    "popularity_prior": 0.0,
}
TARGETS = {
    "als_precision_at_10": 0.42,
    "als_ndcg_at_10": 0.48,
    "als_map_at_10": 0.15,
    "ease_precision_at_10": 0.43,
    "ease_ndcg_at_10": 0.49,
}


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="reco-quality-"))
    os.environ["RECO_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from reco_dagster.datasets import main as fetch_dataset

    fetch_dataset(["movielens-100k"])
    definitions = importlib.import_module("reco_dagster.definitions")
    lake = data_dir / "lake"
    with DagsterInstance.ephemeral() as instance:
        batch = definitions.defs.resolve_job_def("batch_retrain").execute_in_process(
            instance=instance
        )
        assert batch.success, "batch_retrain failed"
        als = json.loads((lake / "als_evaluation.json").read_text())
        ease = json.loads((lake / "ease_evaluation.json").read_text())
        als_fit_s = _metadata(instance, "als_model", "fit_s")

        rating = materialize(
            definitions.batch_assets,
            selection=[
                AssetKey(name)
                for name in (
                    "als_hyperparameters",
                    "als_evaluation_model",
                    "als_model",
                    "als_evaluation",
                )
            ],
            resources=definitions.build_resources(),
            run_config={"resources": {"als": {"config": RATING_MODEL}}},
            instance=instance,
        )
        assert rating.success, "the rating model failed"
        rating_metrics = json.loads((lake / "als_evaluation.json").read_text())["metrics"]

    figures: dict[str, float | str] = {
        **{f"als_{name}": round(value, 4) for name, value in als["metrics"].items()},
        "als_fit_s": als_fit_s,
        "als_settings": json.dumps(als["settings"], sort_keys=True),
        **{f"ease_{name}": round(value, 4) for name, value in ease["metrics"].items()},
        "ease_settings": json.dumps(ease["settings"], sort_keys=True),
        **{
            f"popularity_{name}": round(value, 4)
            for name, value in als["popularity_baseline"].items()
        },
        "rating_model_rmse": round(rating_metrics["rmse"], 4),
        "rating_model_mae": round(rating_metrics["mae"], 4),
        "rating_model_settings": json.dumps(RATING_MODEL, sort_keys=True),
    }
    width = max(map(len, figures))
    for name, value in figures.items():
        target = TARGETS.get(name)
        verdict = (
            ""
            if target is None
            else f"  (target ≥ {target}: {'met' if value >= target else 'NOT met'})"
        )
        if name == "rating_model_rmse":
            verdict = f"  (target ≤ 0.92: {'met' if value <= 0.92 else 'NOT met'})"
        print(f"{name:<{width}}  {value}{verdict}")
    print(json.dumps(figures))


def _metadata(instance, asset: str, key: str) -> float:
    event = instance.get_latest_materialization_event(AssetKey(asset))
    return event.asset_materialization.metadata[key].value


if __name__ == "__main__":
    main()
