"""Amazon Reviews 2018 (ratings-only CSV + metadata) to RecBole atomic files.

    python dataset_scripts/amazon2018.py --ratings Industrial_and_Scientific.csv \\
        --meta meta_Industrial_and_Scientific.json.gz --name Scientific --out dataset/Scientific

* ratings: ``item,user,rating,timestamp`` per line, no header, Unix seconds;
* metadata: one object per line (JSON; some dumps hold Python dict literals), keyed by
  ``asin``, with ``title``, ``brand``, ``category`` (a path), ``description`` and ``feature``
  (lists of HTML strings), ``imageURLHighRes`` / ``imageURL`` (lists of URLs).

The steps, counts and outputs are those of ``amazon_common`` (see its docstring).
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
from recbole_mmm4rec.dataset_scripts.raw_files import MalformedLine

# High-resolution first: imageURL holds thumbnails (often 40 px wide).
IMAGE_FIELDS = ("imageURLHighRes", "imageURL", "image")


def parse_rating_line(line: str) -> RawInteraction:
    fields = line.strip().split(",")
    if len(fields) != 4:
        raise MalformedLine(f"expected 4 comma-separated fields item,user,rating,timestamp, found {len(fields)}")
    item, user, rating, timestamp = (field.strip() for field in fields)
    if not item or not user:
        raise MalformedLine("empty item or user")
    return RawInteraction(
        user=recbole_token(user, "user"),
        item=recbole_token(item, "item"),
        rating=parse_rating(rating),
        time=parse_time(timestamp),
    )


def first_image_url(record: dict[str, Any]) -> str:
    for key in IMAGE_FIELDS:
        urls = record.get(key)
        urls = [urls] if isinstance(urls, str) else urls or []
        for url in urls:
            if isinstance(url, str) and url.strip():
                return url.strip()
    return ""


TEXT_KEYS = {
    "title": ("title",),
    "brand": ("brand",),
    "categories": ("category",),
    "description": ("description",),
    "features": ("feature",),
}


AMAZON_2018 = AmazonRelease(
    name="amazon2018",
    interactions_option="ratings",
    parse_interaction=parse_rating_line,
    meta_item_key="asin",
    text_keys=TEXT_KEYS,
    image_url=first_image_url,
    time_units_per_second=1,
)

if __name__ == "__main__":
    main(AMAZON_2018, __doc__.split("\n\n")[0])
