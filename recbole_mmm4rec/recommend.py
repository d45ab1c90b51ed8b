"""Top-k recommendations from a trained checkpoint, for the dataset's users or for given histories.

:class:`Recommender` reloads a checkpoint with its dataset (:func:`~recbole_mmm4rec.quick_start.
load_data_and_model`, through the restricted loader) and scores the whole catalogue for each
history, as RecBole's ``full_sort_predict`` does. Item tokens go in and come out; internal ids
never leave this module.

Models that score items from their features (MMM4Rec, UniSRec without ID embeddings) can also
score items they never trained on: :meth:`Recommender.from_checkpoint` takes their feature files
(``new_items``), which join the catalogue as candidates and may appear in histories.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from dataclasses import dataclass
from logging import getLogger
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType, set_color
from torch import nn
from tqdm import tqdm

from recbole_mmm4rec.blocks import ItemFeatureTable
from recbole_mmm4rec.data import FeatureFileError, atomic_write, read_item_features
from recbole_mmm4rec.model import MMM4Rec, UniSRec
from recbole_mmm4rec.quick_start import load_data_and_model


class RecommendError(ValueError):
    """An input the recommender cannot use; the message says what to fix."""


@dataclass
class History:
    """One history to recommend for: item tokens, oldest first, with their timestamps (needed by
    models that read time, e.g. MMM4Rec with ``time_channel: True``)."""

    id: str
    items: list[str]
    timestamps: list[float] | None = None


def read_histories(path: str) -> list[History]:
    """Histories from a JSONL file, one ``{"id": ..., "items": [tokens], "timestamps": [...]}``
    per line (``id`` defaults to the line number, ``timestamps`` is optional); blank lines skipped."""
    histories = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RecommendError(f"{where}: not a JSON object ({error})") from None
            if not isinstance(record, dict) or "items" not in record:
                raise RecommendError(f'{where}: expected an object with "items" (a list of item tokens), found {line.strip()[:80]}')
            histories.append(_history(record, where, default_id=str(number)))
    if not histories:
        raise RecommendError(f"{path}: no histories (expected one JSON object per line)")
    return histories


def _history(record: Mapping[str, Any], where: str, default_id: str) -> History:
    items, timestamps = record["items"], record.get("timestamps")
    if not isinstance(items, list) or not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in items):
        raise RecommendError(f'{where}: "items" must be a list of item tokens (strings), found {items!r:.80}')
    if timestamps is not None:
        numeric = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in timestamps) if isinstance(timestamps, list) else False
        if not numeric or len(timestamps) != len(items):
            raise RecommendError(
                f'{where}: "timestamps" must be a list of {len(items)} numbers, one per item, found {timestamps!r:.80}'
            )
    return History(str(record.get("id", default_id)), [str(t) for t in items], timestamps)


def feature_tables(model: nn.Module) -> dict[str, ItemFeatureTable]:
    """The item feature tables a model scores candidates with, by modality; empty for a model that
    knows items by their IDs only (RecBole's built-in models)."""
    if isinstance(model, MMM4Rec):
        return dict(model.features.items())
    if isinstance(model, UniSRec):
        # The word-dropped table serves pre-training's second view only, never scoring.
        return {model.text_modality: model.text_features}
    return {}


def id_tables(model: nn.Module) -> dict[str, nn.Embedding]:
    """The per-item trained tables of a model (its ``ITEM_SPECIFIC_PARAMETERS``, or RecBole's
    ``item_embedding``), by module name: an item the model never trained on has no row there."""
    names = getattr(model, "ITEM_SPECIFIC_PARAMETERS", ("item_embedding",))
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding) and name.split(".")[-1] in names
    }


