"""The plugin trainers: one named class per RecBole trainer, with what this package adds to all.

:func:`plugin_trainer_class` maps RecBole's choice for a model (``get_trainer``) to its plugin
trainer: :class:`PluginTrainer` for RecBole's ``Trainer``, ``Plugin<Name>`` for each of its
subclasses (:class:`PluginKGTrainer`, :class:`PluginNCLTrainer`, ...). Each one adds
(:class:`PluginTrainerMixin`):

* checkpoint reloads (best model, ``resume_checkpoint``) through
  :func:`recbole_mmm4rec.compat.load_checkpoint`, which torch >= 2.6 needs and which refuses
  pickles that could run code;
* ``learner: nadam`` (torch.optim.NAdam, the optimiser of MMM4Rec's paper), besides RecBole's
  learners, which fall back to Adam without weight decay for any other name;
* distributed training on CPU (gloo), which RecBole's CUDA device ids refuse;
* ``accumulation_steps: N`` steps the optimiser once per N batches, on their summed gradients:
  the MMM4Rec paper steps NAdam every 8 micro-batches of 1,024. For a mean-reduced loss the
  update equals one step on the N batches concatenated, whatever their sizes: each batch's loss
  is back-propagated times its number of rows, and before the step the summed gradients are
  divided by the group's rows, then clipped (``clip_grad_norm``). An epoch's last group is
  stepped even when it has fewer than N batches. ``accumulation_steps: 1`` is RecBole's own loop.
* ``weight_decay_exempt: True`` (with ``weight_decay`` > 0) gives every ``learner`` two parameter
  groups: weight decay for matrices and tables, none for the parameters decay should not pull to
  zero (:func:`exempt_from_weight_decay`), as Mamba-2 and most transformer recipes train;
* a record per epoch (:class:`recbole_mmm4rec.history.EpochHistory`, ``trainer.epoch_history``)
  beside the run's log, each finished record passed to the ``epoch_callback`` given at
  construction.

:class:`ResumablePretrainTrainer` is :class:`PluginTrainer` for ``run_pretrain``: no validation,
numbered checkpoints that carry the random state, so a resumed run continues as if never
interrupted.
"""
from __future__ import annotations

import random
import time
from logging import getLogger
from typing import Any, Iterable

import numpy as np
import torch
from recbole.trainer import (
    KGATTrainer,
    KGTrainer,
    MKRTrainer,
    NCLTrainer,
    RaCTTrainer,
    RecVAETrainer,
    S3RecTrainer,
    TraditionalTrainer,
    Trainer,
)
from recbole.utils import get_gpu_usage, get_trainer, set_color
from torch.nn.utils.clip_grad import clip_grad_norm_
from tqdm import tqdm

from recbole_mmm4rec.compat import load_checkpoint, restore_model_state, trusts_files
from recbole_mmm4rec.data.features import atomic_replace
from recbole_mmm4rec.data.sequence import next_items_field
from recbole_mmm4rec.history import EpochCallback, EpochHistory, history_stem

# Mamba-2's parameters without weight decay (mamba-ssm marks them ``_no_weight_decay``): the
# state decay rates, the step-size biases and the skip gains, whatever their shape.
_EXEMPT_LEAF_NAMES = frozenset({"A_log", "dt_bias", "D"})


def accumulation_steps(config) -> int:
    """The config's ``accumulation_steps``; 1 when absent (a config saved before the key existed)."""
    value = config["accumulation_steps"]
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"accumulation_steps must be a positive integer (batches per optimiser step), found {value!r}")
    return value


