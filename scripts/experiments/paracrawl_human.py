"""GGLM's mask rate as a detector of bad ParaCrawl pairs, scored against human labels.

::

    python scripts/experiments/paracrawl_human.py --profile quick --work runs/paracrawl-quick

Design:

- training data: Multi30k ``train`` (the first ``--multi30k-lines`` pairs; clean captions
  that give the model something to learn) plus all 5,000 labelled en-de ParaCrawl pairs
  (``--data``/paracrawl-human-eval, releases v3, v6, v6.2, v7), ParaCrawl last so that
  training example id ``M + k`` is ParaCrawl pair ``k``;
- clean set (``--clean``): ``wmt21`` (default) = the first 500 lines of newstest2021 en-de
  (source + ``ref.A``): disjoint from the scored pairs by construction, so all 5,000 are
  scored, and news is closer to web text than captions are; or ``heldout-v`` = 500 randomly
  chosen V-labelled pairs, taken out of the training and scored sets;
- validation: Multi30k ``val``; one GGLM system, same model and tooling as the Multi30k runner;
- scores: ROC-AUC of each pair's mask rate (and of its negated mean alignment) for V against
  every other label together (F, E, MT, A, T, L) and against each label, pooled and per
  release, next to the bicleaner score shipped in the files (lower = worse).

Results go to ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from common import (
    PROFILES,
    REPO,
    Profile,
    add_gglm_args,
    encode,
    log,
    open_results,
    preprocess,
    read_lines,
    record_scores,
    run,
    save_results,
    train_args,
    train_sentencepiece,
    write_lines,
)

from gglm_fairseq.report import detection_auc

SRC, TGT = "en", "de"
VALID_LABEL = "V"
CLEAN_LINES = 500
# File, column of the bicleaner score, column of the label (data README).
RELEASES = {
    "v3": ("paracrawl-v3-validation-data.sorted.en-de.tsv", 6, 7),
    "v6": ("paracrawl-v6-validation.sorted.en-de.tsv", 4, 5),
    "v6.2": ("paracrawl-v6-2-validation.sorted.en-de.tsv", 4, 5),
    "v7": ("paracrawl-v7-validation.sorted.en-de.tsv", 4, 5),
}


def read_paracrawl(folder: Path) -> Dict[str, list]:
    """All labelled pairs: en, de, label, bicleaner score, release."""
    pairs: Dict[str, list] = {"en": [], "de": [], "label": [], "bicleaner": [], "release": []}
    for release, (name, score_column, label_column) in RELEASES.items():
        for line in read_lines(folder / name):
            fields = line.split("\t")
            # Whitespace inside a segment would break line alignment or sentencepiece input.
            pairs["en"].append(" ".join(fields[2].split()))
            pairs["de"].append(" ".join(fields[3].split()))
            pairs["bicleaner"].append(float(fields[score_column]))
            pairs["label"].append(fields[label_column].strip())
            pairs["release"].append(release)
    return pairs


def split_clean(
    args: argparse.Namespace, pairs: Dict[str, list]
) -> Tuple[np.ndarray, List[str], List[str]]:
    """Ids of the scored ParaCrawl pairs and the clean set's (source, target) lines."""
    n = len(pairs["en"])
    if args.clean == "wmt21":
        wmt = Path(args.wmt21)
        source = read_lines(wmt / "newstest2021.en-de.src.en")[:CLEAN_LINES]
        target = read_lines(wmt / "newstest2021.en-de.ref.A.de")[:CLEAN_LINES]
        return np.arange(n), source, target
    valid_ids = np.flatnonzero(np.asarray(pairs["label"]) == VALID_LABEL)
    held = np.sort(np.random.default_rng(args.seed).permutation(valid_ids)[:CLEAN_LINES])
    scored = np.setdiff1d(np.arange(n), held)
    return scored, [pairs["en"][i] for i in held], [pairs["de"][i] for i in held]


def prepare_data(args: argparse.Namespace, profile: Profile, work: Path) -> Dict[str, object]:
    text, spm_dir = work / "text", work / "spm"
    pairs = read_paracrawl(Path(args.paracrawl))
    scored, clean_src, clean_tgt = split_clean(args, pairs)
    m30k = Path(args.multi30k)
    train_src = read_lines(m30k / f"train.{SRC}", args.multi30k_lines)
    train_tgt = read_lines(m30k / f"train.{TGT}", args.multi30k_lines)
    offset = len(train_src)
    train_src += [pairs["en"][i] for i in scored]
    train_tgt += [pairs["de"][i] for i in scored]
    write_lines(text / f"train.{SRC}", train_src)
    write_lines(text / f"train.{TGT}", train_tgt)
    write_lines(text / "paracrawl.tsv", [
        "\t".join((str(offset + k), pairs["release"][i], pairs["label"][i],
                   repr(pairs["bicleaner"][i])))
        for k, i in enumerate(scored.tolist())
    ])  # fmt: skip
    write_lines(text / f"clean.{SRC}", clean_src)
    write_lines(text / f"clean.{TGT}", clean_tgt)
    for lang in (SRC, TGT):
        write_lines(text / f"valid.{lang}", read_lines(m30k / f"val.{lang}", profile.eval_lines))
    log(f"data: {offset} Multi30k + {len(scored)} ParaCrawl training pairs; clean: {args.clean}")

    model = train_sentencepiece(
        [text / f"train.{SRC}", text / f"train.{TGT}"], spm_dir / "spm", profile.vocab
    )
    for split in ("train", "clean", "valid"):
        for lang in (SRC, TGT):
            encode(model, text / f"{split}.{lang}", spm_dir / f"{split}.{lang}")
    seconds = preprocess(
        work / "bin",
        ["-s", SRC, "-t", TGT, "--joined-dictionary", "--trainpref", str(spm_dir / "train"),
         "--validpref", f"{spm_dir / 'valid'},{spm_dir / 'clean'}"],
        work / "logs" / "preprocess.log",
    )  # fmt: skip
    log(f"binarised in {seconds:.0f} s")
    return {
        "multi30k_pairs": offset,
        "paracrawl_scored": len(scored),
        "label_counts": dict(sorted(Counter(pairs["label"][i] for i in scored).items())),
        "clean": args.clean,
        "clean_set": (
            f"newstest2021 en-de lines 0-{CLEAN_LINES - 1} (src + ref.A)"
            if args.clean == "wmt21"
            else f"{CLEAN_LINES} V-labelled ParaCrawl pairs (seed {args.seed}), not scored"
        ),
        "valid_set": "Multi30k val",
    }


