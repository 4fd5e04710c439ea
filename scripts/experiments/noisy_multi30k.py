"""GGLM on Multi30k en-de with injected noise: BLEU/chrF of four systems and noise detection.

One command builds the data, trains, translates and scores::

    python scripts/experiments/noisy_multi30k.py --profile quick --work runs/m30k-p0.4 \\
        --noise 0.4 --seed 1 --systems baseline,gglm,oracle,finetune

Data (``--data``, Multi30k task 1 raw text):

- training: ``train`` (29,000 pairs); a fraction ``--noise`` of the German side is corrupted
  with :func:`gglm_fairseq.noise.corrupt` (five types in turn, the French side as the wrong
  language); ``WORK/text/train.labels`` holds each pair's label;
- clean set: ``val`` lines 0-499; validation: ``val`` lines 500-1013 (disjoint);
- tests: ``test_2016_flickr`` and ``test_2017_flickr``.

A joint sentencepiece model (unigram, 8k) is trained on the noisy training text
(``--subword-data clean``: on the training text before the noise, so that the subwords never
saw the noisy targets).

``--dropout P`` sets the model's dropout for every system (default the profile's, 0.1), ``--ffn N``
its feed-forward width (default the profile's, 1024 at full). These options change the setup
(named in ``setting``), so such a run needs its own ``--work``.

Systems (same model, same number of updates of the same batch size):

- ``baseline``: label-smoothed cross-entropy on the noisy set;
- ``gglm``: ``translation_with_clean_set`` + ``gradient_masked_cross_entropy`` (plus
  ``--gglm-args``; ``--tag T`` names the system ``gglm-T`` so variants sit side by side;
  ``--candidate-max-tokens N`` draws GGLM's batches of N tokens instead of the profile's
  ``--max-tokens``, for ``--gglm-keep-tokens``, which trains on the best of them; the clean
  batch keeps its size, a quarter of the profile's ``--max-tokens``). A tagged baseline
  (``baseline-T``) trains on batches of ``--candidate-max-tokens`` too: the control for
  whether a gain of GGLM on larger batches comes from the batch or from the mask;
- ``oracle``: only the uncorrupted pairs;
- ``filtered``: the noisy pairs a two-rule filter keeps, the first cleaning a user would run:
  out go a German side that copies the English source and one with more French than German
  function words (the rules that count copied and French outputs); the results' ``data.filtered``
  says how many pairs of each injected label it removed;
- ``baseline-long``: the baseline trained for ``--long-ratio`` times the updates, GGLM's time
  per update at its defaults (the baseline given GGLM's wall-clock). Its checkpoint at the
  profile's budget *is* the baseline (inverse-sqrt schedule, per-update seeds: the same run
  up to there), so training it also scores ``baseline`` from that checkpoint;
- ``finetune``: the baseline trained on the clean set for a few more updates, with the
  baseline's final learning rate held constant (fresh Adam state); ``finetune-gglm``: GGLM's
  model fine-tuned the same way (needs ``gglm``); tagged (``--tag T``), they start from
  ``baseline-T`` and ``gglm-T``;
- controls (``mask_controls/``): GGLM's pipeline masking exactly the injected-noise pairs
  (``oracle-mask``, a perfect mask) or a random share ``--noise`` of the sentences
  (``random-mask``): what masking costs at this budget, and what choosing well gains.

``--clean-set NAME`` gives GGLM and the fine-tuned systems another clean set (their names
get ``-clean-NAME``; the baseline is shared): ``val100``/``val50``, the first 100/50 of the
default 500 pairs (a tiny clean set), or ``wmt21``, the first 500 pairs of newstest2021
en-de (news: another domain than Multi30k's image captions), encoded with the same
sentencepiece model and dictionary.

``--curve-every N`` keeps a checkpoint every N updates and scores validation BLEU at each,
with the training seconds fairseq logged by then (``curve`` in the results): BLEU against
training time per system.

Every system translates the validation set and both tests with beam 4 (last checkpoint),
scored with sacrebleu BLEU and chrF. For GGLM systems the ROC-AUC of each pair's mask rate
(and of its negated mean alignment) against the injected labels is computed, overall and per
noise type. Results go to ``WORK/results.json`` (merged across runs: a system already there
with the same training command is not retrained).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from common import (
    PROFILES,
    REPO,
    Profile,
    add_gglm_args,
    encode,
    final_lr,
    generate,
    log,
    open_results,
    preprocess,
    read_lines,
    record_scores,
    run,
    save_results,
    score,
    train_args,
    train_sentencepiece,
    with_mask_control,
    write_lines,
)
from names import CLEAN_USERS, DEFAULT_CLEAN_SET, FINE_TUNED, system_name

from gglm_fairseq.noise import CLEAN, corrupt
from gglm_fairseq.record import RECORD_FILE
from gglm_fairseq.report import detection_auc

SRC, TGT, THIRD = "en", "de", "fr"
SHARED_DATA = REPO / ".." / "shared" / "data"
CLEAN_LINES = 500  # val lines [0, 500) form the clean set, [500, 1014) the validation set
EVAL_SETS = {"valid": "valid", "test": "test_2016_flickr", "test1": "test_2017_flickr"}
SYSTEMS = (
    "baseline",
    "baseline-long",
    "gglm",
    "oracle",
    "filtered",
    "finetune",
    "finetune-gglm",
    "oracle-mask",
    "random-mask",
)
# Systems that train on their own training split (WORK/bin-KIND) instead of the noisy one.
OWN_TRAINING_SPLIT = ("oracle", "filtered")
# --subword-data -> the text sentencepiece learns from.
SUBWORD_DATA = {"noisy": "noisy train en+de", "clean": "train en+de before the noise"}
WMT21_PAIRS = 500  # as many pairs as the default clean set
# --clean-set NAME -> (source, first lines); the default is the split "clean".
CLEAN_SETS = {
    DEFAULT_CLEAN_SET: ("multi30k", CLEAN_LINES),
    "val100": ("multi30k", 100),
    "val50": ("multi30k", 50),
    "wmt21": ("wmt21", WMT21_PAIRS),
}


def prepare_data(args: argparse.Namespace, profile: Profile, work: Path) -> Dict[str, object]:
    """Noisy training text, clean/valid/test splits, sentencepiece, binarised data."""
    data, text, spm_dir = Path(args.data), work / "text", work / "spm"
    train_src = read_lines(data / f"train.{SRC}", profile.train_lines)
    train_tgt = read_lines(data / f"train.{TGT}", profile.train_lines)
    third = read_lines(data / f"train.{THIRD}", profile.train_lines)
    noisy_tgt, labels = corrupt(train_src, train_tgt, args.noise, args.seed, third_language=third)
    write_lines(text / f"train.{SRC}", train_src)
    write_lines(text / f"train.{TGT}", noisy_tgt)
    write_lines(text / "train.labels", labels)
    clean_ids = [i for i, label in enumerate(labels) if label == CLEAN]
    write_lines(text / f"oracle.{SRC}", [train_src[i] for i in clean_ids])
    write_lines(text / f"oracle.{TGT}", [train_tgt[i] for i in clean_ids])

    clean_lines = CLEAN_LINES if profile.eval_lines is None else profile.eval_lines
    for lang in (SRC, TGT):
        val = read_lines(data / f"val.{lang}")
        write_lines(text / f"clean.{lang}", val[:clean_lines])
        valid = val[clean_lines:]
        write_lines(text / f"valid.{lang}", valid[: profile.eval_lines])
        for subset in ("test", "test1"):
            lines = read_lines(data / f"{EVAL_SETS[subset]}.{lang}", profile.eval_lines)
            write_lines(text / f"{subset}.{lang}", lines)

    log(f"data: {len(train_src)} training pairs, {Counter(labels)}")
    start = time.time()
    subword_target = text / f"train.{TGT}"
    if args.subword_data == "clean":
        subword_target = text / f"uncorrupted.{TGT}"
        write_lines(subword_target, train_tgt)
    model = train_sentencepiece([text / f"train.{SRC}", subword_target], spm_dir / "spm",
                                profile.vocab)  # fmt: skip
    for split in ("train", "oracle", "clean", "valid", "test", "test1"):
        for lang in (SRC, TGT):
            encode(model, text / f"{split}.{lang}", spm_dir / f"{split}.{lang}")
    spm_seconds = time.time() - start
    log(f"sentencepiece: trained and encoded in {spm_seconds:.0f} s")

    bin_dir = work / "bin"
    seconds = preprocess(
        bin_dir,
        ["-s", SRC, "-t", TGT, "--joined-dictionary", "--trainpref", str(spm_dir / "train"),
         "--validpref", f"{spm_dir / 'valid'},{spm_dir / 'clean'}",
         "--testpref", f"{spm_dir / 'test'},{spm_dir / 'test1'}"],
        work / "logs" / "preprocess.log",
    )  # fmt: skip
    seconds += binarise_training_split(work, "oracle")
    log(f"binarised in {seconds:.0f} s")
    counts = Counter(labels)
    valid_size = len(read_lines(text / f"valid.{SRC}"))
    return {
        "noise": args.noise,
        "seed": args.seed,
        "train_pairs": len(train_src),
        "oracle_pairs": len(clean_ids),
        "label_counts": dict(sorted(counts.items())),
        "clean_set": f"val lines 0-{clean_lines - 1}",
        "valid_set": f"val lines {clean_lines}-{clean_lines + valid_size - 1}",
        "tests": [EVAL_SETS["test"], EVAL_SETS["test1"]],
        "sentencepiece": {
            "model": "unigram", "vocab": profile.vocab, "on": SUBWORD_DATA[args.subword_data]
        },
        "dictionary_size": sum(1 for _ in open(bin_dir / f"dict.{SRC}.txt", encoding="utf-8")),
        "checksums": data_checksums(work),
        "prepare_seconds": round(spm_seconds + seconds, 1),
    }


def binarise_training_split(work: Path, split: str) -> float:
    """Binarise ``WORK/spm/SPLIT`` as the training split of ``WORK/bin-SPLIT`` with the
    experiment's dictionary; its other splits link to ``WORK/bin``'s (the same validation,
    clean set and tests). Returns the seconds taken."""
    bin_dir, split_dir = work / "bin", work / f"bin-{split}"
    seconds = preprocess(
        split_dir,
        ["-s", SRC, "-t", TGT, "--trainpref", str(work / "spm" / split),
         "--srcdict", str(bin_dir / f"dict.{SRC}.txt"),
         "--tgtdict", str(bin_dir / f"dict.{TGT}.txt")],
        work / "logs" / f"preprocess-{split}.log",
    )  # fmt: skip
    for path in bin_dir.iterdir():
        if not path.name.startswith(("train.", "dict.", "preprocess")):
            target = split_dir / path.name
            if not target.exists():
                target.symlink_to(path.resolve())
    return seconds


def prepare_filtered(work: Path) -> Dict[str, object]:
    """The training pairs whose German side ``looks_translated``, as ``WORK/bin-filtered``
    (binarised once), and how many pairs of each injected label the filter removed."""
    text = work / "text"
    sources, targets = read_lines(text / f"train.{SRC}"), read_lines(text / f"train.{TGT}")
    kept = [i for i, (s, t) in enumerate(zip(sources, targets)) if looks_translated(t, s)]
    if not (work / "bin-filtered" / f"train.{SRC}-{TGT}.{SRC}.bin").exists():
        for lang, lines in ((SRC, sources), (TGT, targets)):
            write_lines(text / f"filtered.{lang}", [lines[i] for i in kept])
            encode(work / "spm" / "spm.model", text / f"filtered.{lang}",
                   work / "spm" / f"filtered.{lang}")  # fmt: skip
        binarise_training_split(work, "filtered")
    labels = read_lines(text / "train.labels")
    removed = Counter(labels) - Counter(labels[i] for i in kept)
    log(f"filtered: {len(kept)} of {len(sources)} pairs kept; removed {dict(removed)}")
    return {"pairs": len(kept), "removed": dict(sorted(removed.items()))}


# The files that make a run's data: the noisy text, its labels, the subwords and dictionary
# (the vocabulary, not spm.model, which holds the paths it was trained from).
DATA_FILES = (f"text/train.{SRC}", f"text/train.{TGT}", "text/train.labels", "spm/spm.vocab",
              f"bin/dict.{SRC}.txt")  # fmt: skip
# What must come out the same when a folder's data is prepared again (not the timing).
DATA_IDENTITY = ("train_pairs", "oracle_pairs", "label_counts", "dictionary_size", "checksums")


def data_checksums(work: Path) -> Dict[str, str]:
    """SHA-256 (first 16 hex digits) of each of ``DATA_FILES``."""
    return {name: hashlib.sha256((work / name).read_bytes()).hexdigest()[:16]
            for name in DATA_FILES}  # fmt: skip


def prepared_again(
    args: argparse.Namespace, profile: Profile, work: Path, earlier: Dict[str, object]
) -> Dict[str, object]:
    """:func:`prepare_data`'s section for a folder whose data files are gone (a results file
    restored from the archive, say), keeping the earlier section's other clean sets: the
    systems trained on them stay in the results, and a run that asks for one of them
    binarises it again. Stops when the data come out other than recorded (``DATA_IDENTITY``;
    a record without checksums is checked on the rest and gets them)."""
    data = prepare_data(args, profile, work)
    differ = [key for key in DATA_IDENTITY if key in earlier and earlier[key] != data[key]]
    if differ:
        # The recorded systems were trained on other data: new ones would not compare.
        raise SystemExit(
            f"{work}: the data prepared again differ from the results file's record in "
            f"{', '.join(differ)} (recorded {[earlier[k] for k in differ]}, now "
            f"{[data[k] for k in differ]}); use another --work"
        )
    if earlier.get("clean_sets"):
        data["clean_sets"] = earlier["clean_sets"]
    return data


def clean_subset(args: argparse.Namespace) -> str:
    return "clean" if args.clean_set == DEFAULT_CLEAN_SET else f"clean_{args.clean_set}"


def prepare_clean_set(args: argparse.Namespace, work: Path) -> int:
    """Binarise ``--clean-set`` (not the default) as the subset ``clean_NAME`` of ``WORK/bin``
    with the experiment's sentencepiece model and dictionary; return its pairs."""
    source, lines = CLEAN_SETS[args.clean_set]
    subset, bin_dir = clean_subset(args), work / "bin"
    if (bin_dir / f"{subset}.{SRC}-{TGT}.{SRC}.bin").exists():
        return len(read_lines(work / "text" / f"{subset}.{SRC}"))
    text, spm_dir = work / "text", work / "spm"
    if source == "wmt21":
        folder = Path(args.wmt21)
        pairs = {SRC: read_lines(folder / f"newstest2021.{SRC}-{TGT}.src.{SRC}", lines),
                 TGT: read_lines(folder / f"newstest2021.{SRC}-{TGT}.ref.A.{TGT}", lines)}
    else:
        pairs = {lang: read_lines(Path(args.data) / f"val.{lang}", lines) for lang in (SRC, TGT)}
    for lang, sentences in pairs.items():
        write_lines(text / f"{subset}.{lang}", sentences)
        encode(spm_dir / "spm.model", text / f"{subset}.{lang}", spm_dir / f"{subset}.{lang}")
    staging = work / f"bin-{subset}"
    shutil.rmtree(staging, ignore_errors=True)
    preprocess(
        staging,
        ["-s", SRC, "-t", TGT, "--validpref", str(spm_dir / subset),
         "--srcdict", str(bin_dir / f"dict.{SRC}.txt"),
         "--tgtdict", str(bin_dir / f"dict.{TGT}.txt")],
        work / "logs" / f"preprocess-{subset}.log",
    )  # fmt: skip
    for path in staging.glob("valid.*"):
        path.rename(bin_dir / path.name.replace("valid", subset, 1))
    shutil.rmtree(staging)
    log(f"clean set {args.clean_set}: {len(pairs[SRC])} pairs as subset {subset}")
    return len(pairs[SRC])