def read_new_items(source: str | Mapping[str, str], dims: Mapping[str, int]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The tokens and, per modality of ``dims``, the ``(rows, dim)`` features of new items.

    ``source`` is a folder holding one ``<name>.<modality>.npy`` (with its ``.tokens``) per
    modality, or a mapping modality -> ``.npy`` path. Every new item needs a row in every modality:
    rows are reordered to the first modality's tokens.
    """
    if isinstance(source, str):
        if not os.path.isdir(source):
            raise RecommendError(f"new items: {source} is not a folder of feature files (<name>.<modality>.npy + .tokens)")
        paths = {}
        for modality in dims:
            found = sorted(glob.glob(os.path.join(source, f"*.{modality}.npy")))
            if len(found) != 1:
                raise RecommendError(
                    f"new items: expected one {modality} feature file *.{modality}.npy in {source} (the model scores "
                    f"with modalities {list(dims)}), found {[os.path.basename(p) for p in found] or 'none'}"
                )
            paths[modality] = found[0]
    else:
        missing = [m for m in dims if m not in source]
        if missing:
            raise RecommendError(f"new items: no feature file for modalities {missing} (the model scores with {list(dims)})")
        paths = {modality: source[modality] for modality in dims}
    tokens, features = None, {}
    for modality, path in paths.items():
        file_tokens, matrix = read_item_features(path)
        if matrix.shape[1] != dims[modality]:
            raise FeatureFileError(
                f"{path}: expected feature dimension {dims[modality]} (the checkpoint's model reads "
                f"{dims[modality]}-d {modality} features), found {matrix.shape[1]}"
            )
        if tokens is None:
            tokens = file_tokens
        elif set(file_tokens) != set(tokens):
            differ = sorted(set(file_tokens) ^ set(tokens))[:5]
            raise FeatureFileError(
                f"{path}: its tokens differ from those of {paths[next(iter(paths))]}; every new item needs a row "
                f"in every modality (e.g. {differ})"
            )
        row = {token: index for index, token in enumerate(file_tokens)}
        features[modality] = np.asarray(matrix[[row[token] for token in tokens]], dtype=np.float32)
    return tokens, features


class Recommender:
    """Top-k over a checkpoint's catalogue (and new items) for dataset users or given histories.

    Build it with :meth:`from_checkpoint`. ``notes`` lists what a reader of the output must know
    (e.g. that new items were scored with a zero ID vector).
    """

    def __init__(self, config, model: nn.Module, dataset, splits: Sequence, checkpoint_file: str):
        if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
            raise RecommendError(
                f"{checkpoint_file}: a checkpoint of {config['model']}, a {config['MODEL_TYPE'].name.lower()} model; "
                "run_recommend takes sequential models (MMM4Rec, UniSRec, SASRec, GRU4Rec, ...)"
            )
        self.config = config
        self.model = model.eval()
        self.dataset = dataset
        self.checkpoint_file = checkpoint_file
        self.logger = getLogger()
        self.notes: list[str] = []
        self.item_tokens: list[str] = list(dataset.field2id_token[dataset.iid_field])
        self.item_ids: dict[str, int] = dict(dataset.field2token_id[dataset.iid_field])
        self.n_trained_items = len(self.item_tokens)
        self.max_length = config["MAX_ITEM_LIST_LENGTH"]
        # RecBole's field names, as the model reads them.
        self.time_seq = getattr(model, "TIME_SEQ", None)
        self.device = next(model.parameters()).device
        self._user_rows = self._user_sequences(splits)
        self._candidates = None
        self.skipped_items = 0

    @classmethod
    def from_checkpoint(
        cls, path: str, new_items: str | Mapping[str, str] | None = None, trust: bool = False
    ) -> "Recommender":
        """Reload ``path`` (a RecBole checkpoint of a sequential model) with its dataset, as
        :func:`~recbole_mmm4rec.quick_start.load_data_and_model` does (``trust`` as there).

        ``new_items``: feature files of items absent from the checkpoint's catalogue (see
        :func:`read_new_items`); refused for models that cannot score an item without its ID vector.
        """
        try:
            config, model, dataset, *splits = load_data_and_model(path, trust=trust)
        except RuntimeError as error:
            if "state_dict" not in str(error):
                raise
            # load_state_dict's message lists every mismatched tensor: the first lines suffice.
            detail = " ".join(str(error).split("\n")[:3])
            raise RecommendError(
                f"{path} does not fit the dataset its config names, as that dataset is now on disk ({detail}). "
                "Its files changed since training (other items, features of another encoder), or this is a "
                "checkpoint of another dataset: rebuild the dataset as it was or pass the right checkpoint."
            ) from None
        recommender = cls(config, model, dataset, splits, path)
        if new_items is not None:
            recommender.add_items(*read_new_items(new_items, {m: t.dim for m, t in feature_tables(model).items()}))
        return recommender

    # ---- the catalogue -------------------------------------------------------------------

    def add_items(self, tokens: Sequence[str], features: Mapping[str, np.ndarray]) -> None:
        """Append new items (``features``: modality -> ``(len(tokens), dim)``) to the catalogue."""
        name = self.config["model"]
        tables = feature_tables(self.model)
        if not tables:
            raise RecommendError(
                f"{name} knows items by their trained ID embeddings only: it cannot score items it never trained on. "
                "New items need a model that scores items from their features (MMM4Rec, UniSRec)."
            )
        ids = id_tables(self.model)
        if ids and not isinstance(self.model, MMM4Rec):
            raise RecommendError(
                f"{name} adds a trained ID embedding to each item ({', '.join(ids)}; e.g. UniSRec's "
                f"train_stage {self.config['train_stage']!r}), which items it never trained on lack. Use a "
                "checkpoint without item IDs (UniSRec pretrain or inductive_ft, MMM4Rec) for new items."
            )
        known = [token for token in tokens if token in self.item_ids]
        if known:
            raise RecommendError(
                f"new items: {len(known)} tokens are already items of dataset {self.config['dataset']} "
                f"(e.g. {known[:5]}); give new items new tokens"
            )
        for modality, table in tables.items():
            rows = torch.as_tensor(features[modality], dtype=table.table.dtype, device=table.table.device)
            table.table = torch.cat([table.table, rows])
            table.has_feature = torch.cat([table.has_feature, torch.ones(len(rows), dtype=torch.bool, device=rows.device)])
        if ids:
            # MMM4Rec's per-item tables start at zero in training (a zero ID bias; zero fusion logits,
            # i.e. equal modality weights): a new item gets the values every item starts from.
            for module in ids.values():
                zeros = module.weight.new_zeros(len(tokens), module.weight.shape[1])
                module.weight = nn.Parameter(torch.cat([module.weight.detach(), zeros]), requires_grad=False)
                module.num_embeddings = module.weight.shape[0]
            self._note(
                f"{len(tokens)} new items scored with a zero ID vector ({', '.join(ids)}): {name} trained one per "
                "item, and items it never trained on have none; their scores rest on their features alone"
            )
        for token in tokens:
            self.item_ids[token] = len(self.item_tokens)
            self.item_tokens.append(token)
        self._candidates = None
        self.logger.info(f"{len(tokens)} new items joined the catalogue ({len(self.item_tokens) - 1} candidates)")

    def _note(self, text: str) -> None:
        self.notes.append(text)
        self.logger.warning(set_color("Note", "red") + f": {text}")

    # ---- dataset users -------------------------------------------------------------------

    def _user_sequences(self, splits: Sequence) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
        """Every user's interactions, oldest first: items (and times, for models that read them).

        ``train_mode: sequence`` keeps them all, sorted by user then time. Otherwise RecBole keeps
        a sequential dataset as rows of (history, target), split in time order: a user's items are
        the history of their earliest row followed by the targets of all their rows.
        """
        dataset, model = self.dataset, self.model
        every = getattr(dataset, "interaction_sequences", None)  # RecBole's own datasets have none
        if every is not None:
            users, items = every[dataset.uid_field].numpy(), every[dataset.iid_field].numpy()
            times = every[dataset.time_field].numpy() if self.time_seq else None
            starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
            ends = np.r_[starts[1:], len(users)]
            return {
                int(users[start]): (items[start:end], None if times is None else times[start:end])
                for start, end in zip(starts, ends)
            }
        feats = [split._dataset.inter_feat for split in splits]
        offsets = np.cumsum([0] + [len(feat) for feat in feats])
        users = np.concatenate([feat[dataset.uid_field].numpy() for feat in feats])
        targets = np.concatenate([feat[dataset.iid_field].numpy() for feat in feats])
        times = np.concatenate([feat[dataset.time_field].numpy() for feat in feats]) if self.time_seq else None
        # Rows are in time order within each split: a stable sort by user keeps each user's order.
        order = np.argsort(users, kind="stable")
        starts = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1]])
        sequences = {}
        for rows in np.split(order, starts[1:]):
            split = int(np.searchsorted(offsets, rows[0], side="right")) - 1
            feat, first = feats[split], int(rows[0] - offsets[split])
            length = int(feat[model.ITEM_SEQ_LEN][first])
            items = np.concatenate([feat[model.ITEM_SEQ][first, :length].numpy(), targets[rows]])
            item_times = None
            if times is not None:
                item_times = np.concatenate([feat[self.time_seq][first, :length].numpy(), times[rows]])
            sequences[int(users[rows[0]])] = (items, item_times)
        return sequences

    def user_history(self, user: str) -> History:
        """Dataset user ``user``'s interactions, oldest first (the model reads the last
        ``MAX_ITEM_LIST_LENGTH``)."""
        uid = self._user_id(user)
        items, times = self._user_rows[uid]
        return History(user, [self.item_tokens[i] for i in items], None if times is None else times.tolist())

    def users(self) -> list[str]:
        """Tokens of the dataset's users that have a history, in id order."""
        return [self.dataset.id2token(self.dataset.uid_field, uid) for uid in sorted(self._user_rows)]

    def _user_id(self, user: str) -> int:
        uid = self.dataset.field2token_id[self.dataset.uid_field].get(str(user))
        if uid is None or uid not in self._user_rows:
            reason = "is not a user of" if uid is None else "has no history in"
            examples = ", ".join(self.users()[:5])
            raise RecommendError(
                f"user {user!r} {reason} dataset {self.config['dataset']} (checkpoint {self.checkpoint_file}; "
                f"{len(self._user_rows)} users, e.g. {examples}); pass its history with --histories instead"
            )
        return uid

    # ---- scoring -------------------------------------------------------------------------

    def _resolve(self, history: History, strict: bool) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(item ids, timestamps, unknown tokens skipped) of a given history."""
        where = f"history {history.id!r}"
        if not history.items:
            raise RecommendError(f"{where}: empty history; give at least one item token")
        if self.time_seq and history.timestamps is None:
            raise RecommendError(
                f'{where}: no "timestamps"; {self.config["model"]} reads the time of each history item '
                f"(time_channel: True): give one timestamp per item, in the dataset's time unit"
            )
        known = [index for index, token in enumerate(history.items) if token in self.item_ids]
        unknown = [token for token in history.items if token not in self.item_ids]
        if unknown and (strict or not known):
            cause = "--strict refuses unknown items" if known else "none of its items is known: a history of another dataset?"
            raise RecommendError(
                f"{where}: {len(unknown)} of its {len(history.items)} items are not items of dataset "
                f"{self.config['dataset']} nor new items ({cause}; e.g. {unknown[:5]})"
            )
        ids = np.array([self.item_ids[history.items[i]] for i in known], dtype=np.int64)
        times = None
        if self.time_seq:
            times = np.array([history.timestamps[i] for i in known], dtype=np.float64)
        return ids, times, len(unknown)

    def _interaction(self, rows: Sequence[tuple[np.ndarray, np.ndarray | None]], user_ids: Sequence[int]) -> Interaction:
        """A batch as RecBole's dataloaders build it: right-padded last items (and times)."""
        item_seq = torch.zeros(len(rows), self.max_length, dtype=torch.long)
        lengths = torch.zeros(len(rows), dtype=torch.long)
        times = torch.zeros(len(rows), self.max_length, dtype=torch.float64) if self.time_seq else None
        for index, (ids, row_times) in enumerate(rows):
            ids = ids[-self.max_length :]
            item_seq[index, : len(ids)] = torch.from_numpy(ids)
            lengths[index] = len(ids)
            if times is not None:
                times[index, : len(ids)] = torch.from_numpy(row_times[-self.max_length :])
        fields = {
            self.model.ITEM_SEQ: item_seq,
            self.model.ITEM_SEQ_LEN: lengths,
            self.model.USER_ID: torch.as_tensor(user_ids, dtype=torch.long),
        }
        if times is not None:
            fields[self.time_seq] = times
        return Interaction(fields).to(self.device)

    @torch.no_grad()
    def _scores(self, interaction: Interaction) -> torch.Tensor:
        """(b, items) logits over the whole catalogue, new items included."""
        model = self.model
        # The catalogue's vectors do not depend on the history: computed once, not per batch
        # (with 100 k items they dominate a batch of one).
        if isinstance(model, MMM4Rec):
            if self._candidates is None:
                self._candidates = model.candidate_vectors()
            timestamps = interaction[self.time_seq] if self.time_seq else None
            users = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], timestamps)
            return users @ self._candidates.T / model.temperature
        if isinstance(model, UniSRec):
            if self._candidates is None:
                self._candidates = model.item_vectors()
            item_seq = interaction[model.ITEM_SEQ]
            users = model.forward(item_seq, interaction[model.ITEM_SEQ_LEN], self._candidates[item_seq])
            return model.cosine_logits(users, self._candidates)
        return model.full_sort_predict(interaction).view(len(interaction), -1)

    def _per_user_table(self) -> bool:
        """Whether the model has a table with one row per dataset user (Caser, HGN, FPMC, ...)."""
        users, items = self.dataset.user_num, self.dataset.item_num
        return users != items and any(
            isinstance(m, nn.Embedding) and m.num_embeddings == users for m in self.model.modules()
        )

    def _top_k(
        self, rows: list, user_ids: list[int], exclude: list[np.ndarray | None], k: int, batch_size: int, show_progress: bool
    ) -> list[tuple[list[str], list[float]]]:
        if k < 1 or batch_size < 1:
            raise RecommendError(f"topk and batch_size must be at least 1, found {k} and {batch_size}")
        k = min(k, len(self.item_tokens) - 1)
        results = []
        starts = range(0, len(rows), batch_size)
        if show_progress and len(starts) > 1:
            starts = tqdm(starts, desc=set_color("Recommend", "pink"), unit="batch")
        for start in starts:
            end = start + batch_size
            scores = self._scores(self._interaction(rows[start:end], user_ids[start:end]))
            scores[:, 0] = -torch.inf  # padding is no candidate
            for index, items in enumerate(exclude[start:end]):
                if items is not None:
                    scores[index, torch.as_tensor(items, device=scores.device)] = -torch.inf
            top_scores, top_items = torch.topk(scores, k)
            for item_row, score_row in zip(top_items.tolist(), top_scores.tolist()):
                kept = [(i, s) for i, s in zip(item_row, score_row) if s != -np.inf]
                results.append(([self.item_tokens[i] for i, _ in kept], [s for _, s in kept]))
        return results

    def recommend(
        self,
        histories: Iterable[History | Mapping[str, Any] | Sequence[str]],
        k: int = 10,
        exclude_history: bool = True,
        strict: bool = False,
        batch_size: int = 256,
        show_progress: bool = False,
    ) -> list[tuple[list[str], list[float]]]:
        """The top ``k`` item tokens and their scores for each history (a :class:`History`, a dict
        like a JSONL line, or a list of item tokens), best first.

        Unknown item tokens are skipped and counted in ``skipped_items`` (an error with
        ``strict``); ``exclude_history`` leaves the history's items out of the candidates.
        """
        if self._per_user_table():
            raise RecommendError(
                f"{self.config['model']} scores with a trained vector per dataset user: it recommends for "
                "dataset users only (--users, --all_users), not for given histories"
            )
        rows, exclude, self.skipped_items = [], [], 0
        for number, history in enumerate(histories, start=1):
            if not isinstance(history, History):
                record = history if isinstance(history, Mapping) else {"items": list(history)}
                history = _history(record, f"history {number}", default_id=str(number))
            ids, times, skipped = self._resolve(history, strict)
            self.skipped_items += skipped
            rows.append((ids, times))
            exclude.append(ids if exclude_history else None)
        if self.skipped_items:
            self.logger.warning(f"skipped {self.skipped_items} unknown item tokens in the histories")
        return self._top_k(rows, [0] * len(rows), exclude, k, batch_size, show_progress)

    def recommend_users(
        self, users: Sequence[str], k: int = 10, exclude_history: bool = True, batch_size: int = 256, show_progress: bool = False
    ) -> list[tuple[list[str], list[float]]]:
        """As :meth:`recommend`, for dataset users (tokens) from their histories in the dataset;
        ``exclude_history`` leaves out every item they interacted with."""
        uids = [self._user_id(user) for user in users]
        rows = [self._user_rows[uid] for uid in uids]
        exclude = [rows[index][0] if exclude_history else None for index in range(len(uids))]
        return self._top_k(rows, uids, exclude, k, batch_size, show_progress)


