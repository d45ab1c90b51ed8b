"""Build two MovieLens-1M domains that share no item and no user, for transfer experiments.

``ml-1m-mm``'s interactions split by the movie's release year and the user's id:

* ``ml-1m-mm-before1997`` (the source): even-numbered users, movies released before 1997;
* ``ml-1m-mm-since1997`` (the target): odd-numbered users, movies released in 1997-2000.

Each domain is then reduced to its 5-core (users and items with at least 5 interactions, as the
paper's Amazon domains): about 368 k interactions of 3,000 users on 2,362 movies for the source,
131 k of 2,776 users on 903 movies for the target. A model pre-trained on the source has seen
none of the target's items nor users: only the item encoders (features in the same spaces, see
:mod:`ml1m_mm`) and the sequence model can transfer.

The domains are cut from the sibling ``ml-1m-mm`` folder, which is built there first if missing.

    python -m recbole_mmm4rec.dataset_scripts.ml1m_mm_domains --name ml-1m-mm-since1997 --out dataset/ml-1m-mm-since1997
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recbole_mmm4rec.data.features import read_item_features, write_item_features
from recbole_mmm4rec.dataset_scripts import ml1m_mm

FIRST_TARGET_YEAR = 1997
MIN_INTERACTIONS = 5  # the k of the k-core, for users and items alike
MODALITIES = ("text", "kg")


@dataclass(frozen=True)
class Domain:
    """The users (``user_parity`` of their MovieLens id) and release years of one domain."""

    user_parity: int
    first_year: int
    last_year: int


DOMAINS = {
    "ml-1m-mm-before1997": Domain(user_parity=0, first_year=0, last_year=FIRST_TARGET_YEAR - 1),
    "ml-1m-mm-since1997": Domain(user_parity=1, first_year=FIRST_TARGET_YEAR, last_year=9999),
}


def k_core(inter: pd.DataFrame, k: int = MIN_INTERACTIONS) -> pd.DataFrame:
    """The largest part of ``inter`` in which every user and every item has at least ``k`` rows."""
    while True:
        keep = (inter.groupby("user_id:token")["item_id:token"].transform("size") >= k) & (
            inter.groupby("item_id:token")["user_id:token"].transform("size") >= k
        )
        if keep.all():
            return inter
        inter = inter[keep]


def domain_interactions(inter: pd.DataFrame, items: pd.DataFrame, domain: Domain) -> pd.DataFrame:
    """The 5-core of ``domain``'s rows of ml-1m-mm's ``.inter`` (``items``: its ``.item``)."""
    year_of = dict(zip(items["item_id:token"], items["release_year:token"].astype(int)))
    years = inter["item_id:token"].map(year_of)
    user_numbers = inter["user_id:token"].str.removeprefix("1m_").astype(int)
    selected = (user_numbers % 2 == domain.user_parity) & years.between(domain.first_year, domain.last_year)
    return k_core(inter[selected])


def cut_domain(ml1m_dir: str, name: str, out_dir: str) -> None:
    """Write domain ``name``'s atomic files and feature rows, cut from the ml-1m-mm folder ``ml1m_dir``."""
    source = ml1m_mm.DATASET_NAME
    inter = pd.read_csv(os.path.join(ml1m_dir, f"{source}.inter"), sep="\t", dtype=str, keep_default_na=False)
    items = pd.read_csv(os.path.join(ml1m_dir, f"{source}.item"), sep="\t", dtype=str, keep_default_na=False)
    kept = domain_interactions(inter, items, DOMAINS[name])
    kept_items = set(kept["item_id:token"])
    kept.to_csv(os.path.join(out_dir, f"{name}.inter"), sep="\t", index=False, lineterminator="\n")
    items[items["item_id:token"].isin(kept_items)].to_csv(
        os.path.join(out_dir, f"{name}.item"), sep="\t", index=False, lineterminator="\n"
    )
    for modality in MODALITIES:
        tokens, matrix = read_item_features(os.path.join(ml1m_dir, f"{source}.{modality}.npy"))
        rows = [row for row, token in enumerate(tokens) if token in kept_items]
        write_item_features(
            os.path.join(out_dir, f"{name}.{modality}.npy"), [tokens[row] for row in rows], np.asarray(matrix[rows])
        )
    print(
        f"{name}: {len(kept):,} interactions of {kept['user_id:token'].nunique():,} users on "
        f"{len(kept_items):,} movies written to {out_dir}"
    )


def build_domain(name: str, out_dir: str) -> None:
    """Build domain ``name`` (a key of :data:`DOMAINS`) into ``out_dir``."""
    if name not in DOMAINS:
        raise ValueError(f"unknown MovieLens domain {name!r}; expected one of {sorted(DOMAINS)}")
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    # Imported here: quick start imports the registry, which names this module's builders.
    from recbole_mmm4rec.quick_start import ensure_dataset_folder

    sibling = os.path.join(os.path.dirname(os.path.abspath(out_dir)), ml1m_mm.DATASET_NAME)
    ensure_dataset_folder(ml1m_mm.DATASET_NAME, sibling)  # built once beside the domains, and kept
    cut_domain(sibling, name, out_dir)
    print(f"{name} built in {time.perf_counter() - started:.1f} s")


def build_ml1m_mm_before1997(out_dir: str) -> None:
    """The source domain: even-numbered users, movies released before 1997."""
    build_domain("ml-1m-mm-before1997", out_dir)


def build_ml1m_mm_since1997(out_dir: str) -> None:
    """The target domain: odd-numbered users, movies released in 1997 or later."""
    build_domain("ml-1m-mm-since1997", out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, choices=sorted(DOMAINS))
    parser.add_argument("--out", help="folder to write (default: dataset/<name>)")
    args = parser.parse_args()
    build_domain(args.name, args.out or os.path.join("dataset", args.name))


if __name__ == "__main__":
    main()
