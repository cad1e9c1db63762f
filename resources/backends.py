"""The deployment's backends as Dagster resources: the file store (landing zone, lake) and the
recommendation store. Both code locations use them, the streaming one included, so this
module loads neither Spark nor the model settings."""

from __future__ import annotations

from dagster import ConfigurableResource, EnvVar, InitResourceContext

from resources.deployment import (
    Secret,
    blob_settings,
    cosmos_settings,
    data_dir,
    deployment,
    sqlite_store_path,
)
from resources.files import FileStore, LocalFiles
from resources.store import RecommendationStore, SqliteRecommendationStore


class BlobStore(ConfigurableResource):
    """The file store in Azure Blob Storage for resources that hold one (annotated
    `ResourceDependency[FileStore]`): they get a `BlobFiles`, made when a run starts; `key`
    None signs in with DefaultAzureCredential (managed identity)."""

    account_url: str
    container: str = "reco"
    key: str | None = None

    def create_resource(self, context: InitResourceContext) -> FileStore:
        # adlfs and Azure's SDK only where they are used: they add 0.2 s to every process's start.
        from resources.blob_files import BlobFiles

        return BlobFiles(self.account_url, self.container, self.key)


def file_store() -> LocalFiles | BlobStore:
    """Where the landing zone and the lake are, for Dagster's resources (plain processes have
    `resources.deployment.deployment_files`): the folder `RECO_DATA_DIR`, or for azure the
    container `blob_settings` names, its secrets read through `EnvVar` when a run starts."""
    if deployment() == "embedded":
        return LocalFiles(str(data_dir()))
    return BlobStore(**blob_settings(EnvVar))


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
