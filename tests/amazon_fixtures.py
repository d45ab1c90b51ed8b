"""Raw Amazon Reviews files in the exact 2018 and 2023 formats, small enough to check by hand.

The hand-made fixture (``write_raw_2018`` / ``write_raw_2023``) holds the same story in both
formats; with ``--kcore 2`` exactly this survives:

    user A...1: item ...1 @100, ...3 @200, ...2 @200 (a tie: file order kept)
    user A...2: item ...1 @150, ...2 @250, ...3 @350
    user A...5: item ...6 @100, ...6 @200 (a repeat purchase: kept)

and this is dropped: 3 malformed lines, 1 exact duplicate, 1 interaction with an item that has
no metadata (...7), 5 interactions by k-core, in cascade (...5 has one interaction; then user 4
has one; then item ...4; then user 3), plus user 6 (one interaction).
"""
from __future__ import annotations

import gzip
import json
import random

ITEM = {n: f"B00000000{n}" for n in range(1, 10)}
USER = {n: f"AUSER0000{n}" for n in range(1, 10)}

# (item, user, rating, seconds) in file order, all well formed.
RATINGS = [
    (1, 1, 5.0, 100),
    (3, 1, 4.0, 200),
    (2, 1, 3.0, 200),
    (1, 1, 5.0, 100),  # exact duplicate
    (7, 1, 2.0, 300),  # no metadata
    (1, 2, 4.0, 150),
    (2, 2, 5.0, 250),
    (3, 2, 1.0, 350),
    (2, 3, 4.0, 120),
    (4, 3, 4.0, 130),
    (4, 4, 2.0, 400),
    (5, 4, 3.0, 500),
    (6, 5, 5.0, 100),
    (6, 5, 4.0, 200),  # the same item again later: a repeat purchase
    (1, 6, 5.0, 50),
]

EXPECTED_INTER = [
    (USER[1], ITEM[1], "5.0", 100),
    (USER[1], ITEM[3], "4.0", 200),
    (USER[1], ITEM[2], "3.0", 200),
    (USER[2], ITEM[1], "4.0", 150),
    (USER[2], ITEM[2], "5.0", 250),
    (USER[2], ITEM[3], "1.0", 350),
    (USER[5], ITEM[6], "5.0", 100),
    (USER[5], ITEM[6], "4.0", 200),
]

EXPECTED_COUNTS = {
    "users": 3,
    "items": 4,
    "interactions": 8,
    "interaction_lines": 18,
    "dropped_interactions": {"malformed": 3, "duplicate": 1, "no_metadata": 1, "kcore": 5},
    "meta_lines": 10,
    "meta_items": 7,
    "dropped_meta_lines": {"malformed": 2, "duplicate_item": 1},
}


def _write_gzip_lines(path, lines: list[str]) -> None:
    # mtime=0: the same bytes on every run
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))


def write_raw_2018(folder) -> tuple[str, str]:
    """(ratings CSV, metadata .json.gz) of the hand-made fixture, 2018 format."""
    ratings = [f"{ITEM[i]},{USER[u]},{r},{t}" for i, u, r, t in RATINGS]
    ratings += [
        f"{ITEM[1]},{USER[9]},5.0",  # 3 fields
        f"{ITEM[2]},{USER[9]},abc,100",  # rating not a number
        f"{ITEM[2]},{USER[9]},5.0,notatime",  # timestamp not an integer
        "",  # blank lines are not data
    ]
    ratings_path = folder / "Fixture.csv"
    ratings_path.write_text("\n".join(ratings) + "\n", encoding="utf-8")

    meta = [
        json.dumps({
            "asin": ITEM[1],
            "title": "Lab &amp; Bench <b>Beaker</b>",
            "brand": "Acme",
            "category": ["Industrial &amp; Scientific", "Lab Supplies"],
            "description": ["<p>Great &amp; <b>durable</b></p>", "<br/>Second&nbsp;line<script>var x = 1;</script>"],
            "feature": ["Borosilicate", "500 ml"],
            "imageURL": [f"https://img.example/{ITEM[1]}._SS40_.jpg"],
            "imageURLHighRes": [f"https://img.example/{ITEM[1]}.jpg"],
            "main_cat": "Industrial & Scientific",
            "price": "$9.99",
        }),
        json.dumps({"asin": ITEM[2], "title": "Pipette\tSet", "description": ["&lt;b&gt;escaped&lt;/b&gt; markup"]}),
        json.dumps({
            "asin": ITEM[3],
            "title": '"Quoted" start',
            "imageURLHighRes": [],
            "imageURL": [f"https://img.example/{ITEM[3]}.jpg"],
        }),
        json.dumps({"asin": ITEM[4], "title": "Four"}),
        json.dumps({"asin": ITEM[5], "title": "Five"}),
        # Older dumps are Python dict literals
        str({"asin": ITEM[6], "title": "Old 'style' dump", "category": ["Arts", "Paint"], "description": "size < 5 and > 3"}),
        json.dumps({"asin": ITEM[1], "title": "SECOND RECORD"}),  # the first record of an item wins
        '{"asin": "' + ITEM[8] + '", "title": "cut',  # malformed
        json.dumps({"title": "Orphan"}),  # no asin: malformed
        json.dumps({"asin": ITEM[8], "title": "Never rated"}),
        "",
    ]
    meta_path = folder / "meta_Fixture.json.gz"
    _write_gzip_lines(meta_path, meta)
    return str(ratings_path), str(meta_path)


