r"""MMM4Rec: multi-modal sequential recommendation with time-aware state space duality.

Fan et al., "Towards Transfer-Efficient Multi-modal Sequential Recommendation with State Space
Duality", 2025 (arXiv 2506.02916). Written from the paper for RecBole; where it deliberately
differs from the paper's reference code (time-path causality, padding, the D skip) the blocks in
``recbole_mmm4rec.blocks`` say why.

Items are frozen features of two modalities (e.g. text and image). Each modality is adapted to
the hidden size; in each layer (:class:`~recbole_mmm4rec.blocks.MMM4RecLayer`) the first
("primary", text in the paper) stream runs through a TiSSD block, the second through the same
block and then a Cross-SSD fused with the first. The user vector is the last real position's
output; an item's score is the temperature-scaled sum of the user vector's dot products with
the item's L2-normalised modality vectors (``normalize(Linear(features) + bias)``, without the
dropout and LayerNorm of the sequence input).
"""
from __future__ import annotations

import numbers
from functools import partial

import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_mmm4rec.blocks import (
    FourierTimeFilter,
    ItemFeatureTable,
    MMM4RecLayer,
    ModalityAdapter,
    TimeAwareSSD,
    in_batch_item_cross_entropy,
    init_weights,
    ssd_dimensions,
    time_gaps,
)
from recbole_mmm4rec.data import MultiModalSequentialDataset
from recbole_mmm4rec.data.sequence import next_items_field

FUSIONS = ("static", "dynamic_shared", "dynamic_instance")
CE_CANDIDATES = ("all", "in_batch")


