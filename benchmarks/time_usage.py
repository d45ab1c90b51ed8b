"""How much a trained MMM4Rec uses the inter-event times: validation and test metrics of one
checkpoint with its histories' real timestamps, then with every gap replaced (by 0: all events of
a history at one instant; by one day), how far the user vectors move, and how the validation
histories' real gaps are spread.

    .venv/bin/python benchmarks/time_usage.py CHECKPOINT.pth [CHECKPOINT.pth ...]

Prints a Markdown table; BENCHMARKS.md quotes it in the ablation section. Nothing is trained.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch

from recbole_mmm4rec.quick_start import load_data_and_model
from recbole_mmm4rec.trainer import plugin_trainer_class

DAY = 86400
# Replacement histories' timestamps, from the real (b, l) ones; RecBole's are in seconds.
REPLACEMENTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "every gap 0": torch.zeros_like,
    "every gap 1 day": lambda timestamps: torch.arange(timestamps.shape[1], device=timestamps.device)
    .mul(DAY)
    .to(timestamps.dtype)
    .expand_as(timestamps),
}


def with_timestamps(model: torch.nn.Module, replace: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Make ``model`` see ``replace(timestamps)`` instead of its histories' timestamps."""
    real_forward_sequence = model.__class__.forward_sequence.__get__(model)

    def forward_sequence(item_seq: torch.Tensor, timestamps: torch.Tensor | None) -> torch.Tensor:
        return real_forward_sequence(item_seq, None if timestamps is None else replace(timestamps))

    model.forward_sequence = forward_sequence


def user_vector_changes_and_gaps(model: torch.nn.Module, batches, device) -> tuple[dict[str, float], torch.Tensor]:
    """Per replacement, the mean over users of |u_real - u_replaced| / |u_real| on the given
    evaluation batches; and every gap in seconds between consecutive events of their histories."""
    changes: dict[str, list] = {name: [] for name in REPLACEMENTS}
    gaps = []
    with torch.no_grad():
        for interaction, *_ in batches:
            interaction = interaction.to(device)
            item_seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            timestamps = interaction[model.TIME_SEQ]
            real = model(item_seq, lengths, timestamps)
            for name, replace in REPLACEMENTS.items():
                replaced = model(item_seq, lengths, replace(timestamps))
                changes[name].append(((real - replaced).norm(dim=-1) / real.norm(dim=-1)).cpu())
            both_real = (item_seq[:, 1:] > 0) & (item_seq[:, :-1] > 0)
            gaps.append((timestamps[:, 1:] - timestamps[:, :-1]).double()[both_real].cpu())
    return {name: torch.cat(values).mean().item() for name, values in changes.items()}, torch.cat(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    print("| checkpoint | timestamps | valid NDCG@10 | test NDCG@10 | user vector change | real gaps < 1 h, < 1 day, median |")
    print("|---|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        config, model, _, _, valid_data, test_data = load_data_and_model(checkpoint)
        if not model.use_time_channel:
            raise SystemExit(f"{checkpoint}: this MMM4Rec has no time channel (time_channel=False)")
        model.eval()
        changes, gaps = user_vector_changes_and_gaps(model, valid_data, config["device"])
        spread = f"{(gaps < 3600).double().mean():.1%}, {(gaps < DAY).double().mean():.1%}, {gaps.median():.0f} s"
        trainer = plugin_trainer_class(config)(config, model)
        for name in ("real", *REPLACEMENTS):
            if name != "real":
                with_timestamps(model, REPLACEMENTS[name])
            valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
            test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
            change, shown_spread = ("", spread) if name == "real" else (f"{changes[name]:.1e}", "")
            print(f"| `{checkpoint.rsplit('/', 1)[-1]}` | {name} | {valid['ndcg@10']:.4f} | {test['ndcg@10']:.4f} "
                  f"| {change} | {shown_spread} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
