"""run_recommend and Recommender on a checkpoint of a real one-epoch MMM4Rec run on the ml-100k-mm subset."""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils.case_study import full_sort_topk

from recbole_mmm4rec import PluginConfig, create_dataset, load_data_and_model, run_recbole
from recbole_mmm4rec.cli import run_recommend_main
from recbole_mmm4rec.data import FeatureFileError, read_item_features, write_item_features
from recbole_mmm4rec.recommend import Recommender, RecommendError, read_histories, read_new_items
from tests.conftest import SMALL_MMM4REC, SUBSET_NAME, subset_config_dict

# Without item IDs (a copied item must score as its original), with the time channel (timestamps
# are required). One layer, histories of 8 (one SSD chunk) and the subset's 37 users with at most
# 40 interactions (~1 k) keep the one training run to a few seconds.
SETTINGS = dict(SMALL_MMM4REC, use_item_id=False, n_layers=1, MAX_ITEM_LIST_LENGTH=8, user_inter_num_interval="[0,40]")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("recommend")


@pytest.fixture(autouse=True)
def _in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)  # RecBole writes log/ and log_tensorboard/ into the working folder


@pytest.fixture(scope="module")
def checkpoint(subset_data_path, workdir) -> str:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        result = run_recbole(
            model="MMM4Rec", dataset=SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, workdir, **SETTINGS)
        )
    return result["saved_model_file"]


@pytest.fixture(scope="module")
def recommender(checkpoint, workdir) -> Recommender:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        return Recommender.from_checkpoint(checkpoint)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def copy_subset(subset_data_path, target) -> str:
    """A data_path holding a copy of the subset's files, to change."""
    shutil.copytree(os.path.join(subset_data_path, SUBSET_NAME), target / SUBSET_NAME)
    return str(target)


def test_users_equal_recboles_full_sort_topk(recommender, subset_data_path, workdir, tmp_path):
    """RecBole's full_sort_topk scores a test row: the history before each user's last item. A
    copy of the dataset with one more interaction per user makes the whole history that row's."""
    users = [user for user in recommender.users() if len(recommender.user_history(user).items) < 40][:3]
    assert len(users) == 3 and max(len(recommender.user_history(u).items) for u in users) > 8  # longer than the model reads
    data_path = copy_subset(subset_data_path, tmp_path)
    inter_file = os.path.join(data_path, SUBSET_NAME, f"{SUBSET_NAME}.inter")
    inter = pd.read_csv(inter_file, sep="\t", dtype=str)
    later = str(inter["timestamp:float"].astype(float).max().astype(int) + 1)
    extra = pd.DataFrame({"user_id:token": users, "item_id:token": "1", "rating:float": "5", "timestamp:float": later})
    pd.concat([inter, extra]).to_csv(inter_file, sep="\t", index=False)
    config = PluginConfig(model="MMM4Rec", dataset=SUBSET_NAME, config_dict=subset_config_dict(data_path, tmp_path, **SETTINGS))
    dataset = create_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    for field in (dataset.uid_field, dataset.iid_field):  # the same internal ids: one model serves both
        assert list(dataset.field2id_token[field]) == list(recommender.dataset.field2id_token[field])

    uids = dataset.token2id(dataset.uid_field, users)
    scores, items = full_sort_topk(uids, recommender.model, test_data, k=10)
    ours = recommender.recommend_users(users, k=10, exclude_history=False)
    for user, (tokens, our_scores), row_items, row_scores in zip(users, ours, items, scores):
        assert tokens == list(dataset.id2token(dataset.iid_field, row_items)), user
        np.testing.assert_allclose(our_scores, row_scores.numpy(), rtol=1e-5)
    # Excluding the history: the next candidates, none the user interacted with.
    excluded = recommender.recommend_users(users, k=10)
    for user, (tokens, _) in zip(users, excluded):
        assert len(tokens) == 10 and not set(tokens) & set(recommender.user_history(user).items)


