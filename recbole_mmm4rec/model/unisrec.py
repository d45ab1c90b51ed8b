r"""UniSRec: universal sequence representations from frozen item text.

Hou et al., "Towards Universal Sequence Representation Learning for Recommender Systems",
KDD 2022. Written from the paper for RecBole, on this package's
:class:`~recbole_mmm4rec.data.MultiModalSequentialDataset`, so that it sees the same splits,
samplers and evaluators as MMM4Rec. README.md lists where it differs from the paper and why.

An item is its frozen text feature vector (one modality of the dataset) mapped by a
mixture-of-experts adaptor of parametric-whitening experts; a SASRec Transformer over the
history gives the sequence vector (its last real position); scores are cosine similarities
divided by a temperature. Three stages (``train_stage``):

* ``pretrain``: text only, in-batch sequence-item plus ``seq_seq_loss_weight`` times
  sequence-sequence contrastive losses (the second view by item drop or word drop);
* ``inductive_ft``: text only, cross-entropy over all items;
* ``transductive_ft``: a learned ID embedding per item is added to its text vector (in the
  history and as a candidate), cross-entropy over all items.

Fine-tuning a pre-trained checkpoint freezes the Transformer and the position embedding
(``freeze`` in ``properties/finetune/UniSRec.yaml``): only the adaptor (and the ID embedding)
adapt to the new domain.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn

from recbole_mmm4rec.blocks import (
    ItemFeatureTable,
    MoEAdaptor,
    in_batch_cross_entropy,
    in_batch_item_cross_entropy,
    init_weights,
)
from recbole_mmm4rec.data import MultiModalSequentialDataset
from recbole_mmm4rec.data.sequence import next_items_field

TRAIN_STAGES = ("pretrain", "inductive_ft", "transductive_ft")


def drop_items(item_seq: torch.Tensor, item_seq_len: torch.Tensor, drop_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The item-drop view of right-padded histories: each item dropped with probability ``drop_ratio``.

    A history that would lose every item keeps its most recent one. Returns the (b, l) views,
    right-padded, the kept items in their order, and their (b,) lengths.
    """
    positions = torch.arange(item_seq.size(1), device=item_seq.device)
    real = positions < item_seq_len.unsqueeze(1)
    keep = real & (torch.rand(item_seq.shape, device=item_seq.device) >= drop_ratio)
    emptied = ~keep.any(1)
    keep[emptied, item_seq_len[emptied] - 1] = True
    # A stable sort of "dropped" flags moves the kept positions to the front, in their order.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    return torch.gather(item_seq * keep, 1, order), keep.sum(1)


