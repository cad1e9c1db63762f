"""The item catalog from `catalog/` files (categories, availability, attributes; later files
win column by column), and the request-time filters over precomputed lists."""

import json

import pandas as pd

from reco_dagster.domain.catalog import catalog_entries, catalog_revision
from reco_dagster.domain.filters import CatalogIndex, pick, pick_with_fill
from resources.files import LocalFiles
from resources.landing_zone import LandingZone


def test_catalog_files_merge_column_by_column_in_name_order(data_dir):
    catalog = data_dir / "catalog"
    catalog.mkdir(parents=True)
    (catalog / "1-items.csv").write_text(
        "item_id,title,categories,available,brand\n"
        "sku-1,Trail shoe,shoes|outdoor,true,Acme\n"
        "sku-2,Rain jacket, outdoor | jackets ,yes,\n"
        "sku-3,Gift card,,,\n"
    )
    (catalog / "2-more.jsonl").write_text(
        json.dumps({"item_id": 4, "title": "Socks", "categories": ["socks"], "price": 4.5}) + "\n"
    )
    pd.DataFrame(
        {"item_id": ["sku-5"], "title": ["Cap"], "categories": [["hats", "outdoor"]]}
    ).to_parquet(catalog / "3-hats.parquet")
    # Stock: only availability changes; a value that is no boolean is reported and ignored.
    (catalog / "4-stock.csv").write_text("item_id,available\nsku-1,0\nsku-2,maybe\n")
    (catalog / "_writing.csv").write_text("item_id,available\nsku-3,false\n")

    table, problems = LandingZone(files=LocalFiles(root=str(data_dir))).item_catalog()

    assert problems == ["catalog/4-stock.csv: 1 value(s) of available that are no boolean ignored"]
    assert table.attrs["read_at"] > 0
    entries = {entry["item_id"]: entry for entry in catalog_entries(table)}
    assert entries["sku-1"] == {
        "item_id": "sku-1",
        "title": "Trail shoe",
        "categories": ["shoes", "outdoor"],
        "available": False,
        "attributes": {"brand": "Acme"},
    }
    assert entries["sku-2"]["categories"] == ["outdoor", "jackets"]
    assert entries["sku-2"]["available"] is True
    assert entries["sku-3"] == {
        "item_id": "sku-3",
        "title": "Gift card",
        "categories": [],
        "available": True,
        "attributes": {},
    }
    assert entries["4"]["attributes"] == {"price": 4.5}
    assert entries["sku-5"]["categories"] == ["hats", "outdoor"]
    assert catalog_revision(list(entries.values())) == catalog_revision(catalog_entries(table))


def test_an_empty_catalog_folder_gives_an_empty_catalog(data_dir):
    table, problems = LandingZone(files=LocalFiles(root=str(data_dir))).item_catalog()
    assert table.empty and problems == [] and list(table.columns)[:2] == ["item_id", "title"]


ENTRIES = [
    {"item_id": "a", "categories": ["shoes"], "available": True},
    {"item_id": "b", "categories": ["shoes", "hats"], "available": False},
    {"item_id": "c", "categories": ["hats"], "available": True},
    {"item_id": "d", "categories": [], "available": True},
]


def listed(*ids: str) -> list[dict]:
    return [{"item_id": item, "score": 1.0} for item in ids]


def ids(items: list[dict]) -> list[str]:
    return [item["item_id"] for item in items]


def test_filters_keep_available_items_of_any_asked_category_and_leave_out_exclusions():
    index = CatalogIndex("r1", ENTRIES)
    items = listed("a", "b", "c", "d", "unlisted")
    masks = index.masks_of(items)
    assert ids(pick(items, masks, index.item_filter(), 10)) == ["a", "c", "d", "unlisted"]
    assert ids(pick(items, masks, index.item_filter(), 2)) == ["a", "c"]
    assert ids(pick(items, masks, index.item_filter(include_unavailable=True), 2)) == ["a", "b"]
    assert ids(pick(items, masks, index.item_filter(["hats"]), 10)) == ["c"]
    assert ids(pick(items, masks, index.item_filter(["hats", "shoes"]), 10)) == ["a", "c"]
    assert ids(pick(items, masks, index.item_filter(["hats"], include_unavailable=True), 9)) == [
        "b",
        "c",
    ]
    assert ids(pick(items, masks, index.item_filter(exclude={"a", "d"}), 10)) == ["c", "unlisted"]
    assert pick(items, masks, index.item_filter(["no such category"]), 10) == []


def test_what_filters_leave_out_is_filled_under_the_same_filter_without_repeats():
    index = CatalogIndex(
        "r1", [*ENTRIES, {"item_id": "e", "categories": ["hats"], "available": True}]
    )
    mine, trending = listed("a", "b", "c"), listed("b", "c", "x", "e", "a")

    def answer(wanted, k, items=mine):
        picked, filled = pick_with_fill(
            items, index.masks_of(items), lambda: (trending, index.masks_of(trending)), wanted, k
        )
        return ids(picked), filled

    assert answer(index.item_filter(), 3) == (["a", "c", "x"], 1)  # b is unavailable
    assert answer(index.item_filter(), 2) == (["a", "c"], 0)
    assert answer(index.item_filter(["hats"]), 3) == (["c", "e"], 1)
    assert answer(index.item_filter(["hats"], exclude={"e"}), 3) == (["c"], 0)
    assert answer(index.item_filter(include_unavailable=True), 5) == (["a", "b", "c"], 0)
    # A list short by itself (its user consumed the rest) is not lengthened.
    assert answer(index.item_filter(), 5, listed("a", "c")) == (["a", "c"], 0)
