#!/usr/bin/env python3
"""Average the parameters of the last N fairseq checkpoints of a training run.

fairseq's own ``scripts/average_checkpoints.py`` is not installed with the package; this
is a small equivalent. It takes the newest N update checkpoints
(``checkpoint_<epoch>_<update>.pt``, written with ``--save-interval-updates``) or, when a run
has none, the newest N epoch checkpoints (``checkpoint<epoch>.pt``), and writes one
checkpoint whose ``model`` entry is the element-wise mean (integer buffers: floor mean).
Every other entry (configuration, optimizer history) comes from the newest input, so the
result loads like any fairseq checkpoint (``fairseq-generate --path``).

Usage: python scripts/wmt/average_checkpoints.py --dir CKPT_DIR --num 5 --output avg.pt
       python scripts/wmt/average_checkpoints.py --inputs a.pt b.pt --output avg.pt
"""

import argparse
import os
import re
import sys
from typing import Any, Dict, List, Optional

import torch

UPDATE_CHECKPOINT = re.compile(r"^checkpoint_(\d+)_(\d+)\.pt$")
EPOCH_CHECKPOINT = re.compile(r"^checkpoint(\d+)\.pt$")


def find_checkpoints(directory: str, num: int) -> List[str]:
    """The newest ``num`` update checkpoints of ``directory`` (else epoch checkpoints),
    oldest first."""
    if not os.path.isdir(directory):
        raise SystemExit(f"no checkpoint folder {directory}")
    names = os.listdir(directory)
    by_update = sorted(
        (int(m.group(2)), name) for name in names if (m := UPDATE_CHECKPOINT.match(name))
    )
    by_epoch = sorted(
        (int(m.group(1)), name) for name in names if (m := EPOCH_CHECKPOINT.match(name))
    )
    chosen = by_update or by_epoch
    if not chosen:
        raise SystemExit(
            f"{directory} holds no checkpoint_<epoch>_<update>.pt or checkpoint<epoch>.pt"
        )
    if len(chosen) < num:
        print(
            f"[average] only {len(chosen)} checkpoints in {directory} (asked for {num}): "
            f"averaging those",
            file=sys.stderr,
        )
    return [os.path.join(directory, name) for _, name in chosen[-num:]]


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load on the CPU. fairseq checkpoints hold an ``argparse.Namespace`` besides tensors:
    it is allow-listed for torch>=2.6's weights-only loader, as ``gglm_fairseq`` does on
    import (without importing fairseq, which takes seconds); anything else falls back to
    importing ``gglm_fairseq``."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:
        add_safe_globals([argparse.Namespace])
    try:
        return torch.load(path, map_location="cpu")
    except Exception as first_error:  # retry with the plugin's allow-list
        try:
            import gglm_fairseq  # noqa: F401  (allow-lists what fairseq checkpoints hold)
        except ImportError:
            raise first_error from None
        return torch.load(path, map_location="cpu")


def average(paths: List[str]) -> Dict[str, Any]:
    if not paths:
        raise SystemExit("nothing to average")
    sums: Optional[Dict[str, torch.Tensor]] = None
    keys: List[str] = []
    state: Dict[str, Any] = {}
    for path in paths:
        state = load_checkpoint(path)
        if "model" not in state:
            raise SystemExit(f"{path} is not a fairseq checkpoint (no 'model' entry)")
        model = state["model"]
        if sums is None:
            keys = list(model.keys())
            sums = {}
        elif list(model.keys()) != keys:
            raise SystemExit(f"{path} has other parameters than {paths[0]}")
        for key in keys:
            value = model[key]
            value = value.double() if value.is_floating_point() else value.long()
            if key in sums:
                sums[key] += value
            else:
                sums[key] = value.clone()
    assert sums is not None
    newest_model = state["model"]
    averaged = {}
    for key in keys:
        like = newest_model[key]
        if like.is_floating_point():
            averaged[key] = (sums[key] / len(paths)).to(like.dtype)
        else:
            averaged[key] = torch.div(sums[key], len(paths), rounding_mode="floor").to(
                like.dtype
            )
    state["model"] = averaged
    return state


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--dir", help="checkpoint folder of a training run")
    group.add_argument("--inputs", nargs="+", help="checkpoint files to average")
    parser.add_argument("--num", type=int, default=5, help="how many of the newest (--dir)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error("--num must be >= 1")
    paths = args.inputs or find_checkpoints(args.dir, args.num)
    print(f"[average] {len(paths)} checkpoints: {', '.join(paths)}", file=sys.stderr)
    state = average(paths)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save(state, args.output + ".part")
    os.replace(args.output + ".part", args.output)
    print(f"[average] -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
