"""``accumulation_steps`` and ``weight_decay_exempt`` (recbole_mmm4rec.trainer) on the trainers
this package hands out, for a plugin model (MMM4Rec) and a RecBole built-in one (SASRec)."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer

from recbole_mmm4rec import PluginConfig
from recbole_mmm4rec.model import MMM4Rec
from recbole_mmm4rec.pretrain import pretrain_config
from recbole_mmm4rec.trainer import (
    AccumulatingTrainer,
    PluginTrainerMixin,
    accumulation_steps,
    exempt_from_weight_decay,
    plugin_trainer_class,
)
from tests.conftest import SMALL_MMM4REC, SUBSET_NAME, config_overrides, model_with_overrides, prepare, subset_config, subset_config_dict

# Plain SGD: an update is the gradient times the learning rate, so equal updates mean equal gradients.
SGD = {"learner": "sgd", "learning_rate": 0.5, "weight_decay": 0.0, "clip_grad_norm": None}


@pytest.fixture(scope="module")
def mmm4rec(subset_data_path, tmp_path_factory):
    """(config, dataset, train_data) for a small MMM4Rec, full cross-entropy, no dropout."""
    config = subset_config("MMM4Rec", subset_data_path, tmp_path_factory.mktemp("acc-mmm4rec"), **SMALL_MMM4REC, ce_candidates="all")
    return prepare(config)


@pytest.fixture(scope="module")
def sasrec(subset_data_path, tmp_path_factory):
    """(config, dataset, train_data) for RecBole's SASRec, cross-entropy, no dropout."""
    config = subset_config(
        "SASRec", subset_data_path, tmp_path_factory.mktemp("acc-sasrec"),
        loss_type="CE", hidden_dropout_prob=0.0, attn_dropout_prob=0.0,
    )
    return prepare(config)


def _model(prepared, dtype=torch.float32):
    model_class = MMM4Rec if prepared[0]["model"] == "MMM4Rec" else SASRec
    return model_with_overrides(model_class, prepared, seed=0).to(dtype)


def _trainer(prepared, model, trainer_class=None, **settings):
    """The trainer this package hands out for ``prepared``'s model (or ``trainer_class``), with settings."""
    config = prepared[0]
    trainer_class = trainer_class or plugin_trainer_class(config)
    with config_overrides(config, **settings):
        return trainer_class(config, model)


def _cut(rows, sizes):
    """Consecutive ``rows`` cut into micro-batches of ``sizes``."""
    edges = [0, *itertools.accumulate(sizes)]
    return [rows[torch.arange(a, b)] for a, b in zip(edges, edges[1:])]


def _count_steps(trainer) -> list[int]:
    """A list that grows by one at each step of ``trainer``'s optimiser."""
    steps = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kwargs: (steps.append(1), step(*args, **kwargs))[1]
    return steps


def _assert_same_parameters(model, other, atol):
    for (name, p), q in zip(model.named_parameters(), other.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=lambda message: f"{name}: {message}")


@pytest.mark.parametrize("prepared_name", ["mmm4rec", "sasrec"])
@pytest.mark.parametrize(
    "sizes, steps, clip",
    [
        ([5, 5, 3], 3, None),  # one group of unequal batches
        ([5, 3, 4, 2, 6], 2, None),  # groups (5, 3), (4, 2) and the last, partial (6)
        ([5, 5, 3], 3, {"max_norm": 0.05}),  # clipped after averaging, as one big batch is
    ],
)
def test_accumulated_groups_step_as_their_concatenated_batches(request, prepared_name, sizes, steps, clip):
    prepared = request.getfixturevalue(prepared_name)
    rows = next(iter(prepared[2]))
    micro = _cut(rows, sizes)
    concatenated = _cut(rows, [sum(sizes[i:i + steps]) for i in range(0, len(sizes), steps)])
    model = _model(prepared, torch.float64)  # float64: sums in another order agree to ~1e-15
    initial, reference = copy.deepcopy(model), copy.deepcopy(model)
    settings = {**SGD, "clip_grad_norm": clip}
    trainer = _trainer(prepared, model, **settings, accumulation_steps=steps)
    counted = _count_steps(trainer)
    with torch.no_grad():
        first_group_loss = sum(model.train().calculate_loss(batch).item() for batch in micro[:steps])

    epoch_loss = trainer._train_epoch(micro, epoch_idx=0)
    _trainer(prepared, reference, **settings, accumulation_steps=1)._train_epoch(concatenated, epoch_idx=0)

    assert len(counted) == math.ceil(len(micro) / steps) == len(concatenated)
    _assert_same_parameters(model, reference, atol=1e-6)
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), initial.parameters()))
    assert moved > 1e-3  # the comparison above is far from vacuous
    if len(concatenated) == 1:  # RecBole's epoch loss: the sum of the batch losses
        assert epoch_loss == pytest.approx(first_group_loss, rel=1e-5)