EXPECTED_ITEMS_2018 = [
    [ITEM[1], "Lab & Bench Beaker", "Acme", "Industrial & Scientific > Lab Supplies",
     "Great & durable Second line", "Borosilicate 500 ml", f"https://img.example/{ITEM[1]}.jpg"],
    [ITEM[2], "Pipette Set", "", "", "escaped markup", "", ""],
    [ITEM[3], '"Quoted" start', "", "", "", "", f"https://img.example/{ITEM[3]}.jpg"],
    [ITEM[6], "Old 'style' dump", "", "Arts > Paint", "size < 5 and > 3", "", ""],
]


def write_raw_2023(folder) -> tuple[str, str]:
    """(reviews JSONL, metadata JSONL) of the hand-made fixture, 2023 format.

    Times are milliseconds; the tie of user 1 is at 200.5 s. The duplicate names another
    variant (``asin``) of the same product (``parent_asin``): a duplicate all the same.
    """
    reviews = []
    for n, (i, u, r, t) in enumerate(RATINGS):
        millis = t * 1000 + (500 if (u, t) == (1, 200) else 0)
        variant = f"{ITEM[i]}V{n % 2}" if n == 3 else ITEM[i]
        reviews.append(json.dumps({
            "rating": r, "title": "Fine", "text": "<br />Works.", "images": [], "asin": variant,
            "parent_asin": ITEM[i], "user_id": USER[u], "timestamp": millis,
            "helpful_vote": 0, "verified_purchase": True,
        }))
    reviews += [
        json.dumps({"rating": 5.0, "parent_asin": ITEM[2], "timestamp": 1000}),  # no user_id
        '{"rating": 5.0, "parent_asin": "' + ITEM[2] + '", "user_id": "' + USER[9],  # cut
        json.dumps({"rating": 5.0, "parent_asin": ITEM[2], "user_id": USER[9], "timestamp": "yesterday"}),
        "",
    ]
    reviews_path = folder / "Fixture.jsonl"
    reviews_path.write_text("\n".join(reviews) + "\n", encoding="utf-8")

    def meta(i: int, **fields) -> str:
        record = {
            "main_category": "Industrial & Scientific", "title": f"Item {i}", "average_rating": 4.5,
            "rating_number": 10, "features": [], "description": [], "price": None, "images": [],
            "videos": [], "store": None, "categories": [], "details": {}, "parent_asin": ITEM[i],
            "bought_together": None,
        }
        record.update(fields)
        return json.dumps(record)

    lines = [
        meta(1, title="Lab &amp; Bench <b>Beaker</b>", store="Acme",
             features=["Borosilicate", "500 ml"], description=["<p>Great &amp; <b>durable</b></p>"],
             images=[
                 {"thumb": "https://img.example/p1-alt-thumb.jpg", "large": "https://img.example/p1-alt.jpg",
                  "variant": "PT01", "hi_res": None},
                 {"thumb": "https://img.example/p1-thumb.jpg", "large": "https://img.example/p1-main.jpg",
                  "variant": "MAIN", "hi_res": "https://img.example/p1-hires.jpg"},
             ]),
        meta(2, details={"Brand": "Brandy"}, categories=["Industrial & Scientific", "Lab", "Pipettes"]),
        meta(3, title='"Quoted" start',
             images=[{"thumb": "https://img.example/p3-thumb.jpg", "large": None, "variant": "MAIN", "hi_res": None}]),
        meta(4), meta(5), meta(6), meta(1, title="SECOND RECORD"),
        '{"parent_asin": "' + ITEM[8] + '", "title": "cut',  # malformed
        json.dumps({"title": "Orphan"}),  # no parent_asin: malformed
        meta(8),
        "",
    ]
    meta_path = folder / "meta_Fixture.jsonl"
    meta_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(reviews_path), str(meta_path)


EXPECTED_ITEMS_2023 = [
    [ITEM[1], "Lab & Bench Beaker", "Acme", "Industrial & Scientific", "Great & durable",
     "Borosilicate 500 ml", "https://img.example/p1-main.jpg"],
    [ITEM[2], "Item 2", "Brandy", "Industrial & Scientific > Lab > Pipettes", "", "", ""],
    [ITEM[3], '"Quoted" start', "", "Industrial & Scientific", "", "", "https://img.example/p3-thumb.jpg"],
    [ITEM[6], "Item 6", "", "Industrial & Scientific", "", "", ""],
]


def write_random_2018(folder, n_users: int, n_items: int, per_user: tuple[int, int], seed: int,
                      image_url=lambda item: "") -> tuple[str, str]:
    """A larger seeded 2018 fixture: users with ``per_user`` interactions over items drawn with
    a skewed popularity, many timestamp ties, and metadata for all items but the last."""
    rng = random.Random(seed)
    items = [f"B{n:09d}" for n in range(n_items)]
    weights = [1.0 / (rank + 1) for rank in range(n_items)]
    lines = []
    for u in range(n_users):
        day = rng.randrange(10**9, 10**9 + 10**7)
        for _ in range(rng.randint(*per_user)):
            day += rng.choice([0, 0, 3600, 86400])  # ties are common in Amazon data (one day)
            lines.append(f"{rng.choices(items, weights)[0]},U{u:05d},{rng.randint(1, 5)}.0,{day}")
    rng.shuffle(lines)
    ratings_path = folder / "Random.csv"
    ratings_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = [
        json.dumps({"asin": item, "title": f"Product {item}", "brand": f"Brand{n % 3}",
                    "category": ["Industrial & Scientific", f"Shelf {n % 4}"],
                    "imageURLHighRes": [image_url(item)] if image_url(item) else []})
        for n, item in enumerate(items[:-1])
    ]
    meta_path = folder / "meta_Random.json.gz"
    _write_gzip_lines(meta_path, meta)
    return str(ratings_path), str(meta_path)
