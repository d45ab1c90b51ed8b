r"""Pop
################################################

RecBole's ``Pop`` with its popularity count fixed.

RecBole 1.2.1 counts ``item_cnt[item] = item_cnt[item] + 1`` over a batch: an item present
several times in a batch is counted once (RUCAIBox/RecBole#2198, #1844), so its scores depend
on ``train_batch_size``; and the negative items of pointwise sampling (label 0) are counted as
interactions. On ml-1m-mm-since1997 at batch 2,048 that halves Pop's test NDCG@10. Here every
positive training interaction counts once, whatever the batch size or the sampling.
"""
import torch
from recbole.model.general_recommender.pop import Pop as RecBolePop


class Pop(RecBolePop):
    r"""Recommends the items with the most training interactions (RecBole's Pop, counted right)."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.LABEL = config["LABEL_FIELD"]

    def calculate_loss(self, interaction):
        item = interaction[self.ITEM_ID]
        if self.LABEL in interaction:  # pointwise negative sampling appends label-0 rows
            item = item[interaction[self.LABEL] > 0]
        self.item_cnt.index_add_(0, item, torch.ones_like(item).unsqueeze(-1))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1)).to(self.device)