def test_one_step_per_batch_is_recboles_own_loop(sasrec):
    """accumulation_steps: 1 (the default) trains exactly as RecBole's Trainer does."""
    assert sasrec[0]["accumulation_steps"] == 1
    batches = _cut(next(iter(sasrec[2])), [64, 64, 30])
    ours, theirs = _model(sasrec), _model(sasrec)
    settings = {"learner": "adam", "learning_rate": 0.01, "weight_decay": 0.0}  # a learner RecBole knows
    ours_loss = _trainer(sasrec, ours, **settings)._train_epoch(batches, epoch_idx=0)
    theirs_loss = _trainer(sasrec, theirs, trainer_class=Trainer, **settings)._train_epoch(batches, epoch_idx=0)
    assert ours_loss == theirs_loss
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)


def test_tuple_losses_accumulate_and_sum_per_part(sasrec):
    """A model returning several losses (RecBole sums them for the step, per part for the log)."""
    rows = next(iter(sasrec[2]))
    micro, concatenated = _cut(rows, [5, 5, 3]), _cut(rows, [13])
    model = _model(sasrec, torch.float64)
    reference = copy.deepcopy(model)

    def two_parts(of):
        return lambda interaction: (of.calculate_loss(interaction), 0.5 * of.calculate_loss(interaction))

    with torch.no_grad():
        expected = sum(model.calculate_loss(batch).item() for batch in micro)
    loss = _trainer(sasrec, model, **SGD, accumulation_steps=3)._train_epoch(micro, 0, loss_func=two_parts(model))
    _trainer(sasrec, reference, **SGD)._train_epoch(concatenated, 0, loss_func=two_parts(reference))
    assert loss == pytest.approx((expected, 0.5 * expected), rel=1e-9)
    _assert_same_parameters(model, reference, atol=1e-9)


def test_a_whole_epoch_steps_once_per_group(sasrec):
    model = _model(sasrec)
    trainer = _trainer(sasrec, model, accumulation_steps=4)
    counted = _count_steps(trainer)
    trainer._train_epoch(sasrec[2], epoch_idx=0)
    assert len(sasrec[2]) % 4 and len(counted) == math.ceil(len(sasrec[2]) / 4)