class AccumulatingTrainer(Trainer):
    """RecBole's ``Trainer`` stepping the optimiser every ``accumulation_steps`` batches.

    Every plugin trainer has this class directly above RecBole's ``Trainer`` in its MRO, so that
    the trainers whose ``_train_epoch`` runs RecBole's loop once per phase through ``super()``
    (KGTrainer, KGATTrainer, MKRTrainer, RecVAETrainer) accumulate within each phase too. A trainer with a batch loop of its own (NCLTrainer) would
    step every batch: it is refused at its first batch.

    The loop is RecBole's ``Trainer._train_epoch`` (same loss sums, NaN check, progress bar,
    mixed precision and distributed hooks) with the step moved to the end of each group; RecBole's
    loop is one function, so it cannot be reused piecewise.
    """

    def __init__(self, config, model):
        self.accumulation_steps = accumulation_steps(config)
        self._next_items = next_items_field(config)
        self._in_accumulating_loop = False
        super().__init__(config, model)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.accumulation_steps == 1:
            return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        iter_data = (
            tqdm(train_data, total=len(train_data), ncols=100, desc=set_color(f"Train {epoch_idx:>5}", "pink"))
            if show_progress
            else train_data
        )
        if not self.config["single_spec"] and train_data.shuffle:
            train_data.sampler.set_epoch(epoch_idx)
        scaler = torch.amp.GradScaler("cuda", enabled=self.enable_scaler)
        total_loss, group_rows = None, 0
        self.optimizer.zero_grad()
        self._in_accumulating_loop = True
        try:
            for batch_idx, interaction in enumerate(iter_data):
                interaction = interaction.to(self.device)
                sync_loss = 0
                if not self.config["single_spec"]:
                    self.set_reduce_hook()
                    sync_loss = self.sync_grad_loss()
                with torch.autocast(device_type=self.device.type, enabled=self.enable_amp):
                    losses = loss_func(interaction)
                loss = sum(losses) if isinstance(losses, tuple) else losses
                total_loss = _add_batch_loss(total_loss, losses)
                self._check_nan(loss)
                # The terms the batch's mean loss averages: rows, or a sequence batch's targets.
                rows = int((interaction[self._next_items] > 0).sum()) if self._next_items in interaction else len(interaction)
                scaler.scale(loss * rows + sync_loss).backward()
                group_rows += rows
                if (batch_idx + 1) % self.accumulation_steps == 0:
                    self._step_group(scaler, group_rows)
                    group_rows = 0
                if self.gpu_available and show_progress:
                    iter_data.set_postfix_str(set_color("GPU RAM: " + get_gpu_usage(self.device), "yellow"))
            if group_rows:
                self._step_group(scaler, group_rows)
        finally:
            self._in_accumulating_loop = False
        return total_loss

    def _step_group(self, scaler: torch.amp.GradScaler, rows: int) -> None:
        """The group's summed row-weighted gradients divided by its ``rows`` (the mean gradient of
        the concatenated batches), clipped, then one optimiser step."""
        scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        stepped = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        for parameter in stepped:
            parameter.grad.div_(rows)
        if self.clip_grad_norm:
            clip_grad_norm_(stepped, **self.clip_grad_norm)
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad()

    def _check_nan(self, loss):
        # Every RecBole batch loop calls this once per batch: here it catches a loop that is not
        # ours stepping every batch while accumulation was asked for.
        if self.accumulation_steps > 1 and not self._in_accumulating_loop:
            raise ValueError(
                f"{type(self).__name__} trains with a batch loop of its own, which steps the optimiser "
                f"after every batch: accumulation_steps must be 1 for it, found {self.accumulation_steps}"
            )
        super()._check_nan(loss)


def _add_batch_loss(total: float | tuple | None, losses: torch.Tensor | tuple) -> float | tuple:
    """RecBole's epoch loss: the sum of the batch losses (per part when the model returns a tuple)."""
    if isinstance(losses, tuple):
        parts = tuple(part.item() for part in losses)
        return parts if total is None else tuple(map(sum, zip(total, parts)))
    return losses.item() if total is None else total + losses.item()


def exempt_from_weight_decay(name: str, parameter: torch.nn.Parameter) -> bool:
    """Whether weight decay should leave ``parameter`` (named ``name`` in its model) alone.

    Exempt: every parameter of at most one dimension (biases, LayerNorm and RMSNorm weights,
    per-head or per-channel gains and scalars); whatever its shape, a parameter named
    ``A_log``, ``dt_bias`` or ``D`` (Mamba-2's), marked ``_no_weight_decay`` (mamba-ssm's
    convention), named ``*bias`` / ``*biases``, or a norm's weight (``*norm.weight``,
    ``*norm_weight``). Pulling these towards zero does not make a simpler model, only another one
    (norm gains and skips towards zero, every head's state decay rate ``exp(A_log)`` towards 1);
    matrices and embedding tables decay. The rule reads names, shapes and attributes only, so it
    holds for any model.
    """
    leaf = name.rsplit(".", 1)[-1]
    return (
        parameter.ndim <= 1
        or leaf in _EXEMPT_LEAF_NAMES
        or bool(getattr(parameter, "_no_weight_decay", False))
        or leaf.lower().endswith(("bias", "biases"))
        or name.lower().endswith(("norm.weight", "norm_weight"))
    )


