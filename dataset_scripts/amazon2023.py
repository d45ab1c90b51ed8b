"""Amazon Reviews 2023 (review + metadata JSONL) to RecBole atomic files.

    python dataset_scripts/amazon2023.py --reviews Industrial_and_Scientific.jsonl \\
        --meta meta_Industrial_and_Scientific.jsonl --name Scientific23 --out dataset/Scientific23

* reviews: one JSON object per line with ``user_id``, ``parent_asin`` (the item: variants of a
  product share it), ``asin`` (the variant, unused), ``rating``, ``timestamp`` (Unix
  milliseconds), ``title``, ``text``, ``images``, ``helpful_vote``, ``verified_purchase``;
* metadata: one JSON object per line keyed by ``parent_asin``, with ``title``, ``store`` (the
  brand), ``categories`` (a path, often empty: ``main_category`` then), ``description`` and
  ``features`` (lists), ``images`` (a list of ``{thumb, large, hi_res, variant}``), ``details``.

Timestamps are written in seconds with the milliseconds as decimals. The steps, counts and
outputs are those of ``amazon_common`` (see its docstring).
"""
from __future__ import annotations

from typing import Any

from recbole_mmm4rec.dataset_scripts.amazon_common import (
    AmazonRelease,
    RawInteraction,
    main,
    parse_rating,
    parse_time,
    recbole_token,
)
from recbole_mmm4rec.dataset_scripts.raw_files import MalformedLine, json_object, required_text

MAIN_IMAGE_VARIANT = "MAIN"
# "large" (about 500 px) is plenty for 224-px encoders; hi_res is often missing or huge.
IMAGE_SIZES = ("large", "hi_res", "thumb")


def parse_review_line(line: str) -> RawInteraction:
    record = json_object(line)
    if "timestamp" not in record:
        raise MalformedLine("missing field 'timestamp'")
    return RawInteraction(
        user=recbole_token(required_text(record, "user_id"), "user_id"),
        item=recbole_token(required_text(record, "parent_asin"), "parent_asin"),
        rating=parse_rating(record.get("rating")),
        time=parse_time(record["timestamp"]),
    )


def main_image_url(record: dict[str, Any]) -> str:
    """The URL of the MAIN image (else the first), at the first size of IMAGE_SIZES it has."""
    images = [image for image in record.get("images") or [] if isinstance(image, dict)]
    images.sort(key=lambda image: image.get("variant") != MAIN_IMAGE_VARIANT)  # stable: MAIN first
    for image in images:
        for size in IMAGE_SIZES:
            url = image.get(size)
            if isinstance(url, str) and url.strip():
                return url.strip()
    return ""


TEXT_KEYS = {
    "title": ("title",),
    "brand": ("store", "details.Brand"),
    "categories": ("categories", "main_category"),
    "description": ("description",),
    "features": ("features",),
}


AMAZON_2023 = AmazonRelease(
    name="amazon2023",
    interactions_option="reviews",
    parse_interaction=parse_review_line,
    meta_item_key="parent_asin",
    text_keys=TEXT_KEYS,
    image_url=main_image_url,
    time_units_per_second=1000,
)

if __name__ == "__main__":
    main(AMAZON_2023, __doc__.split("\n\n")[0])
