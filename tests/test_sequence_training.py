"""train_mode: sequence: windows cover every training target once with its prefix row's context
or more, evaluation rows stay RecBole's, and one forward over a window gives the mean of the
prefix-mode losses of its targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_mmm4rec.model import MMM4Rec, UniSRec
from recbole_mmm4rec.blocks import in_batch_cross_entropy, in_batch_item_cross_entropy
from recbole_mmm4rec.data.sequence import training_windows
from tests.conftest import SMALL_MMM4REC, model_with_overrides, prepare, subset_config

LENGTH, OVERLAP = 8, 3  # short windows: the subset's users (~100 interactions each) span many


def _windows_by_rule(user_lengths, length, overlap):
    """Per user, the (context, target) index pairs the windows give: a plain loop over the rule."""
    target_rows, user_first = [], []
    row = 0
    for n in user_lengths:
        target_rows += list(range(row + 1, row + n))
        user_first += [row] * (n - 1)
        row += n
    return training_windows(np.array(target_rows), np.array(user_first), length, overlap), target_rows


@pytest.mark.parametrize("length, overlap", [(5, 2), (5, 0), (5, 4), (1, 0)])
def test_windows_cover_every_target_once_with_at_least_overlap_plus_one_items(length, overlap):
    user_lengths = [1, 2, 5, 6, 7, 13, 40]
    windows, target_rows = _windows_by_rule(user_lengths, length, overlap)
    starts = np.cumsum([0] + user_lengths[:-1])
    covered = []
    for start, n, first in zip(windows["start"], windows["length"], windows["first_target"]):
        assert 1 <= n <= length and 0 <= first < n
        user = np.searchsorted(starts, start, side="right") - 1
        for position in range(first, n):
            target = start + position + 1
            context = position + 1
            prefix_context = min(length, target - starts[user])
            covered.append(target)
            if start == starts[user]:
                assert context == prefix_context  # a user's first window: its prefix rows exactly
            else:
                assert prefix_context >= context >= overlap + 1
    assert covered == target_rows  # each target once, in order


def test_windows_refuse_a_user_whose_targets_have_a_gap():
    with pytest.raises(ValueError, match="consecutive"):
        training_windows(np.array([1, 2, 4]), np.array([0, 0, 0]), 5, 2)


@pytest.fixture(scope="module")
def both_modes(subset_data_path, tmp_path_factory):
    """The subset in prefix and in sequence mode, L = 8, overlap 3: (config, dataset, train_data)
    and the valid and test loaders."""
    from recbole.data import data_preparation

    from recbole_mmm4rec import create_dataset

    prepared = {}
    for mode in ("prefix", "sequence"):
        config = subset_config(
            "MMM4Rec", subset_data_path, tmp_path_factory.mktemp(mode), MAX_ITEM_LIST_LENGTH=LENGTH,
            train_mode=mode, window_overlap=OVERLAP, **SMALL_MMM4REC,
        )
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        prepared[mode] = (config, dataset, train_data)
        prepared[mode + " evaluation"] = (valid_data, test_data)
    return prepared


def test_evaluation_rows_are_recbole_s_and_training_holds_no_prefix_rows(both_modes):
    prefix, sequence = both_modes["prefix evaluation"], both_modes["sequence evaluation"]
    for split in (0, 1):
        expected, found = prefix[split]._dataset.inter_feat, sequence[split]._dataset.inter_feat
        assert sorted(expected.columns) == sorted(found.columns)
        for field in expected.columns:
            assert torch.equal(expected[field], found[field]), field
    train = both_modes["sequence"][2]._dataset
    assert not any(field.endswith("_list") for field in train.inter_feat.columns)
    assert len(train) == len(train.windows["start"]) < len(both_modes["prefix"][2]._dataset) / 3


def _loss_positions(batch, config):
    """Per user, the (history, target) of every loss position of a window batch, in order."""
    seq, next_items = batch[config["ITEM_ID_FIELD"] + "_list"], batch[config["ITEM_ID_FIELD"] + "_next_list"]
    found = {}
    for row in range(len(batch)):
        for position in torch.nonzero(next_items[row]).flatten().tolist():
            history = tuple(seq[row, : position + 1].tolist())
            found.setdefault(int(batch[config["USER_ID_FIELD"]][row]), []).append((history, int(next_items[row, position])))
    return found


def test_every_training_target_once_with_its_prefix_row_s_context_or_its_last_items(both_modes):
    config = both_modes["sequence"][0]
    prefix_rows = both_modes["prefix"][2]._dataset.inter_feat
    expected = {}
    for user, items, length, target in zip(
        prefix_rows["user_id"].tolist(), prefix_rows["item_id_list"].tolist(), prefix_rows["item_length"].tolist(),
        prefix_rows["item_id"].tolist(),
    ):
        expected.setdefault(user, []).append((tuple(items[:length]), target))
    train = both_modes["sequence"][2]._dataset
    found = _loss_positions(train[np.arange(len(train))], config)
    assert found.keys() == expected.keys()
    for user, rows in expected.items():
        assert [target for _, target in found[user]] == [target for _, target in rows]  # each once, in order
        for (context, _), (history, _) in zip(found[user], rows):
            assert history[len(history) - len(context):] == context  # the prefix row's last items
            assert len(context) == len(history) or len(context) >= OVERLAP + 1


def test_windows_are_shuffled_per_epoch_reproducibly_and_split_across_ranks(both_modes):
    config = both_modes["sequence"][0]

    def epoch(loader):
        return [tuple(batch["user_id"][:5].tolist()) for batch in loader]

    first, second = (prepare(config)[2] for _ in range(2))
    assert epoch(first) == epoch(second)  # the same seed, the same order
    orders = [epoch(first) for _ in range(2)]
    assert orders[0] != orders[1]  # reshuffled every epoch
    train = first._dataset
    shares = []
    for rank in range(2):
        sampler = torch.utils.data.distributed.DistributedSampler(list(range(len(train))), num_replicas=2, rank=rank, shuffle=True)
        sampler.set_epoch(3)
        shares.append(list(sampler))
    assert set(shares[0]) | set(shares[1]) == set(range(len(train)))
    assert len(shares[0]) == len(shares[1]) == -(-len(train) // 2)


def test_a_batch_holds_train_batch_size_targets_on_average(both_modes):
    from recbole_mmm4rec.quick_start import training_loader

    config, _, train_data = both_modes["sequence"]
    loader = training_loader(config, train_data._dataset, shuffle=True)
    targets = [int((batch["item_id_next_list"] > 0).sum()) for batch in loader]
    assert sum(targets) == len(train_data._dataset.inter_feat)  # every target once per epoch
    assert abs(sum(targets) / len(targets) - config["train_batch_size"]) < 0.2 * config["train_batch_size"]
    prefix_config, _, prefix_data = both_modes["prefix"]
    assert abs(len(loader) - len(prefix_data)) <= 0.2 * len(prefix_data)  # as many optimiser steps per epoch


def _prefix_rows_of(batch, config, time_field="timestamp"):
    """One prefix row per loss position of a window batch: the window's items up to it."""
    iid, suffix = config["ITEM_ID_FIELD"], config["LIST_SUFFIX"]
    next_items = batch[iid + "_next" + suffix]
    rows, positions = torch.nonzero(next_items, as_tuple=True)
    keep = torch.arange(next_items.size(1)).unsqueeze(0) <= positions.unsqueeze(1)
    return Interaction({
        iid + suffix: batch[iid + suffix][rows] * keep,
        time_field + suffix: batch[time_field + suffix][rows] * keep,
        config["ITEM_LIST_LENGTH_FIELD"]: positions + 1,
        iid: next_items[rows, positions],
    })