OUTPUT_FORMATS = (".jsonl", ".csv")


def format_recommendations(ids: Sequence[str], results: Sequence[tuple[list[str], list[float]]], output_format: str) -> str:
    """JSONL (``{"id", "items", "scores"}`` per history) or CSV (``id,rank,item,score``, one row
    per recommended item, rank from 1)."""
    if output_format == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["id", "rank", "item", "score"])
        for identifier, (items, scores) in zip(ids, results):
            writer.writerows([identifier, rank, item, repr(score)] for rank, (item, score) in enumerate(zip(items, scores), start=1))
        return buffer.getvalue()
    return "".join(
        json.dumps({"id": identifier, "items": items, "scores": scores}) + "\n" for identifier, (items, scores) in zip(ids, results)
    )


def write_recommendations(path: str, ids: Sequence[str], results: Sequence[tuple[list[str], list[float]]]) -> None:
    """:func:`format_recommendations` into ``path`` (``.jsonl`` or ``.csv``), through a temporary
    file renamed into place: a reader never sees a half file."""
    output_format = os.path.splitext(path)[1].lower()
    if output_format not in OUTPUT_FORMATS:
        raise RecommendError(f"output {path}: expected a .jsonl or .csv file name, found {output_format or 'no extension'}")
    text = format_recommendations(ids, results, output_format)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