def weight_decay_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> list[dict]:
    """Optimiser parameter groups: the decayed parameters, then the exempt ones with
    ``weight_decay`` 0 (:func:`exempt_from_weight_decay`); an empty group is left out."""
    decayed, exempt = [], []
    for name, parameter in named_parameters:
        (exempt if exempt_from_weight_decay(name, parameter) else decayed).append(parameter)
    groups = [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


class WeightDecayExemptionMixin:
    """``weight_decay_exempt``: the parameters RecBole's ``_build_optimizer`` receives (the model's,
    or those a trainer passes, e.g. RecVAE's encoder) split into :func:`weight_decay_groups`, for
    every learner; the optimiser's own ``weight_decay`` applies to the first group."""

    def _build_optimizer(self, **kwargs):
        weight_decay = kwargs.get("weight_decay", self.weight_decay)
        if self.config["weight_decay_exempt"] and weight_decay:
            names = {id(parameter): name for name, parameter in self.model.named_parameters()}
            named = [(names.get(id(p), ""), p) for p in kwargs.get("params", self.model.parameters())]
            exempt = [name for name, parameter in named if exempt_from_weight_decay(name, parameter)]
            getLogger().info(
                set_color("weight_decay_exempt", "blue")
                + f": no weight decay for {len(exempt)} of {len(named)} parameters: {exempt}"
            )
            kwargs["params"] = weight_decay_groups(named)
        return super()._build_optimizer(**kwargs)


class _CheckpointReloadMixin:
    """Routes RecBole's two checkpoint reads (best-model reload, resume) through load_checkpoint."""

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and eval_data:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device, trust=trusts_files(self.config))
            restore_model_state(self.model, checkpoint)
            self.logger.info(
                f"Loading model structure and parameters from {checkpoint_file}"
            )
        return super().evaluate(
            eval_data, load_best_model=False, show_progress=show_progress
        )

    def resume_checkpoint(self, resume_file):
        """RecBole's resume, through :func:`load_checkpoint`; returns the checkpoint read."""
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device, trust=trusts_files(self.config))
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning(
                f"{resume_file} was saved by model {checkpoint['config']['model']}, but this run "
                f"trains {self.config['model']}; loading its state_dict may fail."
            )
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        restore_model_state(self.model, checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(
            f"Checkpoint loaded. Resume training from epoch {self.start_epoch}"
        )
        return checkpoint


class _ExtraLearnersMixin:
    """``learner: nadam`` (torch.optim.NAdam); every other learner is RecBole's."""

    def _build_optimizer(self, **kwargs):
        if kwargs.get("learner", self.learner).lower() != "nadam":
            return super()._build_optimizer(**kwargs)
        return torch.optim.NAdam(
            kwargs.get("params", self.model.parameters()),
            lr=kwargs.get("learning_rate", self.learning_rate),
            weight_decay=kwargs.get("weight_decay", self.weight_decay),
        )


class _AnyDeviceDistributedMixin:
    """RecBole wraps the model in DistributedDataParallel with CUDA device ids, which CPU (gloo)
    refuses; wrap it for the model's device instead. Buffers are not broadcast at every step:
    the only ones of this package's models are the item feature tables, identical on every rank."""

    def __init__(self, config, model):
        distributed = not config["single_spec"]
        config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = not distributed
        if distributed:
            on_cuda = config["device"].type == "cuda"
            # Non-persistent buffers (item feature tables) are built from the same data on every
            # rank: broadcasting them would write into, hence copy, memory-mapped tables.
            persistent = model.state_dict()
            derived = [name for name, _ in model.named_buffers() if name not in persistent]
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, derived)
            self.distributed_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[config["local_rank"]] if on_cuda else None, broadcast_buffers=False
            )


