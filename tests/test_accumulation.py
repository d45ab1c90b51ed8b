"""``accumulation_steps`` and ``weight_decay_exempt`` (recbole_mmm4rec.training) on the trainers
this package hands out, for a plugin model (MMM4Rec) and a RecBole built-in one (SASRec)."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import get_trainer

from recbole_mmm4rec import PluginConfig, compat
from recbole_mmm4rec.model import MMM4Rec
from recbole_mmm4rec.pretrain import pretrain_config
from recbole_mmm4rec.training import accumulation_steps, exempt_from_weight_decay
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
    trainer_class = trainer_class or compat.compatible_trainer(get_trainer(config["MODEL_TYPE"], config["model"]))
    with config_overrides(config, **settings):
        return trainer_class(config, model)


def _cut(rows, sizes):
    """Consecutive ``rows`` cut into micro-batches of ``sizes``."""
    edges = [0, *itertools.accumulate(sizes)]
    return [rows[torch.arange(a, b)] for a, b in zip(edges, edges[1:])]


def _count_steps(trainer) -> list[int]:
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


def test_a_trainer_with_its_own_loop_refuses_accumulation(sasrec):
    batches = _cut(next(iter(sasrec[2])), [8, 8])
    own_loop = compat.compatible_trainer(OwnLoopTrainer)
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
