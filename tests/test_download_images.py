"""download_images against a local HTTP server: real photos, a 404, corrupt data, retries, resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from recbole_mmm4rec.dataset_scripts.atomic_files import write_atomic_file
from recbole_mmm4rec.dataset_scripts.download_images import download_images, image_path
from tests.image_server import ImageServer, jpeg_bytes, photo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def served(tmp_path):
    """A .item file whose items point at a local server: 3 real photos (one behind a 503),
    a missing file (404), a cut JPEG, an HTML page, an always-503, and an item without a URL."""
    astronaut = jpeg_bytes(photo("astronaut"))
    routes = {
        "/a.jpg": astronaut,
        "/b.png": jpeg_bytes(photo("coffee")),  # the suffix names the file, Pillow reads the content
        "/c": jpeg_bytes(photo("chelsea")),
        "/cut.jpg": astronaut[: len(astronaut) // 2],
        "/page.jpg": b"<html>Sorry, this image is no longer available</html>",
    }
    with ImageServer(routes, fail_first={"/c": 1, "/busy.jpg": 99}) as server:
        rows = [
            ("A", server.url("/a.jpg")), ("B", server.url("/b.png")), ("C/1", server.url("/c")),
            ("GONE", server.url("/gone.jpg")), ("CUT", server.url("/cut.jpg")),
            ("PAGE", server.url("/page.jpg")), ("BUSY", server.url("/busy.jpg")), ("NONE", ""),
        ]
        items = tmp_path / "Fix.item"
        write_atomic_file(str(items), ["item_id:token", "title:token_seq", "image_url:token"],
                          [(item, "t", url) for item, url in rows])
        yield server, str(items), dict(rows)


def _download(items, images, **kwargs):
    return download_images(items, images, workers=4, retries=2, backoff=0.01, timeout=10, **kwargs)


def test_downloads_verifies_and_records_failures_per_item(served, tmp_path):
    server, items, urls = served
    images = str(tmp_path / "images")
    report = _download(items, images)

    assert (report["items"], report["without_url"]) == (8, 1)
    assert (report["downloaded"], report["present"], report["failed"]) == (3, 0, 4)
    failures = {f["item"]: f for f in report["failures"]}
    assert sorted(failures) == ["BUSY", "CUT", "GONE", "PAGE"]
    assert failures["GONE"]["reason"] == "HTTP 404" and failures["GONE"]["attempts"] == 1  # not retried
    assert failures["BUSY"]["reason"] == "HTTP 503" and failures["BUSY"]["attempts"] == 3  # 1 + 2 retries
    assert failures["CUT"]["reason"].startswith("not a decodable image")
    assert failures["PAGE"]["reason"].startswith("not a decodable image")
    assert failures["GONE"]["url"] == urls["GONE"]
    assert server.requests["/c"] == 2  # a 503, then the photo

    stored = sorted(os.listdir(images))
    assert stored == sorted(["A.jpg", "B.png", "C%2F1.jpg", "download_report.json"])
    with Image.open(os.path.join(images, "A.jpg")) as image:
        assert image.size == (512, 512)
    assert os.path.join(images, "C%2F1.jpg") == image_path(images, "C/1", urls["C/1"])
    assert json.loads(open(os.path.join(images, "download_report.json")).read()) == report


def test_a_second_run_fetches_only_what_is_missing_or_broken(served, tmp_path):
    server, items, _ = served
    images = str(tmp_path / "images")
    _download(items, images)
    first = server.requests.copy()
    with open(os.path.join(images, "B.png"), "wb") as f:
        f.write(b"half a file from some other tool")

    report = _download(items, images)
    assert (report["downloaded"], report["present"], report["failed"]) == (1, 2, 4)
    again = server.requests - first
    assert again["/a.jpg"] == 0 and again["/c"] == 0  # present and decodable: not fetched
    assert again["/b.png"] == 1  # broken: fetched again
    assert again["/gone.jpg"] == 1  # failures are tried again
    with Image.open(os.path.join(images, "B.png")) as image:
        image.load()


def test_command_line(served, tmp_path):
    _, items, _ = served
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "dataset_scripts", "download_images.py"), "--items", items,
         "--out", str(tmp_path / "images"), "--retries", "0", "--backoff", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "8 items: 2 downloaded, 0 already present, 5 failed, 1 without an image URL" in done.stdout
