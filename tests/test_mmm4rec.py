"""MMM4Rec on real ml-100k-mm data: shapes, training, padding invariance, time causality, config errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_mmm4rec import PluginConfig, create_dataset, load_data_and_model, run_recbole
from recbole_mmm4rec.blocks import FourierTimeFilter, TimeAwareSSD, TimeModulation
from recbole_mmm4rec.data.features import FeatureFileError
from recbole_mmm4rec.model import MMM4Rec, TransferError, load_transferable
from recbole_mmm4rec.trainer import plugin_trainer_class
from recbole_mmm4rec.dataset_scripts.synthetic_time import NAME as TIME_GROUPS
from recbole_mmm4rec.dataset_scripts.synthetic_time import build_time_groups, time_groups_config
from tests.conftest import (
    SMALL_MMM4REC,
    SUBSET_NAME,
    model_with_overrides,
    prepare,
    subset_config,
    subset_config_dict,
    training_rows,
)

SMALL = SMALL_MMM4REC


def _config(data_path, tmp_path, **overrides) -> PluginConfig:
    return subset_config("MMM4Rec", data_path, tmp_path, **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def prepared(subset_data_path, tmp_path_factory):
    """(config, dataset, train_data) of the real subset, built once for the module."""
    return prepare(_config(subset_data_path, tmp_path_factory.mktemp("mmm4rec")))


def _model(prepared, seed: int = 0, **overrides) -> MMM4Rec:
    """A fresh model on the module's dataset, with config keys overridden for this model only."""
    return model_with_overrides(MMM4Rec, prepared, seed, **overrides)


def _amplify_time_path(model: MMM4Rec) -> MMM4Rec:
    """Make the time path's effect on the outputs large.

    At initialisation it barely moves them (dt is small, softplus is flat at Mamba's dt_bias,
    out_proj is small beside the residual, the Fourier filter is the identity mean), so a leak
    of padding, future or other rows through it would hide below the tests' tolerances.
    """
    torch.manual_seed(3)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TimeAwareSSD):
                module.dt_bias.fill_(0.5)
                module.in_proj.weight.mul_(20)
                module.out_proj.weight.mul_(20)
            elif isinstance(module, (TimeModulation, FourierTimeFilter)):
                for weights in module.parameters():
                    weights.normal_()
    return model


