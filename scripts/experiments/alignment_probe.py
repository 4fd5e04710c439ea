"""Which parameters and which clean gradient tell the injected noise apart, at a fixed model.

::

    python scripts/experiments/alignment_probe.py --work runs/m30k-quick-p0.4 \\
        --system baseline --pairs 3000

Reads a noisy Multi30k work directory (``noisy_multi30k.py``), the last checkpoint of
``--system`` and ``--pairs`` training pairs drawn at random (seeded). It computes each pair's
alignment a_i = <grad l_i, g> exactly (the ``jvp`` engine) for

- g = the gradient of the **whole** clean set, and g = the gradient of **one** clean batch of
  ``--clean-max-tokens`` (what an update uses by default), for several different batches;
- the alignment restricted to one group of parameters (embeddings, encoder, decoder
  self-attention, cross-attention, decoder feed-forward; the direction is zero elsewhere, as
  with ``--gglm-parameters``);
- dropout off, and dropout on (as in the training forward).

For each it reports the ROC-AUC of -a_i against the injected-noise labels (all noise and per
type) and the share of clean pairs with a_i <= 0 (what GGLM would mask), and for the batch
gradients their cosine with the whole-set gradient. Nothing is trained. Results go to
``WORK/probe-SYSTEM.json``; ``make_results.py`` tabulates them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from common import log, read_lines
from fairseq import checkpoint_utils

from gglm_fairseq.alignment import (
    get_engine,
    gradient,
    restricted,
    trainable_parameter_names,
    trainable_parameters,
)
from gglm_fairseq.criterions.gradient_masked_cross_entropy import (
    GradientMaskedCrossEntropyConfig,
    GradientMaskedCrossEntropyCriterion,
)
from gglm_fairseq.noise import CLEAN
from gglm_fairseq.report import detection_auc

# Parameter groups of fairseq's transformer, by name; the first pattern that matches wins.
# Under --share-all-embeddings the embeddings and the output projection are one tensor.
GROUPS = {
    "embeddings": r"embed_tokens|output_projection|embed_positions",
    "encoder": r"^encoder\.",
    "decoder self-attention": r"^decoder\.layers\.\d+\.self_attn",
    "cross-attention": r"^decoder\.layers\.\d+\.encoder_attn",
    "decoder feed-forward": r"^decoder\.layers\.\d+\.(fc1|fc2|final_layer_norm)",
}


def parameter_groups(model: torch.nn.Module) -> Dict[str, List[bool]]:
    """Group name -> for each trainable parameter (in engine order), whether it belongs."""
    names = trainable_parameter_names(model)
    groups: Dict[str, List[bool]] = {}
    claimed = [False] * len(names)
    for group, pattern in GROUPS.items():
        member = [not c and re.search(pattern, n) is not None for n, c in zip(names, claimed)]
        claimed = [c or m for c, m in zip(claimed, member)]
        groups[group] = member
    groups["rest"] = [not c for c in claimed]
    return groups


def batches(dataset, indices: Sequence[int], max_tokens: int) -> List[dict]:
    """Collated batches of the given examples, sorted by length, <= max_tokens padded."""
    order = sorted(indices, key=lambda i: dataset.num_tokens(i))
    out, current, longest = [], [], 0
    for i in order:
        size = dataset.num_tokens(i)
        if current and max(longest, size) * (len(current) + 1) > max_tokens:
            out.append(dataset.collater([dataset[j] for j in current]))
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        out.append(dataset.collater([dataset[j] for j in current]))
    return out


def clean_gradient(model, criterion, clean_batches: Sequence[dict]) -> List[torch.Tensor]:
    """Gradient of the mean per-token loss over the batches (dropout off), as in the task."""
    params = trainable_parameters(model)
    total_tokens = sum(b["ntokens"] for b in clean_batches)
    grads = [torch.zeros_like(p) for p in params]
    model.eval()
    for batch in clean_batches:
        losses, _ = criterion.token_losses(model, batch)
        for total, g in zip(grads, gradient(losses.sum() / total_tokens, params)):
            total.add_(g)
    return grads


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    dot = sum(float((x * y).sum()) for x, y in zip(a, b))
    norm = math.sqrt(sum(float(x.pow(2).sum()) for x in a) * sum(float(y.pow(2).sum()) for y in b))
    return dot / norm if norm > 0 else float("nan")


def alignments(model, criterion, train_batches, direction, size: int, dropout: bool):
    """Per-example alignment over the probed pairs (NaN elsewhere), a length-``size`` array."""
    engine = get_engine("jvp")
    out = np.full(size, np.nan)
    model.train(dropout)
    for batch in train_batches:
        aligned = engine(model, criterion.token_losses, batch, direction)
        out[batch["id"].numpy()] = aligned.alignment.numpy()
    model.eval()
    return out


def summary(alignment: np.ndarray, labels: Sequence[str]) -> Dict[str, object]:
    clean = np.asarray(labels) == CLEAN
    seen = ~np.isnan(alignment)
    return {
        "auc": {k: round(v, 4) for k, v in detection_auc(-alignment, labels, {CLEAN}).items()},
        "clean_masked": round(float(np.mean(alignment[seen & clean] <= 0)), 4),
        "noisy_masked": round(float(np.mean(alignment[seen & ~clean] <= 0)), 4),
    }


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="a noisy_multi30k.py work directory")
    parser.add_argument("--system", default="baseline", help="whose last checkpoint to probe")
    parser.add_argument("--pairs", type=int, default=3000, help="training pairs probed")
    parser.add_argument("--clean-max-tokens", type=int, default=4096,
                        help="tokens in one clean batch (the training default: --max-tokens)")
    parser.add_argument("--clean-batches", type=int, default=3,
                        help="how many different single clean batches are probed")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per probe batch")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    checkpoint = work / "checkpoints" / args.system / "checkpoint_last.pt"
    if not checkpoint.exists():
        raise SystemExit(f"{checkpoint} is missing: train --systems {args.system} first")
    torch.manual_seed(args.seed)
    models, _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(work / "bin")}
    )
    model = models[0].float()
    criterion = GradientMaskedCrossEntropyCriterion(
        task, GradientMaskedCrossEntropyConfig(label_smoothing=0.1, sentence_avg=False)
    )
    for split in ("train", "clean"):
        task.load_dataset(split)
    labels = read_lines(work / "text" / "train.labels")
    train_set, clean_set = task.dataset("train"), task.dataset("clean")
    if len(labels) != len(train_set):
        raise SystemExit(f"{len(labels)} labels but {len(train_set)} training pairs")
    rng = np.random.default_rng(args.seed)
    probed = rng.choice(len(train_set), size=min(args.pairs, len(train_set)), replace=False)
    train_batches = batches(train_set, probed.tolist(), args.max_tokens)

    clean_all = batches(clean_set, range(len(clean_set)), args.max_tokens)
    whole = clean_gradient(model, criterion, clean_all)
    log(f"{args.system}: {len(probed)} pairs, whole clean set {len(clean_set)} pairs")
    # Like the task's clean batches: length-bucketed by fairseq's sampler, drawn at random.
    buckets = batches(clean_set, range(len(clean_set)), args.clean_max_tokens)
    singles = [buckets[k] for k in rng.permutation(len(buckets))[: args.clean_batches]]
    directions = {"whole clean set": whole}
    for k, batch in enumerate(singles):
        directions[f"one clean batch #{k + 1}"] = clean_gradient(model, criterion, [batch])

    rows = []
    for name, direction in directions.items():
        for dropout in (False, True):
            a = alignments(model, criterion, train_batches, direction, len(labels), dropout)
            row = {"direction": name, "parameters": "all", "dropout": dropout,
                   "cosine_with_whole": round(cosine(direction, whole), 4), **summary(a, labels)}
            rows.append(row)
            log(f"{name}, dropout {dropout}: AUC {row['auc'].get('all')}")
    for group, member in parameter_groups(model).items():
        if not any(member):
            continue
        direction = restricted(whole, member)
        a = alignments(model, criterion, train_batches, direction, len(labels), False)
        rows.append({"direction": "whole clean set", "parameters": group, "dropout": False,
                     "cosine_with_whole": None, **summary(a, labels)})
        log(f"parameters {group}: AUC {rows[-1]['auc'].get('all')}")
    out = work / f"probe-{args.system}.json"
    out.write_text(json.dumps({
        "experiment": "alignment_probe", "work": str(work), "system": args.system,
        "command": "python scripts/experiments/alignment_probe.py " + " ".join(argv),
        "pairs": len(probed), "clean_pairs": len(clean_set),
        "clean_batch_tokens": [int(b["ntokens"]) for b in singles], "rows": rows,
    }, indent=1), encoding="utf-8")
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
