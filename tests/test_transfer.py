"""Pre-training on several domains, resume, distributed pre-training, fine-tuning with --pretrained."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from recbole_mmm4rec import compat, run_recbole
from recbole_mmm4rec.data.features import read_item_features
from recbole_mmm4rec.model import TransferError
from recbole_mmm4rec.pretrain import launch_pretrain, pretrain_config, run_pretrain
from recbole_mmm4rec.quick_start import create_dataset
from tests.conftest import SMALL_MMM4REC, SUBSET_NAME, subset_config_dict

SMALL = {**SMALL_MMM4REC, "train_batch_size": 256}
RUN_PRETRAIN = os.path.join(os.path.dirname(sys.executable), "run_pretrain")
DOMAINS = {"dom-a": range(1, 61), "dom-b": range(61, 121)}  # two real user groups of ml-100k-mm


@pytest.fixture(scope="module")
def domains_root(subset_data_path, tmp_path_factory) -> str:
    """A data_path holding two domains: disjoint users of the real subset, every item and its
    real features in both (so the same movie is one item per domain)."""
    root = tmp_path_factory.mktemp("domains")
    source = os.path.join(subset_data_path, SUBSET_NAME)
    inter = pd.read_csv(os.path.join(source, f"{SUBSET_NAME}.inter"), sep="\t", dtype=str)
    for domain, users in DOMAINS.items():
        folder = root / domain
        folder.mkdir()
        keep = inter["user_id:token"].astype(int).isin(users)
        inter[keep].to_csv(folder / f"{domain}.inter", sep="\t", index=False)
        for suffix in ("item", "text.npy", "text.tokens", "kg.npy", "kg.tokens"):
            shutil.copyfile(os.path.join(source, f"{SUBSET_NAME}.{suffix}"), folder / f"{domain}.{suffix}")
    return str(root)


def pretrain_settings(root: str, tmp_path, **overrides) -> dict:
    return subset_config_dict(root, tmp_path, **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def pretrained(domains_root, tmp_path_factory) -> dict:
    """Two epochs of MMM4Rec pre-training on both domains."""
    tmp_path = tmp_path_factory.mktemp("pretrain")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)  # RecBole writes log/ and log_tensorboard/ into the working folder
        result = run_pretrain("MMM4Rec", list(DOMAINS), config_dict=pretrain_settings(domains_root, tmp_path, epochs=2))
    return {**result, "tmp_path": tmp_path}


def test_domains_never_share_items_and_features_follow_their_items(domains_root, pretrained):
    config = pretrain_config("MMM4Rec", list(DOMAINS), config_dict=pretrain_settings(domains_root, pretrained["tmp_path"]))
    dataset = create_dataset(config)
    assert config["dataset"] == "dom-a+dom-b" and config["ce_candidates"] == "in_batch"  # the pre-training stage YAML
    tokens = dataset.field2id_token["item_id"][1:]
    assert all(token.split(":")[0] in DOMAINS for token in tokens)
    per_domain = {d: {t.split(":", 1)[1] for t in tokens if t.startswith(d + ":")} for d in DOMAINS}
    shared_movies = per_domain["dom-a"] & per_domain["dom-b"]
    assert len(shared_movies) > 100  # the same movies, as different items
    source_tokens, source_rows = read_item_features(os.path.join(domains_root, "dom-a", "dom-a.text.npy"))
    row_of = dict(zip(source_tokens, source_rows))
    table = dataset.item_feature_table("text")
    for movie in sorted(shared_movies)[:20]:
        for domain in DOMAINS:
            item_id = dataset.token2id("item_id", f"{domain}:{movie}")
            np.testing.assert_array_equal(table[item_id].numpy(), row_of[movie])
    users = dataset.field2id_token["user_id"][1:]
    assert len(users) == 120 and {u.split(":")[0] for u in users} == set(DOMAINS)


def test_every_interaction_trains_and_checkpoints_are_kept(domains_root, pretrained):
    checkpoint = pretrained["checkpoint"]
    assert checkpoint.endswith("-2.pth") and os.path.isfile(checkpoint.replace("-2.pth", "-1.pth"))
    state = compat.load_checkpoint(checkpoint)
    assert state["epoch"] == 1 and state["config"]["train_stage"] == "pretrain"
    losses = pretrained["train_loss"]
    assert list(losses) == [0, 1] and losses[1] < losses[0]
    inter_rows = sum(len(pd.read_csv(os.path.join(domains_root, d, f"{d}.inter"), sep="\t")) for d in DOMAINS)
    config = pretrain_config("MMM4Rec", list(DOMAINS), config_dict=pretrain_settings(domains_root, pretrained["tmp_path"]))
    # every interaction but each user's first is the target of one sample
    assert len(create_dataset(config).build()[0]) == inter_rows - 120


def test_interrupted_pretraining_resumes_without_repeating_epochs(domains_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = pretrain_settings(domains_root, tmp_path, epochs=3)

    def interrupt(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt  # after epoch 1's checkpoint, as a kill would

    with pytest.raises(KeyboardInterrupt):
        run_pretrain("MMM4Rec", list(DOMAINS), config_dict=settings, epoch_callback=interrupt)
    saved = sorted(os.listdir(tmp_path / "saved"))
    assert [name.rsplit("-", 1)[1] for name in saved] == ["1.pth", "2.pth"]
    resumed = run_pretrain("MMM4Rec", list(DOMAINS), config_dict=settings)
    assert resumed["resumed_from"].endswith("-2.pth") and list(resumed["train_loss"]) == [2]
    assert resumed["checkpoint"].endswith("-3.pth")
    changed = run_pretrain("MMM4Rec", list(DOMAINS), config_dict={**settings, "learning_rate": 0.01, "epochs": 1})
    assert changed["resumed_from"] is None  # other settings never resume this run's checkpoints


def test_fine_tuning_loads_transferable_weights_and_reports_every_key(subset_data_path, pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = subset_config_dict(subset_data_path, tmp_path, **SMALL, pretrained=pretrained["checkpoint"])
    result = run_recbole("MMM4Rec", SUBSET_NAME, config_dict=settings)
    lines = result["transfer_report"].splitlines()
    pre = compat.load_checkpoint(pretrained["checkpoint"])["state_dict"]
    transferable = sorted(k for k in pre if "item_bias" not in k)
    assert lines[0] == f"loaded {len(transferable)} tensors:"
    assert [line.split()[1] for line in lines if line.startswith("  loaded ")] == transferable
    assert any(k.startswith("layers.0.primary_ssd.") for k in transferable) and any(k.startswith("adapters.text.") for k in transferable)
    for modality in ("text", "kg"):
        assert f"  skipped adapters.{modality}.item_bias.weight: item-specific (belongs to the checkpoint's catalogue)" in lines
        assert f"  kept the model's initial adapters.{modality}.item_bias.weight" in lines
    assert result["test_result"]["ndcg@10"] > 0


def test_zero_shot_evaluates_the_transferred_weights_without_training(subset_data_path, pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = {}
    for use_item_id in (True, False):
        settings = subset_config_dict(subset_data_path, tmp_path / str(use_item_id), **SMALL, epochs=0,
                                      use_item_id=use_item_id, pretrained=pretrained["checkpoint"])
        results[use_item_id] = run_recbole("MMM4Rec", SUBSET_NAME, config_dict=settings)
    scratch = run_recbole("MMM4Rec", SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path / "scratch", **SMALL, epochs=0))
    for result in (*results.values(), scratch):
        assert result["epochs_trained"] == 0 and result["best_epoch"] == -1 and result["epoch_history"] == []
        assert result["best_valid_score"] == result["best_valid_result"]["ndcg@10"] > 0
    # The ID tables start at zero: with ID, the item vectors are the features' alone, as without.
    for split in ("best_valid_result", "test_result"):
        assert results[True][split] == pytest.approx(results[False][split], abs=1e-4)
        # The pre-trained weights, not an initialisation.
        assert abs(results[True][split]["ndcg@10"] - scratch[split]["ndcg@10"]) > 1e-3
    saved = compat.load_checkpoint(results[True]["saved_model_file"])["state_dict"]
    pre = compat.load_checkpoint(pretrained["checkpoint"])["state_dict"]
    assert all(torch.equal(saved[key], pre[key]) for key in pre if "item_bias" not in key)
    assert all(not saved[key].any() for key in saved if "item_bias" in key)


def test_frozen_parts_keep_their_pretrained_values(subset_data_path, pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = subset_config_dict(
        subset_data_path, tmp_path, **SMALL, pretrained=pretrained["checkpoint"], freeze=["layers.0.primary_ssd", "adapters.kg"]
    )
    result = run_recbole("MMM4Rec", SUBSET_NAME, config_dict=settings, saved=True)
    pre = compat.load_checkpoint(pretrained["checkpoint"])["state_dict"]
    tuned = compat.load_checkpoint(result["saved_model_file"])["state_dict"]
    frozen = [k for k in pre if k.startswith(("layers.0.primary_ssd.", "adapters.kg.")) and "item_bias" not in k]
    trained = [k for k in pre if k.startswith("layers.0.cross")]
    assert frozen and trained
    assert all(torch.equal(pre[k], tuned[k]) for k in frozen)
    assert any(not torch.equal(pre[k], tuned[k]) for k in trained)
    with pytest.raises(ValueError, match="freeze: 'primary_layer' names no parameter"):
        # the command line's string form, which overrides the config dict's list
        run_recbole("MMM4Rec", SUBSET_NAME, config_dict=settings, cmd_args=["--freeze=adapters.kg,primary_layer"])


def test_foreign_and_mismatched_checkpoints_are_clear_errors(subset_data_path, pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sasrec = run_recbole("SASRec", SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path, hidden_size=32))
    with pytest.raises(TransferError, match="is a checkpoint of SASRec, not of MMM4Rec"):
        run_recbole("MMM4Rec", SUBSET_NAME, config_dict=subset_config_dict(
            subset_data_path, tmp_path, **SMALL, pretrained=sasrec["saved_model_file"]))
    with pytest.raises(TransferError, match="shapes differ"):
        run_recbole("MMM4Rec", SUBSET_NAME, config_dict=subset_config_dict(
            subset_data_path, tmp_path, **{**SMALL, "hidden_size": 64}, pretrained=pretrained["checkpoint"]))


def test_two_process_gloo_pretraining_follows_the_one_process_curve(domains_root, tmp_path, monkeypatch):
    """In sequence mode: each rank trains on its share of the windows."""
    monkeypatch.chdir(tmp_path)
    settings = {"epochs": 3, "train_mode": "sequence", "train_batch_size": 1024}
    one = launch_pretrain("MMM4Rec", list(DOMAINS), config_dict=pretrain_settings(domains_root, tmp_path / "one", **settings))
    config_file = tmp_path / "two.yaml"
    config_file.write_text(yaml.safe_dump(pretrain_settings(domains_root, tmp_path / "two", **settings)))
    command = [RUN_PRETRAIN, "--model=MMM4Rec", "--datasets=dom-a,dom-b", f"--config_files={config_file}", "--nproc=2", "--port=29811"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    history_file = re.search(r"per-epoch records: (\S+)", run.stdout).group(1)
    two = pd.read_csv(history_file)
    assert list(two["epoch"]) == [0, 1, 2]
    (checkpoint,) = glob.glob(str(tmp_path / "two" / "saved" / "*-3.pth"))
    assert compat.load_checkpoint(checkpoint)["config"]["world_size"] == 2
    assert len(os.listdir(tmp_path / "two" / "saved" / "features")) == 2  # one mapped table per modality for both ranks
    # Each rank sums its losses over half the batches (of half the size, so fewer in-batch
    # negatives): compare the shape of the curves, not their scale.
    curves = [np.array([one["train_loss"][e] for e in range(3)]), two["train_loss"].to_numpy()]
    for curve in curves:
        assert np.all(np.diff(curve) < 0)
    np.testing.assert_allclose(curves[1] / curves[1][0], curves[0] / curves[0][0], atol=0.05)


def test_unisrec_pretrains_on_two_domains_and_fine_tunes_with_its_frozen_encoder(domains_root, subset_data_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = {"hidden_size": 32, "inner_size": 64, "n_heads": 2, "n_layers": 1, "n_experts": 4, "train_batch_size": 256}
    pre = run_pretrain("UniSRec", list(DOMAINS), config_dict=subset_config_dict(domains_root, tmp_path, **small, train_mode="sequence"))
    assert compat.load_checkpoint(pre["checkpoint"])["config"]["train_stage"] == "pretrain"
    result = run_recbole("UniSRec", SUBSET_NAME, config_dict=subset_config_dict(
        subset_data_path, tmp_path, **small, pretrained=pre["checkpoint"]), saved=True)
    lines = result["transfer_report"].splitlines()
    assert any(line.startswith("  loaded moe_adaptor.") for line in lines)
    assert "  kept the model's initial item_embedding.weight" in lines  # transductive: a new catalogue's IDs
    before = compat.load_checkpoint(pre["checkpoint"])["state_dict"]
    after = compat.load_checkpoint(result["saved_model_file"])["state_dict"]
    frozen = [k for k in before if k.startswith(("position_embedding.", "trm_encoder."))]  # properties/finetune/UniSRec.yaml
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("moe_adaptor."))