def clean_set_text(args: argparse.Namespace, pairs: int) -> str:
    """What ``--clean-set`` is, for the results page."""
    source, _ = CLEAN_SETS[args.clean_set]
    if source == "wmt21":
        return f"newstest2021 en-de (ref A) lines 0-{pairs - 1}: news, another domain"
    return f"val lines 0-{pairs - 1}"


def system_command(name: str, args: argparse.Namespace, profile: Profile, work: Path) -> List[str]:
    kind = args.kinds.get(name, name)
    data = work / (f"bin-{kind}" if kind in OWN_TRAINING_SPLIT else "bin")
    command = train_args(data, work / "checkpoints" / name, profile, args.seed, SRC, TGT)
    if kind not in FINE_TUNED and (args.curve_every or kind == "baseline-long"):
        every = args.curve_every or profile.updates
        command += ["--save-interval-updates", str(every), "--keep-interval-updates", "-1"]
    if kind == "baseline-long":
        command = _set(command, "--max-update", str(long_updates(args, profile)))
    if args.candidate_max_tokens and kind in ("gglm", "baseline"):
        command = _set(command, "--max-tokens", str(args.candidate_max_tokens))
    if kind == "gglm":
        if args.candidate_max_tokens:
            # Larger candidate batches only: the clean batch stays what the default makes of
            # the profile's --max-tokens (--gglm-args may still set its own, given later).
            command += ["--clean-max-tokens", str(profile.max_tokens // 4)]
        return command + [
            "--task", "translation_with_clean_set", "--clean-subset", clean_subset(args),
            "--criterion", "gradient_masked_cross_entropy", *shlex.split(args.gglm_args),
        ]  # fmt: skip
    if kind.endswith("-mask"):
        command += ["--task", "translation_with_clean_set", "--clean-subset", "clean"]
        return with_mask_control(command, kind, work / "text" / "train.labels", args.noise)
    command += ["--task", "translation", "--criterion", "label_smoothed_cross_entropy"]
    if kind == "baseline-long":
        return command
    if kind in FINE_TUNED:
        base = work / "checkpoints" / args.starts[name] / "checkpoint_last.pt"
        # Replace the budget and schedule: a few updates on the clean split at a fixed lr.
        command = _set(command, "--max-update", str(finetune_updates(args, profile)))
        command = _set(command, "--lr", f"{final_lr(profile):.6g}")
        command = _set(command, "--lr-scheduler", "fixed")
        command = [c for c in command if c not in ("--warmup-init-lr", "1e-07")]
        command = _set(command, "--warmup-updates", "0")
        command += [
            "--train-subset", clean_subset(args), "--restore-file", str(base),
            "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
        ]  # fmt: skip
    return command


def finetune_updates(args: argparse.Namespace, profile: Profile) -> int:
    return profile.finetune_updates if args.finetune_updates is None else args.finetune_updates


def long_updates(args: argparse.Namespace, profile: Profile) -> int:
    return round(profile.updates * args.long_ratio)


def _set(command: List[str], flag: str, value: str) -> List[str]:
    out = list(command)
    out[out.index(flag) + 1] = value
    return out


def max_update(command: Sequence[str]) -> int:
    """The ``--max-update`` of a training command: the update its last checkpoint is at."""
    return int(command[command.index("--max-update") + 1])


def evaluate(
    name: str,
    work: Path,
    profile: Profile,
    subsets: Sequence[str] = tuple(EVAL_SETS),
    checkpoint: Optional[Path] = None,
) -> Dict[str, object]:
    """Translate validation and both tests with the last checkpoint (or ``checkpoint``);
    BLEU and chrF."""
    checkpoint = checkpoint or work / "checkpoints" / name / "checkpoint_last.pt"
    out: Dict[str, object] = {}
    seconds = 0.0
    for subset in subsets:
        label = EVAL_SETS[subset]
        references = read_lines(work / "text" / f"{subset}.{TGT}")
        hypotheses, missing, took = generate(
            work / "bin", checkpoint, subset, len(references), SRC, TGT, profile.beam,
            work / "generate" / name,
        )  # fmt: skip
        seconds += took
        write_lines(work / "hyp" / f"{name}.{label}.{TGT}", hypotheses)
        out[label] = {**score(hypotheses, references), "no_hypothesis": missing}
    out["generate_seconds"] = round(seconds, 1)
    return out


_WALL = re.compile(r"num_updates[= ](\d+)\b.*\bwall[= ](\d+)")


def logged_seconds(log_file: Path) -> Dict[int, float]:
    """Training seconds (fairseq's ``wall``) at each update its log reports."""
    seconds: Dict[int, float] = {0: 0.0}
    for line in log_file.read_text(encoding="utf-8").splitlines():
        match = _WALL.search(line)
        if match:
            seconds[int(match.group(1))] = float(match.group(2))
    return seconds


_INNER = re.compile(r"\| train_inner \|.*")
_FIELD = re.compile(r"(\w+)=([-\d.e]+)")


def trained_tokens(log_file: Path, last_update: int) -> Optional[float]:
    """Mean target tokens an update trained on, up to ``last_update``: fairseq's ``wpb``
    (tokens per batch) times the share GGLM did not mask (an example keep-tokens did not
    select counts as masked). None without the log."""
    if not log_file.exists():
        return None
    sizes = []
    for line in log_file.read_text(encoding="utf-8").splitlines():
        if _INNER.search(line):
            fields = dict(_FIELD.findall(line))
            if int(fields["num_updates"]) <= last_update:
                sizes.append(float(fields["wpb"]) * (1 - float(fields.get("gglm_masked_tok", 0))))
    return round(float(np.mean(sizes)), 1) if sizes else None


def seconds_at(seconds: Dict[int, float], update: int) -> float:
    """Linear interpolation between the logged updates around ``update``."""
    updates = sorted(seconds)
    return float(np.interp(update, updates, [seconds[u] for u in updates]))


def interval_checkpoints(save_dir: Path) -> Dict[int, Path]:
    """fairseq's ``checkpoint_EPOCH_UPDATES.pt`` files by update."""
    found = {}
    for path in save_dir.glob("checkpoint_*_*.pt"):
        found[int(path.stem.rsplit("_", 1)[1])] = path
    return dict(sorted(found.items()))


def curve(
    name: str, work: Path, profile: Profile, last: Tuple[int, float]
) -> List[Dict[str, float]]:
    """Validation BLEU at every interval checkpoint, with the training seconds by then.
    ``last``: the final update and the BLEU already scored there (not translated again)."""
    seconds = logged_seconds(work / "logs" / f"train-{name}.log")
    points = []
    for update, path in interval_checkpoints(work / "checkpoints" / name).items():
        if update == last[0]:
            bleu = last[1]
        else:
            bleu = evaluate(name, work, profile, ("valid",), path)["valid"]["bleu"]
        points.append(
            {
                "updates": update,
                "seconds": round(seconds_at(seconds, update), 1),
                "valid_bleu": bleu,
            }
        )
        log(f"{name}: update {update}, valid BLEU {bleu}")
    return points


def baseline_from_long(
    args: argparse.Namespace, work: Path, profile: Profile, long_entry: Dict[str, object]
) -> Dict[str, object]:
    """The ``baseline`` entry from ``baseline-long``'s checkpoint at the profile's budget,
    copied to the baseline's folder (the fine-tuned systems start from it)."""
    checkpoints = interval_checkpoints(work / "checkpoints" / "baseline-long")
    if profile.updates not in checkpoints:
        raise SystemExit(f"baseline-long kept no checkpoint at update {profile.updates}")
    save_dir = work / "checkpoints" / "baseline"
    shutil.rmtree(save_dir, ignore_errors=True)
    save_dir.mkdir(parents=True)
    shutil.copyfile(checkpoints[profile.updates], save_dir / "checkpoint_last.pt")
    shutil.copyfile(work / "logs" / "train-baseline-long.log", work / "logs" / "train-baseline.log")
    seconds = logged_seconds(work / "logs" / "train-baseline-long.log")
    entry: Dict[str, object] = {
        "train_command": system_command("baseline", args, profile, work),
        "gglm_args": "",
        "from": f"baseline-long's checkpoint at update {profile.updates}",
        "train_seconds": round(seconds_at(seconds, profile.updates), 1),
        "curve": [p for p in long_entry.get("curve", []) if p["updates"] <= profile.updates],
    }
    entry.update(evaluate("baseline", work, profile))
    add_output_measures(entry, "baseline", work)
    add_trained_tokens(entry, "baseline", work)
    return entry


# Function words that tell French output from German (the wrong-language noise is French).
FRENCH_WORDS = frozenset("le la les de des du une est et dans sur avec au aux qui".split())
GERMAN_WORDS = frozenset(
    "der die das den dem ein eine einem einer einen und mit auf im ist".split()
)


def is_french(line: str) -> bool:
    """More French function words than German ones."""
    words = line.lower().split()
    return sum(w in FRENCH_WORDS for w in words) > sum(w in GERMAN_WORDS for w in words)


def output_shares(hypotheses: Sequence[str], sources: Sequence[str]) -> Dict[str, float]:
    """What the noise can teach a model to do wrong: the share of outputs that copy the
    source exactly, and the share whose French function words outnumber the German ones."""
    n = max(len(hypotheses), 1)
    copied = sum(h.strip() == s.strip() for h, s in zip(hypotheses, sources))
    return {"copied": round(copied / n, 4), "french": round(sum(map(is_french, hypotheses)) / n, 4)}


def looks_translated(target: str, source: str) -> bool:
    """Neither a copy of the source nor French: an attempt at German."""
    return target.strip() != source.strip() and not is_french(target)


def both_translated(
    ours: Sequence[str], baseline: Sequence[str], sources: Sequence[str],
    references: Sequence[str],
) -> Dict[str, object]:
    """BLEU of two systems on the sentences where neither copied the source nor wrote French:
    how they compare where both attempted German."""  # fmt: skip
    kept = [i for i, (a, b, source) in enumerate(zip(ours, baseline, sources))
            if looks_translated(a, source) and looks_translated(b, source)]  # fmt: skip
    if not kept:
        return {"sentences": 0}  # sacrebleu cannot score an empty corpus
    chosen_references = [references[i] for i in kept]
    return {
        "sentences": len(kept),
        "bleu": score([ours[i] for i in kept], chosen_references)["bleu"],
        "baseline_bleu": score([baseline[i] for i in kept], chosen_references)["bleu"],
    }


def add_output_measures(entry: Dict[str, object], name: str, work: Path) -> None:
    """From the hypotheses ``evaluate`` wrote, on each evaluation set: ``output_shares`` and,
    beside the baseline of the same folder, ``both_translated`` (what was recorded stays
    where the hypotheses are gone)."""
    for subset, label in EVAL_SETS.items():
        hypotheses_path = work / "hyp" / f"{name}.{label}.{TGT}"
        if not hypotheses_path.exists():
            continue
        hypotheses = read_lines(hypotheses_path)
        sources = read_lines(work / "text" / f"{subset}.{SRC}")
        entry[label].update(output_shares(hypotheses, sources))
        baseline_path = work / "hyp" / f"baseline.{label}.{TGT}"
        if name != "baseline" and baseline_path.exists():
            references = read_lines(work / "text" / f"{subset}.{TGT}")
            entry[label]["both_translated"] = both_translated(
                hypotheses, read_lines(baseline_path), sources, references)


def add_trained_tokens(entry: Dict[str, object], name: str, work: Path) -> None:
    """``trained_tokens_per_update`` from the system's training log (kept when it is gone)."""
    tokens = trained_tokens(work / "logs" / f"train-{name}.log", max_update(entry["train_command"]))
    if tokens is not None:
        entry["trained_tokens_per_update"] = tokens


def detection(name: str, work: Path) -> Dict[str, Dict[str, float]]:
    """ROC-AUC of GGLM's per-pair scores against the injected noise labels."""
    labels = read_lines(work / "text" / "train.labels")
    scores = record_scores(work / "checkpoints" / name, len(labels))
    rate = scores["mask_rate"]
    seen = ~np.isnan(rate)
    result: Dict[str, Dict[str, float]] = {
        "mask_rate": detection_auc(rate, labels, {CLEAN}),
        # Lower alignment = more suspect; a continuous score without the ties of the rate.
        "neg_alignment_mean": detection_auc(-scores["alignment_mean"], labels, {CLEAN}),
        # The last visit alone (the last epoch): does the decision sharpen as training goes on?
        "neg_alignment_last": detection_auc(-scores["alignment_last"], labels, {CLEAN}),
    }
    label_array = np.asarray(labels)
    result["mean_mask_rate"] = {
        label: round(float(np.mean(rate[seen & (label_array == label)])), 4)
        for label in sorted(set(labels))
        if np.any(seen & (label_array == label))
    }
    result["pairs_seen"] = {"seen": int(seen.sum()), "total": len(labels)}
    return result


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--work", required=True, help="working folder (data, checkpoints, results)")
    parser.add_argument("--noise", type=float, default=0.4, help="share of corrupted pairs")
    parser.add_argument("--seed", type=int, default=1, help="seed of noise and training")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems")
    add_gglm_args(parser, "extra flags for GGLM (a variant)")
    parser.add_argument(
        "--tag", default="",
        help="name the systems KIND-TAG (gglm, baseline and the fine-tuned ones, which start "
        "from the system of the same tag)",
    )  # fmt: skip
    parser.add_argument(
        "--candidate-max-tokens", type=int, default=0,
        help="GGLM and a tagged baseline: batches of this many tokens replace the profile's "
        "--max-tokens (for --gglm-keep-tokens; the clean batch keeps a quarter of the "
        "profile's); needs --tag; 0: off",
    )  # fmt: skip
    parser.add_argument(
        "--data", default=str(SHARED_DATA / "multi30k"),
        help="Multi30k raw text folder (default ../shared/data/multi30k from the repo root)",
    )  # fmt: skip
    parser.add_argument(
        "--curve-every", type=int, default=0,
        help="keep a checkpoint every N updates and score validation BLEU at each (0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--long-ratio", type=float, default=1.5,
        help="baseline-long trains this many times the updates (default 1.5: GGLM's time per "
        "update at its defaults, measured by scripts/bench_train.py)",
    )  # fmt: skip
    parser.add_argument(
        "--clean-set", choices=sorted(CLEAN_SETS), default=DEFAULT_CLEAN_SET,
        help="the clean set of GGLM and the fine-tuned systems (default val500: val lines "
        "0-499); another one adds -clean-NAME to their names",
    )  # fmt: skip
    parser.add_argument(
        "--wmt21", default=str(SHARED_DATA / "wmt21"),
        help="newstest2021 folder for --clean-set wmt21 (default ../shared/data/wmt21)",
    )  # fmt: skip
    parser.add_argument(
        "--dropout", type=float, default=None,
        help="the model's dropout, every system (default: the profile's, 0.1)",
    )  # fmt: skip
    parser.add_argument(
        "--ffn", type=int, default=None,
        help="the model's feed-forward width, every system (default: the profile's)",
    )  # fmt: skip
    parser.add_argument(
        "--subword-data", choices=sorted(SUBWORD_DATA), default="noisy",
        help="what sentencepiece learns from: the noisy training text (default) or the same "
        "text before the noise (clean: the subwords never see the noisy targets)",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-updates", type=int, default=None,
        help="updates of the fine-tuned systems (default: the profile's, 50 at full); given, "
        "their names get -uN, so recipes sit side by side (the page picks one on validation)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="retrain systems already scored")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="only translate and score again the systems already trained (no training)",
    )
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    if args.candidate_max_tokens and not args.tag:
        # Untagged, the larger batches would replace the default systems' records.
        parser.error("--candidate-max-tokens needs --tag (the systems become gglm-TAG, "
                     "baseline-TAG beside the defaults)")
    if args.curve_every and PROFILES[args.profile].updates % args.curve_every:
        parser.error(
            "--curve-every must divide the profile's updates (baseline-long needs "
            "a checkpoint at the baseline's budget)"
        )

    def named(kind: str) -> str:
        return system_name(kind, args.tag, args.clean_set, args.finetune_updates)

    args.system_names = [named(s) for s in systems]
    args.kinds = dict(zip(args.system_names, systems))
    # A fine-tuned system starts from the system of the same tag and clean set.
    args.starts = {named(s): system_name(FINE_TUNED[s], args.tag, args.clean_set)
                   for s in systems if s in FINE_TUNED}  # fmt: skip
    return args


def setting_of(args: argparse.Namespace, profile: Profile) -> Dict[str, object]:
    """What makes the run's data and models: a setup change away from the defaults is named
    (runs written before these options hold only profile, noise and seed)."""
    setting: Dict[str, object] = {"profile": args.profile, "noise": args.noise, "seed": args.seed}
    if profile.dropout != PROFILES[args.profile].dropout:
        setting["dropout"] = profile.dropout
    if profile.ffn != PROFILES[args.profile].ffn:
        setting["ffn"] = profile.ffn
    if args.subword_data != "noisy":
        setting["subword_data"] = args.subword_data
    return setting


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    if args.dropout is not None:
        profile = replace(profile, dropout=args.dropout)
    if args.ffn is not None:
        profile = replace(profile, ffn=args.ffn)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    setting = setting_of(args, profile)
    results_path, results = open_results(work, "noisy_multi30k", setting, profile, argv)
    if "data" not in results or not (work / "bin" / f"dict.{SRC}.txt").exists():
        results["data"] = prepared_again(args, profile, work, results.get("data", {}))
        save_results(results_path, results)
    if "checksums" not in results["data"]:
        # A record from before the checksums: those of the files its systems trained on.
        results["data"]["checksums"] = data_checksums(work)
        save_results(results_path, results)
    if args.clean_set != DEFAULT_CLEAN_SET:
        pairs = prepare_clean_set(args, work)
        results["data"].setdefault("clean_sets", {})[args.clean_set] = {
            "pairs": pairs, "text": clean_set_text(args, pairs)}
        save_results(results_path, results)

    if "filtered" in args.kinds.values():
        results["data"]["filtered"] = prepare_filtered(work)
        save_results(results_path, results)

    systems = results.setdefault("systems", {})
    for name in args.system_names:
        command = system_command(name, args, profile, work)
        if args.rescore:
            if name in systems:
                log(f"{name}: translating and scoring again")
                systems[name].update(evaluate(name, work, profile))
                save_results(results_path, results)
            continue
        if name in systems and systems[name].get("train_command") == command and not args.force:
            log(f"{name}: already scored, skipped")
            # Cheap, from the record, the log and the written outputs: the newest metrics.
            add_output_measures(systems[name], name, work)
            add_trained_tokens(systems[name], name, work)
            record = work / "checkpoints" / name / RECORD_FILE
            if "detection" in systems[name] and record.exists():  # kept when the record is gone
                systems[name]["detection"] = detection(name, work)
            save_results(results_path, results)
            continue
        start = args.starts.get(name)
        if start and not (work / "checkpoints" / start / "checkpoint_last.pt").exists():
            raise SystemExit(f"{name} needs {start}: run --systems {start} first")
        shutil.rmtree(work / "checkpoints" / name, ignore_errors=True)
        log(f"{name}: training ({' '.join(command[-8:])})")
        train_seconds = run(command, work / "logs" / f"train-{name}.log")
        log(f"{name}: trained in {train_seconds:.0f} s")
        entry: Dict[str, object] = {
            "train_command": command,
            "gglm_args": args.gglm_args if args.kinds[name] == "gglm" else "",
            "train_seconds": round(train_seconds, 1),
            # The file's own machine is the newest runner's; train_seconds are this one's.
            "machine": results["machine"],
        }
        if args.kinds[name] in CLEAN_USERS:
            entry["clean_set"] = args.clean_set
        if args.kinds[name] in FINE_TUNED:
            entry["finetune_updates"] = finetune_updates(args, profile)
        entry.update(evaluate(name, work, profile))
        add_output_measures(entry, name, work)
        add_trained_tokens(entry, name, work)
        if args.curve_every or name == "baseline-long":
            entry["curve"] = curve(name, work, profile,
                                   (max_update(command), entry["valid"]["bleu"]))
        summary = ", ".join(
            f"{label} BLEU {entry[label]['bleu']} chrF {entry[label]['chrf']}"
            for label in EVAL_SETS.values()
        )
        log(f"{name}: {summary} (generation {entry['generate_seconds']} s)")
        if args.kinds[name] == "gglm":
            entry["detection"] = detection(name, work)
            aucs = entry["detection"]["mask_rate"]
            listed = ", ".join(f"{k} {v:.3f}" for k, v in aucs.items())
            log(f"{name}: detection AUC (mask rate) {listed}")
        systems[name] = entry
        if name == "baseline-long":
            systems["baseline"] = baseline_from_long(args, work, profile, entry)
            log(f"baseline: from baseline-long, valid BLEU {systems['baseline']['valid']['bleu']}")
        save_results(results_path, results)
    first = next(iter(systems.values()), None)
    if first:
        log("signatures: BLEU " + first["valid"]["bleu_signature"])
        log("signatures: chrF " + first["valid"]["chrf_signature"])
    log(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
