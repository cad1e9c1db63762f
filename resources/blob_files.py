"""The file store on Azure Blob Storage: a module of its own, so that processes on the
embedded deployment (each micro-batch's, the API's) do not load Azure's SDK."""

from __future__ import annotations

from contextlib import suppress

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobPrefix, BlobProperties, ContainerClient
from dagster_azure.blob import AzureBlobStorageResource
from pydantic import PrivateAttr

from resources.files import FileInfo, FileStore, SkipFolder


class BlobFiles(FileStore):
    """Blobs in an Azure Blob Storage container (created if missing), under `prefix`."""

    storage: AzureBlobStorageResource
    container: str = "reco"
    prefix: str = ""

    _client: ContainerClient | None = PrivateAttr(default=None)

    def _container(self) -> ContainerClient:
        if self._client is None:
            with self.storage.get_client() as service:
                client = ContainerClient(service.url, self.container, credential=service.credential)
            with suppress(ResourceExistsError):
                client.create_container()
            self._client = client
        return self._client

    def list(self, prefix: str) -> list[FileInfo]:
        blobs = self._container().list_blobs(name_starts_with=self.prefix + prefix)
        return sorted((self._info(blob) for blob in blobs), key=lambda file: file.name)

    def entries(self, prefix: str, skip: SkipFolder | None = None) -> list[FileInfo]:
        if skip is None:
            # One flat listing: far fewer calls than a folder-by-folder walk of a deep tree.
            return self.list(prefix)
        found: list[FileInfo] = []
        folders = [self.prefix + prefix]
        while folders:
            for item in self._container().walk_blobs(name_starts_with=folders.pop()):
                if isinstance(item, BlobPrefix):
                    if not skip(item.name.removeprefix(self.prefix)):
                        folders.append(item.name)
                else:
                    found.append(self._info(item))
        return sorted(found, key=lambda file: file.name)

    def _info(self, blob: BlobProperties) -> FileInfo:
        return FileInfo(
            blob.name.removeprefix(self.prefix),
            blob.size,
            int(blob.last_modified.timestamp() * 1e9),
            # Listings give the etag bare, downloads in quotes.
            etag=blob.etag.strip('"'),
        )

    def info(self, name: str) -> FileInfo | None:
        try:
            return self._info(
                self._container().get_blob_client(self.prefix + name).get_blob_properties()
            )
        except ResourceNotFoundError:
            return None

    def read(self, name: str) -> bytes:
        try:
            return self._container().download_blob(self.prefix + name).readall()
        except ResourceNotFoundError as error:
            raise FileNotFoundError(f"no blob {self.location(name)}") from error

    def read_if_unchanged(self, file: FileInfo) -> bytes | None:
        try:
            download = self._container().download_blob(self.prefix + file.name)
        except ResourceNotFoundError as error:
            raise FileNotFoundError(f"no blob {self.location(file.name)}") from error
        # A blob is committed whole; a newer version than the listed one waits for the next look.
        if self._info(download.properties).version != file.version:
            return None
        return download.readall()

    def exists(self, name: str) -> bool:
        return self._container().get_blob_client(self.prefix + name).exists()

    def write(self, name: str, data: bytes) -> None:
        # A blob upload commits whole or not at all: readers never see half a file.
        self._container().upload_blob(self.prefix + name, data, overwrite=True)

    def delete(self, name: str) -> None:
        with suppress(ResourceNotFoundError):
            self._container().delete_blob(self.prefix + name)

    def delete_folder(self, prefix: str) -> None:
        container = self._container()
        for blob in container.list_blobs(name_starts_with=self.prefix + prefix):
            container.delete_blob(blob.name)

    def location(self, name: str) -> str:
        return f"{self._container().url}/{self.prefix}{name}"
