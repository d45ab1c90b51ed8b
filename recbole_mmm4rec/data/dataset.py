"""MultiModalSequentialDataset: RecBole's SequentialDataset plus per-item feature matrices."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import set_color

from recbole_mmm4rec.data.features import (
    FeatureFileError,
    align_item_features,
    read_item_features,
    tokens_path_for,
)
from recbole_mmm4rec.data.recbole_datasets import PluginSequentialDataset
from recbole_mmm4rec.data.sequence import padded_lists, train_mode, training_windows, window_batch, window_overlap


# The config keys of this class; RecBole must rebuild a saved dataset when one changes.
DATASET_KEYS = [
    "modalities",
    "modality_files",
    "modality_dims",
    "missing_feature_policy",
    "unknown_feature_tokens",
    "memory_map_features",
    "train_mode",
    "window_overlap",
]
# Sequence mode: the columns of a prefix row before its histories are gathered (see build).
_TARGET_ROW = "target_row"
_USER_FIRST_ROW = "user_first_row"


def configured_modalities(config) -> list[str]:
    """``modalities`` as a list (``--modalities=text`` or ``text,image`` arrives as a string)."""
    modalities = config["modalities"] or []
    if isinstance(modalities, str):
        return [name.strip() for name in modalities.split(",") if name.strip()]
    return list(modalities)


class MultiModalSequentialDataset(PluginSequentialDataset):
    """A :class:`~recbole.data.dataset.SequentialDataset` that attaches item features (and checks
    its atomic files, :class:`~recbole_mmm4rec.data.recbole_datasets.PluginSequentialDataset`).

    Config keys (defaults and comments in ``properties/overall.yaml``):

    * ``modalities`` (list of str): the modalities to attach, e.g. ``[text, image]``.
    * ``modality_files`` (dict, optional): modality -> ``path.npy`` (tokens in ``path.tokens``)
      or -> ``{features: path.npy, tokens: path.tokens}``. Default
      ``<data_path>/<dataset>/<dataset>.<modality>.npy``.
    * ``modality_dims`` (dict, optional): modality -> expected feature dimension.
    * ``missing_feature_policy`` (str or dict per modality): ``zero``, ``mean``, ``learned`` or
      ``error`` for items that have no feature row.
    * ``unknown_feature_tokens`` (``error`` or ``ignore``): rows whose token the dataset never had.
    * ``memory_map_features`` (bool): keep each aligned table in a file under
      ``<checkpoint_dir>/features/`` and map it, so that processes share one copy.

    * ``train_mode`` (``prefix`` or ``sequence``) and ``window_overlap``: with ``sequence``, the
      training split is every user's training interactions in windows
      (:mod:`recbole_mmm4rec.data.sequence`): ``len()`` counts windows and indexing gives window
      batches, without RecBole's prefix rows in memory. The validation and test splits are
      RecBole's prefix rows either way.

    The time field is float64 (see :mod:`recbole_mmm4rec.data.recbole_datasets`), so that
    ``<time>_list`` carries exact timestamps; like every ``*_list`` field of RecBole it holds the
    history only, never the target's time.
    """

    def __init__(self, config):
        self.train_mode = train_mode(config)
        self.window_overlap = window_overlap(config) if self.train_mode == "sequence" else None
        # Sequence mode: every interaction, sorted by user then time, shared by the splits.
        self.interaction_sequences: Interaction | None = None
        # Sequence mode, training split: training_windows() of its targets.
        self.windows: dict[str, np.ndarray] | None = None
        self.modalities: list[str] = configured_modalities(config)
        self.item_features: dict[str, torch.Tensor] = {}
        self.item_feature_masks: dict[str, torch.Tensor] = {}
        self.missing_feature_policies: dict[str, str] = {}
        super().__init__(config)

    def _data_processing(self):
        # Tokens before filtering tell a row of a filtered-out item from a row of a wrong file.
        raw_item_tokens = set(self.inter_feat[self.iid_field].astype(str))
        if self.item_feat is not None:
            raw_item_tokens.update(self.item_feat[self.iid_field].astype(str))
        super()._data_processing()
        for modality in self.modalities:
            self._attach_modality(modality, raw_item_tokens)

    def data_augmentation(self):
        """Prefix mode: RecBole's. Sequence mode: each of RecBole's prefix rows as its user, target
        item and time (what RecBole's split reads), the target's row among the sorted interactions
        and its history length; :meth:`build` gathers histories for the evaluation splits only."""
        if self.train_mode == "prefix":
            return super().data_augmentation()
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        users = self.inter_feat[self.uid_field].numpy()
        rows = np.arange(len(users))
        new_user = np.r_[True, users[1:] != users[:-1]] if len(users) else np.zeros(0, dtype=bool)
        user_first = np.maximum.accumulate(np.where(new_user, rows, 0))
        targets = rows[~new_user]
        self.interaction_sequences = self.inter_feat
        self.inter_feat = Interaction({
            self.uid_field: self.inter_feat[self.uid_field][targets],
            self.iid_field: self.inter_feat[self.iid_field][targets],
            self.time_field: self.inter_feat[self.time_field][targets],
            _TARGET_ROW: torch.from_numpy(targets),
            _USER_FIRST_ROW: torch.from_numpy(user_first[targets]),
            self.item_list_length_field: torch.from_numpy(np.minimum(targets - user_first[targets], self.max_item_list_len)),
        })

    def build(self):
        """RecBole's splits; in sequence mode, the evaluation splits' prefix rows get their histories
        and the training split its windows."""
        if self.train_mode == "sequence" and self.config["benchmark_filename"] is not None:
            raise ValueError("train_mode: sequence splits the interactions itself; with benchmark_filename use train_mode: prefix")
        datasets = super().build()
        if self.train_mode == "prefix":
            return datasets
        train, *evaluation = datasets
        for split in evaluation:
            split._gather_histories()
        order = np.argsort(train.inter_feat[_TARGET_ROW].numpy(), kind="stable")
        train.windows = training_windows(
            train.inter_feat[_TARGET_ROW].numpy()[order], train.inter_feat[_USER_FIRST_ROW].numpy()[order],
            self.max_item_list_len, self.window_overlap,
        )
        # The training rows keep only what RecBole's samplers read of a split: user and item.
        train.inter_feat = Interaction({field: train.inter_feat[field] for field in (self.uid_field, self.iid_field)})
        return datasets

    def _gather_histories(self) -> None:
        """This split's prefix rows as RecBole builds them: the target's fields and its history lists."""
        targets, lengths = self.inter_feat[_TARGET_ROW], self.inter_feat[self.item_list_length_field]
        rows = self.interaction_sequences[targets]
        rows.update(Interaction({
            self.item_list_length_field: lengths,
            **padded_lists(self.interaction_sequences, targets - lengths, lengths, self.uid_field,
                           self.config["LIST_SUFFIX"], self.max_item_list_len),
        }))
        self.inter_feat = rows

    def __len__(self):
        return len(self.windows["start"]) if self.windows is not None else super().__len__()

    def __getitem__(self, index, join=True):
        if self.windows is None:
            return super().__getitem__(index, join=join)
        batch = window_batch(self.interaction_sequences, self.windows, np.asarray(index), self.uid_field, self.iid_field,
                             self.config["LIST_SUFFIX"], self.item_list_length_field, self.max_item_list_len)
        return self.join(batch) if join else batch

    @staticmethod
    def modality_paths(config, modality: str) -> tuple[str, str]:
        """``modality``'s feature matrix and token file under ``config``."""
        files = config["modality_files"] or {}
        entry = files.get(modality)
        if entry is None:
            features = os.path.join(config["data_path"], f"{config['dataset']}.{modality}.npy")
            return features, tokens_path_for(features)
        if isinstance(entry, str):
            return entry, tokens_path_for(entry)
        if isinstance(entry, dict) and "features" in entry:
            return entry["features"], entry.get("tokens") or tokens_path_for(entry["features"])
        raise FeatureFileError(
            f"modality_files[{modality!r}]: expected a path to a .npy file or a dict with keys "
            f"'features' and optionally 'tokens', found {entry!r}"
        )

    @classmethod
    def feature_files(cls, config) -> list[str]:
        """Every feature and token file the dataset reads under ``config``: a saved dataset is
        reused only while they are unchanged (see :mod:`recbole_mmm4rec.saved_data`)."""
        return [path for modality in configured_modalities(config) for path in cls.modality_paths(config, modality)]

    def _aligned_path(self, modality: str, features_path: str, policy: str) -> str:
        """The aligned table's file: named by everything it depends on (the feature file, the
        policy, the item ids), so a stale one is never mapped."""
        stat = os.stat(features_path)
        digest = hashlib.md5(
            "\n".join(
                [os.path.abspath(features_path), str(stat.st_size), str(stat.st_mtime_ns), policy]
                + list(self.field2id_token[self.iid_field])
            ).encode("utf-8")
        ).hexdigest()[:12]
        folder = os.path.join(self.config["checkpoint_dir"], "features")
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"{self.dataset_name}.{modality}.{digest}.npy")

    def _missing_policy(self, modality: str) -> str:
        policy = self.config["missing_feature_policy"] or "error"
        return policy.get(modality, "error") if isinstance(policy, dict) else policy

    def _ignore_unknown_tokens(self) -> bool:
        setting = self.config["unknown_feature_tokens"] or "error"
        if setting not in ("error", "ignore"):
            raise FeatureFileError(
                f"unknown_feature_tokens: expected 'error' or 'ignore', found {setting!r}"
            )
        return setting == "ignore"

    def _attach_modality(self, modality: str, raw_item_tokens: set[str]) -> None:
        features_path, tokens_path = self.modality_paths(self.config, modality)
        expected_dim = (self.config["modality_dims"] or {}).get(modality)
        tokens, matrix = read_item_features(features_path, tokens_path, expected_dim)
        policy = self._missing_policy(modality)
        out_path = self._aligned_path(modality, features_path, policy) if self.config["memory_map_features"] else None
        aligned = align_item_features(
            tokens,
            matrix,
            self.field2token_id[self.iid_field],
            raw_item_tokens,
            policy,
            source=tokens_path,
            ignore_unknown_tokens=self._ignore_unknown_tokens(),
            out_path=out_path,
        )
        self.item_features[modality] = torch.from_numpy(aligned.table)
        self.item_feature_masks[modality] = torch.from_numpy(aligned.has_feature)
        self.missing_feature_policies[modality] = policy
        covered = int(aligned.has_feature.sum())
        self.logger.info(
            f"modality {modality}: {aligned.table.shape[1]}-d features for {covered} of "
            f"{self.item_num - 1} items from {features_path} (missing: {policy}; unused rows: "
            f"{aligned.unused_rows})"
        )

    def item_feature_table(self, modality: str) -> torch.Tensor:
        """Features of ``modality`` indexed by item id, ``(item_num, dim)`` float32; row 0 is zero."""
        self._check_modality(modality)
        return self.item_features[modality]

    def item_feature_mask(self, modality: str) -> torch.Tensor:
        """``(item_num,)`` bool: True where the item has its own feature row."""
        self._check_modality(modality)
        return self.item_feature_masks[modality]

    def missing_feature_policy(self, modality: str) -> str:
        self._check_modality(modality)
        return self.missing_feature_policies[modality]

    def _check_modality(self, modality: str) -> None:
        if modality not in self.item_features:
            raise KeyError(
                f"modality {modality!r} is not attached to dataset {self.dataset_name}; "
                f"attached: {sorted(self.item_features)}. Add it to `modalities` in your YAML."
            )

    def __str__(self):
        lines = [super().__str__()]
        for modality in self.modalities:
            table = self.item_features[modality]
            covered = int(self.item_feature_masks[modality].sum())
            lines.append(
                set_color(f"Modality {modality}", "blue")
                + f": {tuple(table.shape)} features, {covered} items covered, "
                f"missing policy {self.missing_feature_policies[modality]}"
            )
        return "\n".join(lines)
