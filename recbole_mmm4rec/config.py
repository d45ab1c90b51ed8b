"""PluginConfig: RecBole's Config that knows plugin models and never reads ``sys.argv``; and the
helpers around settings: command-line values, settings hashes, plain values for JSON and YAML."""
from __future__ import annotations

import difflib
import functools
import hashlib
import numbers
import os
import re
from logging import getLogger
from typing import Any, Collection, Sequence

import recbole
import torch
import yaml
from recbole.config import Config
from recbole.utils import ModelType
from recbole.utils.argument_list import dataset_arguments, evaluation_arguments, general_arguments, training_arguments

from recbole_mmm4rec import registry


class ConfigError(ValueError):
    """A config value that cannot be right (a string for a number, a length of 0), or, under
    ``strict_config: True``, a key that nothing reads."""


# Keys RecBole 1.2.1 reads without a default in any of its YAML files (from its source), and
# those its launchers and this package's set at run time: never misspelt keys.
RUNTIME_KEYS = frozenset({
    "model", "dataset", "config_files", "device", "encoding", "single_spec", "local_rank", "world_size",
    "nproc", "offset", "ip", "port", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "valid_neg_sample_args",
    "test_neg_sample_args", "NEG_ITEMS", "POS_ITEMS", "MASK_INDEX", "MASK_ITEM_SEQ", "CROP_ITEM_SEQ",
    "CROP_ITEM_SEQ_LEN", "REORDER_ITEM_SEQ", "INVERSE_ITEM_SEQ", "accum", "cin", "contrast", "eta",
    "feature_num", "has_residual", "hidden_dimension", "mf_embedding_size", "mixed", "norm", "sim",
    "tail_ratio", "token_num_threshold", "train_rec_step", "ui_embedding_size", "use_filter",
    "xgb_early_stopping_rounds",
})
# Keys that hold a count of at least 1: 0 fails deep inside RecBole (a division by zero).
POSITIVE_INT_KEYS = ("MAX_ITEM_LIST_LENGTH", "train_batch_size", "eval_batch_size")


@functools.lru_cache(maxsize=None)
def yaml_keys(path: str) -> frozenset[str]:
    """The top-level keys of a YAML file."""
    with open(path, encoding="utf-8") as f:
        return frozenset(yaml.safe_load(f) or {})


def recbole_model_keys() -> frozenset[str]:
    """Every key of RecBole's model YAML files."""
    folder = os.path.join(os.path.dirname(recbole.__file__), "properties", "model")
    return frozenset().union(*(yaml_keys(os.path.join(folder, name)) for name in sorted(os.listdir(folder)) if name.endswith(".yaml")))


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
        self._check_values()
        self._check_keys()

    def _where(self, key: str) -> str:
        """Where the user set ``key``, for messages."""
        if key in self.cmd_config_dict:
            return f"--{key}"
        return f"{key} (config dict)" if key in self.variable_config_dict else f"{key} (config files)"

    def _check_values(self) -> None:
        """A string where the default is a number or a bool (``--hidden_size=abc``), or a count
        of 0, is an error naming the key; RecBole would fail later without naming it."""
        for key, value in self.external_config_dict.items():
            default = self.internal_config_dict.get(key)
            if isinstance(value, str) and isinstance(default, (bool, int, float)):
                kind = "True or False" if isinstance(default, bool) else f"a number (default {default})"
                raise ConfigError(f"{self._where(key)}: expected {kind}, found {value!r}")
        for key in POSITIVE_INT_KEYS:
            value = self.final_config_dict.get(key)
            whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if key in self.external_config_dict and not (whole and value >= 1):
                raise ConfigError(f"{self._where(key)}: expected a whole number of at least 1, found {value!r}")

    def _check_keys(self) -> None:
        """Keys that no model, RecBole nor this package reads (``--hiden_size=64``), with the
        closest known key: a warning, or an error under ``strict_config: True``."""
        # Another model's keys are no misspelling: one config file often serves several models.
        model_files = [plugin.config_file for plugin in registry.plugin_models().values() if plugin.config_file]
        known = (
            set(self.internal_config_dict) | RUNTIME_KEYS | set(general_arguments) | set(training_arguments)
            | set(evaluation_arguments) | set(dataset_arguments) | set(recbole_model_keys())
            | {key for file in model_files for key in yaml_keys(file)}
        )
        messages = []
        for key in self.external_config_dict:
            if key not in known:
                closest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f" (did you mean {closest[0]!r}?)" if closest else ""
                messages.append(f"{self._where(key)}: no key of RecBole, recbole-mmm4rec or any model, so not used{hint}")
        if messages and self.final_config_dict.get("strict_config"):
            raise ConfigError("unknown config keys (strict_config: True): " + "; ".join(messages))
        for message in messages:
            getLogger().warning(message)

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


_BARE_LIST = re.compile(r"\[([^\[\]'\"]*)\]")


def convert_values(values: dict[str, str]) -> dict[str, Any]:
    """Command-line strings to values as RecBole converts them: Python literals (``3e-4``,
    ``[10, 20]``), ``true``/``false``, else the string; and a list of bare names
    (``[text,image]``, not a Python literal) as a list of those names, converted one by one."""
    # RecBole's converter does not use its instance.
    converted = Config._convert_config_dict(None, dict(values))
    for key, value in converted.items():
        bare = _BARE_LIST.fullmatch(value.strip()) if isinstance(value, str) else None
        if bare:
            names = [name.strip() for name in bare.group(1).split(",") if name.strip()]
            converted[key] = list(Config._convert_config_dict(None, dict(enumerate(names))).values())
    return converted


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
NEUTRAL_SETTINGS = {
    "accumulation_steps": 1, "weight_decay_exempt": False, "train_mode": "prefix", "window_overlap": None, "strict_config": False,
}


def settings_hash(config: Config, ignored_keys: Collection[str], length: int = 6) -> str:
    """Hex digits naming what a run computes: its final settings but ``ignored_keys`` (where
    files go, progress display, ...) and options at their ``NEUTRAL_SETTINGS`` value, so that
    equal settings always give the same name."""
    settings = {
        k: v for k, v in config.final_config_dict.items()
        if k not in ignored_keys and not (k in NEUTRAL_SETTINGS and v == NEUTRAL_SETTINGS[k])
    }
    return hashlib.md5(repr(sorted(settings.items(), key=lambda kv: kv[0])).encode()).hexdigest()[:length]
