"""Which deployment this process serves, where its data lives, its file store and its
recommendation store: what the API and the pipeline share. Plain Python, without Dagster or
Spark, so that the API (a lookup service) starts without loading the orchestrator.

`RECO_DEPLOYMENT` picks the backends: `embedded` (the default: files under `RECO_DATA_DIR`,
lists in a SQLite file) or `azure` (files in an Azure Blob Storage container, lists in Azure
Cosmos DB). Secrets are only ever read from the environment.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from resources.files import FileStore, LocalFiles
from resources.store import RecommendationStore, SqliteRecommendationStore

DEPLOYMENTS = ("embedded", "azure")

# The Azure SDKs log every HTTP request and response at INFO: keep them to warnings.
for sdk_http_log in (
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.cosmos._cosmos_http_logging_policy",
):
    logging.getLogger(sdk_http_log).setLevel(logging.WARNING)

Secret = Callable[[str], str]
"""How a caller gets a secret by its variable's name: `EnvVar` in Dagster's definitions (read
when a run starts, never stored in config), `required_env` in plain processes."""


def required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; the {deployment()} deployment needs it")
    return value


def deployment() -> str:
    chosen = os.environ.get("RECO_DEPLOYMENT", "embedded")
    if chosen not in DEPLOYMENTS:
        raise ValueError(f"RECO_DEPLOYMENT={chosen!r}: choose one of {', '.join(DEPLOYMENTS)}")
    return chosen


def data_dir() -> Path:
    return Path(os.environ.get("RECO_DATA_DIR", "data")).resolve()


def sqlite_store_path() -> Path:
    return Path(os.environ.get("RECO_SQLITE_PATH", data_dir() / "reco.sqlite")).resolve()


def event_weights() -> dict[str, float]:
    """The weight of each event type, as JSON in `RECO_EVENT_WEIGHTS` (default
    `DEFAULT_EVENT_WEIGHTS`): the pipeline weighs events by them and the API accepts the
    types they name, so both read one setting."""
    from reco_dagster.domain.events import DEFAULT_EVENT_WEIGHTS, checked_event_weights

    given = os.environ.get("RECO_EVENT_WEIGHTS")
    return checked_event_weights(json.loads(given) if given else DEFAULT_EVENT_WEIGHTS)


def published_depth() -> int:
    """How many items each published list keeps, `RECO_PUBLISHED_DEPTH` (default
    `PUBLISHED_DEPTH`): a request's filters pick k items out of them, and a list they leave
    short is filled from the trending list. Both code locations read it, so batch lists and
    micro-batch refreshes are as deep."""
    from reco_dagster.domain.lists import PUBLISHED_DEPTH

    depth = int(os.environ.get("RECO_PUBLISHED_DEPTH", PUBLISHED_DEPTH))
    if depth < 1:
        raise ValueError(f"RECO_PUBLISHED_DEPTH={depth}: lists need at least one item")
    return depth


def new_item_exposure() -> tuple[int, int]:
    """(every, min_interactions): one position in every `RECO_NEW_ITEM_EVERY` (default 10; 0
    turns exposure off) goes to a new item, an item the model does not know or that fewer
    than `RECO_NEW_ITEM_MIN_INTERACTIONS` (5) users have interacted with. Both code locations
    read them, so batch lists and micro-batch refreshes expose alike."""
    from reco_dagster.domain.exposure import EXPOSURE_EVERY, MIN_INTERACTIONS

    every = int(os.environ.get("RECO_NEW_ITEM_EVERY", EXPOSURE_EVERY))
    least = int(os.environ.get("RECO_NEW_ITEM_MIN_INTERACTIONS", MIN_INTERACTIONS))
    if every < 0 or least < 0:
        raise ValueError("RECO_NEW_ITEM_EVERY and RECO_NEW_ITEM_MIN_INTERACTIONS are >= 0")
    return every, least


def blob_settings(secret: Secret) -> dict[str, str | None]:
    """The container `RECO_BLOB_CONTAINER` (default reco, created if missing) of the storage
    account at `RECO_BLOB_ACCOUNT_URL`, signed in with `RECO_BLOB_KEY` when set, else with
    DefaultAzureCredential (managed identity, workload identity, `az login`)."""
    return {
        "account_url": secret("RECO_BLOB_ACCOUNT_URL"),
        "container": os.environ.get("RECO_BLOB_CONTAINER", "reco"),
        "key": secret("RECO_BLOB_KEY") if os.environ.get("RECO_BLOB_KEY") else None,
    }


def cosmos_settings(secret: Secret) -> dict[str, str | None]:
    """The Cosmos DB database `RECO_COSMOS_DATABASE` (default reco) at `RECO_COSMOS_ENDPOINT`,
    signed in with `RECO_COSMOS_KEY` when set, else with DefaultAzureCredential."""
    return {
        "endpoint": secret("RECO_COSMOS_ENDPOINT"),
        "key": secret("RECO_COSMOS_KEY") if os.environ.get("RECO_COSMOS_KEY") else None,
        "database": os.environ.get("RECO_COSMOS_DATABASE", "reco"),
    }


def deployment_files() -> FileStore:
    """The file store this deployment keeps its files in, for plain processes (the API,
    `reco_dagster.datasets`; Dagster's is `resources.backends.file_store`): the folder
    `RECO_DATA_DIR`, or for azure the container `blob_settings` names."""
    if deployment() == "embedded":
        return LocalFiles(str(data_dir()))
    # adlfs and Azure's SDK only where they are used: they add 0.2 s to every process's start.
    from resources.blob_files import BlobFiles

    return BlobFiles(**blob_settings(required_env))


def recommendation_store() -> RecommendationStore:
    """The store this deployment serves from: the SQLite file, or for azure Cosmos DB
    (`cosmos_settings`)."""
    if deployment() == "embedded":
        return SqliteRecommendationStore(path=str(sqlite_store_path()))
    # Azure's SDK only where it is used: it adds 0.1 s to every process's start.
    from resources.cosmos_store import CosmosRecommendationStore

    return CosmosRecommendationStore(**cosmos_settings(required_env))
