"""Where the landing zone, the lake, the model archive and the API's writes keep their files:
a local folder (the embedded default) or an Azure Blob Storage container
(`resources.blob_files`), both through fsspec. Names are relative paths with forward slashes
either way.

Plain Python, without Dagster, so that the API (a lookup service) writes and reads through
the same code as the pipeline. Dagster resources hold a store as
`files: ResourceDependency[FileStore]`, in modules without `from __future__ import
annotations`: Dagster must see that annotation as an object to take a plain store."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem


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


class ChangedWhileReadError(OSError):
    """A file was replaced between its opening and a read of its bytes."""


SkipFolder = Callable[[str], bool]
"""Given a folder's name (ending in "/"), whether a walk leaves it and everything in it out."""


class FileStore(ABC):
    """The few operations the landing zone, the lake, the model archive and the API need from
    a file system: the fsspec file system `fs`, under its folder `root`."""

    def __init__(self, fs: AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _top(self, prefix: str) -> str:
        """The path a listing of the folder `prefix` starts from, ending in "/"."""
        return self._path(prefix)

    @abstractmethod
    def _entry(self, name: str, found: dict) -> FileInfo:
        """`name`'s entry from what `fs` says of it (an fsspec info dict)."""

    def list(self, prefix: str) -> list[FileInfo]:
        """Every regular file under `prefix` (a folder name ending in "/", any depth), in name
        order."""
        return [file for file in self.entries(prefix) if file.kind == "file"]

    def entries(self, prefix: str, skip: SkipFolder | None = None) -> list[FileInfo]:
        """Everything under `prefix` but folders, in name order: symbolic links and special
        files too, which `list` leaves out. Folders `skip` names are not looked into, so
        their contents cost nothing."""
        top = self._top(prefix)
        return sorted(
            (
                self._entry(prefix + found["name"].removeprefix(top), found)
                for found in self._under(top, prefix, skip)
                # A listing of a path that is a file, not a folder, gives that file.
                if found["name"].startswith(top) and not _WRITING.match(found["name"])
            ),
            key=lambda file: file.name,
        )

    def _under(self, top: str, prefix: str, skip: SkipFolder | None) -> Iterable[dict]:
        """What is under `top` (`_top(prefix)`) but folders, as fsspec info dicts, leaving
        out the folders `skip` names: a walk, one folder at a time. Not fsspec's `walk`,
        which passes over a folder it cannot list (its files would silently never land), and
        adlfs's cannot leave folders out."""
        folders = [top]
        while folders:
            for found in self._listing(folders.pop()):
                if found["type"] != "directory":
                    yield found
                elif skip is None or not skip(prefix + found["name"].removeprefix(top) + "/"):
                    folders.append(found["name"] + "/")

    def _listing(self, folder: str) -> Iterable[dict]:
        """A folder's entries, as fsspec info dicts, each once; none when it is not there."""
        try:
            listed = self.fs.ls(folder, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        # adlfs lists a folder of an ADLS Gen2 account twice: its blob and its prefix (and a
        # blob `a` beside a prefix `a/` once each, by the same name).
        return {(found["name"], found["type"]): found for found in listed}.values()

    def info(self, name: str) -> FileInfo | None:
        """One entry, as `entries` would list it; None when there is none."""
        try:
            found = self.fs.info(self._path(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if found["type"] == "directory" else self._entry(name, found)

    def exists(self, name: str) -> bool:
        """Whether `name` is a regular file."""
        found = self.info(name)
        return found is not None and found.kind == "file"

    def read(self, name: str) -> bytes:
        """A file's bytes; FileNotFoundError when there is none."""
        return self.fs.cat_file(self._path(name))

    def read_json(self, name: str) -> dict | None:
        """A JSON file's content; None when there is none."""
        try:
            return json.loads(self.read(name))
        except FileNotFoundError:
            return None

    @abstractmethod
    def read_if_unchanged(self, file: FileInfo) -> bytes | None:
        """A listed file's bytes, or None when it has changed since it was listed (a writer is
        still at work)."""

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A file to seek in and read parts of, without reading the rest;
        FileNotFoundError when there is none."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Create or replace a file, so that readers see all of it or none, and it survives a
        crash once this returns."""

    def delete(self, name: str) -> None:
        """Remove a file; nothing happens when there is none."""
        with suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    def delete_folder(self, prefix: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.rm(self._path(prefix), recursive=True)

    @abstractmethod
    def location(self, name: str) -> str:
        """Where a user finds a file or folder, for messages and metadata."""

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


_WRITING = re.compile(r".*/\.[^/]+\.[0-9a-f]{32}\.tmp$")
"""A file `LocalFiles.write` has not finished, and never will when its writer died: no
listing gives it (a lake reader would take it for a table, a ledger entry or events)."""


class _LocalFileSystem(LocalFileSystem):
    """fsspec's local file system, where an entry is only ever looked at itself: its `info`
    would stat a symbolic link's target (for its size, and given a path for its type too),
    looking outside the landing zone, and gives modification times in float seconds, too
    coarse for `FileInfo.version`."""

    def info(self, path: str | os.DirEntry, **kwargs: object) -> dict:
        if isinstance(path, os.DirEntry):
            found, path = path.stat(follow_symlinks=False), path.path
        else:
            found = os.lstat(self._strip_protocol(path))
        mode = found.st_mode
        return {
            "name": self._strip_protocol(path),
            "size": found.st_size,
            "type": "directory"
            if stat.S_ISDIR(mode)
            else "file"
            if stat.S_ISREG(mode)
            else "other",
            "islink": stat.S_ISLNK(mode),
            "mtime_ns": found.st_mtime_ns,
        }


class LocalFiles(FileStore):
    """Files under a local folder, `root`."""

    def __init__(self, root: str) -> None:
        fs = _LocalFileSystem()
        super().__init__(fs, fs._strip_protocol(root))

    def _top(self, prefix: str) -> str:
        # Where the folder really is: links on the way to it are followed (the landing zone
        # may be a link to a mount), those under it never.
        return os.path.realpath(self._path(prefix)) + "/"

    def _entry(self, name: str, found: dict) -> FileInfo:
        kind = "symlink" if found["islink"] else "file" if found["type"] == "file" else "special"
        return FileInfo(name, found["size"], found["mtime_ns"], kind)

    def read_if_unchanged(self, file: FileInfo) -> bytes | None:
        # By hand: fsspec's local files follow links and wait for a FIFO's writer.
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
        return self.fs.open(self._path(name), "rb")

    def write(self, name: str, data: bytes) -> None:
        # By hand: fsspec writes a local file in place, or in a transaction through the system's
        # temporary folder, which a rename does not move atomically. Here a sibling (hidden and
        # .tmp: the landing scan skips it; unique: two writers of one name never share it) is
        # written and synced, then renamed into place, and the folder synced so the rename
        # outlives a crash.
        path = Path(self._path(name))
        _make_folders(path.parent)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_folder(path.parent)

    def location(self, name: str) -> str:
        return self._path(name)

    @contextmanager
    def folder_to_read(self, prefix: str) -> Iterator[Path]:
        folder = Path(self._path(prefix))
        if not folder.is_dir():
            raise FileNotFoundError(f"nothing at {folder}")
        yield folder


def _make_folders(folder: Path) -> None:
    """Create `folder` and its missing parents, each new one's entry synced into its parent."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with suppress(FileExistsError):  # another writer made it meanwhile
            new.mkdir()
        _sync_folder(new.parent)


def _sync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