class _EpochRecordingMixin:
    """Collects one record per epoch around RecBole's ``_train_epoch`` and ``_valid_epoch``.

    An epoch's record is complete after its validation, or, when the epoch is not validated
    (``eval_step``, no validation data, pre-training), when the next epoch or :meth:`fit` ends.
    """

    def __init__(self, config, model, epoch_callback: EpochCallback | None = None):
        super().__init__(config, model)
        self.epoch_callback = epoch_callback
        self.epoch_history = EpochHistory(history_stem(config))
        self._pending_record = None

    def fit(self, *args, **kwargs):
        self._fit_started = time.perf_counter()
        try:
            return super().fit(*args, **kwargs)
        finally:
            self._flush_record()

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self._flush_record()
        started = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self._pending_record = {
            "epoch": epoch_idx,
            "train_loss": float(sum(loss) if isinstance(loss, tuple) else loss),
            "train_seconds": round(time.perf_counter() - started, 3),
        }
        return loss

    def _valid_epoch(self, valid_data, *args, **kwargs):
        started = time.perf_counter()
        valid_score, valid_result = super()._valid_epoch(valid_data, *args, **kwargs)
        record = self._pending_record or {}
        record["valid_seconds"] = round(time.perf_counter() - started, 3)
        record["valid_score"] = float(valid_score)
        record.update({f"valid_{metric}": float(value) for metric, value in valid_result.items()})
        self._pending_record = record
        self._flush_record()
        return valid_score, valid_result

    def _flush_record(self) -> None:
        record, self._pending_record = self._pending_record, None
        if record is None:
            return
        record["elapsed_seconds"] = round(time.perf_counter() - self._fit_started, 3)
        self.epoch_history.add(record)
        if self.epoch_callback is not None:
            self.epoch_callback(record)


class PluginTrainerMixin(
    _EpochRecordingMixin, _CheckpointReloadMixin, WeightDecayExemptionMixin, _ExtraLearnersMixin, _AnyDeviceDistributedMixin
):
    """What every plugin trainer adds to its RecBole trainer (see the module docstring).

    A plugin trainer lists this mixin first, then RecBole's trainer class, then
    :class:`AccumulatingTrainer`, which so lands directly above RecBole's ``Trainer``: the
    ``super()._train_epoch`` calls of RecBole's subclasses reach it. The weight-decay exemption
    comes before NAdam, which reads the parameter groups it builds. Construct one as
    ``trainer_class(config, model, epoch_callback=None)``.
    """


class PluginTrainer(PluginTrainerMixin, AccumulatingTrainer):
    """RecBole's ``Trainer``: general, sequential and context-aware models, plugin models."""


class PluginKGTrainer(PluginTrainerMixin, KGTrainer, AccumulatingTrainer):
    """RecBole's ``KGTrainer``: knowledge-aware models without a trainer of their own."""


class PluginKGATTrainer(PluginTrainerMixin, KGATTrainer, AccumulatingTrainer):
    """RecBole's ``KGATTrainer``."""


class PluginMKRTrainer(PluginTrainerMixin, MKRTrainer, AccumulatingTrainer):
    """RecBole's ``MKRTrainer``."""


class PluginS3RecTrainer(PluginTrainerMixin, S3RecTrainer, AccumulatingTrainer):
    """RecBole's ``S3RecTrainer``."""


class PluginRaCTTrainer(PluginTrainerMixin, RaCTTrainer, AccumulatingTrainer):
    """RecBole's ``RaCTTrainer``."""


class PluginRecVAETrainer(PluginTrainerMixin, RecVAETrainer, AccumulatingTrainer):
    """RecBole's ``RecVAETrainer``."""


class PluginNCLTrainer(PluginTrainerMixin, NCLTrainer, AccumulatingTrainer):
    """RecBole's ``NCLTrainer``: its own batch loop, so ``accumulation_steps`` must be 1."""


