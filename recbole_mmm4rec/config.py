"""PluginConfig: RecBole's Config that knows plugin models and never reads ``sys.argv``; and the
helpers around settings: command-line values, settings hashes, plain values for JSON and YAML."""
from __future__ import annotations

import hashlib
import os
from logging import getLogger
from typing import Any, Collection, Sequence

import torch

from recbole.config import Config
from recbole.utils import ModelType

from recbole_mmm4rec import registry


class PluginConfig(Config):
    """RecBole's :class:`~recbole.config.Config` with three differences.

    * ``model`` may name a plugin model (see :mod:`recbole_mmm4rec.registry`).
    * ``--key=value`` overrides come from ``cmd_args`` (the CLI passes its arguments); a library
      call never reads the caller's ``sys.argv``.
    * After RecBole's internal YAML files (overall, model, sample, dataset, model-type), this
      package layers its own, in this order: ``properties/overall.yaml`` (multimodal keys), the
      plugin model's YAML, the stage's YAML (``properties/pretrain/<model>.yaml`` when
      ``train_stage`` is ``pretrain``, ``properties/finetune/<model>.yaml`` when ``pretrained``
      is set; recorded in :attr:`stage_file`), ``properties/dataset/<dataset>.yaml``. A plugin model's defaults thus
      override RecBole's generic ones (e.g. ``MAX_ITEM_LIST_LENGTH`` from sample.yaml), which a
      built-in model's YAML cannot. A sequential model with CE loss defaults to
      ``train_neg_sample_args: ~`` (RecBole 1.2.1 otherwise refuses to start).

    * A distributed run (``local_rank`` set) on CPU uses torch.distributed's gloo backend; RecBole
      1.2.1 always initialises NCCL on CUDA devices.

    User settings keep RecBole's precedence over all of these: command line > config dict >
    config files.
    """

    def __init__(
        self,
        model: str | type | None = None,
        dataset: str | None = None,
        config_file_list: Sequence[str] | None = None,
        config_dict: dict | None = None,
        cmd_args: Sequence[str] = (),
    ):
        self.cmd_args = list(cmd_args)
        super().__init__(
            model=model,
            dataset=dataset,
            config_file_list=list(config_file_list) if config_file_list else None,
            config_dict=dict(config_dict) if config_dict else None,
        )

    def _load_cmd_line(self):
        cmd_config_dict, unrecognized = parse_cmd_args(self.cmd_args)
        if unrecognized:
            getLogger().warning(
                f"command line args [{' '.join(unrecognized)}] will not be used in RecBole"
            )
        return cmd_config_dict

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise KeyError(
                    "no model given: pass model=, set `model` in a config file or dict, "
                    "or use --model=NAME"
                )
        if isinstance(model, str):
            model = registry.get_model_class(model)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        plugin = registry.get_plugin(model)
        self.stage_file = self._stage_file(model)
        for file in (os.path.join(registry.PROPERTIES_DIR, "overall.yaml"), plugin and plugin.config_file, self.stage_file):
            if file:
                self._update_internal_config_dict(file)
        dataset_file = os.path.join(registry.PROPERTIES_DIR, "dataset", f"{dataset}.yaml")
        if os.path.isfile(dataset_file):
            loaded = self._update_internal_config_dict(dataset_file) or {}
            # RecBole compares these keys to decide whether a saved dataset is still valid.
            self.parameters["Dataset"] += [k for k in loaded if k not in self.parameters["Dataset"]]

    def _init_device(self):
        final = self.final_config_dict
        if "local_rank" not in final or (torch.cuda.is_available() and final.get("use_gpu", True)):
            return super()._init_device()
        torch.distributed.init_process_group(
            backend="gloo",
            rank=final["local_rank"] + final.get("offset", 0),
            world_size=final["world_size"],
            init_method=f"tcp://{final['ip']}:{final['port']}",
        )
        final.update(device=torch.device("cpu"), single_spec=False)
        if final["local_rank"] != 0:  # one rank reports, as in RecBole
            final.update(state="error", show_progress=False, verbose=False)

    def _stage_file(self, model: str) -> str | None:
        settings = self.external_config_dict
        stage = "pretrain" if settings.get("train_stage") == "pretrain" else "finetune" if settings.get("pretrained") else None
        file = stage and os.path.join(registry.PROPERTIES_DIR, stage, f"{model}.yaml")
        return file if file and os.path.isfile(file) else None

    def _get_final_config_dict(self):
        final = super()._get_final_config_dict()
        if (
            final.get("MODEL_TYPE") == ModelType.SEQUENTIAL
            and final.get("loss_type") == "CE"
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            final["train_neg_sample_args"] = None
        return final


def convert_values(values: dict[str, str]) -> dict[str, Any]:
    """Command-line strings to values as RecBole converts them: Python literals (``3e-4``,
    ``[10, 20]``), ``true``/``false``, else the string."""
    # RecBole's converter does not use its instance.
    return Config._convert_config_dict(None, dict(values))


def plain_value(value: Any) -> Any:
    """Built-in types for JSON, YAML and CSV: RecBole's OrderedDicts as dicts, tuples as lists,
    numpy and torch scalars (from RecBole's results, or from Ray) as Python numbers."""
    if isinstance(value, dict):
        return {str(key): plain_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(item) for item in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def parse_cmd_args(cmd_args: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """``--key=value`` arguments as a converted dict, and the arguments of another form."""
    values, unrecognized = {}, []
    for arg in cmd_args:
        if not arg.startswith("--") or "=" not in arg:
            unrecognized.append(arg)
            continue
        name, value = arg[2:].split("=", 1)
        if name in values and values[name] != value:
            raise ValueError(f"command line sets --{name} twice, to different values")
        values[name] = value
    return convert_values(values), unrecognized


# Options added after runs were named, at the value that computes what the runs did before they
# existed (RecBole's own loop): left out of the names, so that adding an option keeps old runs.
NEUTRAL_SETTINGS = {"accumulation_steps": 1, "weight_decay_exempt": False, "train_mode": "prefix", "window_overlap": None}


def settings_hash(config: Config, ignored_keys: Collection[str], length: int = 6) -> str:
    """Hex digits naming what a run computes: its final settings but ``ignored_keys`` (where
    files go, progress display, ...) and options at their ``NEUTRAL_SETTINGS`` value, so that
    equal settings always give the same name."""
    settings = {
        k: v for k, v in config.final_config_dict.items()
        if k not in ignored_keys and not (k in NEUTRAL_SETTINGS and v == NEUTRAL_SETTINGS[k])
    }
    return hashlib.md5(repr(sorted(settings.items(), key=lambda kv: kv[0])).encode()).hexdigest()[:length]
