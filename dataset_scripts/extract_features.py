"""Item features from a frozen encoder, written as ``NAME.<modality>.npy`` + ``.tokens``.

    python dataset_scripts/extract_features.py --items dataset/Scientific/Scientific.item --modality text
    python dataset_scripts/extract_features.py --items dataset/Scientific/Scientific.item \\
        --modality image --images dataset/Scientific/images [--encoder /models/siglip-base-patch16-224]

* text: the item's ``--text-fields`` of the ``.item`` file (default title, brand, categories,
  as UniSRec and MISSRec), joined by "; "; items whose fields are all empty get no row.
* image: the file ``download_images.py`` stored for the item; items without one get no row.
  A stored image that does not decode is an error naming the file (run the download again:
  it replaces files that do not decode).

Rows follow the ``.item`` file's order; the dataset matches them to items by token. Work is
done in chunks of ``--chunk-rows`` items, each saved in ``<output>.partial/`` when done: an
interrupted run resumes from the last saved chunk when started again with the same settings,
and gives the same features as an uninterrupted one. The final matrix is streamed from the
chunks into place (never the whole catalogue in memory), then the partial folder is removed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from recbole_mmm4rec.data.features import atomic_write, write_item_feature_blocks
from recbole_mmm4rec.dataset_scripts.atomic_files import column_index, read_atomic_header, read_atomic_rows
from recbole_mmm4rec.dataset_scripts.download_images import image_path, item_image_urls
from recbole_mmm4rec.dataset_scripts.feature_encoders import ItemEncoder, load_encoder

DEFAULT_TEXT_FIELDS = ("title", "brand", "categories")
TEXT_SEPARATOR = "; "
MANIFEST = "manifest.json"


def item_texts(items_path: str, fields: Sequence[str] = DEFAULT_TEXT_FIELDS) -> tuple[list[str], list[str]]:
    """(item tokens, texts) of the items of a ``.item`` file that have any text in ``fields``."""
    header = read_atomic_header(items_path)
    item_column = column_index(items_path, header, "item_id")
    columns = [column_index(items_path, header, field) for field in fields]
    tokens, texts = [], []
    for row in read_atomic_rows(items_path):
        text = TEXT_SEPARATOR.join(row[c].strip() for c in columns if row[c].strip())
        if text:
            tokens.append(row[item_column])
            texts.append(text)
    return tokens, texts


def item_images(items_path: str, images_dir: str) -> tuple[list[str], list[str]]:
    """(item tokens, image files) of the items whose image is stored in ``images_dir``."""
    tokens, paths = [], []
    for item, url in item_image_urls(items_path):
        path = image_path(images_dir, item, url) if url else ""
        if path and os.path.isfile(path):
            tokens.append(item)
            paths.append(path)
    return tokens, paths


def open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
        raise ValueError(
            f"{path}: not a decodable image ({error}); run download_images.py again, it replaces "
            "files that do not decode"
        ) from error


def _manifest(encoder: ItemEncoder, tokens: Sequence[str], batch_size: int, chunk_rows: int) -> dict[str, Any]:
    """What a partial run must share with this one for its chunks to be reused."""
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()
    return {
        "encoder": encoder.name,
        "dim": encoder.dim,
        "rows": len(tokens),
        "tokens_sha256": digest,
        "batch_size": batch_size,
        "chunk_rows": chunk_rows,
    }


def _chunk_path(partial_dir: str, chunk: int) -> str:
    return os.path.join(partial_dir, f"chunk-{chunk:06d}.npy")


def _open_partial(partial_dir: str, manifest: dict[str, Any]) -> None:
    manifest_path = os.path.join(partial_dir, MANIFEST)
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            found = json.load(f)
        if found != manifest:
            differences = {k: (found.get(k), v) for k, v in manifest.items() if found.get(k) != v}
            raise ValueError(
                f"{partial_dir} holds an interrupted run with other settings (found, now): "
                f"{differences}. Run again with its settings to resume it, or delete the folder "
                "to start over."
            )
        return
    os.makedirs(partial_dir, exist_ok=True)
    text = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    atomic_write(manifest_path, lambda f: f.write(text))


def extract_features(
    tokens: Sequence[str],
    inputs: Sequence[Any],
    load_input: Callable[[Any], Any],
    encoder: ItemEncoder,
    output_path: str,
    batch_size: int = 64,
    chunk_rows: int = 4096,
) -> None:
    """Encode ``load_input(inputs[i])`` for every item, resumably, into ``output_path`` (.npy)
    with ``tokens`` beside it."""
    if len(tokens) != len(inputs):
        raise ValueError(f"expected one input per token, got {len(inputs)} inputs for {len(tokens)} tokens")
    if batch_size < 1 or chunk_rows < 1:
        raise ValueError(f"batch_size and chunk_rows must be positive, got {batch_size} and {chunk_rows}")
    partial_dir = output_path + ".partial"
    _open_partial(partial_dir, _manifest(encoder, tokens, batch_size, chunk_rows))
    chunks = math.ceil(len(tokens) / chunk_rows)
    done = [os.path.isfile(_chunk_path(partial_dir, c)) for c in range(chunks)]
    with tqdm(total=len(tokens), unit="item", desc=os.path.basename(output_path)) as progress:
        progress.update(sum(min(chunk_rows, len(tokens) - c * chunk_rows) for c in range(chunks) if done[c]))
        for chunk in range(chunks):
            if done[chunk]:
                continue
            rows = range(chunk * chunk_rows, min(len(tokens), (chunk + 1) * chunk_rows))
            vectors = []
            for start in range(rows.start, rows.stop, batch_size):
                batch = [load_input(inputs[i]) for i in range(start, min(rows.stop, start + batch_size))]
                vectors.append(encoder.encode(batch))
                progress.update(len(batch))
            matrix = np.concatenate(vectors).astype(np.float32)
            atomic_write(_chunk_path(partial_dir, chunk), lambda f: np.save(f, matrix))
    write_item_feature_blocks(
        output_path, tokens, (np.load(_chunk_path(partial_dir, c)) for c in range(chunks)), encoder.dim
    )
    shutil.rmtree(partial_dir)


def default_output(items_path: str, modality: str) -> str:
    """``dataset/X/X.item`` -> ``dataset/X/X.<modality>.npy``: where the dataset looks by default."""
    stem = items_path[: -len(".item")] if items_path.endswith(".item") else items_path
    return f"{stem}.{modality}.npy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", required=True, help="the dataset's .item file")
    parser.add_argument("--modality", required=True, choices=("text", "image"))
    parser.add_argument("--encoder", help="text: all-minilm-l6-v2 (default) or a local sentence-transformers "
                        "folder; image: efficientnet-lite0 (default) or a local CLIP / SigLIP folder")
    parser.add_argument("--images", help="image folder of download_images.py (default: images/ beside --items)")
    parser.add_argument("--text-fields", nargs="+", default=list(DEFAULT_TEXT_FIELDS), help=".item columns to encode")
    parser.add_argument("--out", help="output .npy (default: NAME.<modality>.npy beside --items)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-rows", type=int, default=4096, help="items per resumable chunk")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, ...")
    args = parser.parse_args()

    if args.modality == "text":
        tokens, inputs = item_texts(args.items, args.text_fields)
        load_input: Callable[[Any], Any] = str
    else:
        images = args.images or os.path.join(os.path.dirname(os.path.abspath(args.items)), "images")
        tokens, inputs = item_images(args.items, images)
        load_input = open_image
    output = args.out or default_output(args.items, args.modality)
    started = time.perf_counter()
    encoder = load_encoder(args.modality, args.encoder, args.device)
    extract_features(tokens, inputs, load_input, encoder, output, args.batch_size, args.chunk_rows)
    print(
        f"{args.modality}: {len(tokens)} items x {encoder.dim} ({encoder.name}) written to {output} "
        f"in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