class MMM4Rec(SequentialRecommender):
    r"""MMM4Rec over a :class:`~recbole_mmm4rec.data.MultiModalSequentialDataset`.

    Item-specific parameters (the "with ID" bias tables and the per-item fusion weights) are
    named in :attr:`ITEM_SPECIFIC_PARAMETERS`; they never transfer to another catalogue.
    """

    input_type = InputType.POINTWISE
    SEQUENCE_TRAINING = True  # calculate_loss takes sequence-mode window batches (train_mode: sequence)
    ITEM_SPECIFIC_PARAMETERS = ("item_bias", "fusion_item_logits")

    def __init__(self, config: Config, dataset: MultiModalSequentialDataset):
        super().__init__(config, dataset)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.expand = config["expand"]
        self.head_dim = config["head_dim"]
        self.d_state = config["d_state"]
        self.n_groups = config["n_groups"]
        self.conv_width = config["conv_width"]
        self.chunk_size = config["chunk_size"]
        self.inner_size = config["inner_size"]
        self.ffn_activation = config["ffn_activation"]
        self.dropout_prob = config["dropout_prob"]
        self.time_dropout_prob = config["time_dropout_prob"]
        self.time_path_form = config["time_path_form"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.rms_norm_eps = config["rms_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.temperature = config["temperature"]
        self.use_item_id = config["use_item_id"]
        self.fusion = config["fusion"]
        self.use_time_channel = config["time_channel"]
        self.share_tissd = config["share_tissd"]
        self.fourier_filter = config["fourier_filter"]
        self.time_unit = config["time_unit"]
        self.loss_type = config["loss_type"]
        self.ce_candidates = config["ce_candidates"]
        self.kernel_backend = config["kernel_backend"] or "auto"  # checkpoints older than the key
        self.modality_streams = self._resolve_streams(config, dataset)
        self._check_config()
        _, self.n_heads = ssd_dimensions(self.hidden_size, self.expand, self.head_dim, self.n_groups)
        self.NEXT_ITEMS = next_items_field(config)  # train_mode: sequence
        self.TIME_SEQ = config["TIME_FIELD"] + config["LIST_SUFFIX"] if self.use_time_channel else None
        # RecBole's sequential datasets always carry TIME_FIELD (they sort by it); normalised, it
        # would carry no usable gaps.
        if self.TIME_SEQ and (config["normalize_all"] or config["TIME_FIELD"] in (config["normalize_field"] or [])):
            raise ValueError(
                f"MMM4Rec: the time field {config['TIME_FIELD']!r} is min-max normalised (normalize_all "
                f"or normalize_field), which turns every gap into ~0; keep it out of normalize_field and "
                f"set normalize_all: False, or set time_channel: False"
            )

        # define layers and loss
        self.features = nn.ModuleDict(
            {name: ItemFeatureTable.from_dataset(dataset, name) for name in self.modality_streams}
        )
        self.adapters = nn.ModuleDict(
            {
                name: ModalityAdapter(
                    self.features[name].dim,
                    self.hidden_size,
                    self.n_items if self.use_item_id else None,
                    self.dropout_prob,
                    self.layer_norm_eps,
                )
                for name in self.modality_streams
            }
        )
        two_streams = len(self.modality_streams) == 2
        self.time_dropout = nn.Dropout(self.time_dropout_prob)
        self.layers = nn.ModuleList(
            [
                MMM4RecLayer(
                    self._ssd,
                    self.hidden_size,
                    self.inner_size,
                    self.dropout_prob,
                    self.layer_norm_eps,
                    self.ffn_activation,
                    two_streams=two_streams,
                    share_tissd=self.share_tissd,
                    fourier=self._fourier() if two_streams else None,
                    last=index == self.n_layers - 1,
                )
                for index in range(self.n_layers)
            ]
        )
        n_streams = len(self.modality_streams)
        self.fusion_logits = nn.Parameter(torch.zeros(n_streams)) if self.fusion == "dynamic_shared" else None
        self.fusion_item_logits = (
            nn.Embedding(self.n_items, n_streams) if self.fusion == "dynamic_instance" else None
        )
        self.loss_fct = nn.CrossEntropyLoss()

        # parameters initialization
        self.apply(partial(init_weights, std=self.initializer_range))
        for adapter in self.adapters.values():
            if adapter.item_bias is not None:
                nn.init.zeros_(adapter.item_bias.weight)
        if self.fusion_item_logits is not None:
            nn.init.zeros_(self.fusion_item_logits.weight)

    def _resolve_streams(self, config: Config, dataset: MultiModalSequentialDataset) -> list[str]:
        attached = list(getattr(dataset, "modalities", None) or [])
        if not hasattr(dataset, "item_feature_table"):
            raise ValueError(
                f"MMM4Rec needs a MultiModalSequentialDataset with item features; got {type(dataset).__name__}"
            )
        streams = config["modality_streams"] or attached[:2]
        if isinstance(streams, str):
            streams = [streams]
        if not 1 <= len(streams) <= 2:
            raise ValueError(
                f"MMM4Rec: modality_streams must name one or two modalities (primary first), found {streams}"
            )
        if len(set(streams)) != len(streams):
            raise ValueError(f"MMM4Rec: modality_streams names a modality twice: {streams}")
        missing = [name for name in streams if name not in attached]
        if missing:
            raise ValueError(
                f"MMM4Rec: modality_streams {streams} names {missing}, which dataset "
                f"{config['dataset']} does not attach (its modalities: {attached}); fix modality_streams "
                f"in the model YAML or `modalities` in the dataset YAML"
            )
        return list(streams)

    def _check_config(self) -> None:
        for key in ("hidden_size", "n_layers", "expand", "head_dim", "d_state", "n_groups", "conv_width", "chunk_size", "inner_size"):
            value = getattr(self, key)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MMM4Rec: {key} must be a whole number of at least 1, found {value!r}")
        checks = [
            ("fusion", self.fusion, FUSIONS),
            ("ce_candidates", self.ce_candidates, CE_CANDIDATES),
            ("loss_type", self.loss_type, ("CE",)),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"MMM4Rec: {key} must be one of {list(allowed)}, found {value!r}")
        for key in ("temperature", "time_unit"):
            if getattr(self, key) <= 0:
                raise ValueError(f"MMM4Rec: {key} must be positive, found {getattr(self, key)}")
        if len(self.modality_streams) == 1 and self.fusion != "static":
            raise ValueError(
                f"MMM4Rec: fusion {self.fusion!r} weighs two modality streams; with the single stream "
                f"{self.modality_streams} set fusion: static"
            )

    def _ssd(self, cross: bool, update_time_channel: bool) -> TimeAwareSSD:
        return TimeAwareSSD(
            self.hidden_size,
            self.expand,
            self.head_dim,
            self.d_state,
            self.n_groups,
            self.conv_width,
            self.max_seq_length,
            self.chunk_size,
            cross=cross,
            time_channel=self.use_time_channel,
            update_time_channel=update_time_channel,
            time_dropout_prob=self.time_dropout_prob,
            time_path_form=self.time_path_form,
            layer_norm_eps=self.layer_norm_eps,
            rms_norm_eps=self.rms_norm_eps,
            kernel_backend=self.kernel_backend,
        )

    def _fourier(self) -> FourierTimeFilter | None:
        if not (self.use_time_channel and self.fourier_filter):
            return None
        return FourierTimeFilter(self.n_heads, self.max_seq_length, self.time_path_form)

    def item_vectors(self, item_ids: torch.Tensor) -> list[torch.Tensor]:
        """The sequence input of ``item_ids`` (any shape), one per stream (dropout and LayerNorm)."""
        return [self.adapters[name](self.features[name], item_ids) for name in self.modality_streams]

    def forward_sequence(self, item_seq: torch.Tensor, timestamps: torch.Tensor | None) -> torch.Tensor:
        """Outputs at every position: (b, l) items (0 = padding, before or after the history) -> (b, l, hidden)."""
        mask = item_seq > 0
        streams = self.item_vectors(item_seq)
        primary, secondary = streams[0], streams[1] if len(streams) == 2 else None
        primary_time = secondary_time = None
        if self.use_time_channel:
            if timestamps is None:
                raise ValueError(f"MMM4Rec with time_channel: pass the history timestamps ({self.TIME_SEQ})")
            gaps = self.time_dropout(time_gaps(timestamps, mask, self.time_unit).to(primary.dtype))
            primary_time = gaps.unsqueeze(-1).expand(-1, -1, self.n_heads)
            secondary_time = primary_time if secondary is not None else None
        for layer in self.layers:
            primary, secondary, primary_time, secondary_time = layer(primary, secondary, mask, primary_time, secondary_time)
        return secondary if secondary is not None else primary

    def forward(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor | None = None
    ) -> torch.Tensor:
        output = self.forward_sequence(item_seq, timestamps)
        return self.gather_indexes(output, item_seq_len - 1)  # [B H]

    def _user_vectors(self, interaction: Interaction) -> torch.Tensor:
        timestamps = interaction[self.TIME_SEQ] if self.TIME_SEQ else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], timestamps)

    def _fusion_weights(self, item_ids: torch.Tensor | None) -> torch.Tensor | None:
        """None (static: every stream weighs 1), (n_streams,), or (*, n_streams) per-item weights.

        Learned weights are a softmax scaled to sum to n_streams, so they start equal to static.
        """
        n_streams = len(self.modality_streams)
        if self.fusion == "static":
            return None
        if self.fusion == "dynamic_shared":
            return n_streams * torch.softmax(self.fusion_logits, dim=-1)
        logits = self.fusion_item_logits.weight if item_ids is None else self.fusion_item_logits(item_ids)
        return n_streams * torch.softmax(logits, dim=-1)

    def candidate_vectors(self, item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(*, hidden) fused candidate vectors: the fusion-weighted sum of each stream's
        ``normalize(Linear(features) + bias)``, the same in training and evaluation.

        The logit is linear in the item vector, so the sum over streams of the user's dot products
        with each stream equals one dot product with this sum: a single matmul against the catalogue.
        """
        vectors = torch.stack(
            [F.normalize(self.adapters[name].project(self.features[name], item_ids), dim=-1) for name in self.modality_streams],
            dim=-2,
        )
        weights = self._fusion_weights(item_ids)
        if weights is None:
            return vectors.sum(-2)
        return (vectors * weights.unsqueeze(-1)).sum(-2)

    def score(self, user: torch.Tensor, item_ids: torch.Tensor | None = None, pairwise: bool = False) -> torch.Tensor:
        """Logits of users (b, d) for items.

        ``item_ids`` None: all items -> (b, n_items). ``pairwise``: ``item_ids`` (b,), one item
        per user -> (b,). Otherwise ``item_ids`` (m,) -> (b, m).
        """
        candidates = self.candidate_vectors(item_ids)
        logits = (user * candidates).sum(-1) if pairwise else user @ candidates.T
        return logits / self.temperature

    def calculate_loss(self, interaction: Interaction) -> torch.Tensor:
        """Cross-entropy of each prefix row's target, or, for a sequence-mode batch of windows,
        of the next item at every loss position (all positions in one forward)."""
        if self.NEXT_ITEMS in interaction:
            timestamps = interaction[self.TIME_SEQ] if self.TIME_SEQ else None
            output = self.forward_sequence(interaction[self.ITEM_SEQ], timestamps)
            next_items = interaction[self.NEXT_ITEMS]
            is_target = next_items > 0
            return self._cross_entropy(output[is_target], next_items[is_target])
        return self._cross_entropy(self._user_vectors(interaction), interaction[self.POS_ITEM_ID])

    def _cross_entropy(self, user: torch.Tensor, pos_items: torch.Tensor) -> torch.Tensor:
        if self.ce_candidates == "all":
            logits = self.score(user)
            logits[:, 0] = float("-inf")  # padding is no candidate
            return self.loss_fct(logits, pos_items)
        # In-batch: each user's candidates are the batch's targets (copies of its own masked).
        return in_batch_item_cross_entropy(self.score, user, pos_items)

    def predict(self, interaction: Interaction) -> torch.Tensor:
        user = self._user_vectors(interaction)
        return self.score(user, interaction[self.ITEM_ID], pairwise=True)

    def full_sort_predict(self, interaction: Interaction) -> torch.Tensor:
        user = self._user_vectors(interaction)
        return self.score(user)  # [B n_items]
