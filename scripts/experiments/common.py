"""Shared tooling for the experiment runners: profiles, sentencepiece, fairseq subprocesses,
scoring with sacrebleu, GGLM records and the results JSON.

The runners import this module from their own folder (``python scripts/experiments/X.py``
puts the folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from gglm_fairseq.cli import user_dir
from gglm_fairseq.record import RECORD_FILE, ExampleRecord, fit_to

# Importing fairseq sets the root logger to DEBUG; the runners print their own progress.
logging.getLogger().setLevel(logging.WARNING)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Profile:
    """Model, budget and data slice of one experiment size."""

    train_lines: Optional[int]  # None: the whole training corpus
    eval_lines: Optional[int]  # cap on valid and test lines (None: all)
    vocab: int
    layers: int
    dim: int
    ffn: int
    heads: int
    updates: int
    warmup: int
    lr: float
    max_tokens: int
    finetune_updates: int
    beam: int = 4
    dropout: float = 0.1  # --dropout of the model (attention and activation dropout stay 0)


PROFILES: Dict[str, Profile] = {
    # Seconds: only checks that every step runs and writes its numbers.
    "smoke": Profile(400, 8, 300, 1, 32, 64, 2, 4, 2, 1e-3, 1000, 2, beam=2),
    # ~1 epoch per 140 updates of Multi30k. 128 dim: on 2 cores shared with other jobs a
    # 256-dim update took ~7 s, too slow for all systems in ~20-40 min.
    "quick": Profile(None, None, 8000, 2, 128, 512, 4, 300, 100, 1e-3, 4096, 20),
    "full": Profile(None, None, 8000, 2, 256, 1024, 4, 1300, 400, 1e-3, 4096, 50),
}


def add_gglm_args(parser: argparse.ArgumentParser, description: str) -> None:
    """``--gglm-args``: extra flags for GGLM, in one string (its help says to write the ``=``:
    argparse reads a lone flag after a space, ``--gglm-args --flag``, as an option)."""
    parser.add_argument(
        "--gglm-args", default="",
        help=f"{description}; write --gglm-args='--flag ...' (with the =: argparse reads a "
        "lone flag after a space as an option)",
    )


def log(message: str) -> None:
    """A progress line with the UTC time, flushed at once (the runners run for long)."""
    print(time.strftime("[%H:%M:%S] ", time.gmtime()) + message, flush=True)


def run(
    command: Sequence[str], log_file: Path, on_line: Optional[Callable[[str], None]] = None
) -> float:
    """Run a console script from the venv, output to ``log_file``; return its seconds.
    ``on_line`` sees every output line as it comes (for progress reports)."""
    command = [str(BIN / command[0]) if (BIN / command[0]).exists() else command[0], *command[1:]]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_file, "w", encoding="utf-8") as out:
        out.write("$ " + shlex.join(command) + "\n")
        out.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # Unbuffered: the lines reach ``on_line`` as they are written.
            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        for line in process.stdout:
            out.write(line)
            out.flush()  # so that the log can be followed while it runs
            if on_line is not None:
                on_line(line)
        returncode = process.wait()
    if returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{command[0]} failed ({returncode}), see {log_file}:\n{tail}")
    return time.time() - start


def read_lines(path: Path, limit: Optional[int] = None) -> List[str]:
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return lines[:limit] if limit is not None else lines


def write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def train_sentencepiece(inputs: Sequence[Path], prefix: Path, vocab: int) -> Path:
    """A joint unigram model; ``vocab`` is a soft limit so tiny corpora work too."""
    import sentencepiece as spm

    prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=",".join(str(p) for p in inputs), model_prefix=str(prefix), vocab_size=vocab,
        character_coverage=1.0, model_type="unigram", hard_vocab_limit=False,
        input_sentence_size=2_000_000, shuffle_input_sentence=True, seed_sentencepiece_size=200_000,
        minloglevel=2,
    )  # fmt: skip
    return prefix.with_suffix(".model")


def encode(model: Path, source: Path, target: Path) -> None:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model))
    pieces = processor.encode(read_lines(source), out_type=str)
    write_lines(target, [" ".join(p) for p in pieces])


def preprocess(destdir: Path, arguments: Sequence[str], log_file: Path) -> float:
    """fairseq-preprocess in this process (its log to ``log_file``); ``valid1`` -> ``clean``."""
    from fairseq import options
    from fairseq_cli import preprocess as fairseq_preprocess

    start = time.time()
    args = options.get_preprocessing_parser().parse_args(
        [*arguments, "--destdir", str(destdir), "--workers", "2"]
    )
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    logging.getLogger("fairseq_cli.preprocess").addHandler(handler)
    try:
        fairseq_preprocess.main(args)
    finally:
        logging.getLogger("fairseq_cli.preprocess").removeHandler(handler)
    for path in destdir.glob("valid1.*"):
        path.rename(path.with_name(path.name.replace("valid1", "clean", 1)))
    return time.time() - start


def model_args(profile: Profile) -> List[str]:
    p = profile
    return [
        "--arch", "transformer", "--share-all-embeddings",
        "--encoder-layers", str(p.layers), "--decoder-layers", str(p.layers),
        "--encoder-embed-dim", str(p.dim), "--decoder-embed-dim", str(p.dim),
        "--encoder-ffn-embed-dim", str(p.ffn), "--decoder-ffn-embed-dim", str(p.ffn),
        "--encoder-attention-heads", str(p.heads), "--decoder-attention-heads", str(p.heads),
        "--dropout", str(p.dropout),
    ]  # fmt: skip


def train_args(
    data: Path, save_dir: Path, profile: Profile, seed: int, src: str, tgt: str
) -> List[str]:
    """Everything but task and criterion: the same model and budget for every system."""
    p = profile
    return [
        "fairseq-train", str(data), "--user-dir", user_dir(), "-s", src, "-t", tgt,
        *model_args(p),
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", str(p.lr),
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(p.warmup),
        "--warmup-init-lr", "1e-07", "--label-smoothing", "0.1",
        "--max-tokens", str(p.max_tokens), "--max-update", str(p.updates),
        "--seed", str(seed), "--cpu", "--num-workers", "0", "--save-dir", str(save_dir),
        "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "25",
        "--no-progress-bar",
    ]  # fmt: skip


MASK_CONTROLS = Path(__file__).resolve().parent / "mask_controls"


def with_mask_control(
    command: Sequence[str], control: str, labels: Path, noise: float
) -> List[str]:
    """A training command without a criterion, made a mask control (``oracle-mask``: the
    labels' mask; ``random-mask``: a random share ``noise``): the controls' user dir and
    criterion, which run GGLM's pipeline with that mask."""
    out = list(command)
    out[out.index("--user-dir") + 1] = str(MASK_CONTROLS)
    mask = (["--mask-control", "labels", "--mask-labels", str(labels)]
            if control == "oracle-mask" else
            ["--mask-control", "random", "--mask-random-rate", str(noise)])  # fmt: skip
    return [*out, "--criterion", "gglm_control_masked_cross_entropy", *mask]


def final_lr(profile: Profile) -> float:
    """The inverse_sqrt learning rate at the last update (fine-tuning continues with it)."""
    return profile.lr * min(1.0, (profile.warmup / max(profile.updates, 1)) ** 0.5)


def generate(
    data: Path,
    checkpoint: Path,
    subset: str,
    size: int,
    src: str,
    tgt: str,
    beam: int,
    out_dir: Path,
    post_process: Optional[str] = "sentencepiece",
) -> Tuple[List[str], int, float]:
    """Detokenised hypotheses of the ``size`` sentences of ``subset`` in corpus order (empty
    where fairseq gave none), how many it gave none for, and the seconds it took.

    Runs fairseq-generate in this process (saves the seconds of importing torch and fairseq
    per call); its full output goes to ``out_dir/generate-SUBSET.txt``. ``post_process``
    None: the hypotheses are kept as tokenised (word-level data).
    """
    from fairseq import options
    from fairseq_cli import generate as fairseq_generate

    start = time.time()
    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(
        parser,
        [str(data), "--user-dir", user_dir(), "--task", "translation", "-s", src, "-t", tgt,
         "--path", str(checkpoint), "--gen-subset", subset, "--beam", str(beam),
         "--batch-size", "128", "--max-len-a", "1.2", "--max-len-b", "10",
         *(["--post-process", post_process] if post_process else []),
         "--cpu", "--num-workers", "0",
         # The default multiple of 8 made fairseq drop the last, smaller batch (measured:
         # 512 of Multi30k's 514 validation lines translated).
         "--required-batch-size-multiple", "1",
         "--results-path", str(out_dir)],
    )  # fmt: skip
    fairseq_generate.main(args)
    hypotheses: Dict[int, str] = {}
    output = out_dir / f"generate-{subset}.txt"
    for line in output.read_text(encoding="utf-8").splitlines():
        if line.startswith("D-"):
            index, _, text = line[2:].split("\t", 2)
            hypotheses[int(index)] = text
    missing = sum(1 for i in range(size) if i not in hypotheses)
    return [hypotheses.get(i, "") for i in range(size)], missing, time.time() - start


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Dict[str, object]:
    """Corpus BLEU and chrF with sacrebleu's defaults, with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": round(bleu.corpus_score(list(hypotheses), [list(references)]).score, 2),
        "chrf": round(chrf.corpus_score(list(hypotheses), [list(references)]).score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def record_scores(save_dir: Path, size: int) -> Dict[str, np.ndarray]:
    """Per training example: GGLM mask rate, mean alignment and the alignment of its last
    visit, the latest in training (NaN where never seen)."""
    record = ExampleRecord.load(str(save_dir / RECORD_FILE), mmap=True)
    rate = fit_to(record.mask_rate(), size)
    return {
        "mask_rate": rate,
        "alignment_mean": fit_to(record.alignment_mean(), size),
        "alignment_last": np.where(np.isnan(rate), np.nan, fit_to(record.alignment_last, size)),
    }


def machine() -> Dict[str, object]:
    """CPU model and core count as ``lscpu`` reports them, plus torch's thread count."""
    import torch

    info: Dict[str, object] = {
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def load_results(path: Path) -> Dict[str, object]:
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


def save_results(path: Path, results: Dict[str, object]) -> None:
    """Write atomically, so an interrupted run never leaves half a JSON."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def profile_dict(profile: Profile) -> Dict[str, object]:
    return asdict(profile)


_LOCKS: List[object] = []  # open lock files, held for the life of the process


def lock_work(work: Path) -> None:
    """Take ``WORK/.lock`` or stop, naming the process that holds it."""
    lock = open(work / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        raise SystemExit(
            f"{work} is in use by another runner (pid {lock.read().strip() or '?'}); "
            "wait for it or use another --work"
        ) from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    _LOCKS.append(lock)


def open_results(
    work: Path, experiment: str, setting: Dict[str, object], profile: Profile,
    argv: Sequence[str],
) -> Tuple[Path, Dict[str, object]]:
    """The run's results JSON, checked against ``setting`` and stamped with this command.
    Holds ``WORK/.lock`` until the process ends: a second runner on the same folder would
    delete the first one's checkpoints and overwrite its logs."""
    lock_work(work)
    results_path = work / "results.json"
    results = load_results(results_path)
    if results and results.get("setting") != setting:
        raise SystemExit(f"{results_path} holds {results.get('setting')}; use another --work")
    results.update(
        experiment=experiment,
        setting=setting,
        profile_config=profile_dict(profile),
        machine=machine(),
    )
    command_line = f"python scripts/experiments/{experiment}.py " + shlex.join(argv)
    if command_line not in results.setdefault("commands", []):
        results["commands"].append(command_line)
    return results_path, results

