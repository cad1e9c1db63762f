"""The deployment's backends as Dagster resources: the file store (landing zone, lake) and the
recommendation store. Both code locations use them, the streaming one included, so this
module loads neither Spark nor the model settings."""

from __future__ import annotations

import os

from dagster import ConfigurableResource, EnvVar, InitResourceContext

from resources.deployment import Secret, cosmos_settings, data_dir, deployment, sqlite_store_path
from resources.files import FileStore, LocalFiles
from resources.store import RecommendationStore, SqliteRecommendationStore


def file_store(secret: Secret = EnvVar) -> FileStore:
    """Where the landing zone and the lake are: `RECO_DATA_DIR`, or for azure the container
    `RECO_BLOB_CONTAINER` (default reco) of the account at `RECO_BLOB_ACCOUNT_URL`, signed in
    with `RECO_BLOB_KEY` when set, else with DefaultAzureCredential (managed identity)."""
    if deployment() == "embedded":
        return LocalFiles(root=str(data_dir()))
    # Azure's SDKs only where they are used: they add 0.3 s to every process's start.
    from dagster_azure.blob import (
        AzureBlobStorageDefaultCredential,
        AzureBlobStorageKeyCredential,
        AzureBlobStorageResource,
    )

    from resources.blob_files import BlobFiles

    credential = (
        AzureBlobStorageKeyCredential(key=secret("RECO_BLOB_KEY"))
        if os.environ.get("RECO_BLOB_KEY")
        else AzureBlobStorageDefaultCredential()
    )
    return BlobFiles(
        storage=AzureBlobStorageResource(
            account_url=secret("RECO_BLOB_ACCOUNT_URL"), credential=credential
        ),
        container=os.environ.get("RECO_BLOB_CONTAINER", "reco"),
    )


class SqliteStore(ConfigurableResource):
    """The embedded store for assets, jobs and sensors: they get a `RecommendationStore`
    (annotate `ResourceParam[RecommendationStore]`)."""

    path: str

    def create_resource(self, context: InitResourceContext) -> RecommendationStore:
        return SqliteRecommendationStore(path=self.path)


class CosmosStore(ConfigurableResource):
    """Azure Cosmos DB for assets, jobs and sensors; `key` None signs in with
    DefaultAzureCredential (managed identity)."""

    endpoint: str
    key: str | None = None
    database: str = "reco"

    def create_resource(self, context: InitResourceContext) -> RecommendationStore:
        from resources.cosmos_store import CosmosRecommendationStore

        return CosmosRecommendationStore(
            endpoint=self.endpoint, key=self.key, database=self.database
        )


def store_resource(secret: Secret = EnvVar) -> SqliteStore | CosmosStore:
    """The store this deployment serves from (`resources.deployment.recommendation_store`),
    as a Dagster resource whose secrets are read from the environment when a run starts."""
    if deployment() == "embedded":
        return SqliteStore(path=str(sqlite_store_path()))
    return CosmosStore(**cosmos_settings(secret))
