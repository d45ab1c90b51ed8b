"""UniSRec on real ml-100k-mm data: the MoE adaptor, the three stages, the pre-training losses and
augmentations, invariances, transfer from a pre-trained checkpoint with frozen parts, the CLI."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
import yaml

from recbole_mmm4rec import PluginConfig, load_data_and_model
from recbole_mmm4rec.blocks import MoEAdaptor
from recbole_mmm4rec.cli import build_parser, run_recbole_main
from recbole_mmm4rec.model import UniSRec, load_transferable
from recbole_mmm4rec.model.unisrec import drop_items
from recbole_mmm4rec.registry import PROPERTIES_DIR
from recbole_mmm4rec.trainer import plugin_trainer_class
from tests.conftest import (
    SUBSET_NAME,
    model_with_overrides,
    prepare,
    subset_config,
    subset_config_dict,
    training_rows,
)

STAGES = ("pretrain", "inductive_ft", "transductive_ft")
SMALL = {
    "hidden_size": 32,
    "inner_size": 64,
    "n_heads": 2,
    "n_layers": 2,
    "n_experts": 4,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "adaptor_dropout_prob": 0.0,
}


def _config(data_path, tmp_path, **overrides) -> PluginConfig:
    return subset_config("UniSRec", data_path, tmp_path, **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def prepared(subset_data_path, tmp_path_factory):
    """(config, dataset, train_data) of the real subset, built once for the module."""
    return prepare(_config(subset_data_path, tmp_path_factory.mktemp("unisrec")))


def _model(prepared, stage: str = "transductive_ft", seed: int = 0, **overrides) -> UniSRec:
    """A fresh model of ``stage`` on the module's dataset, with config keys overridden for this model only."""
    return model_with_overrides(UniSRec, prepared, seed, train_stage=stage, **overrides)


@pytest.fixture(scope="module")
def batch(prepared):
    """64 real training rows, with both full-length and shorter histories."""
    return training_rows(prepared)


def _train(model: UniSRec, interaction, steps: int, lr: float = 3e-3) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        optimizer.step()


def _eval_loss(model: UniSRec, interaction) -> float:
    """The loss without dropout or gate noise; the pre-training augmentation drawn from a fixed seed."""
    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        return model.calculate_loss(interaction).item()


def test_moe_gates_sum_to_one_and_output_is_the_gated_sum_of_whitened_experts(prepared):
    _, dataset, _ = prepared
    features = dataset.item_feature_table("text")[1:200]
    torch.manual_seed(0)
    adaptor = MoEAdaptor(features.shape[1], 16, n_experts=4, dropout_prob=0.0, initializer_range=0.02)
    with torch.no_grad():
        for weights in (adaptor.centres, adaptor.gate, adaptor.gate_noise):
            weights.normal_(0.0, 0.5)
        adaptor.eval()
        gates = adaptor.gates(features)
        expected = sum(
            gates[:, k : k + 1] * ((features - adaptor.centres[k]) @ adaptor.projections[k]) for k in range(4)
        )
        torch.testing.assert_close(adaptor(features), expected)
        assert gates.shape == (199, 4) and (gates >= 0).all()
        torch.testing.assert_close(gates.sum(-1), torch.ones(199))
        assert gates.std(0).min() > 0.01  # the gates depend on the item, not only on the expert
        adaptor.train()
        noisy = [adaptor.gates(features) for _ in range(2)]
    for sample in noisy:
        torch.testing.assert_close(sample.sum(-1), torch.ones(199))
    assert (noisy[0] - noisy[1]).abs().max() > 0.01 and (noisy[0] - gates).abs().max() > 0.01


