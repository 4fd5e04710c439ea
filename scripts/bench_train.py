#!/usr/bin/env python
"""The black-box figure: ``fairseq-train`` updates per second, GGLM at its shipped defaults
over plain training, on the same data.

A random corpus (train, valid and clean splits, sentence lengths 10-30, one joined
dictionary of ``--vocab`` words) is binarised with ``fairseq-preprocess``. Then plain training
(``translation`` + ``label_smoothed_cross_entropy``) and GGLM (``translation_with_clean_set``
+ ``gradient_masked_cross_entropy``, no GGLM option set) each run ``--updates`` updates,
interleaved ``--reps`` times (plain, GGLM, plain, ...). A run's speed is the median of
fairseq's ``ups`` over its log intervals, the first one (start-up) left out; the figure is the
median over runs.

    python scripts/bench_train.py --size base-2x256 --max-tokens 1600
    python scripts/bench_step.py ...        # runs it too and adds it to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from gglm_fairseq.cli import user_dir

SIZES = {  # layers, dim, heads, ffn (bench_step.py's shapes)
    "tiny": (1, 64, 2, 128),
    "base-2x256": (2, 256, 4, 1024),
    "base-6x512": (6, 512, 8, 2048),
}
SPLITS = {"train": 4000, "valid": 50, "clean": 500}
UPS = re.compile(r'"ups": "([0-9.]+)"')


def write_corpus(directory: Path, vocab: int, seed: int) -> Path:
    """Random sentence pairs, binarised with one joined dictionary; the data directory."""
    rng = np.random.default_rng(seed)
    text = directory / "text"
    text.mkdir(parents=True)
    for split, pairs in SPLITS.items():
        for lang in ("src", "tgt"):
            lines = (
                " ".join(f"w{w}" for w in rng.integers(0, vocab, rng.integers(9, 30)))
                for _ in range(pairs)
            )
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n")
    data = directory / "bin"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "fairseq-preprocess"),
            "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
            "--trainpref", str(text / "train"),
            "--validpref", f"{text / 'valid'},{text / 'clean'}",
            "--destdir", str(data), "--workers", "1",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    for path in data.glob("valid1.*"):
        path.rename(data / path.name.replace("valid1", "clean", 1))
    return data


def train_command(data: Path, size: str, gglm: bool, args: argparse.Namespace) -> List[str]:
    layers, dim, heads, ffn = SIZES[size]
    common = [
        str(Path(sys.executable).parent / "fairseq-train"), str(data),
        "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", str(layers), "--decoder-layers", str(layers),
        "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
        "--encoder-attention-heads", str(heads), "--decoder-attention-heads", str(heads),
        "--encoder-ffn-embed-dim", str(ffn), "--decoder-ffn-embed-dim", str(ffn),
        "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "5e-4",
        "--max-tokens", str(args.max_tokens), "--max-update", str(args.updates),
        "--log-format", "json", "--log-interval", str(args.log_interval),
        "--no-save", "--disable-validation", "--num-workers", "0", "--seed", str(args.seed),
    ] + (["--cpu"] if args.device == "cpu" else ["--fp16"] if args.fp16 else [])  # fmt: skip
    if not gglm:
        return common + ["--task", "translation", "--criterion", "label_smoothed_cross_entropy"]
    return common + [
        "--user-dir", user_dir(), "--task", "translation_with_clean_set",
        "--criterion", "gradient_masked_cross_entropy",
    ]  # fmt: skip


def updates_per_second(command: Sequence[str], threads: int) -> float:
    """The median ``ups`` of a run's log intervals after the first."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"fairseq-train failed:\n{run.stderr[-3000:]}")
    speeds = [float(u) for u in UPS.findall(run.stdout + run.stderr)]
    if len(speeds) < 2:
        raise RuntimeError("fewer than two log intervals: raise --updates")
    return statistics.median(speeds[1:])


def measure(args: argparse.Namespace) -> Dict[str, List[float]]:
    """Updates per second of each system over ``args.reps`` interleaved runs."""
    speeds: Dict[str, List[float]] = {"plain": [], "gglm": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_corpus(Path(tmp), args.vocab, args.seed)
        for rep in range(args.reps):
            for system in ("plain", "gglm") if rep % 2 == 0 else ("gglm", "plain"):
                command = train_command(data, args.size, system == "gglm", args)
                speeds[system].append(updates_per_second(command, args.threads))
                print(f"  fairseq-train {system}: {speeds[system][-1]:.3f} updates/s",
                      file=sys.stderr, flush=True)  # fmt: skip
    return speeds


def report(args: argparse.Namespace, speeds: Dict[str, List[float]]) -> List[str]:
    plain, gglm = (statistics.median(speeds[s]) for s in ("plain", "gglm"))
    ratio = plain / gglm
    runs = ", ".join(f"{s} " + " / ".join(f"{u:.3f}" for u in speeds[s]) for s in speeds)
    return [
        f"{args.size}, --max-tokens {args.max_tokens}, vocabulary {args.vocab}, random corpus; "
        f"{args.updates} updates per run, log interval {args.log_interval} (the first left out), "
        f"{args.reps} runs of each system interleaved, torch threads {args.threads or 'default'}.",
        "",
        "| system | updates/s (median) | time per update vs plain |",
        "|---|---:|---:|",
        f"| plain (translation, label_smoothed_cross_entropy) | {plain:.3f} | 1.00x |",
        f"| GGLM at its defaults (translation_with_clean_set, gradient_masked_cross_entropy) "
        f"| {gglm:.3f} | {ratio:.2f}x |",
        "",
        f"- runs (updates/s): {runs}",
        f"- {'PASS' if ratio <= 1.5 else 'MISS'} GGLM at its shipped defaults <= 1.5x plain in "
        f"fairseq-train, must: {ratio:.3f}x",
        f"- {'PASS' if ratio <= 1.3 else 'MISS'} GGLM at its shipped defaults <= 1.3x plain in "
        f"fairseq-train, goal: {ratio:.3f}x",
    ]


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """This script's options; ``prefix`` names them for bench_step.py (--train-...)."""
    parser.add_argument(f"--{prefix}size", default="base-2x256", choices=sorted(SIZES))
    parser.add_argument(f"--{prefix}max-tokens", type=int, default=1600)
    parser.add_argument(f"--{prefix}vocab", type=int, default=8000)
    parser.add_argument(f"--{prefix}updates", type=int, default=30)
    parser.add_argument(f"--{prefix}log-interval", type=int, default=5)
    parser.add_argument(f"--{prefix}reps", type=int, default=3, help="runs of each system")


def options(args: argparse.Namespace, prefix: str = "") -> argparse.Namespace:
    """This script's options out of bench_step.py's (``prefix`` removed)."""
    key = prefix.replace("-", "_")
    names = ("size", "max_tokens", "vocab", "updates", "log_interval", "reps")
    values = {name: getattr(args, key + name) for name in names}
    return argparse.Namespace(
        **values, seed=args.seed, threads=args.threads, device=args.device,
        fp16=getattr(args, "dtype", "fp32") != "fp32",
    )  # fmt: skip


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (0: default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"))
    args = options(parser.parse_args(argv))
    print("\n".join(report(args, measure(args))))


if __name__ == "__main__":
    main()