def _double(model, interaction):
    model.double().eval()
    return Interaction({k: v.double() if v.is_floating_point() else v for k, v in interaction.interaction.items()})


@pytest.mark.parametrize(
    "model_class, overrides",
    [
        (MMM4Rec, {}),
        (MMM4Rec, {"ce_candidates": "in_batch"}),
        (UniSRec, {"train_stage": "inductive_ft", "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "adaptor_dropout_prob": 0.0}),
        (UniSRec, {"train_stage": "transductive_ft", "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "adaptor_dropout_prob": 0.0}),
    ],
)
def test_sequence_loss_is_the_mean_of_the_prefix_losses_of_its_targets(both_modes, model_class, overrides, tmp_path):
    config, dataset, train_data = both_modes["sequence"]
    train = train_data._dataset
    # First windows and later ones, several users.
    batch = train[np.r_[0:4, len(train) // 2 : len(train) // 2 + 4]]
    assert (batch["item_length"] == LENGTH).any() and ((batch["item_id_next_list"] > 0).sum(1) < LENGTH).any()
    if model_class is MMM4Rec:
        model = model_with_overrides(model_class, both_modes["sequence"], **overrides)
    else:  # UniSRec's own config, on the same dataset
        unisrec_config = subset_config("UniSRec", config["data_path"].rsplit("/", 1)[0], tmp_path, MAX_ITEM_LIST_LENGTH=LENGTH,
                                       train_mode="sequence", window_overlap=OVERLAP, **overrides)
        torch.manual_seed(0)
        model = UniSRec(unisrec_config, train)
    batch = _double(model, batch)
    with torch.no_grad():
        sequence_loss = model.calculate_loss(batch)
        prefix_loss = model.calculate_loss(_prefix_rows_of(batch, config))
        # Batch order changes nothing.
        permuted = model.calculate_loss(batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))])
    torch.testing.assert_close(sequence_loss, prefix_loss, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(permuted, sequence_loss, rtol=1e-9, atol=1e-9)


def test_in_batch_loss_over_distinct_items_equals_the_masked_batch_loss():
    generator = torch.Generator().manual_seed(0)
    users = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    items = torch.randn(10, 8, generator=generator, dtype=torch.float64)
    targets = torch.randint(1, 10, (50,), generator=generator)
    masked = in_batch_cross_entropy(users @ items[targets].T, targets)
    distinct = in_batch_item_cross_entropy(lambda u, ids: u @ items[ids].T, users, targets)
    torch.testing.assert_close(distinct, masked, rtol=1e-12, atol=1e-12)


def test_accumulated_sequence_batches_step_as_one_batch(both_modes):
    from recbole_mmm4rec.trainer import plugin_trainer_class
    from tests.conftest import config_overrides

    config, _, train_data = both_modes["sequence"]
    train = train_data._dataset
    parts = [np.arange(0, 3), np.arange(len(train) - 9, len(train))]  # unequal target counts
    model = model_with_overrides(MMM4Rec, both_modes["sequence"])
    whole = model.calculate_loss(train[np.concatenate(parts)])
    expected = torch.autograd.grad(whole, list(model.parameters()), allow_unused=True)
    with config_overrides(config, accumulation_steps=2, learning_rate=1.0, learner="sgd", clip_grad_norm=None):
        trainer = plugin_trainer_class(config)(config, model)
        before = [p.detach().clone() for p in model.parameters()]
        trainer._train_epoch([train[part] for part in parts], 0)
    for grad, old, new in zip(expected, before, model.parameters()):
        step = old - new.detach()  # SGD, lr 1: the step is the accumulated gradient
        torch.testing.assert_close(step, torch.zeros_like(old) if grad is None else grad, rtol=1e-4, atol=1e-6)


def test_run_recbole_trains_in_sequence_mode_and_refuses_models_without_a_per_position_loss(
    both_modes, subset_data_path, tmp_path
):
    from recbole_mmm4rec import PluginConfig, run_recbole
    from recbole_mmm4rec.quick_start import build_model_and_trainer
    from tests.conftest import subset_config_dict

    settings = subset_config_dict(subset_data_path, tmp_path, train_mode="sequence", MAX_ITEM_LIST_LENGTH=LENGTH, **SMALL_MMM4REC)
    result = run_recbole("MMM4Rec", "ml-100k-mm-small", config_dict=settings, saved=False)
    assert result["epochs_trained"] == 1 and 0 < result["test_result"]["ndcg@10"] < 1
    sasrec = PluginConfig(model="SASRec", dataset="ml-100k-mm-small", config_dict={**settings, "modalities": []})
    with pytest.raises(ValueError, match="train_mode: sequence needs a model"):
        build_model_and_trainer(sasrec, both_modes["sequence"][2])