class UniSRec(SequentialRecommender):
    r"""UniSRec over the text modality of a :class:`~recbole_mmm4rec.data.MultiModalSequentialDataset`.

    The item ID embedding (``transductive_ft`` only) belongs to one catalogue: it is named in
    :attr:`ITEM_SPECIFIC_PARAMETERS` and never transfers. The text features are a
    non-persistent buffer and never appear in a checkpoint.
    """

    input_type = InputType.POINTWISE
    SEQUENCE_TRAINING = True  # calculate_loss takes sequence-mode window batches (train_mode: sequence)
    ITEM_SPECIFIC_PARAMETERS = ("item_embedding",)

    def __init__(self, config: Config, dataset: MultiModalSequentialDataset):
        super().__init__(config, dataset)

        # load parameters info
        self.train_stage = config["train_stage"]
        self.text_modality = config["text_modality"]
        self.word_drop_modality = config["word_drop_modality"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.n_experts = config["n_experts"]
        self.adaptor_dropout_prob = config["adaptor_dropout_prob"]
        self.temperature = config["temperature"]
        self.seq_seq_loss_weight = config["seq_seq_loss_weight"]
        self.item_drop_ratio = config["item_drop_ratio"]
        self.item_drop_coefficient = config["item_drop_coefficient"]
        self.loss_type = config["loss_type"]
        self.NEXT_ITEMS = next_items_field(config)  # train_mode: sequence
        self._check_config(config, dataset)

        # define layers and loss
        self.text_features = ItemFeatureTable.from_dataset(dataset, self.text_modality)
        self.word_dropped_features = (
            ItemFeatureTable.from_dataset(dataset, self.word_drop_modality) if self.word_drop_modality else None
        )
        self.moe_adaptor = MoEAdaptor(
            self.text_features.dim, self.hidden_size, self.n_experts, self.adaptor_dropout_prob, self.initializer_range
        )
        self.item_embedding = (
            nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
            if self.train_stage == "transductive_ft"
            else None
        )
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.input_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.input_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.loss_fct = nn.CrossEntropyLoss()

        # parameters initialization
        self.apply(partial(init_weights, std=self.initializer_range))
        if self.item_embedding is not None:
            nn.init.zeros_(self.item_embedding.weight[0])  # padding

    def _check_config(self, config: Config, dataset: MultiModalSequentialDataset) -> None:
        if self.train_stage not in TRAIN_STAGES:
            raise ValueError(f"UniSRec: train_stage must be one of {list(TRAIN_STAGES)}, found {self.train_stage!r}")
        if self.loss_type != "CE":
            raise ValueError(f"UniSRec: loss_type must be 'CE' (its losses are all cross-entropies), found {self.loss_type!r}")
        if self.temperature <= 0:
            raise ValueError(f"UniSRec: temperature must be positive, found {self.temperature}")
        if not 0 <= self.item_drop_ratio < 1:
            raise ValueError(f"UniSRec: item_drop_ratio must lie in [0, 1), found {self.item_drop_ratio}")
        if not 0 <= self.item_drop_coefficient <= 1:
            raise ValueError(f"UniSRec: item_drop_coefficient must lie in [0, 1], found {self.item_drop_coefficient}")
        if not hasattr(dataset, "item_feature_table"):
            raise ValueError(
                f"UniSRec needs a MultiModalSequentialDataset with item text features; got {type(dataset).__name__}"
            )
        attached = list(getattr(dataset, "modalities", None) or [])
        for key in ("text_modality", "word_drop_modality"):
            name = config[key]
            if (name or key == "text_modality") and name not in attached:
                raise ValueError(
                    f"UniSRec: {key} is {name!r}, which dataset {config['dataset']} does not attach (its "
                    f"modalities: {attached}); set {key} in the model YAML or `modalities` in the dataset YAML"
                )
        if self.word_drop_modality:
            dims = {name: dataset.item_feature_table(name).shape[1] for name in (self.text_modality, self.word_drop_modality)}
            if len(set(dims.values())) != 1:
                raise ValueError(
                    f"UniSRec: word_drop_modality {self.word_drop_modality!r} must hold features of the same "
                    f"encoder as text_modality {self.text_modality!r}; their sizes differ: {dims}"
                )

    def _adapt(self, features: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        vectors = self.moe_adaptor(features)
        if self.item_embedding is not None:
            vectors = vectors + self.item_embedding(item_ids)
        return vectors

    def item_vectors(self, item_ids: torch.Tensor | None = None, features: ItemFeatureTable | None = None) -> torch.Tensor:
        """Vectors of ``item_ids`` (any shape ``(*)`` -> ``(*, hidden)``), or of all items if None.

        The adapted text (``features``: the text table, or the word-dropped one), plus the ID
        embedding in ``transductive_ft``. The adaptor runs over whichever is smaller: the rows
        asked for, or the whole catalogue then gathered (a batch of histories names each item
        many times; every expert projects every row).
        """
        features = self.text_features if features is None else features
        if item_ids is None or item_ids.numel() > features.num_items:
            catalogue = self._adapt(features(), torch.arange(features.num_items, device=features.table.device))
            return catalogue if item_ids is None else catalogue[item_ids]
        return self._adapt(features(item_ids), item_ids)

    def forward_sequence(self, item_seq: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs at every position: (b, l) right-padded items -> (b, l, hidden).

        ``item_vectors``: the (b, l, hidden) vectors of ``item_seq`` if already computed.
        """
        if item_vectors is None:
            item_vectors = self.item_vectors(item_seq)
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        hidden = self.input_dropout(self.input_norm(item_vectors + self.position_embedding(positions)))
        attention_mask = self.get_attention_mask(item_seq)
        return self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=False)[-1]

    def forward(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, item_vectors: torch.Tensor | None = None
    ) -> torch.Tensor:
        output = self.forward_sequence(item_seq, item_vectors)
        return self.gather_indexes(output, item_seq_len - 1)  # [B H]

    def cosine_logits(self, users: torch.Tensor, items: torch.Tensor, pairwise: bool = False) -> torch.Tensor:
        """cos(user, item) / temperature: (b, d) x (m, d) -> (b, m), or row by row -> (b,) if ``pairwise``."""
        users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        logits = (users * items).sum(-1) if pairwise else users @ items.T
        return logits / self.temperature

    def augmented_view(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The second view of each history for the sequence-sequence loss: (items, lengths, item vectors).

        Item drop with probability ``item_drop_coefficient`` per batch, else word drop: each
        position's text replaced, with probability ``item_drop_ratio``, by the features of its
        word-dropped text. Without a ``word_drop_modality`` every batch uses item drop.
        """
        if self.word_dropped_features is not None and torch.rand(()).item() >= self.item_drop_coefficient:
            replaced = torch.rand(item_seq.shape, device=item_seq.device) < self.item_drop_ratio
            vectors = torch.where(
                replaced.unsqueeze(-1),
                self.item_vectors(item_seq, self.word_dropped_features),
                self.item_vectors(item_seq),
            )
            return item_seq, item_seq_len, vectors
        view, view_len = drop_items(item_seq, item_seq_len, self.item_drop_ratio)
        return view, view_len, self.item_vectors(view)

    def users_and_targets(
        self, interaction: Interaction, item_vectors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, hidden) user vectors and their (n,) targets: one per prefix row, or, for a
        sequence-mode batch of windows, one per loss position (all positions in one forward)."""
        item_seq = interaction[self.ITEM_SEQ]
        if self.NEXT_ITEMS in interaction:
            next_items = interaction[self.NEXT_ITEMS]
            is_target = next_items > 0
            return self.forward_sequence(item_seq, item_vectors)[is_target], next_items[is_target]
        return self.forward(item_seq, interaction[self.ITEM_SEQ_LEN], item_vectors), interaction[self.POS_ITEM_ID]

    def pretrain_loss(self, interaction: Interaction) -> torch.Tensor:
        """Sequence-item plus ``seq_seq_loss_weight`` x sequence-sequence in-batch contrastive loss.

        Negatives are the batch's other targets (resp. the other rows' second views); copies of
        a row's own target are masked out of its negatives in both losses. In sequence mode the
        sequence-item loss has a row per loss position and the sequence-sequence loss one per
        window: the window's history (its last position) against the window's second view.
        """
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.NEXT_ITEMS in interaction:
            output = self.forward_sequence(item_seq)
            next_items = interaction[self.NEXT_ITEMS]
            users, targets = output[next_items > 0], next_items[next_items > 0]
            histories = self.gather_indexes(output, item_seq_len - 1)
            history_targets = next_items.gather(1, (item_seq_len - 1).unsqueeze(1)).squeeze(1)
        else:
            users, targets = self.users_and_targets(interaction)
            histories, history_targets = users, targets
        seq_item = in_batch_item_cross_entropy(lambda u, items: self.cosine_logits(u, self.item_vectors(items)), users, targets)
        view_seq, view_len, view_vectors = self.augmented_view(item_seq, item_seq_len)
        views = self.forward(view_seq, view_len, view_vectors)
        seq_seq = in_batch_cross_entropy(self.cosine_logits(histories, views), history_targets)
        return seq_item + self.seq_seq_loss_weight * seq_seq

    def _full_sort_logits(self, interaction: Interaction) -> torch.Tensor:
        # One adaptor pass over the catalogue serves the histories and the candidates.
        catalogue = self.item_vectors()
        item_seq = interaction[self.ITEM_SEQ]
        users = self.forward(item_seq, interaction[self.ITEM_SEQ_LEN], catalogue[item_seq])
        return self.cosine_logits(users, catalogue)

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        if self.train_stage == "pretrain":
            return self.pretrain_loss(interaction)
        catalogue = self.item_vectors()
        users, targets = self.users_and_targets(interaction, catalogue[interaction[self.ITEM_SEQ]])
        logits = self.cosine_logits(users, catalogue)
        logits[:, 0] = float("-inf")  # padding is no candidate
        return self.loss_fct(logits, targets)

    def predict(self, interaction: Interaction) -> torch.Tensor:
        users = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.cosine_logits(users, self.item_vectors(interaction[self.ITEM_ID]), pairwise=True)

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        return self._full_sort_logits(interaction)  # [B n_items]
