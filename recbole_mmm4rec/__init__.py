"""recbole-mmm4rec: the MMM4Rec multi-modal sequential recommender as a RecBole plugin."""
from recbole_mmm4rec import compat
from recbole_mmm4rec.config import PluginConfig
from recbole_mmm4rec.data import MultiModalSequentialDataset
from recbole_mmm4rec.data.dataset import DATASET_KEYS
from recbole_mmm4rec.quick_start import create_dataset, load_data_and_model, run_recbole
from recbole_mmm4rec.registry import plugin_models, register_model

__version__ = "0.1.0"

# RecBole's sine.py turns on autograd anomaly detection for the whole process at import;
# import RecBole's models now and undo it, so it never slows training.
compat.import_recbole_models()
compat.register_dataset_arguments(DATASET_KEYS)
compat.route_saved_dataloaders()

__all__ = [
    "MultiModalSequentialDataset",
    "PluginConfig",
    "create_dataset",
    "load_data_and_model",
    "plugin_models",
    "register_model",
    "run_recbole",
]
