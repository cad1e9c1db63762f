"""Every published model version's item side (card and item factors), kept by version id, so
that the micro-batch folds users into exactly the live version (the lake's `*_model` may be
newer and rejected)."""

from dagster import ConfigurableResource

from reco_dagster.domain.models import FactorModel
from resources.files import FileStore

VERSIONS = "lake/versions/"


class ModelArchive(ConfigurableResource):
    files: FileStore

    def save(self, model: FactorModel) -> None:
        with self.files.folder_to_write(f"{VERSIONS}{model.version}/") as folder:
            model.save(folder)

    def load(self, version: str) -> FactorModel:
        try:
            with self.files.folder_to_read(f"{VERSIONS}{version}/") as folder:
                return FactorModel.load(folder)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"model version {version} is not in the archive "
                f"({self.files.location(VERSIONS + version)}); "
                "re-run batch_retrain to publish a version the micro-batch can score with"
            ) from None
