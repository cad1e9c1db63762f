"""Every published model version's item side (card and item factors), kept by version id, so
that the micro-batch folds users into exactly the live version (the lake's `*_model` may be
newer and rejected)."""

import json

from dagster import ConfigurableResource, ResourceDependency

from reco_dagster.domain.models import ARCHIVE_FOLDER, CARD_FILE, FactorModel
from resources.files import FileStore

SNAPSHOT_FILE = "data_snapshot.json"


class ModelArchive(ConfigurableResource):
    files: ResourceDependency[FileStore]

    def save(self, model: FactorModel, data_snapshot_at: str | None) -> bool:
        """Write a version's item side once, with when the data it was trained on was taken
        (`HistorySnapshot.written_at`); False when it is archived already. A version id names
        one model, so a complete copy (its card, written last) is never rewritten: a
        micro-batch may be reading it."""
        folder_name = f"{ARCHIVE_FOLDER}{model.version}/"
        if self.files.exists(folder_name + CARD_FILE):
            return False
        with self.files.folder_to_write(folder_name) as folder:
            (folder / SNAPSHOT_FILE).write_text(json.dumps({"written_at": data_snapshot_at}))
            model.save(folder)
        return True

    def data_snapshot_at(self, version: str) -> str | None:
        """When the data a version was trained on was taken; None when the archive does not
        say (versions archived before it did)."""
        saved = self.files.read_json(f"{ARCHIVE_FOLDER}{version}/{SNAPSHOT_FILE}")
        return saved["written_at"] if saved else None

    def location(self, version: str) -> str:
        return self.files.location(f"{ARCHIVE_FOLDER}{version}/")

    def load(self, version: str) -> FactorModel:
        try:
            with self.files.folder_to_read(f"{ARCHIVE_FOLDER}{version}/") as folder:
                return FactorModel.load(folder)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"model version {version} is not in the archive "
                f"({self.files.location(ARCHIVE_FOLDER + version)}); "
                "re-run batch_retrain to publish a version the micro-batch can score with"
            ) from None
