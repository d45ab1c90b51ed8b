"""End to end: raw Amazon 2018 files -> atomic files -> images over HTTP -> real text and image
features -> one MMM4Rec epoch through run_recbole."""
from __future__ import annotations

import json
import math

from recbole_mmm4rec import run_recbole
from recbole_mmm4rec.data import read_item_features
from recbole_mmm4rec.dataset_scripts.amazon2018 import AMAZON_2018
from recbole_mmm4rec.dataset_scripts.amazon_common import build_dataset
from recbole_mmm4rec.dataset_scripts.download_images import download_images
from recbole_mmm4rec.dataset_scripts.extract_features import (
    extract_features,
    item_images,
    item_texts,
    open_image,
)
from recbole_mmm4rec.dataset_scripts.feature_encoders import load_encoder
from tests.amazon_fixtures import write_random_2018
from tests.image_server import PHOTOS, ImageServer, jpeg_bytes, photo

N_ITEMS = 30
MISSING_IMAGES = {"B000000004", "B000000011"}  # their URLs answer 404


def test_raw_files_to_features_to_one_mmm4rec_epoch(tmp_path):
    items = [f"B{n:09d}" for n in range(N_ITEMS)]
    routes = {
        f"/{item}.jpg": jpeg_bytes(photo(PHOTOS[n % len(PHOTOS)], variant=n // len(PHOTOS)))
        for n, item in enumerate(items) if item not in MISSING_IMAGES
    }
    raw = tmp_path / "raw"
    raw.mkdir()
    folder = tmp_path / "data" / "Mini"
    with ImageServer(routes) as server:
        ratings, meta = write_random_2018(raw, n_users=150, n_items=N_ITEMS, per_user=(4, 12), seed=7,
                                          image_url=lambda item: server.url(f"/{item}.jpg"))
        stats = build_dataset(AMAZON_2018, ratings, meta, "Mini", str(folder), kcore=3)
        report = download_images(str(folder / "Mini.item"), str(folder / "images"), workers=4, retries=0)
    assert stats["users"] > 100 and stats["items"] >= 20
    kept_missing = MISSING_IMAGES & {row["item"] for row in report["failures"]}
    assert report["failed"] == len(kept_missing) >= 1 and report["downloaded"] == stats["items"] - report["failed"]

    texts = item_texts(str(folder / "Mini.item"))
    extract_features(*texts, str, load_encoder("text", None, "cpu"), str(folder / "Mini.text.npy"))
    images = item_images(str(folder / "Mini.item"), str(folder / "images"))
    extract_features(*images, open_image, load_encoder("image", None, "cpu"), str(folder / "Mini.image.npy"))
    assert read_item_features(str(folder / "Mini.text.npy"))[1].shape == (stats["items"], 384)
    assert read_item_features(str(folder / "Mini.image.npy"))[1].shape == (report["downloaded"], 1280)

    result = run_recbole(model="MMM4Rec", dataset="Mini", config_dict={
        "data_path": str(tmp_path / "data"),
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "modalities": ["text", "image"],
        "modality_dims": {"text": 384, "image": 1280},
        "missing_feature_policy": {"text": "error", "image": "mean"},
        "hidden_size": 32, "inner_size": 64, "head_dim": 16, "d_state": 16, "n_groups": 2, "chunk_size": 8,
        "MAX_ITEM_LIST_LENGTH": 10, "epochs": 1, "train_batch_size": 256, "eval_batch_size": 1024,
        "show_progress": False, "use_gpu": False, "checkpoint_dir": str(tmp_path / "saved"),
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
    })
    assert set(result["test_result"]) == {"hit@10", "ndcg@10"}
    assert all(math.isfinite(value) for value in result["test_result"].values())
    assert json.loads((folder / "Mini.stats.json").read_text())["interactions"] == stats["interactions"]
