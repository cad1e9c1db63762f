"""Where the landing zone and the lake keep their files: a local folder (the embedded default) or
an Azure Blob Storage container. Names are relative paths with forward slashes either way."""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContainerClient
from dagster import ConfigurableResource
from dagster_azure.blob import AzureBlobStorageResource
from pydantic import PrivateAttr


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    modified_ns: int


class FileStore(ConfigurableResource):
    """The few operations the landing zone and the lake need from a file system."""

    def list(self, prefix: str) -> list[FileInfo]:
        """Every file under `prefix` (a folder name ending in "/", any depth), in name order."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        """A file's bytes; FileNotFoundError when there is none."""
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        """A file to seek in and read parts of; a store without range reads reads it whole."""
        return io.BytesIO(self.read(name))

    def write(self, name: str, data: bytes) -> None:
        """Create or replace a file."""
        raise NotImplementedError

    def delete_folder(self, prefix: str) -> None:
        raise NotImplementedError

    def location(self, name: str) -> str:
        """Where a user finds a file or folder, for messages and metadata."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    @contextmanager
    def folder_to_write(self, prefix: str) -> Iterator[Path]:
        """A local folder to write a folder's files into (model formats that write folders);
        they replace the folder's previous files when the block ends without an error."""
        with tempfile.TemporaryDirectory(prefix="reco-upload-") as staging:
            yield Path(staging)
            self.delete_folder(prefix)
            for path in sorted(Path(staging).rglob("*")):
                if path.is_file():
                    self.write(prefix + path.relative_to(staging).as_posix(), path.read_bytes())

    @contextmanager
    def folder_to_read(self, prefix: str) -> Iterator[Path]:
        """A local copy of a folder's files, for readers that want a folder."""
        files = self.list(prefix)
        if not files:
            raise FileNotFoundError(f"nothing at {self.location(prefix)}")
        with tempfile.TemporaryDirectory(prefix="reco-download-") as staging:
            for file in files:
                target = Path(staging) / file.name.removeprefix(prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.read(file.name))
            yield Path(staging)


class LocalFiles(FileStore):
    """Files under a local folder, `root`."""

    root: str

    def _path(self, name: str) -> Path:
        return Path(self.root) / name

    def list(self, prefix: str) -> list[FileInfo]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        return [
            FileInfo(path.relative_to(self.root).as_posix(), info.st_size, info.st_mtime_ns)
            for path in sorted(folder.rglob("*"))
            if path.is_file() and (info := path.stat())
        ]

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def open(self, name: str) -> BinaryIO:
        return self._path(name).open("rb")

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and renamed, so a reader never sees half a file.
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        partial.replace(path)

    def delete_folder(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def location(self, name: str) -> str:
        return str(self._path(name))

    @contextmanager
    def folder_to_read(self, prefix: str) -> Iterator[Path]:
        folder = self._path(prefix)
        if not folder.is_dir():
            raise FileNotFoundError(f"nothing at {folder}")
        yield folder


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
        return sorted(
            (
                FileInfo(
                    blob.name.removeprefix(self.prefix),
                    blob.size,
                    int(blob.last_modified.timestamp() * 1e9),
                )
                for blob in blobs
            ),
            key=lambda file: file.name,
        )

    def read(self, name: str) -> bytes:
        try:
            return self._container().download_blob(self.prefix + name).readall()
        except ResourceNotFoundError as error:
            raise FileNotFoundError(f"no blob {self.location(name)}") from error

    def exists(self, name: str) -> bool:
        return self._container().get_blob_client(self.prefix + name).exists()

    def write(self, name: str, data: bytes) -> None:
        # A blob upload commits whole or not at all: readers never see half a file.
        self._container().upload_blob(self.prefix + name, data, overwrite=True)

    def delete_folder(self, prefix: str) -> None:
        container = self._container()
        for blob in container.list_blobs(name_starts_with=self.prefix + prefix):
            container.delete_blob(blob.name)

    def location(self, name: str) -> str:
        return f"{self._container().url}/{self.prefix}{name}"