class PluginTraditionalTrainer(PluginTrainerMixin, TraditionalTrainer, AccumulatingTrainer):
    """RecBole's ``TraditionalTrainer``: traditional models (Pop, ItemKNN, EASE, ...)."""


_PLUGIN_TRAINERS: dict[type, type] = {
    Trainer: PluginTrainer,
    KGTrainer: PluginKGTrainer,
    KGATTrainer: PluginKGATTrainer,
    MKRTrainer: PluginMKRTrainer,
    S3RecTrainer: PluginS3RecTrainer,
    RaCTTrainer: PluginRaCTTrainer,
    RecVAETrainer: PluginRecVAETrainer,
    NCLTrainer: PluginNCLTrainer,
    TraditionalTrainer: PluginTraditionalTrainer,
}


def plugin_trainer_class(config) -> type:
    """The plugin trainer of the config's model: the counterpart of RecBole's ``get_trainer``.

    Trainers outside RecBole's ``Trainer`` hierarchy (decision trees) have no epoch loop and
    reload no torch checkpoints: they are returned unchanged.
    """
    recbole_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if not issubclass(recbole_class, Trainer):
        return recbole_class
    if recbole_class not in _PLUGIN_TRAINERS:
        raise TypeError(
            f"model {config['model']} trains with {recbole_class.__name__}, which has no plugin trainer: "
            f"define class Plugin{recbole_class.__name__}(PluginTrainerMixin, {recbole_class.__name__}, "
            "AccumulatingTrainer) in recbole_mmm4rec.trainer and add it to _PLUGIN_TRAINERS"
        )
    return _PLUGIN_TRAINERS[recbole_class]


def random_state(shuffle_generator: torch.Generator) -> dict[str, Any]:
    """Every random state a training epoch draws from: torch's (dropout), numpy's and Python's
    (RecBole's samplers), CUDA's, and the generator the training data shuffles with."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "shuffle": shuffle_generator.get_state(),
    }


def restore_random_state(state: dict[str, Any], shuffle_generator: torch.Generator) -> None:
    """Put back the states :func:`random_state` saved (CUDA's only on a CUDA machine)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    shuffle_generator.set_state(state["shuffle"])


class ResumablePretrainTrainer(PluginTrainer):
    """``run_pretrain``'s trainer: :class:`PluginTrainer` (that of every plugin model) without
    validation, saving numbered checkpoints atomically, with the random state that lets a resumed
    run continue as if never interrupted.

    ``checkpoint_pattern`` is the checkpoint path with ``{}`` for the number of epochs done
    (``run_pretrain`` names it by the run's settings).
    """

    def __init__(self, config, model, checkpoint_pattern: str, epoch_callback: EpochCallback | None = None):
        super().__init__(config, model, epoch_callback=epoch_callback)
        self.save_step = max(1, int(config["save_step"] or 1))
        self.checkpoint_pattern = checkpoint_pattern
        self.shuffle_generator: torch.Generator | None = None
        self.resumed_random_state: dict[str, Any] | None = None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        self.shuffle_generator = train_data.generator
        # Restored here, after everything between resuming and training that draws numbers
        # (the model's initialisation, RecBole's setup), as the uninterrupted run stood.
        if self.resumed_random_state is not None:
            restore_random_state(self.resumed_random_state, self.shuffle_generator)
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def resume_checkpoint(self, resume_file):
        checkpoint = super().resume_checkpoint(resume_file)
        # Only rank 0 saves: in a distributed run the other ranks' states are not in the file.
        if self.config["single_spec"]:
            self.resumed_random_state = checkpoint.get("random_state")

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        done = epoch + 1
        if done == 0 or (done % self.save_step and done != self.epochs):
            return
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        self.saved_model_file = self.checkpoint_pattern.format(done)
        # RecBole's checkpoint (Trainer._save_checkpoint) plus the random state, written to a
        # temporary file that is renamed when complete.
        state = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "random_state": random_state(self.shuffle_generator),
        }
        atomic_replace(self.saved_model_file, lambda temporary: torch.save(state, temporary, pickle_protocol=4))
        if verbose:
            self.logger.info(set_color("Saving checkpoint", "blue") + f": {self.saved_model_file}")