@pytest.mark.parametrize("stage", STAGES)
def test_scores_have_recbole_shapes_in_every_stage(prepared, batch, stage):
    _, dataset, _ = prepared
    model = _model(prepared, stage).eval()
    with torch.no_grad():
        user = model(batch["item_id_list"], batch["item_length"])
        scores = model.full_sort_predict(batch)
        pointwise = model.predict(batch)
        loss = model.calculate_loss(batch)
    assert user.shape == (64, 32)
    assert scores.shape == (64, dataset.item_num) and scores.dtype == torch.float32
    torch.testing.assert_close(pointwise, scores[torch.arange(64), batch["item_id"]])
    assert (scores.abs() <= 1 / model.temperature + 1e-4).all()  # cosine / temperature
    assert loss.dim() == 0 and torch.isfinite(loss)
    names = {name for name, _ in model.named_parameters()}
    assert ("item_embedding.weight" in names) == (stage == "transductive_ft")
    # The text features are a buffer that checkpoints never carry.
    assert not any("text_features" in key for key in model.state_dict())


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_trains_on_real_data_with_decreasing_loss(prepared, batch, stage):
    model = _model(prepared, stage, hidden_dropout_prob=0.2, adaptor_dropout_prob=0.2)
    before = _eval_loss(model, batch)
    _train(model, batch, steps=15)
    after = _eval_loss(model, batch)
    assert after < before - 0.5, (before, after)
    model.zero_grad()
    model.train().calculate_loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_pretrain_losses_equal_hand_computed_values_with_repeated_targets_masked(prepared, batch):
    model = _model(prepared, "pretrain", seq_seq_loss_weight=0.5).eval()
    rows = batch[torch.tensor([0, 1, 2, 3])]
    rows["item_id"] = torch.tensor([5, 9, 5, 11])  # rows 0 and 2 share their target
    items, lengths = rows["item_id_list"], rows["item_length"]
    with torch.no_grad():
        torch.manual_seed(7)
        loss = model.calculate_loss(rows)
        torch.manual_seed(7)  # the same item-drop view
        view_items, view_lengths, _ = model.augmented_view(items, lengths)
        users = model(items, lengths)
        seq_item = model.cosine_logits(users, model.item_vectors(rows["item_id"]))
        seq_seq = model.cosine_logits(users, model(view_items, view_lengths))
    assert not torch.equal(view_items, items)

    def cross_entropy(logits):
        terms = []
        for row, candidates in enumerate([[0, 1, 3], [0, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3]]):
            terms.append(-torch.log_softmax(logits[row, candidates], dim=0)[candidates.index(row)])
        return torch.stack(terms).mean()

    torch.testing.assert_close(loss, cross_entropy(seq_item) + 0.5 * cross_entropy(seq_seq))


def test_item_drop_keeps_an_ordered_subsequence_of_every_history(batch):
    items, lengths = batch["item_id_list"], batch["item_length"]
    torch.manual_seed(0)
    dropped = 0
    for _ in range(20):
        view, view_lengths = drop_items(items, lengths, 0.2)
        assert view.shape == items.shape and (view_lengths >= 1).all() and (view_lengths <= lengths).all()
        for row in range(len(items)):
            kept = view[row, : view_lengths[row]].tolist()
            assert not view[row, view_lengths[row] :].any()  # right-padded
            history = iter(items[row, : lengths[row]].tolist())
            assert all(item in history for item in kept)  # a subsequence, order kept
        dropped += int((lengths - view_lengths).sum())
    assert 0.15 < dropped / (20 * int(lengths.sum())) < 0.25
    # A history that would lose everything keeps its most recent item.
    view, view_lengths = drop_items(items, lengths, 0.999999)
    assert (view_lengths == 1).all()
    torch.testing.assert_close(view[:, 0], items[torch.arange(len(items)), lengths - 1])


