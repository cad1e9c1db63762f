"""The file store on Azure Blob Storage (ADLS Gen2 too) through adlfs: a module of its own, so
that processes on the embedded deployment (each micro-batch's, the API's) load neither adlfs
nor Azure's SDK."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from typing import BinaryIO
from urllib.parse import urlsplit

from adlfs import AzureBlobFileSystem
from adlfs.spec import AzureBlobFile
from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from fsspec.asyn import sync, sync_wrapper

from resources.files import ChangedWhileReadError, FileInfo, FileStore, SkipFolder

READ_BLOCK = 64 * 2**10
"""What a read of an opened blob fetches past what it asks for (fsspec's read-ahead): about a
row group of the user-sorted history (`USERS_ROW_GROUP` events, some 60 KB), so that a
user's events take one request and a few users' a small part of the file."""


class BlobFiles(FileStore):
    """Blobs in a container (created if missing) of the storage account at `account_url`,
    signed in with the account `key`, or without one with DefaultAzureCredential."""

    def __init__(self, account_url: str, container: str = "reco", key: str | None = None) -> None:
        url = urlsplit(account_url)
        # The account is the host's first label (ACCOUNT.blob.core.windows.net), or on a
        # path-style endpoint the first folder (azurite's http://127.0.0.1:10000/devstoreaccount1).
        account = url.path.strip("/").split("/")[0] or str(url.hostname).split(".")[0]
        sign_in = (
            # A connection string keeps the endpoint's scheme (azurite serves http).
            {
                "connection_string": (
                    f"AccountName={account};AccountKey={key};BlobEndpoint={account_url}"
                )
            }
            if key
            # adlfs signs in with DefaultAzureCredential (over https).
            else {"account_name": account, "account_host": url.netloc, "anon": False}
        )
        # No listings cache: every look is a fresh one (the landing sensor compares it with its
        # previous look).
        fs = _BlobFileSystem(**sign_in, use_listings_cache=False)
        # Not adlfs's makedir: it fails when another process creates the container between its
        # look and its create (replicas starting together).
        with suppress(ResourceExistsError):
            sync(fs.loop, fs.service_client.create_container, container)
        super().__init__(fs, container)
        self.url = f"{account_url.rstrip('/')}/{container}"

    def _under(self, top: str, prefix: str, skip: SkipFolder | None) -> Iterable[dict]:
        if skip is not None:
            return super()._under(top, prefix, skip)
        # One flat listing: far fewer calls than a folder-by-folder walk of a deep tree.
        found = self.fs.find(top, detail=True)
        # adlfs answers a path that is a blob with a list of it.
        return found.values() if isinstance(found, dict) else found

    def _entry(self, name: str, found: dict) -> FileInfo:
        return FileInfo(
            name,
            found["size"],
            int(found["last_modified"].timestamp() * 1e9),
            # adlfs gives etags in quotes, as HTTP does.
            etag=found["etag"].strip('"'),
        )

    def read_if_unchanged(self, file: FileInfo) -> bytes | None:
        with self.open(file.name) as blob:
            # A blob is committed whole; a newer version than the listed one waits for the next
            # look, and so does one written between this look and the read.
            if self._entry(file.name, blob.details).version != file.version:
                return None
            try:
                return blob.read()
            except ChangedWhileReadError:
                return None

    def open(self, name: str) -> BinaryIO:
        return _PinnedBlobFile(
            self.fs, self._path(name), block_size=READ_BLOCK, cache_type="readahead"
        )

    def write(self, name: str, data: bytes) -> None:
        # A blob upload commits whole or not at all, and answers once the service stored it.
        self.fs.pipe_file(self._path(name), data)

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"


class _BlobFileSystem(AzureBlobFileSystem):
    """adlfs's file system, taking a path ("container/name") as it is: adlfs reads it as a URL,
    which drops tabs and newlines from a blob's name and moves what follows a "?" in it."""

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return path.lstrip("/")


class _PinnedBlobFile(AzureBlobFile):
    """A blob read in ranges, each at the version the blob had when it was opened (`If-Match`
    its etag), as a whole download is: one rewritten meanwhile (the erasure rewrites files in
    place) fails the read instead of mixing two versions' bytes, as adlfs's own ranges
    would."""

    async def _async_fetch_range(self, start: int, end: int | None = None, **_: object) -> bytes:
        end = self.size if end is None else min(end, self.size)
        try:
            download = await self.container_client.download_blob(
                self.blob,
                offset=start,
                length=end - start,
                etag=self.details["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
            return await download.readall()
        # As OSErrors, as a local file's reader would meet them: the callers' handlers apply.
        except ResourceNotFoundError as error:
            raise FileNotFoundError(f"{self.path} was deleted while read") from error
        except ResourceModifiedError as error:
            raise ChangedWhileReadError(f"{self.path} was rewritten while read") from error

    _fetch_range = sync_wrapper(_async_fetch_range)
