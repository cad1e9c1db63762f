"""Files the API writes into the deployment's file store (the landing zone, its request
records), each whole or not at all. Plain Python: `resources/files.py`'s stores are Dagster
resources, which the API (a lookup service) must not load."""

from __future__ import annotations

import os
import uuid
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from resources.deployment import data_dir, deployment, required_env

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient


class WholeFiles(Protocol):
    def write(self, name: str, data: bytes) -> None:
        """Store `data` under `name` (replacing it) so that readers see all of it or none,
        and it survives a crash once this returns."""

    def read(self, name: str) -> bytes | None:
        """The file's bytes; None when there is none."""


class LocalWholeFiles:
    """Under a local folder: a `.tmp` sibling (which the landing scan skips) is written and
    synced, then renamed into place, and the folder synced so the rename outlives a crash."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        _make_folders(path.parent)
        # Unique: two requests writing one name (a retry racing its original) never share it.
        temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _sync_folder(path.parent)

    def read(self, name: str) -> bytes | None:
        with suppress(FileNotFoundError):
            return (self.root / name).read_bytes()
        return None


def _make_folders(folder: Path) -> None:
    """Create `folder` and its missing parents, each new one's entry synced into its parent."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with suppress(FileExistsError):  # another request made it meanwhile
            new.mkdir()
        _sync_folder(new.parent)


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class BlobWholeFiles:
    """Blobs in a container: an upload commits whole or not at all, and only answers once
    the service has stored it."""

    def __init__(self, container: ContainerClient) -> None:
        self.container = container

    def write(self, name: str, data: bytes) -> None:
        self.container.upload_blob(name, data, overwrite=True)

    def read(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        with suppress(ResourceNotFoundError):
            return self.container.download_blob(name).readall()
        return None


def deployment_files() -> WholeFiles:
    """The deployment's file store, as `resources.backends.file_store` picks it: the folder
    `RECO_DATA_DIR`, or for azure the container `RECO_BLOB_CONTAINER` (default reco) of the
    account at `RECO_BLOB_ACCOUNT_URL`, signed in with `RECO_BLOB_KEY` when set, else with
    DefaultAzureCredential."""
    if deployment() == "embedded":
        return LocalWholeFiles(data_dir())
    # Azure's SDK only where it is used: it adds 0.3 s to every process's start.
    from azure.core.exceptions import ResourceExistsError
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import ContainerClient

    key = os.environ.get("RECO_BLOB_KEY")
    container = ContainerClient(
        required_env("RECO_BLOB_ACCOUNT_URL"),
        os.environ.get("RECO_BLOB_CONTAINER", "reco"),
        credential=key or DefaultAzureCredential(),
    )
    with suppress(ResourceExistsError):
        container.create_container()
    return BlobWholeFiles(container)
