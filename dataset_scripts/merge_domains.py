"""Merge several dataset folders (one per domain) into one pre-training dataset.

    python dataset_scripts/merge_domains.py --out dataset/FHCKM --name FHCKM \\
        dataset/Food dataset/Home dataset/CDs dataset/Kindle dataset/Movies --modalities text image

Each source folder ``.../D`` holds ``D.inter``, ``D.item`` and, per modality, ``D.<m>.npy`` +
``D.<m>.tokens`` (what ``amazon2018.py`` / ``amazon2023.py`` and ``extract_features.py``
write); ``D``, the folder's name, is the domain. The merged folder holds:

* ``NAME.inter``: every interaction, user and item tokens written ``D:token`` so that domains
  never share a user or an item, plus a ``domain:token`` column (to stratify by domain);
  domains in the order given, each in its own file order;
* ``NAME.item``: every item, tokens namespaced the same way, with a ``domain:token`` column;
* ``NAME.<m>.npy`` + ``.tokens``: the domains' rows one after the other, tokens namespaced.
  All domains must have the same feature dimension (one encoder). The matrix is streamed into
  a memory-mapped temporary file, so catalogues larger than memory merge fine;
* ``NAME.stats.json``: users, items and interactions per domain and in all.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Iterator, Sequence

from recbole_mmm4rec.data.features import atomic_write, read_item_features, write_item_feature_blocks
from recbole_mmm4rec.dataset_scripts.atomic_files import (
    column_index,
    read_atomic_header,
    read_atomic_rows,
    write_atomic_file,
)

DOMAIN_SEPARATOR = ":"
DOMAIN_COLUMN = "domain:token"
ROWS_PER_BLOCK = 65_536


def namespaced(domain: str, token: str) -> str:
    """The merged token of ``token`` of ``domain``: ``"Food:B0001"``."""
    return f"{domain}{DOMAIN_SEPARATOR}{token}"


def domain_name(folder: str) -> str:
    return os.path.basename(os.path.normpath(folder))


def _atomic_path(folder: str, suffix: str) -> str:
    return os.path.join(folder, domain_name(folder) + suffix)


def _common_header(folders: Sequence[str], suffix: str) -> list[str]:
    headers = {folder: read_atomic_header(_atomic_path(folder, suffix)) for folder in folders}
    first = headers[folders[0]]
    for folder, header in headers.items():
        if header != first:
            raise ValueError(
                f"{_atomic_path(folder, suffix)}: expected the columns of "
                f"{_atomic_path(folders[0], suffix)} ({first}), found {header}"
            )
    return first


def _merged_rows(folders: Sequence[str], suffix: str, token_columns: Sequence[str], counts: dict) -> Iterator[list[str]]:
    """The rows of every domain's atomic file, token columns namespaced, the domain appended."""
    for folder in folders:
        domain, path = domain_name(folder), _atomic_path(folder, suffix)
        header = read_atomic_header(path)
        columns = [column_index(path, header, name) for name in token_columns]
        distinct = [set() for _ in columns]
        rows = 0
        for row in read_atomic_rows(path):
            for column, seen in zip(columns, distinct):
                seen.add(row[column])
                row[column] = namespaced(domain, row[column])
            rows += 1
            yield row + [domain]
        counts[domain] = {"rows": rows, **{name: len(seen) for name, seen in zip(token_columns, distinct)}}


FeatureSource = tuple[str, list[str], Any]  # (domain, row tokens, memory-mapped matrix)


def feature_sources(folders: Sequence[str], modality: str) -> list[FeatureSource]:
    """Every domain's rows of ``modality``, checked (format, one common dimension)."""
    sources = []
    for folder in folders:
        path = _atomic_path(folder, f".{modality}.npy")
        sources.append((domain_name(folder), *read_item_features(path)))
    dims = {_atomic_path(f, f".{modality}.npy"): matrix.shape[1] for f, (_, _, matrix) in zip(folders, sources)}
    if len(set(dims.values())) > 1:
        listing = ", ".join(f"{path}: {dim}" for path, dim in dims.items())
        raise ValueError(
            f"modality {modality}: the domains' feature dimensions differ ({listing}); extract "
            "every domain with the same encoder"
        )
    return sources


def _feature_blocks(sources: Sequence[FeatureSource]) -> Iterator[Any]:
    for _, _, matrix in sources:
        for start in range(0, matrix.shape[0], ROWS_PER_BLOCK):
            yield matrix[start : start + ROWS_PER_BLOCK]


def write_merged_features(sources: Sequence[FeatureSource], out_path: str) -> int:
    """The domains' rows one after the other, tokens namespaced; returns the row count."""
    tokens = [namespaced(domain, token) for domain, domain_tokens, _ in sources for token in domain_tokens]
    write_item_feature_blocks(out_path, tokens, _feature_blocks(sources), sources[0][2].shape[1])
    return len(tokens)


def merge_domains(folders: Sequence[str], name: str, out_dir: str, modalities: Sequence[str] = ()) -> dict[str, Any]:
    """Write the merged dataset ``name`` into ``out_dir``; returns its stats."""
    if len({domain_name(f) for f in folders}) != len(folders):
        raise ValueError(f"domains must have different folder names, found {[domain_name(f) for f in folders]}")
    features = {m: feature_sources(folders, m) for m in modalities}  # every input checked before writing
    inter_counts: dict[str, dict] = {}
    item_counts: dict[str, dict] = {}
    write_atomic_file(
        os.path.join(out_dir, f"{name}.inter"),
        _common_header(folders, ".inter") + [DOMAIN_COLUMN],
        _merged_rows(folders, ".inter", ["user_id", "item_id"], inter_counts),
    )
    write_atomic_file(
        os.path.join(out_dir, f"{name}.item"),
        _common_header(folders, ".item") + [DOMAIN_COLUMN],
        _merged_rows(folders, ".item", ["item_id"], item_counts),
    )
    feature_rows = {m: write_merged_features(features[m], os.path.join(out_dir, f"{name}.{m}.npy")) for m in modalities}
    domains = {
        domain: {
            "users": inter_counts[domain]["user_id"],
            "items": item_counts[domain]["rows"],
            "interactions": inter_counts[domain]["rows"],
        }
        for domain in map(domain_name, folders)
    }
    stats = {
        "name": name,
        "domains": domains,
        "users": sum(d["users"] for d in domains.values()),
        "items": sum(d["items"] for d in domains.values()),
        "interactions": sum(d["interactions"] for d in domains.values()),
        "feature_rows": feature_rows,
    }
    text = (json.dumps(stats, indent=2) + "\n").encode("utf-8")
    atomic_write(os.path.join(out_dir, f"{name}.stats.json"), lambda f: f.write(text))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="dataset folders, one per domain (the folder name is the domain)")
    parser.add_argument("--name", required=True, help="merged dataset name")
    parser.add_argument("--out", required=True, help="merged dataset folder")
    parser.add_argument("--modalities", nargs="*", default=[], help="feature modalities to merge, e.g. text image")
    args = parser.parse_args()
    stats = merge_domains(args.folders, args.name, args.out, args.modalities)
    print(
        f"{args.name}: {len(stats['domains'])} domains, {stats['users']} users, {stats['items']} items, "
        f"{stats['interactions']} interactions, features {stats['feature_rows']} written to {args.out}"
    )


if __name__ == "__main__":
    main()
