"""Pop counts every positive training interaction once, whatever the batch size or the sampling
(RecBole's own counts an item once per batch and counts the sampled negatives)."""
from __future__ import annotations

import numpy as np
import torch
from recbole.model.general_recommender.pop import Pop as RecBolePop
from recbole.utils import ModelType

from recbole_mmm4rec import registry
from recbole_mmm4rec.model import Pop
from recbole_mmm4rec.trainer import PluginTraditionalTrainer, plugin_trainer_class

from tests.conftest import prepare, subset_config

LEAVE_ONE_OUT = {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"}


def _trained(model_class: type, data_path: str, tmp_path, batch_size: int) -> tuple:
    """(the model after one pass over the training batches, its item_cnt, the training split's item counts)."""
    config, dataset, train_data = prepare(subset_config(
        "Pop", data_path, tmp_path, eval_args=LEAVE_ONE_OUT, train_batch_size=batch_size))
    model = model_class(config, train_data._dataset)
    assert train_data.neg_sample_args["distribution"] == "uniform"  # label-0 rows in the batches
    for interaction in train_data:
        model.calculate_loss(interaction)
    truth = np.bincount(train_data._dataset.inter_feat[config["ITEM_ID_FIELD"]].numpy(), minlength=model.n_items)
    return model, model.item_cnt.squeeze(-1).numpy(), truth


def test_pop_counts_each_training_interaction_once_at_any_batch_size(subset_data_path, tmp_path):
    for batch_size in (64, 4096):
        _, counts, truth = _trained(Pop, subset_data_path, tmp_path / str(batch_size), batch_size)
        np.testing.assert_array_equal(counts, truth)
    # What is fixed: RecBole's own Pop depends on the batch size and misses most counts.
    _, recbole_small, truth = _trained(RecBolePop, subset_data_path, tmp_path / "recbole64", 64)
    _, recbole_large, _ = _trained(RecBolePop, subset_data_path, tmp_path / "recbole4096", 4096)
    assert (recbole_small != recbole_large).any()
    assert recbole_large.max() < truth.max() / 2


def test_pop_ranks_by_count_and_is_the_registered_pop(subset_data_path, tmp_path):
    assert registry.get_model_class("Pop") is Pop
    assert plugin_trainer_class({"MODEL_TYPE": ModelType.TRADITIONAL, "model": "Pop"}) is PluginTraditionalTrainer
    model, counts, _ = _trained(Pop, subset_data_path, tmp_path, 512)
    users = torch.arange(1, 4)
    scores = model.full_sort_predict({model.USER_ID: users}).view(3, -1)
    expected = torch.as_tensor(counts, dtype=torch.float64) / counts.max()
    torch.testing.assert_close(scores, expected.expand(3, -1))
