"""Why zero-shot stays below Pop: do the transferred scores lack popularity?

    .venv/bin/python benchmarks/zero_shot_popularity.py --checkpoint FILE [--model MMM4Rec] [--dataset ml-1m-mm-since1997]

In-batch cross-entropy (the pre-training loss) draws its negatives from the batch, that is in
proportion to each item's popularity, so a model trained with it learns scores close to
log p(item | history) - log p(item): popularity is divided out (Yi et al., RecSys 2019, "logQ
correction"). A full ranking rewards popularity. This diagnostic scores the target's
**validation** split (never test) with the checkpoint's zero-shot scores (features only), with
the popularity of the target's training split alone, and with the two combined: score +
beta * log(count + 1). If the combination beats both, the transferred scores carry a signal
that popularity lacks, and what zero-shot misses is the popularity prior. Every ranking is the
sequential models' (no history masked). Writes BENCHMARKS.md's ``zero_shot_popularity`` section.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch
from report import HERE, machine, markdown_table, replace_section, write_text
from transfer import DEMO_YAML, ZERO_SHOT  # the study's zero-shot settings, so both score alike

OUTPUT = os.path.join(HERE, "results", "transfer", "zero_shot_popularity")
BETAS = (0.5, 1.0, 2.0, 4.0, 8.0)


def training_counts(dataset, config) -> torch.Tensor:
    """(n_items,) interactions per item in the training split: every user's but the last two by time."""
    import pandas as pd

    frame = pd.DataFrame({field: dataset.inter_feat[config[key]].numpy()
                          for field, key in (("user", "USER_ID_FIELD"), ("item", "ITEM_ID_FIELD"), ("time", "TIME_FIELD"))})
    frame = frame.sort_values(["user", "time"], kind="stable")
    training = frame[frame.groupby("user").cumcount(ascending=False) >= 2]
    return torch.bincount(torch.from_numpy(training["item"].to_numpy()), minlength=dataset.item_num).double()


def ndcg_at_10(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean NDCG@10 of one target per row; ties ranked against the target (pessimistic)."""
    target_scores = scores.gather(1, targets.unsqueeze(1))
    rank = (scores >= target_scores).sum(1) - 1  # items scored at least as high, the target excluded
    return torch.where(rank < 10, 1 / torch.log2(rank.double() + 2), torch.zeros_like(rank, dtype=torch.double)).mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a run_pretrain checkpoint of --model")
    parser.add_argument("--model", default="MMM4Rec", choices=sorted(ZERO_SHOT))
    parser.add_argument("--dataset", default="ml-1m-mm-since1997")
    parser.add_argument("--pretraining", default="",
                        help="how the checkpoint was pre-trained, when not as the transfer study's (e.g. 'full softmax'): "
                             "names the output file and the BENCHMARKS section")
    args = parser.parse_args()

    from recbole_mmm4rec import PluginConfig
    from recbole_mmm4rec.quick_start import build_model_and_trainer, create_dataset, prepare_data, prepare_model

    config = PluginConfig(model=args.model, dataset=args.dataset, config_file_list=[DEMO_YAML],
                          config_dict={**ZERO_SHOT[args.model], "pretrained": args.checkpoint, "show_progress": False})
    dataset = create_dataset(config)
    train_data, valid_data, _ = prepare_data(config, dataset)
    model, _ = build_model_and_trainer(config, train_data)
    prepare_model(model, config)
    model.eval()
    log_popularity = torch.log1p(training_counts(dataset, config))
    log_popularity[0] = -torch.inf
    scores, targets = [], []
    with torch.no_grad():
        for interaction, _, _, positive_items in valid_data:
            batch = model.full_sort_predict(interaction).view(len(interaction), -1).double()
            scores.append(batch)
            targets.append(positive_items)
    scores, targets = torch.cat(scores), torch.cat(targets)
    scores[:, 0] = -torch.inf
    # Ties in counts are common: a tiny item-order tie-break, as a stable sort would give.
    popularity = log_popularity - 1e-9 * torch.arange(len(log_popularity), dtype=torch.double)
    rows = [["zero-shot scores (features only)", f"{ndcg_at_10(scores, targets):.4f}"],
            ["popularity of the target's training split", f"{ndcg_at_10(popularity.expand_as(scores), targets):.4f}"]]
    rows += [[f"zero-shot + {beta:g} x log(count + 1)", f"{ndcg_at_10(scores + beta * popularity, targets):.4f}"] for beta in BETAS]
    results = {"checkpoint": os.path.basename(args.checkpoint), "model": args.model, "dataset": args.dataset,
               "valid_ndcg@10": {row[0]: float(row[1]) for row in rows}}
    slug = args.model + "".join(f"-{word}" for word in args.pretraining.lower().replace(",", " ").split())
    write_text(os.path.join(OUTPUT, f"{slug}-{args.dataset}.json"), json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    command = "python benchmarks/zero_shot_popularity.py " + shlex.join(sys.argv[1:])
    replace_section(
        f"zero_shot_popularity_{slug}",
        f"Zero-shot {args.model}{f' ({args.pretraining} pre-training)' if args.pretraining else ''} and popularity on "
        f"{args.dataset} (validation)",
        f"`{command}` on {machine()}, demo sizes; checkpoint `{results['checkpoint']}`; validation NDCG@10 "
        f"of {len(targets)} users, full ranking, no history masked:\n\n" + markdown_table(["scores", "valid NDCG@10"], rows) + "\n",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
