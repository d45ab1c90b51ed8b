"""The plugin trainers: a named class for the trainer of every RecBole model, in the MRO the
accumulation and the weight-decay exemption rely on."""
from __future__ import annotations

import importlib

from recbole.model.abstract_recommender import AbstractRecommender
from recbole.trainer import Trainer, XGBoostTrainer
from recbole.trainer.trainer import AbstractTrainer
from recbole.utils import ModelType, get_trainer

from recbole_mmm4rec import compat, trainer
from recbole_mmm4rec.trainer import AccumulatingTrainer, PluginTrainerMixin, plugin_trainer_class


def _recbole_models() -> dict[str, ModelType]:
    """Every RecBole model that imports here, by name, with its model type."""
    compat.import_recbole_models()
    models = {}
    for package in ("general", "context_aware", "sequential", "knowledge_aware"):
        module = importlib.import_module(f"recbole.model.{package}_recommender")
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, AbstractRecommender) and hasattr(obj, "type"):
                models[name] = obj.type
    return models


def test_every_recbole_model_gets_a_named_plugin_trainer_above_its_recbole_trainer():
    models = _recbole_models()
    assert {"SASRec", "BPR", "KGAT", "S3Rec", "NCL", "RecVAE", "Pop"} <= set(models)
    mixins = PluginTrainerMixin.__mro__[:-1]  # without object
    for name, model_type in models.items():
        recbole_class = get_trainer(model_type, name)
        ours = plugin_trainer_class({"MODEL_TYPE": model_type, "model": name})
        assert ours.__name__ == f"Plugin{recbole_class.__name__}" and getattr(trainer, ours.__name__) is ours, name
        # The mixins on top; below them RecBole's classes down to AccumulatingTrainer, which sits
        # directly above RecBole's Trainer.
        assert ours.__mro__[1 : 1 + len(mixins)] == mixins, name
        assert ours.__mro__[1 + len(mixins) :] == (
            *recbole_class.__mro__[:-3], AccumulatingTrainer, Trainer, AbstractTrainer, object
        ), name


def test_decision_tree_trainers_are_recboles_own():
    assert plugin_trainer_class({"MODEL_TYPE": ModelType.DECISIONTREE, "model": "XGBoost"}) is XGBoostTrainer