def test_word_drop_replaces_the_text_of_some_positions(subset_data_path, tmp_path):
    """A word-dropped text modality (here the real text features, perturbed) attached beside text."""
    source = os.path.join(subset_data_path, SUBSET_NAME, f"{SUBSET_NAME}.text")
    features = np.load(f"{source}.npy")
    np.save(tmp_path / "word_drop.npy", features + np.random.default_rng(0).normal(0, 0.1, features.shape).astype(features.dtype))
    (tmp_path / "word_drop.tokens").write_text(open(f"{source}.tokens").read())
    prepared = prepare(
        _config(
            subset_data_path,
            tmp_path,
            modalities=["text", "word_drop"],
            modality_files={"word_drop": str(tmp_path / "word_drop.npy")},
            missing_feature_policy="error",
        )
    )
    model = _model(prepared, "pretrain", word_drop_modality="word_drop", item_drop_coefficient=0.0).eval()
    interaction = training_rows(prepared)
    items, lengths = interaction["item_id_list"], interaction["item_length"]
    with torch.no_grad():
        view_items, view_lengths, vectors = model.augmented_view(items, lengths)
        own, word_dropped = model.item_vectors(items), model.item_vectors(items, model.word_dropped_features)
        assert torch.equal(view_items, items) and torch.equal(view_lengths, lengths)
        replaced = (vectors == word_dropped).all(-1) & ~(vectors == own).all(-1)
        assert ((vectors == own).all(-1) | replaced).all()
        assert 0.1 < replaced[items > 0].float().mean() < 0.3
        assert torch.isfinite(model.calculate_loss(interaction))
    with pytest.raises(ValueError, match="word_drop_modality 'kg' must hold features of the same encoder"):
        _model(prepare(_config(subset_data_path, tmp_path)), "pretrain", word_drop_modality="kg")


def test_outputs_ignore_padding_later_items_and_the_rest_of_the_batch(prepared, batch):
    model = _model(prepared, "transductive_ft").eval()
    items, lengths = batch["item_id_list"], batch["item_length"]
    with torch.no_grad():
        reference = model(items, lengths)
        # Fewer padding positions after short histories: the same vectors.
        short = lengths <= 10
        torch.testing.assert_close(model(items[short, :10], lengths[short]), reference[short])
        # Alone, or in a reversed batch: the same vectors.
        for row in (0, 7, 63):
            torch.testing.assert_close(model(items[row : row + 1], lengths[row : row + 1])[0], reference[row])
        order = torch.arange(63, -1, -1)
        torch.testing.assert_close(model(items[order], lengths[order]), reference[order])
        # Causal: later items never change earlier positions' outputs.
        full = lengths == 20
        outputs = model.forward_sequence(items[full])
        changed = items[full].clone()
        changed[:, 12:] = torch.randint(1, model.n_items, changed[:, 12:].shape)
        changed_outputs = model.forward_sequence(changed)
        torch.testing.assert_close(changed_outputs[:, :12], outputs[:, :12])
        assert (changed_outputs[:, 12:] - outputs[:, 12:]).abs().max() > 1e-3


def _freeze_prefixes() -> list[str]:
    with open(os.path.join(PROPERTIES_DIR, "finetune", "UniSRec.yaml")) as f:
        return yaml.safe_load(f)["freeze"]


