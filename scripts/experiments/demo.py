"""The README's demo: baseline vs GGLM on a generated noisy corpus, end to end.

A toy language pair is generated (the target renames each source word and swaps neighbouring
words), 40% of the training pairs are corrupted with ``gglm_fairseq.noise`` (misaligned,
untranslated, wrong language, truncated, shuffled), and a small clean set is kept apart.
Both systems train with the same model and budget through ``fairseq-train``; the test set is
translated with ``fairseq-generate`` and scored with sacrebleu, and GGLM's per-example mask
rate is scored against the injected noise labels (ROC-AUC). Two controls train through GGLM's
pipeline with another mask: exactly the noisy pairs (``oracle-mask``) and a random share of the
sentences (``random-mask``), which tell what masking costs at this budget and what choosing
well gains. Nothing is downloaded.

    python scripts/experiments/demo.py [--work runs/demo] [--updates 300] [--no-controls]
"""

import argparse
import json
import random
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from common import (
    generate,
    log,
    preprocess,
    record_scores,
    run,
    score,
    with_mask_control,
    write_lines,
)

from gglm_fairseq.cli import user_dir
from gglm_fairseq.noise import corrupt
from gglm_fairseq.report import detection_auc

SRC, TGT = "src", "tgt"


def toy_corpus(n: int, vocab: int, rng: random.Random) -> Tuple[List[str], List[str], List[str]]:
    """Source sentences, their translations, and a 'third language' for wrong-language noise."""
    sources, targets, thirds = [], [], []
    for _ in range(n):
        words = [rng.randrange(vocab) for _ in range(rng.randint(4, 12))]
        swapped = list(words)
        for i in range(0, len(swapped) - 1, 2):
            swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        sources.append(" ".join(f"s{w}" for w in words))
        targets.append(" ".join(f"t{(7 * w + 3) % vocab}" for w in swapped))
        thirds.append(" ".join(f"f{(5 * w + 1) % vocab}" for w in words))
    return sources, targets, thirds


def make_data(work: Path, args: argparse.Namespace) -> List[str]:
    """Text files for train (noisy), valid, test and clean; returns the train labels."""
    rng = random.Random(args.seed)
    sizes = {"train": args.train, "valid": 300, "test": 500, "clean": args.clean}
    text = work / "text"
    labels: List[str] = []
    for split, n in sizes.items():
        sources, targets, thirds = toy_corpus(n, args.vocab, rng)
        if split == "train":
            targets, labels = corrupt(sources, targets, args.noise, args.seed, thirds)
            write_lines(text / "train.labels", labels)
        write_lines(text / f"{split}.{SRC}", sources)
        write_lines(text / f"{split}.{TGT}", targets)
    return labels


def train_args(work: Path, name: str, args: argparse.Namespace) -> List[str]:
    return [
        "fairseq-train", str(work / "bin"), "--user-dir", user_dir(),
        "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
        "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--dropout", "0.1",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "2e-3",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--label-smoothing", "0.1",
        "--max-tokens", "2048", "--max-update", str(args.updates), "--seed", str(args.seed),
        "--cpu", "--num-workers", "0", "--save-dir", str(work / "checkpoints" / name),
        "--no-epoch-checkpoints", "--log-format", "simple",
        "--log-interval", "50", "--disable-validation",
    ]  # fmt: skip


GGLM_TASK = ["--task", "translation_with_clean_set", "--clean-max-tokens", "512"]
SYSTEMS: Dict[str, Sequence[str]] = {
    "baseline": ["--task", "translation", "--criterion", "label_smoothed_cross_entropy"],
    "gglm": [*GGLM_TASK, "--criterion", "gradient_masked_cross_entropy"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/demo"))
    parser.add_argument("--train", type=int, default=12000, help="training pairs")
    parser.add_argument("--clean", type=int, default=300, help="clean pairs")
    parser.add_argument("--vocab", type=int, default=60, help="words per language")
    parser.add_argument("--noise", type=float, default=0.4, help="fraction of corrupted pairs")
    parser.add_argument("--updates", type=int, default=300, help="updates per system")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-controls", action="store_true",
        help="skip the oracle-mask and random-mask controls (about half the run time)",
    )  # fmt: skip
    args = parser.parse_args()
    work: Path = args.work
    started = time.time()

    log(f"generating a toy corpus in {work}/text ({args.noise:.0%} of {args.train} pairs noisy)")
    labels = make_data(work, args)
    text = work / "text"
    preprocess(
        work / "bin",
        ["-s", SRC, "-t", TGT, "--joined-dictionary", "--trainpref", str(text / "train"),
         "--validpref", f"{text / 'valid'},{text / 'clean'}", "--testpref", str(text / "test")],
        work / "logs" / "preprocess.log",
    )  # fmt: skip
    references = (text / f"test.{TGT}").read_text(encoding="utf-8").splitlines()
    results: Dict[str, Dict[str, object]] = {}
    controls = () if args.no_controls else ("oracle-mask", "random-mask")
    systems = [*SYSTEMS, *controls]
    for name in systems:
        log(f"training {name} for {args.updates} updates (log: {work}/logs/{name}.log)")
        if name in controls:
            command = with_mask_control([*train_args(work, name, args), *GGLM_TASK], name,
                                        text / "train.labels", args.noise)  # fmt: skip
        else:
            command = [*train_args(work, name, args), *SYSTEMS[name]]
        seconds = run(command, work / "logs" / f"{name}.log")
        checkpoint = work / "checkpoints" / name / "checkpoint_last.pt"
        hypotheses, _, _ = generate(
            work / "bin", checkpoint, "test", len(references), SRC, TGT, 4,
            work / "generate" / name, post_process=None,
        )  # fmt: skip
        results[name] = {"train_seconds": round(seconds), **score(hypotheses, references)}
        log(f"{name}: BLEU {results[name]['bleu']}  chrF {results[name]['chrf']}")
    mask_rate = record_scores(work / "checkpoints" / "gglm", len(labels))["mask_rate"]
    results["gglm"]["detection_auc"] = detection_auc(mask_rate, labels, ["clean"])
    (work / "results.json").write_text(json.dumps(results, indent=2))

    base, gglm = results["baseline"], results["gglm"]
    print(f"\n{'system':<12}{'BLEU':>8}{'chrF':>8}{'train s':>9}")
    for name in systems:
        r = results[name]
        print(f"{name:<12}{r['bleu']:>8.2f}{r['chrf']:>8.2f}{r['train_seconds']:>9}")
    print(f"\nGGLM - baseline: {gglm['bleu'] - base['bleu']:+.2f} BLEU")
    print("noise detection ROC-AUC of GGLM's mask rate (noisy vs clean):")
    for label, auc in gglm["detection_auc"].items():
        print(f"  {label:<16}{auc:.3f}")
    if not args.no_controls:
        print(
            "controls (GGLM's pipeline, another mask): masking a random "
            f"{args.noise:.0%} of each batch {results['random-mask']['bleu'] - base['bleu']:+.2f}"
            f" BLEU, masking exactly the noisy pairs "
            f"{results['oracle-mask']['bleu'] - base['bleu']:+.2f} BLEU vs the baseline"
        )
    print(f"\n{base['bleu_signature']}\ndone in {time.time() - started:.0f} s; {work}/results.json")


if __name__ == "__main__":
    main()