def _without_gradient(model: MMM4Rec) -> list[str]:
    return [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


@pytest.fixture(scope="module")
def batch(prepared):
    """64 real training rows, with both full-length and shorter histories."""
    return training_rows(prepared)


def _with_extra_padding(interaction, extra: int) -> dict[str, torch.Tensor]:
    """The rows' item and time histories with ``extra`` more padding positions after each."""
    out = {}
    for key in ("item_id_list", "timestamp_list"):
        value = interaction[key]
        out[key] = torch.cat([value, value.new_zeros(value.shape[0], extra)], dim=1)
    return out


def test_shapes_dtypes_and_padding_never_scored(prepared, batch):
    _, dataset, _ = prepared
    model = _model(prepared).eval()
    with torch.no_grad():
        user = model(batch["item_id_list"], batch["item_length"], batch["timestamp_list"])
        scores = model.full_sort_predict(batch)
        pointwise = model.predict(batch)
        loss = model.calculate_loss(batch)
    assert user.shape == (64, 32) and user.dtype == torch.float32
    assert scores.shape == (64, dataset.item_num) and scores.dtype == torch.float32
    assert pointwise.shape == (64,)
    torch.testing.assert_close(pointwise, scores[torch.arange(64), batch["item_id"]])
    assert loss.dim() == 0 and torch.isfinite(loss)
    # Static fusion of two cosine-normalised streams: |score| <= 2 |user| / temperature.
    bound = 2 * user.norm(dim=-1, keepdim=True) / model.temperature
    assert (scores.abs() <= bound + 1e-4).all()


def test_loss_decreases_on_real_data(prepared, batch):
    model = _model(prepared, dropout_prob=0.4)
    optimizer = torch.optim.NAdam(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = model.calculate_loss(batch).item()
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model.calculate_loss(batch).item()
    assert after < before - 0.5, (before, after)


@pytest.mark.parametrize("fusion", ["static", "dynamic_shared", "dynamic_instance"])
@pytest.mark.parametrize("use_item_id", [True, False])
def test_gradients_reach_every_parameter(prepared, batch, fusion, use_item_id):
    model = _model(prepared, fusion=fusion, use_item_id=use_item_id)
    model.calculate_loss(batch).backward()
    names = dict(model.named_parameters())
    assert any("item_bias" in name for name in names) == use_item_id
    assert ("fusion_logits" in names) == (fusion == "dynamic_shared")
    assert ("fusion_item_logits.weight" in names) == (fusion == "dynamic_instance")
    assert not _without_gradient(model)
    # The TiSSD block is shared: the second stream uses the text layer's, not a copy.
    assert model.layers[0].secondary_ssd is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"time_channel": False},
        {"fourier_filter": False},
        {"share_tissd": False},
        {"share_tissd": False, "fourier_filter": False},
        {"modality_streams": ["text"]},
        {"modality_streams": ["kg", "text"]},
        {"ce_candidates": "in_batch"},
        {"n_layers": 2},
        {"n_layers": 2, "modality_streams": ["text"]},
        {"n_layers": 2, "share_tissd": False, "fourier_filter": False},
        {"time_path_form": "paper"},
        {"ffn_activation": "gelu"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_ablation_switches_train_and_score(prepared, batch, overrides):
    model = _model(prepared, **overrides)
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    if overrides.get("time_path_form") == "paper":
        # The paper's form as initialised: the Cross-SSD's Tanhshrink scale is flat at ~0, so
        # nothing upstream of it in the time path (gates, norms, Fourier filter) gets a gradient.
        assert all("time_path" in name or "fourier" in name for name in _without_gradient(model))
    else:
        assert not _without_gradient(model)  # no switch leaves a parameter that never trains
    with torch.no_grad():
        assert torch.isfinite(model.eval().full_sort_predict(batch)).all()
    if overrides.get("time_channel") is False:
        assert not any("time_path" in name or "fourier" in name for name, _ in model.named_parameters())
    if overrides.get("share_tissd") is False:
        assert model.layers[0].secondary_ssd is not None
    if overrides.get("modality_streams") == ["text"]:
        assert not any(name.startswith("layers.0.cross") for name, _ in model.named_parameters())


@pytest.mark.parametrize("fusion", ["static", "dynamic_instance"])
def test_user_vector_ignores_padding_and_the_rest_of_the_batch(prepared, batch, fusion):
    """In float64, to 1e-10: extra padding changes the size of the last SSD chunk, which in
    float32 alone moves the amplified outputs by up to ~2e-4; a real leak stands far above."""
    model = _amplify_time_path(_model(prepared, fusion=fusion)).double().eval()
    lengths = batch["item_length"]
    with torch.no_grad():
        reference = model(batch["item_id_list"], lengths, batch["timestamp_list"])
        for extra in (5, 30):
            padded = _with_extra_padding(batch, extra)
            torch.testing.assert_close(
                model(padded["item_id_list"], lengths, padded["timestamp_list"]), reference, rtol=1e-10, atol=1e-10
            )
        # Alone, in a reversed batch, or in a batch of other users: the same vector.
        for row in (0, 7, 63):
            alone = model(batch["item_id_list"][row : row + 1], lengths[row : row + 1], batch["timestamp_list"][row : row + 1])
            torch.testing.assert_close(alone[0], reference[row], rtol=1e-10, atol=1e-10)
        order = torch.arange(63, -1, -1)
        reversed_users = model(batch["item_id_list"][order], lengths[order], batch["timestamp_list"][order])
        torch.testing.assert_close(reversed_users, reference[order], rtol=1e-10, atol=1e-10)


def test_outputs_ignore_padding_before_the_sequence(prepared, batch):
    """Left padding (other pipelines) shifts the real positions but changes none of their outputs.

    In float64: the shift moves the SSD chunk boundaries, which in float32 alone changes the
    amplified outputs by up to ~5e-5; in float64 any real leak stands far above rounding.
    """
    model = _amplify_time_path(_model(prepared)).double().eval()
    items, times = batch["item_id_list"], batch["timestamp_list"]
    with torch.no_grad():
        right = model.forward_sequence(items, times)
        left = model.forward_sequence(
            torch.cat([items.new_zeros(64, 7), items], 1), torch.cat([times.new_zeros(64, 7), times], 1)
        )[:, 7:]
    real = items > 0
    torch.testing.assert_close(left[real], right[real], rtol=1e-10, atol=1e-10)


def test_time_path_is_causal_and_does_matter(prepared, batch):
    model = _amplify_time_path(_model(prepared)).eval()
    full = batch["item_length"] == 20
    items, times = batch["item_id_list"][full], batch["timestamp_list"][full].clone()
    with torch.no_grad():
        reference = model.forward_sequence(items, times)
        for changed_from in (5, 12, 19):
            later = times.clone()
            later[:, changed_from:] += 86400.0 * 30  # a month later, from this position on
            out = model.forward_sequence(items, later)
            torch.testing.assert_close(out[:, :changed_from], reference[:, :changed_from], rtol=1e-5, atol=1e-5)
            assert (out[:, changed_from] - reference[:, changed_from]).abs().max() > 1e-3  # noise: ~1e-6


def test_history_timestamps_never_include_the_target(prepared):
    """What the model reads (timestamp_list) is the history: a row's target time first appears
    in the next row of the same user, as the last history time."""
    _, _, train_data = prepared
    rows = train_data._dataset.inter_feat
    user = rows["user_id"] == rows["user_id"][0]
    lengths, order = rows["item_length"][user].sort(stable=True)
    times, targets = rows["timestamp_list"][user][order], rows["timestamp"][user][order]
    prefixes = int((lengths < 20).sum())  # longer histories are cut to the last 20
    assert prefixes >= 5 and (lengths[: prefixes + 1] == torch.arange(1, prefixes + 2)).all()
    for row in range(prefixes):
        n = int(lengths[row])
        assert not times[row, n:].any()  # nothing after the history
        torch.testing.assert_close(times[row + 1, :n], times[row, :n])
        assert times[row + 1, n] == targets[row]


def test_in_batch_loss_masks_repeated_targets(prepared, batch):
    model = _model(prepared, ce_candidates="in_batch").eval()
    rows = batch[torch.tensor([0, 1, 2, 3])]
    rows["item_id"] = torch.tensor([5, 9, 5, 11])  # rows 0 and 2 share their target
    with torch.no_grad():
        loss = model.calculate_loss(rows)
        user = model(rows["item_id_list"], rows["item_length"], rows["timestamp_list"])
        logits = model.score(user, rows["item_id"])
    expected = []
    for row, candidates in enumerate([[0, 1, 3], [0, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3]]):
        own = candidates.index(row)
        expected.append(-torch.log_softmax(logits[row, candidates], dim=0)[own])
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_config_errors_name_what_to_fix(prepared, subset_data_path, tmp_path):
    with pytest.raises(ValueError, match="not divisible by head_dim"):
        _model(prepared, hidden_size=30)
    with pytest.raises(ValueError, match="n_groups = 3 must divide"):
        _model(prepared, n_groups=3)
    with pytest.raises(ValueError, match=r"names \['image'\], which dataset .* does not attach"):
        _model(prepared, modality_streams=["text", "image"])
    with pytest.raises(ValueError, match="fusion must be one of"):
        _model(prepared, fusion="late")
    with pytest.raises(ValueError, match="with the single stream .* set fusion: static"):
        _model(prepared, modality_streams=["text"], fusion="dynamic_shared")
    with pytest.raises(ValueError, match="names a modality twice"):
        _model(prepared, modality_streams=["text", "text"])
    with pytest.raises(ValueError, match="time_unit must be positive"):
        _model(prepared, time_unit=-1)
    with pytest.raises(ValueError, match="is min-max normalised"):
        _model(prepared, normalize_all=True)
    # A modality declared in the dataset YAML without its feature file.
    config = _config(subset_data_path, tmp_path, modalities=["text", "image"])
    with pytest.raises(FeatureFileError, match=r"ml-100k-mm-small\.image\.npy"):
        create_dataset(config)


def test_transfer_skips_item_tables_and_reports(prepared):
    source = _model(prepared, seed=1, fusion="dynamic_instance")
    target = _model(prepared, seed=2)
    report = load_transferable(target, source.state_dict())
    assert {k for k in report.skipped if "item_bias" in k} == {
        "adapters.text.item_bias.weight",
        "adapters.kg.item_bias.weight",
    }
    assert "fusion_item_logits.weight" in report.skipped
    assert "layers.0.primary_ssd.in_proj.weight" in report.loaded
    torch.testing.assert_close(target.layers[0].primary_ssd.A_log, source.layers[0].primary_ssd.A_log)
    assert not target.adapters["text"].item_bias.weight.abs().sum()  # kept its own (zero) table
    assert "adapters.text.item_bias.weight" in report.kept_initial
    assert "skipped adapters.kg.item_bias.weight: item-specific" in report.summary()

    wider = _model(prepared, hidden_size=64, inner_size=128)
    with pytest.raises(TransferError, match="layers.0.primary_ssd.in_proj.weight: checkpoint"):
        load_transferable(target, wider.state_dict())
    with pytest.raises(TransferError, match="is this a checkpoint of another model"):
        load_transferable(target, {"item_embedding.weight": torch.zeros(3, 32)})


def test_trains_with_nadam_and_checkpoint_reload_gives_identical_scores(subset_data_path, tmp_path):
    result = run_recbole(
        model="MMM4Rec",
        dataset=SUBSET_NAME,
        config_dict=subset_config_dict(subset_data_path, tmp_path, **SMALL, epochs=2),
    )
    assert result["test_result"]["ndcg@10"] > 0
    config, model, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    trainer = plugin_trainer_class(config)(config, model)
    assert config["learner"] == "nadam" and isinstance(trainer.optimizer, torch.optim.NAdam)
    # The reloaded model reproduces the run's own test metrics, and two reloads score alike.
    assert dict(trainer.evaluate(test_data, load_best_model=False)) == dict(result["test_result"])
    interaction = next(iter(test_data))[0]
    _, reloaded, *_ = load_data_and_model(result["saved_model_file"])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded.eval().full_sort_predict(interaction), model.eval().full_sort_predict(interaction), rtol=0, atol=0
        )


@pytest.mark.parametrize("fusion", ["static", "dynamic_shared", "dynamic_instance"])
def test_fused_scores_equal_the_weighted_sum_over_streams(prepared, batch, fusion):
    """One matmul against the fused candidates = sum over streams of w_s * u . normalise(v_s) / T."""
    model = _model(prepared, fusion=fusion).eval()
    with torch.no_grad():
        if model.fusion_logits is not None:
            model.fusion_logits.copy_(torch.tensor([0.7, -0.4]))
        if model.fusion_item_logits is not None:
            model.fusion_item_logits.weight.normal_()
        user = model(batch["item_id_list"], batch["item_length"], batch["timestamp_list"])
        items = torch.tensor([3, 1, 40, 7])
        for item_ids in (None, items):
            ids = torch.arange(model.n_items) if item_ids is None else item_ids
            streams = [F.normalize(model.adapters[name].project(model.features[name], ids), dim=-1) for name in ("text", "kg")]
            if fusion == "static":
                weights = torch.ones(len(ids), 2)
            elif fusion == "dynamic_shared":
                weights = 2 * torch.softmax(model.fusion_logits, -1).expand(len(ids), 2)
            else:
                weights = 2 * torch.softmax(model.fusion_item_logits.weight[ids], -1)
            expected = sum(weights[:, s] * (user @ streams[s].T) for s in range(2)) / model.temperature
            torch.testing.assert_close(model.score(user, item_ids), expected)
        pairwise_ids = batch["item_id"]
        pairwise = model.score(user, pairwise_ids, pairwise=True)
        torch.testing.assert_close(pairwise, model.score(user, pairwise_ids).diagonal())


def test_adapter_projects_rows_or_the_catalogue_alike(prepared):
    """A few ids are projected row by row, many by projecting the catalogue and gathering: the
    same vectors, the padding id included, with the per-item bias and its padding row of zeros."""
    model = _model(prepared).eval()
    adapter, table = model.adapters["text"], model.features["text"]
    with torch.no_grad():
        adapter.item_bias.weight[1:].normal_()
        few = torch.tensor([[0, 5, 9], [9, 2, 0]])  # fewer ids than items: row by row
        many = few.repeat(1, table.num_items)  # more ids than items: the whole catalogue
        assert few.numel() < table.num_items < many.numel()
        torch.testing.assert_close(adapter.project(table, many)[:, :3], adapter.project(table, few))
        torch.testing.assert_close(adapter.project(table)[few], adapter.project(table, few))
        torch.testing.assert_close(adapter(table, few), adapter.norm(adapter.project(table, few)))
        assert not adapter.item_bias.weight[0].any()


def test_candidates_are_scored_without_dropout_or_layer_norm(prepared, batch):
    """Candidates are normalize(Linear(f) + bias) per stream, in training as in evaluation; only
    the history goes through dropout and LayerNorm."""
    model = _model(prepared, dropout_prob=0.4).train()
    with torch.no_grad():
        for name in ("text", "kg"):
            model.adapters[name].item_bias.weight[1:].normal_()
        first, second = model.candidate_vectors(), model.candidate_vectors()
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        expected = sum(
            F.normalize(model.features[name]() @ model.adapters[name].linear.weight.T + model.adapters[name].linear.bias
                        + model.adapters[name].item_bias.weight, dim=-1)
            for name in ("text", "kg")
        )
        torch.testing.assert_close(first, expected)
        torch.testing.assert_close(model.eval().candidate_vectors(), first, rtol=0, atol=0)
        # The sequence input does go through dropout in training.
        model.train()
        items = batch["item_id_list"]
        assert (model.item_vectors(items)[0] - model.item_vectors(items)[0]).abs().max() > 0


def test_transferable_parameters_at_the_paper_sizes(tmp_path):
    """Hidden 256, 8 heads x 64, d_state 64, 8 groups, FFN 256 (the model YAML's defaults) with
    768-d text and image features: about 2.0 M transferable parameters, as the paper says."""
    build_time_groups(str(tmp_path / TIME_GROUPS), users=20, feature_dim=768)
    config = PluginConfig(model="MMM4Rec", dataset=TIME_GROUPS, config_dict=time_groups_config(
        str(tmp_path), tmp_path / "saved", hidden_size=256, head_dim=64, d_state=64, n_groups=8, inner_size=256, use_item_id=True,
        MAX_ITEM_LIST_LENGTH=20))
    _, dataset, train_data = prepare(config)
    model = MMM4Rec(config, train_data._dataset)
    transferable = sum(
        p.numel() for name, p in model.named_parameters() if not any(k in name for k in MMM4Rec.ITEM_SPECIFIC_PARAMETERS)
    )
    assert transferable == 1_992_793
    assert sum(p.numel() for p in model.parameters()) - transferable == 2 * dataset.item_num * 256


def test_missing_kernel_backend_key_means_auto(prepared):
    """Checkpoints saved before the key existed carry a config without it (RecBole reads None)."""
    model = _model(prepared, kernel_backend=None)
    assert {m.kernel_backend for m in model.modules() if isinstance(m, TimeAwareSSD)} == {"auto"}
