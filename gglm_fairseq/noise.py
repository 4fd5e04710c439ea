"""Seeded noise injection for a parallel corpus, after Khayrallah & Koehn (2018).

Corrupts the target side of a chosen fraction of sentence pairs and labels every pair, so
that a noise detector (here: GGLM's mask rate) can be scored against the truth.

Noise types:

- ``misaligned``: the target of another, randomly chosen pair (one with a different target
  whenever the corpus has one);
- ``untranslated``: the source copied to the target;
- ``wrong_language``: the same line of a third-language file (e.g. Multi30k's French side);
- ``truncated``: a random 20-60% prefix of the target words, at least one word;
- ``shuffled``: the target words in a random order, different from the original whenever the
  sentence has two or more distinct words.

Words are whitespace-separated tokens (joined back with single spaces), so ``truncated`` and
``shuffled`` leave a one-word line (e.g. unsegmented Chinese) unchanged. A corrupted pair keeps
its noise label even when the corruption happens to reproduce the original target.

Command line::

    python -m gglm_fairseq.noise --src train.en --tgt train.de --third train.fr \\
        --fraction 0.4 --seed 1 --out-tgt noisy.de --out-labels noisy.labels

A bad input (not UTF-8, mismatched line counts, a bad option) is a GGLMUserError: one line on
stderr, exit 1, and neither output is written (each is replaced atomically, after every input
has been read and checked).
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Iterable, List, Sequence, Tuple

import numpy as np

from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.record import write_atomically

NOISE_TYPES = ("misaligned", "untranslated", "wrong_language", "truncated", "shuffled")
CLEAN = "clean"

# How many random draws to try before scanning the corpus for a different target.
_MISALIGN_TRIES = 100


def read_lines(path: str) -> List[str]:
    """Lines of a UTF-8 text file without their newline.

    Opened like fairseq-preprocess opens its input (universal newlines), so line i here is
    example id i in the binarised data.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as error:
        raise GGLMUserError(f"{path} is not UTF-8 text ({error.reason})") from error


def write_lines(path: str, lines: Iterable[str]) -> None:
    """Write one line per item, each ending in a newline; atomically (old file or new)."""
    write_atomically(path, lambda f: f.writelines((line + "\n").encode("utf-8") for line in lines))


def _check_types(types: Sequence[str], third_language: Sequence[str] | None) -> Tuple[str, ...]:
    types = (types,) if isinstance(types, str) else tuple(types)
    if not types:
        raise GGLMUserError("no noise types given")
    unknown = [t for t in types if t not in NOISE_TYPES]
    if unknown:
        raise GGLMUserError(f"unknown noise type(s) {unknown}; choose from {list(NOISE_TYPES)}")
    if len(set(types)) != len(types):
        raise GGLMUserError(f"noise types repeated: {list(types)}")
    if "wrong_language" in types and third_language is None:
        raise GGLMUserError(
            "noise type 'wrong_language' needs third_language (a third-language side of the "
            "corpus); pass one or leave the type out"
        )
    return types


def _misaligned(i: int, target: Sequence[str], rng: np.random.Generator) -> str:
    n = len(target)
    if n < 2:
        raise GGLMUserError("noise type 'misaligned' needs at least 2 sentence pairs")
    for _ in range(_MISALIGN_TRIES):
        j = int(rng.integers(n - 1))
        j += j >= i  # uniform over the other pairs
        if target[j] != target[i]:
            return target[j]
    # A corpus that repeats this target a lot: pick among the different ones, if any.
    different = [t for t in target if t != target[i]]
    return different[int(rng.integers(len(different)))] if different else target[j]


def _truncated(line: str, rng: np.random.Generator) -> str:
    words = line.split()
    if not words:
        return line
    keep = max(1, round(rng.uniform(0.2, 0.6) * len(words)))
    return " ".join(words[:keep])


def _shuffled(line: str, rng: np.random.Generator) -> str:
    words = line.split()
    if len(set(words)) < 2:
        return " ".join(words)
    while True:  # ends quickly: with 2+ distinct words at least half the orders differ
        order = rng.permutation(len(words))
        shuffled = [words[k] for k in order]
        if shuffled != words:
            return " ".join(shuffled)


def corrupt(
    source: List[str],
    target: List[str],
    fraction: float,
    seed: int,
    third_language: List[str] | None = None,
    types: Sequence[str] = NOISE_TYPES,
) -> Tuple[List[str], List[str]]:
    """Corrupt the targets of ``round(fraction * n)`` pairs; return (targets, labels).

    The corrupted pairs are the first ones of a seeded permutation and get the noise types in
    turn (round-robin), so every type is used equally often (to within one). ``labels[i]`` is
    ``"clean"`` or the noise type of pair i. The result depends only on the inputs and ``seed``.
    """
    n = len(source)
    if len(target) != n:
        raise GGLMUserError(f"source has {n} lines but target has {len(target)}")
    if third_language is not None and len(third_language) != n:
        raise GGLMUserError(f"source has {n} lines but third_language has {len(third_language)}")
    if not 0.0 <= fraction <= 1.0:  # also rejects NaN
        raise GGLMUserError(f"fraction must be in [0, 1], got {fraction}")
    types = _check_types(types, third_language)

    rng = np.random.default_rng(seed)
    chosen = rng.permutation(n)[: round(fraction * n)]
    new_target = list(target)
    labels = [CLEAN] * n
    for turn, i in enumerate(chosen.tolist()):
        kind = types[turn % len(types)]
        if kind == "misaligned":
            new_target[i] = _misaligned(i, target, rng)
        elif kind == "untranslated":
            new_target[i] = source[i]
        elif kind == "wrong_language":
            new_target[i] = third_language[i]
        elif kind == "truncated":
            new_target[i] = _truncated(target[i], rng)
        else:
            new_target[i] = _shuffled(target[i], rng)
        labels[i] = kind
    return new_target, labels


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gglm-noise",
        description="Corrupt a fraction of a parallel corpus's target side (Khayrallah & "
        "Koehn 2018) and write the noisy target plus one label per line.",
    )
    parser.add_argument("--src", required=True, help="source side, one sentence a line")
    parser.add_argument("--tgt", required=True, help="target side, line-aligned with --src")
    parser.add_argument(
        "--third",
        help="third-language side, line-aligned (for 'wrong_language'; without it that type "
        "is left out of the default types)",
    )
    parser.add_argument("--fraction", type=float, required=True, help="share of pairs to corrupt")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--types",
        help=f"comma-separated noise types (default: all of {','.join(NOISE_TYPES)})",
    )
    parser.add_argument("--out-tgt", required=True, help="where to write the corrupted target")
    parser.add_argument("--out-labels", required=True, help="where to write the labels")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``gglm-noise``); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        source, target = read_lines(args.src), read_lines(args.tgt)
        third = read_lines(args.third) if args.third else None
        if args.types:
            types = [t.strip() for t in args.types.split(",") if t.strip()]
        else:
            types = [t for t in NOISE_TYPES if third is not None or t != "wrong_language"]
        new_target, labels = corrupt(source, target, args.fraction, args.seed, third, types)
        write_lines(args.out_tgt, new_target)
        write_lines(args.out_labels, labels)
    except (OSError, GGLMUserError) as error:
        print(f"gglm-noise: error: {error}", file=sys.stderr)
        return 1
    counts = collections.Counter(labels)
    summary = ", ".join(f"{label} {counts[label]}" for label in (CLEAN, *types))
    print(f"gglm-noise: {len(labels)} pairs: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