def detection(work: Path, name: str) -> Dict[str, object]:
    """AUCs of GGLM's scores and of bicleaner, V against the rest, pooled and per release."""
    rows = [line.split("\t") for line in read_lines(work / "text" / "paracrawl.tsv")]
    ids = np.array([int(r[0]) for r in rows])
    release = np.array([r[1] for r in rows])
    labels = [r[2] for r in rows]
    bicleaner = np.array([float(r[3]) for r in rows])
    size = int(ids.max()) + 1
    scores = record_scores(work / "checkpoints" / name, size)
    detectors = {
        "gglm_mask_rate": scores["mask_rate"][ids],
        # Lower alignment = more suspect; continuous, unlike the rate of a few decisions.
        "gglm_neg_alignment_mean": -scores["alignment_mean"][ids],
        "bicleaner_neg_score": -bicleaner,
    }
    out: Dict[str, object] = {}
    for detector, values in detectors.items():
        per = {"pooled": detection_auc(values, labels, {VALID_LABEL})}
        for name_ in RELEASES:
            chosen = release == name_
            per[name_] = detection_auc(
                values[chosen], [x for x, c in zip(labels, chosen) if c], {VALID_LABEL}
            )
        out[detector] = per
    rate = scores["mask_rate"][ids]
    label_array = np.asarray(labels)
    out["mean_mask_rate"] = {
        label: round(float(np.nanmean(rate[label_array == label])), 4)
        for label in sorted(set(labels))
        if np.any(~np.isnan(rate[label_array == label]))
    }
    out["pairs_seen"] = {"seen": int((~np.isnan(rate)).sum()), "total": len(labels)}
    return out


def main(argv: List[str]) -> int:
    shared = REPO / ".." / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--work", required=True, help="working folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clean", choices=["wmt21", "heldout-v"], default="wmt21")
    parser.add_argument(
        "--multi30k-lines", type=int, default=3000,
        help="Multi30k training pairs added to the ParaCrawl pairs (default 3000: few, so "
        "that each ParaCrawl pair is seen several times)",
    )  # fmt: skip
    parser.add_argument("--updates", type=int, help="number of updates (default: the profile's)")
    add_gglm_args(parser, "extra flags for GGLM")
    parser.add_argument("--tag", default="", help="name the system gglm-TAG")
    parser.add_argument("--paracrawl", default=str(shared / "paracrawl-human-eval"))
    parser.add_argument("--multi30k", default=str(shared / "multi30k"))
    parser.add_argument("--wmt21", default=str(shared / "wmt21"))
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile]
    if args.updates:
        profile = dataclasses.replace(profile, updates=args.updates)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    setting = {
        "profile": args.profile, "seed": args.seed, "clean": args.clean,
        "multi30k_lines": args.multi30k_lines, "updates": profile.updates,
    }  # fmt: skip
    results_path, results = open_results(work, "paracrawl_human", setting, profile, argv)
    if "data" not in results or not (work / "bin" / f"dict.{SRC}.txt").exists():
        results["data"] = prepare_data(args, profile, work)
        save_results(results_path, results)

    name = f"gglm-{args.tag}" if args.tag else "gglm"
    command = train_args(work / "bin", work / "checkpoints" / name, profile, args.seed, SRC, TGT)
    command += [
        "--task", "translation_with_clean_set", "--clean-subset", "clean",
        "--criterion", "gradient_masked_cross_entropy", *shlex.split(args.gglm_args),
    ]  # fmt: skip
    systems = results.setdefault("systems", {})
    if name in systems and systems[name].get("train_command") == command:
        log(f"{name}: already scored, skipped")
        return 0
    shutil.rmtree(work / "checkpoints" / name, ignore_errors=True)
    log(f"{name}: training")
    seconds = run(command, work / "logs" / f"train-{name}.log")
    log(f"{name}: trained in {seconds:.0f} s")
    entry = {
        "train_command": command,
        "gglm_args": args.gglm_args,
        "train_seconds": round(seconds, 1),
        "machine": results["machine"],
        "detection": detection(work, name),
    }
    systems[name] = entry
    save_results(results_path, results)
    for detector in ("gglm_mask_rate", "gglm_neg_alignment_mean", "bicleaner_neg_score"):
        aucs = entry["detection"][detector]
        per_release = ", ".join(f"{r} {aucs[r].get('all', float('nan')):.3f}" for r in RELEASES)
        log(f"{detector}: V vs rest AUC pooled {aucs['pooled']['all']:.3f}; {per_release}")
    log(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
