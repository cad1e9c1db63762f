"""What every model family produces: a card naming it, and factors scored in numpy."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import pandas as pd

from reco_dagster.domain.ranking import recommend

CARD_FILE = "model.json"
FACTORS_FILE = "factors.npz"
ARCHIVE_FOLDER = "lake/versions/"
"""Where every published version's item side is kept, by version id, in the file store."""
MODEL_FORMAT = 2
"""Part of every version id: a change to how models are fitted or scored makes a retrain on
the same data and settings a new version (2: users scored by fold-in with recency)."""


@dataclass(frozen=True)
class ModelCard:
    """The same family, settings and data always give the same version id."""

    version: str
    family: str
    settings: dict[str, Any]
    data_fingerprint: str
    training_rows: int

    @classmethod
    def describe(
        cls, family: str, settings: dict[str, Any], training_data: pd.DataFrame
    ) -> ModelCard:
        return cls.identified(family, settings, data_fingerprint(training_data), len(training_data))

    @classmethod
    def identified(
        cls, family: str, settings: dict[str, Any], fingerprint: str, training_rows: int
    ) -> ModelCard:
        """The card of a model fitted on rows of that fingerprint and count, wherever they
        are (`describe` for a pandas table, `spark_tables.spark_data_fingerprint`)."""
        identity = json.dumps([MODEL_FORMAT, family, settings, fingerprint], sort_keys=True)
        version = f"{family}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
        return cls(version, family, settings, fingerprint, training_rows)

    def save(self, directory: Path) -> None:
        (directory / CARD_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        return cls.from_json((directory / CARD_FILE).read_bytes())

    @classmethod
    def from_json(cls, saved: bytes) -> ModelCard:
        return cls(**json.loads(saved))


def data_fingerprint(interactions: pd.DataFrame) -> str:
    """A hash of the (user, item, rating, timestamp) rows, and their typed events' weights
    where there are any, independent of their order: the sum of the rows' hashes, which
    Spark's executors add up a partition each (`spark_tables.spark_data_fingerprint`)."""
    # The weights are what the model learns from as much as the ratings: new weights, a new
    # version. Untyped data has none.
    weighted = "weight" in interactions and interactions["weight"].notna().any()
    names = fingerprint_columns(bool(weighted))
    return fingerprint_of(row_hash_total(interactions, names), names)


def fingerprint_columns(weighted: bool) -> list[str]:
    return ["user_id", "item_id", "rating", "timestamp", *(["weight"] if weighted else [])]


def row_hash_total(rows: pd.DataFrame, names: list[str]) -> np.uint64:
    """The sum, modulo 2**64, of the rows' hashes over `names`."""
    hashes = pd.util.hash_pandas_object(rows[names], index=False).to_numpy()
    return hashes.sum(dtype=np.uint64)


def fingerprint_of(total: np.uint64, names: list[str]) -> str:
    return hashlib.sha256(f"{','.join(names)}:{int(total)}".encode()).hexdigest()[:16]


class Scorer(Protocol):
    """What evaluation and publishing ask of a model, wherever its factors are: a FactorModel
    on the driver, or a SparkAls on Spark's executors."""

    @property
    def card(self) -> ModelCard: ...

    def recommend(self, seen: pd.DataFrame, k: int) -> pd.DataFrame: ...

    def predict(self, user_ids: pd.Series, item_ids: pd.Series) -> np.ndarray: ...


@dataclass(frozen=True)
class FactorModel:
    """Scores are user_factors @ item_factors.T, keyed by the product's own string ids.

    ALS: latent factors. EASE: a user's interaction row and the item-item weight matrix.
    """

    card: ModelCard
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray

    @classmethod
    def item_side_of(
        cls, card: ModelCard, item_ids: np.ndarray, item_factors: np.ndarray
    ) -> FactorModel:
        """A model without users: what fold-in scores histories against."""
        return cls(
            card,
            np.empty(0, dtype=object),
            item_ids,
            np.empty((0, item_factors.shape[1]), dtype=item_factors.dtype),
            item_factors,
        )

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def has_popularity_factor(self) -> bool:
        """An implicit ALS model's last factor is its popularity prior (see als._assemble)."""
        settings = self.card.settings
        return bool(settings.get("implicit_prefs") and settings.get("popularity_prior"))

    @property
    def latent_item_factors(self) -> np.ndarray:
        """The item factors the model learned, without the popularity prior's column."""
        return self.item_factors[:, :-1] if self.has_popularity_factor else self.item_factors

    def similar_items(self, k: int) -> pd.DataFrame:
        """Each item's k most similar items by cosine of their learned factors:
        source_item_id, item_id (a similar item), rank, score."""
        factors = self.latent_item_factors.astype(np.float32)
        norms = np.linalg.norm(factors, axis=1, keepdims=True)
        unit = factors / np.where(norms > 0, norms, 1.0)
        itself = np.arange(len(unit))
        ranked = recommend(
            self.item_ids,
            self.item_ids,
            unit,
            unit,
            pd.DataFrame({"user_id": self.item_ids, "item_id": self.item_ids[itself]}),
            k,
        )
        return ranked.rename(columns={"user_id": "source_item_id"})

    def predict(self, user_ids: pd.Series, item_ids: pd.Series) -> np.ndarray:
        """Predicted rating/preference per pair; NaN where the user or the item is unknown."""
        users = pd.Index(self.user_ids).get_indexer(user_ids)
        items = pd.Index(self.item_ids).get_indexer(item_ids)
        known = (users >= 0) & (items >= 0)
        scores = np.full(len(users), np.nan)
        scores[known] = np.einsum(
            "ij,ij->i", self.user_factors[users[known]], self.item_factors[items[known]]
        )
        return scores

    def recommend(self, seen: pd.DataFrame, k: int) -> pd.DataFrame:
        """Every user's top-k items outside `seen` (user_id, item_id, rank, score)."""
        return recommend(
            self.user_ids, self.item_ids, self.user_factors, self.item_factors, seen, k
        )

    def save(self, directory: Path) -> None:
        self.card.save(directory)
        np.savez(
            directory / FACTORS_FILE,
            user_ids=self.user_ids.astype(str),
            item_ids=self.item_ids.astype(str),
            user_factors=self.user_factors,
            item_factors=self.item_factors,
        )

    @classmethod
    def load(cls, directory: Path, users: bool = True) -> FactorModel:
        """A saved model; without `users`, its item side only (no user factors)."""
        with open(directory / FACTORS_FILE, "rb") as factors:
            return cls.read((directory / CARD_FILE).read_bytes(), factors, users)

    @classmethod
    def read(cls, card: bytes, factors: BinaryIO, users: bool = True) -> FactorModel:
        """A model from its saved card and factors, wherever they are stored."""
        with np.load(factors) as saved:
            item_ids, item_factors = saved["item_ids"].astype(object), saved["item_factors"]
            if not users:
                return cls.item_side_of(ModelCard.from_json(card), item_ids, item_factors)
            user_ids = saved["user_ids"].astype(object)
            return cls(
                ModelCard.from_json(card), user_ids, item_ids, saved["user_factors"], item_factors
            )


def ids_by_index(table: pd.DataFrame, entity: str) -> np.ndarray:
    """The string id for every integer index of `entity` ("user" or "item") in `table`
    (indices a subset does not use stay empty)."""
    index = table[f"{entity}_idx"].to_numpy()
    ids = np.full(index.max() + 1, "", dtype=object)
    ids[index] = table[f"{entity}_id"].to_numpy()
    return ids
