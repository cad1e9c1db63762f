"""Where the landing zone and the lake keep their files: a local folder (the embedded default) or
an Azure Blob Storage container (`resources.blob_files`). Names are relative paths with forward
slashes either way."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from dagster import ConfigurableResource


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    modified_ns: int
    kind: Literal["file", "symlink", "special"] = "file"
    """A regular file, a symbolic link (never followed), or a FIFO, socket or device."""
    etag: str | None = None
    """The store's own version tag (Blob Storage), which changes with every write."""

    @property
    def version(self) -> str:
        """What changes whenever the bytes may have: the etag where the store keeps one, else
        size and modification time. With the name, the file's identity."""
        return self.etag or f"{self.size}:{self.modified_ns}"


SkipFolder = Callable[[str], bool]
"""Given a folder's name (ending in "/"), whether a walk leaves it and everything in it out."""


class FileStore(ConfigurableResource):
    """The few operations the landing zone and the lake need from a file system."""

    def list(self, prefix: str) -> list[FileInfo]:
        """Every regular file under `prefix` (a folder name ending in "/", any depth), in name
        order."""
        raise NotImplementedError

    def entries(self, prefix: str, skip: SkipFolder | None = None) -> list[FileInfo]:
        """Everything under `prefix` but folders, in name order: symbolic links and special
        files too, which `list` leaves out. Folders `skip` names are not looked into, so
        their contents cost nothing."""
        raise NotImplementedError

    def info(self, name: str) -> FileInfo | None:
        """One entry, as `entries` would list it; None when there is none."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        """A file's bytes; FileNotFoundError when there is none."""
        raise NotImplementedError

    def read_if_unchanged(self, file: FileInfo) -> bytes | None:
        """A listed file's bytes, or None when it has changed since it was listed (a writer is
        still at work)."""
        raise NotImplementedError

    def read_json(self, name: str) -> dict | None:
        """A JSON file's content; None when there is none."""
        try:
            return json.loads(self.read(name))
        except FileNotFoundError:
            return None

    def open(self, name: str) -> BinaryIO:
        """A file to seek in and read parts of; a store without range reads reads it whole."""
        return io.BytesIO(self.read(name))

    def write(self, name: str, data: bytes) -> None:
        """Create or replace a file."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        """Remove a file; nothing happens when there is none."""
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
        return [file for file in self.entries(prefix) if file.kind == "file"]

    def entries(self, prefix: str, skip: SkipFolder | None = None) -> list[FileInfo]:
        found: list[FileInfo] = []
        self._walk(self._path(prefix), skip or (lambda _: False), found)
        return sorted(found, key=lambda file: file.name)

    def _walk(self, folder: Path, skip: SkipFolder, found: list[FileInfo]) -> None:
        """Looks at each entry itself (lstat): links are reported, never followed."""
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not skip(self._name(entry.path) + "/"):
                    self._walk(Path(entry.path), skip, found)
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed while we looked
                continue
            found.append(self._info(self._name(entry.path), info))

    def _name(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    @staticmethod
    def _info(name: str, info: os.stat_result) -> FileInfo:
        kind = (
            "symlink"
            if stat.S_ISLNK(info.st_mode)
            else "file"
            if stat.S_ISREG(info.st_mode)
            else "special"
        )
        return FileInfo(name, info.st_size, info.st_mtime_ns, kind)

    def info(self, name: str) -> FileInfo | None:
        try:
            found = self._path(name).lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if stat.S_ISDIR(found.st_mode) else self._info(name, found)

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def read_if_unchanged(self, file: FileInfo) -> bytes | None:
        path = self._path(file.name)
        # A link anywhere on the path must not lead out of the folder the file was listed in.
        top = Path(os.path.realpath(self._path(file.name.split("/")[0])))
        if not Path(os.path.realpath(path)).is_relative_to(top):
            raise PermissionError(f"{file.name} leads out of {top}")
        # O_NOFOLLOW: a link swapped in since the listing is refused; O_NONBLOCK: so is a FIFO,
        # without waiting for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(descriptor, "rb") as handle:
            before = os.fstat(descriptor)
            if not stat.S_ISREG(before.st_mode):
                raise PermissionError(f"{file.name} is not a regular file")
            data = handle.read()
            after = os.fstat(descriptor)
        looks = {
            (file.size, file.modified_ns),
            (before.st_size, before.st_mtime_ns),
            (after.st_size, after.st_mtime_ns),
            (len(data), file.modified_ns),
        }
        return data if len(looks) == 1 else None

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

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

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