@pytest.mark.parametrize("stage", ["inductive_ft", "transductive_ft"])
def test_pretrained_checkpoint_fine_tunes_with_the_key_report_and_frozen_parts(prepared, batch, stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the trainer writes its TensorBoard folder in the working directory
    config, _, train_data = prepared
    pretrained = _model(prepared, "pretrain", seed=1)
    _train(pretrained, batch, steps=3)
    checkpoint = pretrained.state_dict()
    assert not any("item_embedding" in key or "features" in key for key in checkpoint)

    model = _model(prepared, stage, seed=2)
    report = load_transferable(model, checkpoint)
    assert report.loaded == sorted(checkpoint) and not report.skipped
    loaded_parts = {key.split(".")[0] for key in report.loaded}
    assert loaded_parts == {"moe_adaptor", "position_embedding", "input_norm", "trm_encoder"}
    assert report.kept_initial == (["item_embedding.weight"] if stage == "transductive_ft" else [])
    if stage == "inductive_ft":
        # Text only on both sides: the fine-tuning model starts as the pre-trained one.
        with torch.no_grad():
            torch.testing.assert_close(model.eval().full_sort_predict(batch), pretrained.eval().full_sort_predict(batch))
    else:
        # A transductive checkpoint's ID embedding belongs to its catalogue: never loaded.
        source = _model(prepared, "transductive_ft", seed=3)
        again = load_transferable(model, source.state_dict())
        assert again.skipped == {"item_embedding.weight": "item-specific (belongs to the checkpoint's catalogue)"}

    prefixes = _freeze_prefixes()
    frozen = [name for name, p in model.named_parameters() if name.startswith(tuple(prefixes))]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    assert "position_embedding.weight" in frozen and any(name.startswith("trm_encoder.") for name in frozen)
    assert not any(name.startswith("moe_adaptor") or name.startswith("item_embedding") for name in frozen)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    saved_decay = config["weight_decay"]
    config["weight_decay"] = 0.01  # decay would move frozen weights if the optimizer touched them
    try:
        trainer = plugin_trainer_class(config)(config, model)
    finally:
        config["weight_decay"] = saved_decay
    trainer._train_epoch(train_data, epoch_idx=0, show_progress=False)
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, before[name]), name
    trained = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert {name for name, _ in model.named_parameters()} - set(frozen) == set(trained)


def test_config_errors_name_what_to_fix(prepared):
    with pytest.raises(ValueError, match="train_stage must be one of"):
        _model(prepared, "finetune")
    with pytest.raises(ValueError, match=r"text_modality is 'title', which dataset .* does not attach"):
        _model(prepared, text_modality="title")
    with pytest.raises(ValueError, match=r"word_drop_modality is 'text_aug', which dataset .* does not attach"):
        _model(prepared, "pretrain", word_drop_modality="text_aug")
    with pytest.raises(ValueError, match="loss_type must be 'CE'"):
        _model(prepared, loss_type="BPR")
    with pytest.raises(ValueError, match="temperature must be positive"):
        _model(prepared, temperature=0)
    with pytest.raises(ValueError, match=r"item_drop_ratio must lie in \[0, 1\)"):
        _model(prepared, "pretrain", item_drop_ratio=1.0)
    with pytest.raises(ValueError, match="n_experts must be at least 1"):
        _model(prepared, n_experts=0)


def test_one_epoch_through_the_cli_then_reload(subset_data_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "UniSRec" in build_parser().format_help()
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(subset_config_dict(subset_data_path, tmp_path)))
    argv = [
        "--model=UniSRec",
        f"--dataset={SUBSET_NAME}",
        f"--config_files={config_file}",
        "--epochs=1",
        "--hidden_size=32",
        "--inner_size=64",
        "--n_experts=4",
    ]
    assert run_recbole_main(argv) == 0
    out = capsys.readouterr().out
    block = out.split(f"UniSRec on {SUBSET_NAME}: test", 1)[1]
    printed = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+@\d+)\s+([0-9.]+)$", block, re.M)}
    assert set(printed) == {"hit@10", "ndcg@10"} and 0 < printed["ndcg@10"] <= printed["hit@10"] <= 1
    assert re.search(r"UniSRec: [\d,]+ trainable parameters, 1 epochs", out)

    (checkpoint,) = (tmp_path / "saved").glob("UniSRec-*.pth")
    config, model, _, _, _, test_data = load_data_and_model(str(checkpoint))
    assert isinstance(model, UniSRec) and config["train_stage"] == "transductive_ft" and config["hidden_size"] == 32
    trainer = plugin_trainer_class(config)(config, model)
    reloaded = dict(trainer.evaluate(test_data, load_best_model=False))
    for metric, value in printed.items():
        assert reloaded[metric] == pytest.approx(value, abs=1e-4)
