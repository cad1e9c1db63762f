"""Every published model version's factors, kept by version id, so that the micro-batch
scores against exactly the live version (the lake's `*_model` may be newer and rejected)."""

from pathlib import Path

from dagster import ConfigurableResource

from reco_dagster.domain.models import FactorModel


class ModelArchive(ConfigurableResource):
    base_dir: str

    def save(self, model: FactorModel) -> None:
        directory = Path(self.base_dir) / model.version
        directory.mkdir(parents=True, exist_ok=True)
        model.save(directory)

    def load(self, version: str) -> FactorModel:
        directory = Path(self.base_dir) / version
        if not directory.exists():
            raise FileNotFoundError(
                f"model version {version} is not in the archive ({directory}); "
                "re-run batch_retrain to publish a version the micro-batch can score with"
            )
        return FactorModel.load(directory)
