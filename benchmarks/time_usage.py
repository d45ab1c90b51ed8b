"""How much a trained MMM4Rec uses the inter-event times: validation and test metrics of one
checkpoint with its histories' real timestamps, then with every gap set to zero (all events of a
history at one instant), how far the user vectors move, and how the validation histories' real
gaps are spread.

    .venv/bin/python benchmarks/time_usage.py CHECKPOINT.pth [CHECKPOINT.pth ...]

Prints a Markdown table; BENCHMARKS.md quotes it in the ablation section. Nothing is trained.
"""
from __future__ import annotations

import argparse
import sys

import torch

from recbole_mmm4rec.quick_start import build_model_and_trainer, load_data_and_model


def without_time(model: torch.nn.Module) -> None:
    """Make ``model`` see histories whose events all happened at one instant (every gap 0)."""
    real_forward_sequence = model.forward_sequence

    def forward_sequence(item_seq: torch.Tensor, timestamps: torch.Tensor | None) -> torch.Tensor:
        return real_forward_sequence(item_seq, None if timestamps is None else torch.zeros_like(timestamps))

    model.forward_sequence = forward_sequence


def user_vector_change_and_gaps(model: torch.nn.Module, batches) -> tuple[float, torch.Tensor]:
    """Mean over users of |u_real - u_zero gaps| / |u_real| on the given evaluation batches, and
    every gap in seconds between consecutive events of their histories."""
    changes, gaps = [], []
    with torch.no_grad():
        for interaction, *_ in batches:
            item_seq, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            timestamps = interaction[model.TIME_SEQ]
            real = model(item_seq, lengths, timestamps)
            zero = model(item_seq, lengths, torch.zeros_like(timestamps))
            changes.append(((real - zero).norm(dim=-1) / real.norm(dim=-1)).cpu())
            both_real = (item_seq[:, 1:] > 0) & (item_seq[:, :-1] > 0)
            gaps.append((timestamps[:, 1:] - timestamps[:, :-1]).double()[both_real].cpu())
    return torch.cat(changes).mean().item(), torch.cat(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    torch.autograd.set_detect_anomaly(False)
    print("| checkpoint | times | valid NDCG@10 | test NDCG@10 | user vector change | gaps < 1 h, < 1 day, median |")
    print("|---|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        config, model, _, train_data, valid_data, test_data = load_data_and_model(checkpoint)
        if not model.use_time_channel:
            raise SystemExit(f"{checkpoint}: this MMM4Rec has no time channel (time_channel=False)")
        model.eval()
        change, gaps = user_vector_change_and_gaps(model, valid_data)
        spread = f"{(gaps < 3600).double().mean():.1%}, {(gaps < 86400).double().mean():.1%}, {gaps.median():.0f} s"
        _, trainer_class = build_model_and_trainer(config, train_data)
        for label in ("real", "all gaps 0"):
            if label != "real":
                without_time(model)
            trainer = trainer_class(config, model)
            valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
            test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
            shown_change, shown_spread = ("", spread) if label == "real" else (f"{change:.1e}", "")
            print(f"| `{checkpoint.rsplit('/', 1)[-1]}` | {label} | {valid['ndcg@10']:.4f} | {test['ndcg@10']:.4f} "
                  f"| {shown_change} | {shown_spread} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