class OwnLoopTrainer(Trainer):
    """A trainer whose epoch is a batch loop of its own, stepping every batch (as NCLTrainer's)."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        for interaction in train_data:
            self.optimizer.zero_grad()
            loss = self.model.calculate_loss(interaction)
            self._check_nan(loss)
            loss.backward()
            self.optimizer.step()
        return loss.item()


class PluginOwnLoopTrainer(PluginTrainerMixin, OwnLoopTrainer, AccumulatingTrainer):
    """OwnLoopTrainer as a plugin trainer, as PluginNCLTrainer is NCLTrainer."""


def test_a_trainer_with_its_own_loop_refuses_accumulation(sasrec):
    batches = _cut(next(iter(sasrec[2])), [8, 8])
    own_loop = PluginOwnLoopTrainer
    model = _model(sasrec)
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="OwnLoopTrainer trains with a batch loop of its own.*accumulation_steps must be 1 for it, found 2"):
        _trainer(sasrec, model, trainer_class=own_loop, accumulation_steps=2)._train_epoch(batches, 0)
    _assert_same_parameters(model, before, atol=0)  # refused before any step
    assert _trainer(sasrec, model, trainer_class=own_loop)._train_epoch(batches, 0) > 0


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "8"])
def test_accumulation_steps_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match=rf"accumulation_steps must be a positive integer .*found {value!r}"):
        accumulation_steps({"accumulation_steps": value})


def test_accumulation_steps_defaults_and_command_line(subset_data_path, tmp_path):
    assert accumulation_steps({"accumulation_steps": None}) == 1  # a config saved before the key existed
    config = PluginConfig(
        model="SASRec", dataset=SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path),
        cmd_args=["--accumulation_steps=8"],
    )
    assert accumulation_steps(config) == 8


def _group_names(trainer, model) -> list[tuple[float, set[str]]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [(group["weight_decay"], {names[id(p)] for p in group["params"]}) for group in trainer.optimizer.param_groups]


def test_the_rule_reads_names_shapes_and_marks():
    cases = {
        "mixer.A_log": ((4, 8), True),  # Mamba-1's A_log is a matrix
        "mixer.D": ((4, 2), True),
        "path.conv_biases": ((2, 4), True),  # a stack of biases
        "encoder.LayerNorm.weight": ((2, 4), True),  # a norm over two dimensions
        "block.norm_weight": ((2, 4), True),
        "linear.bias": ((4,), True),
        "gain": ((), True),
        "linear.weight": ((4, 4), False),
        "item_bias.weight": ((9, 4), False),  # an embedding table in a module named *bias: decays
        "mixer.Dense": ((4, 4), False),
    }
    for name, (shape, exempt) in cases.items():
        assert exempt_from_weight_decay(name, torch.nn.Parameter(torch.ones(shape))) == exempt, name
    marked = torch.nn.Parameter(torch.ones(3, 3))
    marked._no_weight_decay = True  # mamba-ssm's convention
    assert exempt_from_weight_decay("anything.weight", marked)


@pytest.mark.parametrize("learner", ["adam", "adamw", "sgd", "rmsprop", "adagrad", "nadam"])
def test_sasrec_decays_matrices_and_tables_only(sasrec, learner):
    linear = ["multi_head_attention.query", "multi_head_attention.key", "multi_head_attention.value",
              "multi_head_attention.dense", "feed_forward.dense_1", "feed_forward.dense_2"]
    norms = ["multi_head_attention.LayerNorm", "feed_forward.LayerNorm"]
    layers = range(sasrec[0]["n_layers"])
    decayed = {"item_embedding.weight", "position_embedding.weight"} | {f"trm_encoder.layer.{i}.{m}.weight" for i in layers for m in linear}
    exempt = (
        {"LayerNorm.weight", "LayerNorm.bias"}
        | {f"trm_encoder.layer.{i}.{m}.bias" for i in layers for m in linear}
        | {f"trm_encoder.layer.{i}.{m}.{w}" for i in layers for m in norms for w in ("weight", "bias")}
    )
    model = _model(sasrec)
    trainer = _trainer(sasrec, model, learner=learner, weight_decay=5e-3, weight_decay_exempt=True)
    assert type(trainer.optimizer).__name__.lower() == {"nadam": "nadam"}.get(learner, learner)
    assert _group_names(trainer, model) == [(5e-3, decayed), (0.0, exempt)]

    everything = {name for name, _ in model.named_parameters()}
    assert everything == decayed | exempt
    trainer = _trainer(sasrec, model, learner=learner, weight_decay=5e-3, weight_decay_exempt=False)
    assert _group_names(trainer, model) == [(5e-3, everything)]
    trainer = _trainer(sasrec, model, learner=learner, weight_decay=0.0, weight_decay_exempt=True)
    assert _group_names(trainer, model) == [(0.0, everything)]  # nothing decays: one group
    # Parameters a trainer passes itself (RecVAETrainer builds one optimiser per half) are split too.
    with config_overrides(sasrec[0], weight_decay_exempt=True):
        encoder = trainer._build_optimizer(params=model.trm_encoder.parameters(), weight_decay=5e-3)
    assert [len(group["params"]) for group in encoder.param_groups] == [len(decayed) - 2, len(exempt) - 2]


def test_mmm4rec_exempts_norms_biases_and_mamba_parameters(mmm4rec):
    model = _model(mmm4rec)
    trainer = _trainer(mmm4rec, model, weight_decay=5e-3, weight_decay_exempt=True)
    assert isinstance(trainer.optimizer, torch.optim.NAdam)
    (decay, decayed), (no_decay, exempt) = _group_names(trainer, model)
    assert (decay, no_decay) == (5e-3, 0.0)
    assert decayed | exempt == {name for name, _ in model.named_parameters()} and not decayed & exempt
    # Named by what the parameters are, so that the test holds while the model's layout changes.
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, torch.nn.LayerNorm):
            assert {f"{prefix}weight", f"{prefix}bias"} <= exempt, module_name
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            assert f"{prefix}weight" in decayed, module_name
            assert getattr(module, "bias", None) is None or f"{prefix}bias" in exempt, module_name
    leaves = {name: name.rsplit(".", 1)[-1] for name in decayed | exempt}
    for leaf in ("A_log", "dt_bias", "D", "norm_weight", "conv_bias"):
        assert {name for name, last in leaves.items() if last == leaf} <= exempt and leaf in leaves.values(), leaf
    assert all(p.ndim >= 2 for name, p in model.named_parameters() if name in decayed)
    assert "layers.0.primary_ssd.in_proj.weight" in decayed and "adapters.text.item_bias.weight" in decayed


def test_mmm4rec_stages_train_with_the_papers_batches_and_decay(subset_data_path):
    """properties/pretrain and properties/finetune: 8 micro-batches of 1,024 per NAdam step, weight
    decay 5e-3; UniSRec keeps its own protocol (one step per batch); from scratch, RecBole's."""
    where = {"data_path": subset_data_path}
    stages = {
        "pretrain": pretrain_config("MMM4Rec", [SUBSET_NAME], config_dict=where),
        "finetune": PluginConfig("MMM4Rec", SUBSET_NAME, config_dict={**where, "pretrained": "checkpoint.pth"}),
    }
    for stage, config in stages.items():
        assert config.stage_file.endswith(f"{stage}/MMM4Rec.yaml")
        settings = {key: config[key] for key in ("train_batch_size", "accumulation_steps", "weight_decay", "weight_decay_exempt", "learner")}
        assert settings == {"train_batch_size": 1024, "accumulation_steps": 8, "weight_decay": 5e-3, "weight_decay_exempt": True, "learner": "nadam"}, stage
    unisrec = pretrain_config("UniSRec", [SUBSET_NAME], config_dict=where)
    scratch = PluginConfig("MMM4Rec", SUBSET_NAME, config_dict=where)
    for config in (unisrec, scratch):
        assert config["accumulation_steps"] == 1 and config["weight_decay_exempt"] is False
