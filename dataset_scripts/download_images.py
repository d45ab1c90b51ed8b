"""Download the item images named in a ``.item`` file: threaded, retried, resumable, verified.

    python dataset_scripts/download_images.py --items dataset/Scientific/Scientific.item \\
        --out dataset/Scientific/images

Each item's image goes to ``<out>/<item token, URL-quoted><suffix of the URL>`` (``.jpg`` when
the URL has no image suffix), written through a temporary file, and only once Pillow has
decoded it. A run skips the images already there that decode, so an interrupted run is
resumed by running it again. Network errors, timeouts and HTTP 408/425/429/5xx are retried
with exponential back-off; other HTTP errors and undecodable data are not. Every failure is
recorded per item in ``<out>/download_report.json``. Items without an image get no image
feature row; the dataset's ``missing_feature_policy`` decides for them.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable

from PIL import Image
from tqdm import tqdm

from recbole_mmm4rec.data.features import atomic_write
from recbole_mmm4rec.dataset_scripts.atomic_files import column_index, read_atomic_header, read_atomic_rows

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
DEFAULT_SUFFIX = ".jpg"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
REPORT_NAME = "download_report.json"
USER_AGENT = "recbole-mmm4rec image downloader"


@dataclass(frozen=True)
class DownloadResult:
    item: str
    url: str
    status: str  # "downloaded", "present" (already there and decodes) or "failed"
    reason: str = ""
    attempts: int = 0


def image_path(images_dir: str, item: str, url: str) -> str:
    """Where the image of ``item`` (from ``url``) is stored."""
    suffix = os.path.splitext(urllib.parse.urlparse(url).path)[1].lower()
    return os.path.join(
        images_dir, urllib.parse.quote(item, safe="") + (suffix if suffix in IMAGE_SUFFIXES else DEFAULT_SUFFIX)
    )


def item_image_urls(items_path: str) -> list[tuple[str, str]]:
    """(item token, image URL or "") for every row of a ``.item`` file, in file order."""
    header = read_atomic_header(items_path)
    item_column = column_index(items_path, header, "item_id")
    url_column = column_index(items_path, header, "image_url")
    return [(row[item_column], row[url_column].strip()) for row in read_atomic_rows(items_path)]


def check_image(data: bytes) -> None:
    """Raise ValueError unless ``data`` decodes as an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
        raise ValueError(f"not a decodable image ({type(error).__name__}: {error})") from error


def image_file_decodes(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            check_image(f.read())
    except (OSError, ValueError):
        return False
    return True


def fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def download_image(
    item: str,
    url: str,
    images_dir: str,
    retries: int,
    backoff: float,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> DownloadResult:
    """Fetch, verify and store one image, unless a decodable copy is already there."""
    path = image_path(images_dir, item, url)
    if os.path.isfile(path) and image_file_decodes(path):
        return DownloadResult(item, url, "present")
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        return DownloadResult(item, url, "failed", f"not an http(s) URL: {url!r}", 0)
    attempt = 0
    while True:
        attempt += 1
        try:
            data = fetch(url, timeout)
        except urllib.error.HTTPError as error:
            reason, retriable = f"HTTP {error.code}", error.code in RETRY_STATUSES
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason, retriable = f"network error: {error}", True
        else:
            try:
                check_image(data)
            except ValueError as error:
                return DownloadResult(item, url, "failed", str(error), attempt)
            atomic_write(path, lambda f: f.write(data))
            return DownloadResult(item, url, "downloaded", "", attempt)
        if not retriable or attempt > retries:
            return DownloadResult(item, url, "failed", reason, attempt)
        sleep(backoff * 2 ** (attempt - 1))


def download_images(
    items_path: str,
    images_dir: str,
    workers: int = 8,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Download every item image of ``items_path`` into ``images_dir``; returns the report
    also written to ``images_dir/download_report.json``."""
    pairs = item_image_urls(items_path)
    with_url = [(item, url) for item, url in pairs if url]
    os.makedirs(images_dir, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(
            pool.map(lambda pair: download_image(*pair, images_dir, retries, backoff, timeout), with_url),
            total=len(with_url), desc="images", unit="image",
        ))
    counts = {status: sum(r.status == status for r in results) for status in ("downloaded", "present", "failed")}
    report = {
        "items": len(pairs),
        "without_url": len(pairs) - len(with_url),
        **counts,
        "failures": [
            {key: value for key, value in asdict(r).items() if key != "status"} for r in results if r.status == "failed"
        ],
    }
    text = (json.dumps(report, indent=2) + "\n").encode("utf-8")
    atomic_write(os.path.join(images_dir, REPORT_NAME), lambda f: f.write(text))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", required=True, help="the dataset's .item file (columns item_id, image_url)")
    parser.add_argument("--out", required=True, help="folder for the images and download_report.json")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--retries", type=int, default=3, help="retries of a transient failure")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args()
    report = download_images(args.items, args.out, args.workers, args.retries, args.backoff, args.timeout)
    print(
        f"{report['items']} items: {report['downloaded']} downloaded, {report['present']} already present, "
        f"{report['failed']} failed, {report['without_url']} without an image URL; "
        f"failures in {os.path.join(args.out, REPORT_NAME)}"
    )


if __name__ == "__main__":
    main()
