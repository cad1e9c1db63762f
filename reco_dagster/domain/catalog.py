"""The item catalog: what `catalog/` files say about items (a title, categories, whether they
may be served, any other attributes), one row per item, and the entries the store keeps."""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

CATEGORY_SEPARATOR = "|"
KNOWN_COLUMNS = ("item_id", "title", "categories", "available")
CATALOG_COLUMNS = (*KNOWN_COLUMNS, "attributes")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})

CatalogEntry = dict[str, Any]
"""{"item_id": str, "title": str (when known), "categories": [str], "available": bool,
"attributes": {str: JSON value}}"""


def catalog_table(files: Iterable[tuple[str, pd.DataFrame]]) -> tuple[pd.DataFrame, list[str]]:
    """Catalog files' rows (name, rows), in name order, as one row per item: item_id,
    title, categories (a list), available (bool) and attributes (the other columns, as JSON
    text). Each file's row sets the columns it has a value in, and a later file's value wins:
    a file of `item_id` and `available` changes availability and nothing else. An item no
    file says anything about is available, in no category. Also returns what was ignored
    (values of `available` that are no boolean)."""
    frames, problems = [], []
    for name, frame in files:
        normalized, invalid = _normalized(frame)
        frames.append(normalized)
        if invalid:
            problems.append(f"{name}: {invalid} value(s) of available that are no boolean ignored")
    if not frames:
        return _empty(), problems
    # groupby().last() takes each column's last non-null value: a later file's, where it has one.
    merged = pd.concat(frames, ignore_index=True).groupby("item_id", sort=False).last()
    attributes = merged.drop(columns=[c for c in KNOWN_COLUMNS if c in merged.columns])
    table = pd.DataFrame(
        {
            "item_id": merged.index.astype("string"),
            "title": pd.array(merged["title"].tolist(), dtype="string"),
            "categories": [
                [] if _is_null(value) else list(value) for value in merged["categories"].tolist()
            ],
            "available": merged["available"].map(lambda value: value is not False).to_numpy(),
            "attributes": [
                json.dumps(
                    {name: value for name, value in row.items() if not _is_null(value)},
                    default=_json_value,
                    sort_keys=True,
                )
                for row in attributes.to_dict("records")
            ]
            if len(attributes.columns)
            else ["{}"] * len(merged),
        }
    )
    return table, problems


def catalog_entries(table: pd.DataFrame) -> list[CatalogEntry]:
    """`catalog_table`'s rows as the store keeps them, in item order."""
    entries = []
    for item_id, title, categories, available, attributes in zip(
        *(table[column] for column in CATALOG_COLUMNS), strict=True
    ):
        entry: CatalogEntry = {
            "item_id": str(item_id),
            "categories": [str(category) for category in categories],
            "available": bool(available),
            "attributes": json.loads(attributes),
        }
        if not _is_null(title):
            entry["title"] = str(title)
        entries.append(entry)
    return sorted(entries, key=lambda entry: entry["item_id"])


def catalog_revision(entries: list[CatalogEntry]) -> str:
    """Names the catalog's content: the same entries always give the same revision."""
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def _normalized(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One file's rows with every known column (null where the file says nothing), and how
    many values of `available` were no boolean."""
    rows = frame.replace("", None) if len(frame.columns) else frame
    ids = rows["item_id"].astype("string")
    given = ids.notna()
    rows, ids = rows[given.to_numpy()], ids[given]
    out = pd.DataFrame({"item_id": ids.to_numpy()}, index=rows.index)
    out["title"] = rows["title"].astype("string") if "title" in rows else pd.NA
    out["categories"] = rows["categories"].map(_categories) if "categories" in rows else None
    available = rows["available"].map(_available) if "available" in rows else None
    invalid = 0
    if available is not None:
        invalid = int((available == "invalid").sum())
        available = available.where(available != "invalid", None)
    out["available"] = available
    for column in rows.columns:
        if column not in KNOWN_COLUMNS:
            out[column] = rows[column].astype(object)
    # Objects throughout: columns a file leaves empty must not decide the merged types.
    return out.astype({column: object for column in out.columns if column != "item_id"}), invalid


def _categories(value: Any) -> tuple[str, ...] | None:
    """A list, or text with categories separated by "|"; None where the row says nothing."""
    if _is_null(value):
        return None
    names = value.split(CATEGORY_SEPARATOR) if isinstance(value, str) else value
    stripped = (str(name).strip() for name in names if not _is_null(name))
    return tuple(dict.fromkeys(name for name in stripped if name))


def _available(value: object) -> bool | str | None:
    """True or False; None where the row says nothing; "invalid" for anything else."""
    if _is_null(value):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return "invalid"


def _is_null(value: object) -> bool:
    if isinstance(value, list | tuple | np.ndarray | dict):
        return False
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _json_value(value: object) -> object:
    """Attribute values numpy and pyarrow hand over, as JSON can write them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": pd.Series([], dtype="string"),
            "title": pd.Series([], dtype="string"),
            "categories": pd.Series([], dtype=object),
            "available": pd.Series([], dtype=bool),
            "attributes": pd.Series([], dtype=object),
        }
    )