def test_cli_users_jsonl_and_a_jsonl_history_equal_to_the_dataset_user(recommender, checkpoint, tmp_path, capsys):
    users = recommender.users()[:2]
    output = tmp_path / "users.jsonl"
    assert run_recommend_main([f"--checkpoint={checkpoint}", f"--users={','.join(users)}", "--topk=5", f"--output={output}"]) == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["id"] for line in lines] == users
    for line, (tokens, scores) in zip(lines, recommender.recommend_users(users, k=5)):
        assert line["items"] == tokens and len(tokens) == 5
        np.testing.assert_allclose(line["scores"], scores, rtol=1e-5)

    # The first user's history as a JSONL line (plus a token the dataset never had, skipped and
    # counted), through the CLI into CSV: the same items and scores as the dataset user.
    history = recommender.user_history(users[0])
    histories = write_jsonl(tmp_path / "histories.jsonl", [
        {"id": "copy", "items": history.items + ["no-such-item"], "timestamps": history.timestamps + [history.timestamps[-1]]},
    ])
    output = tmp_path / "histories.csv"
    assert run_recommend_main([f"--checkpoint={checkpoint}", f"--histories={histories}", "--topk=5", f"--output={output}"]) == 0
    assert "1 unknown item tokens skipped" in capsys.readouterr().err
    with open(output, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5"] and {row["id"] for row in rows} == {"copy"}
    assert [row["item"] for row in rows] == lines[0]["items"]
    np.testing.assert_allclose([float(row["score"]) for row in rows], lines[0]["scores"], rtol=1e-5)

    with pytest.raises(RecommendError, match=r"--strict refuses unknown items; e.g. \['no-such-item'\]"):
        recommender.recommend(read_histories(histories), strict=True)


def test_a_sequence_mode_checkpoint_recommends_as_a_prefix_mode_one(recommender, checkpoint, tmp_path):
    """train_mode: sequence keeps the training split as windows: the users' histories, hence their
    recommendations, are the same."""
    saved = torch.load(checkpoint, weights_only=False)
    saved["config"]["train_mode"] = "sequence"
    sequence_mode = tmp_path / "sequence.pth"
    torch.save(saved, sequence_mode)
    windows = Recommender.from_checkpoint(str(sequence_mode))
    assert windows.dataset.interaction_sequences is not None
    users = recommender.users()
    assert windows.users() == users
    for user in users:
        assert windows.user_history(user) == recommender.user_history(user)
    for (tokens, scores), (expected, expected_scores) in zip(windows.recommend_users(users[:5]), recommender.recommend_users(users[:5])):
        assert tokens == expected
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_bad_inputs_say_what_to_fix(recommender, checkpoint, tmp_path):
    with pytest.raises(SystemExit, match=r"user '99999' is not a user of dataset ml-100k-mm-small .* --histories"):
        run_recommend_main([f"--checkpoint={checkpoint}", f"--users={recommender.users()[0]},99999"])
    with pytest.raises(RecommendError, match="topk and batch_size must be at least 1, found 0 and 256"):
        recommender.recommend_users(recommender.users()[:1], k=0)
    with pytest.raises(RecommendError, match="history 'a': empty history"):
        recommender.recommend([{"id": "a", "items": [], "timestamps": []}])
    no_times = write_jsonl(tmp_path / "no_times.jsonl", [{"id": "b", "items": ["50", "172"]}])
    with pytest.raises(RecommendError, match=r"history 'b': no \"timestamps\"; MMM4Rec reads the time .*time_channel: True"):
        recommender.recommend(read_histories(no_times))
    with pytest.raises(RecommendError, match="none of its items is known: a history of another dataset"):
        recommender.recommend([{"items": ["x", "y"], "timestamps": [1, 2]}])
    with pytest.raises(RecommendError, match=r"line 1: \"timestamps\" must be a list of 2 numbers"):
        read_histories(write_jsonl(tmp_path / "short.jsonl", [{"items": ["50", "172"], "timestamps": [1]}]))
    with pytest.raises(SystemExit, match=r"--output=out.txt: expected a .jsonl or .csv"):
        run_recommend_main([f"--checkpoint={checkpoint}", "--users=1", "--output=out.txt"])
    folder = tmp_path / "new"
    folder.mkdir()
    write_item_features(str(folder / "new.text.npy"), ["n1"], np.ones((1, 10), dtype=np.float32))
    write_item_features(str(folder / "new.kg.npy"), ["n1"], np.ones((1, 64), dtype=np.float32))
    with pytest.raises(FeatureFileError, match=r"new.text.npy: expected feature dimension 384 .* found 10"):
        read_new_items(str(folder), {"text": 384, "kg": 64})
    os.unlink(folder / "new.kg.npy")
    with pytest.raises(RecommendError, match=r"expected one kg feature file \*.kg.npy in .* found none"):
        read_new_items(str(folder), {"text": 10, "kg": 64})


def test_a_new_copy_of_an_item_scores_as_the_original(recommender, checkpoint, subset_data_path, tmp_path):
    stem = os.path.join(subset_data_path, SUBSET_NAME, SUBSET_NAME)
    folder = tmp_path / "new"
    folder.mkdir()
    original = "172"  # has text and kg rows
    for modality in ("text", "kg"):
        tokens, matrix = read_item_features(f"{stem}.{modality}.npy")
        row = np.asarray(matrix[tokens.index(original)])
        # The copy, and an unrelated new item beside it.
        write_item_features(str(folder / f"catalogue.{modality}.npy"), ["new-172", "new-other"], np.stack([row, -row]))
    extended = Recommender.from_checkpoint(checkpoint, new_items=str(folder))
    assert extended.notes == []  # without item IDs: nothing is guessed
    history = extended.user_history(extended.users()[1])
    assert original not in history.items
    everything = len(extended.item_tokens)
    (tokens, scores), = extended.recommend([history], k=everything)
    score = dict(zip(tokens, scores))
    assert len(score) == everything - 1 - len(set(history.items))  # all but padding and the history
    assert score["new-172"] == pytest.approx(score[original], rel=1e-5)
    # Known items score as before; a new item may appear in a history.
    (old_tokens, old_scores), = recommender.recommend([history], k=20)
    assert [t for t in tokens if not t.startswith("new-")][:20] == old_tokens
    (with_new, _), = extended.recommend([{"items": history.items + ["new-172"], "timestamps": history.timestamps + [history.timestamps[-1]]}], k=5)
    assert "new-172" not in with_new


def test_with_item_ids_new_items_get_a_zero_id_vector_and_say_so(recommender, checkpoint, tmp_path):
    saved = torch.load(checkpoint, weights_only=False)
    saved["config"]["use_item_id"] = True
    n_items, hidden = recommender.n_trained_items, SETTINGS["hidden_size"]
    for modality in ("text", "kg"):
        saved["state_dict"][f"adapters.{modality}.item_bias.weight"] = torch.randn(n_items, hidden)
    with_ids = tmp_path / "with_ids.pth"
    torch.save(saved, with_ids)
    folder = tmp_path / "new"
    folder.mkdir()
    write_item_features(str(folder / "n.text.npy"), ["n1"], np.full((1, 384), 0.1, dtype=np.float32))
    write_item_features(str(folder / "n.kg.npy"), ["n1"], np.full((1, 64), 0.1, dtype=np.float32))
    extended = Recommender.from_checkpoint(str(with_ids), new_items=str(folder))
    (note,) = extended.notes
    assert "1 new items scored with a zero ID vector (adapters.text.item_bias, adapters.kg.item_bias)" in note
    bias = extended.model.adapters["text"].item_bias.weight
    assert bias.shape == (n_items + 1, hidden) and not bias[-1].any() and bias[:-1].abs().sum() > 0
    (tokens, scores), = extended.recommend([{"items": ["50"], "timestamps": [1.0]}], k=n_items)
    assert "n1" in tokens and np.isfinite(scores).all()


@pytest.mark.parametrize("model_name, settings, refusal", [
    ("SASRec", {}, "SASRec knows items by their trained ID embeddings only"),
    ("UniSRec", {"train_stage": "transductive_ft"}, r"UniSRec adds a trained ID embedding to each item \(item_embedding"),
])
def test_sasrec_and_unisrec_recommend_like_recbole_and_refuse_new_items(recommender, subset_data_path, tmp_path, model_name, settings, refusal):
    """RecBole's scores of the test rows (full_sort_predict), given as histories; no new items for
    models with a trained vector per item."""
    from recbole_mmm4rec.registry import get_model_class

    sizes = dict(hidden_size=16, inner_size=32, n_layers=1, n_heads=1, **settings)
    filtered = {key: SETTINGS[key] for key in ("MAX_ITEM_LIST_LENGTH", "user_inter_num_interval")}
    config = PluginConfig(model=model_name, dataset=SUBSET_NAME, config_dict=subset_config_dict(subset_data_path, tmp_path, **sizes, **filtered))
    torch.manual_seed(0)
    model = get_model_class(model_name)(config, recommender.dataset)  # the same items, users and fields as its own dataset
    path = str(tmp_path / f"{model_name}.pth")
    torch.save({"config": config, "state_dict": model.state_dict(), "other_parameter": model.other_parameter()}, path)
    loaded = Recommender.from_checkpoint(path)
    *_, test_data = load_data_and_model(path)
    test_rows = test_data._dataset.inter_feat[:5]
    uids = test_rows[loaded.dataset.uid_field].numpy()
    scores, items = full_sort_topk(uids, loaded.model, test_data, k=10)
    histories = [
        {"items": list(loaded.dataset.id2token(loaded.dataset.iid_field, row[:length]))}
        for row, length in zip(test_rows["item_id_list"].numpy(), test_rows["item_length"].numpy())
    ]
    for (tokens, our_scores), row_items, row_scores in zip(loaded.recommend(histories, k=10, exclude_history=False), items, scores):
        assert tokens == list(loaded.dataset.id2token(loaded.dataset.iid_field, row_items))
        np.testing.assert_allclose(our_scores, row_scores.numpy(), rtol=1e-5)
    with pytest.raises(RecommendError, match=refusal):
        loaded.add_items(["n1"], {})


def test_a_checkpoint_that_does_not_fit_its_dataset_is_refused(checkpoint, subset_data_path, tmp_path):
    """The dataset the checkpoint names, rebuilt with text features of another encoder (16-d)."""
    data_path = copy_subset(subset_data_path, tmp_path)
    stem = os.path.join(data_path, SUBSET_NAME, SUBSET_NAME)
    tokens, _ = read_item_features(f"{stem}.text.npy")
    write_item_features(f"{stem}.text.npy", tokens, np.random.default_rng(0).normal(size=(len(tokens), 16)).astype(np.float32))
    saved = torch.load(checkpoint, weights_only=False)
    saved["config"]["data_path"] = os.path.join(data_path, SUBSET_NAME)
    moved = tmp_path / "moved.pth"
    torch.save(saved, moved)
    with pytest.raises(SystemExit, match=r"moved.pth does not fit the dataset its config names.*adapters.text.linear.weight.*another dataset"):
        run_recommend_main([f"--checkpoint={moved}", "--users=1"])
