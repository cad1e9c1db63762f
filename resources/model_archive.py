"""Every published model version's item side (card and item factors), kept by version id, so
that the micro-batch folds users into exactly the live version (the lake's `*_model` may be
newer and rejected)."""

from dagster import ConfigurableResource

from reco_dagster.domain.models import CARD_FILE, FactorModel
from resources.files import FileStore

VERSIONS = "lake/versions/"


class ModelArchive(ConfigurableResource):
    files: FileStore

    def save(self, model: FactorModel) -> bool:
        """Write a version's item side once; False when it is archived already. A version id
        names one model, so a complete copy (its card, written last) is never rewritten: a
        micro-batch may be reading it."""
        folder_name = f"{VERSIONS}{model.version}/"
        if self.files.exists(folder_name + CARD_FILE):
            return False
        with self.files.folder_to_write(folder_name) as folder:
            model.save(folder)
        return True

    def location(self, version: str) -> str:
        return self.files.location(f"{VERSIONS}{version}/")

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
