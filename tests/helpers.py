"""Test helpers: a tiny generated parallel corpus binarised with fairseq, and ways to
build fairseq objects or train in-process. Everything is seeded."""

import argparse
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models.transformer import TransformerModel, base_architecture

from gglm_fairseq.cli import user_dir

VOCAB = 30
TINY_MODEL = [
    "--arch", "transformer",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16",
    "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]  # fmt: skip


def synthetic_pairs(n: int, rng: random.Random, noise: float = 0.0) -> List[tuple]:
    """'Translation' = reverse the source and rename each word; noisy pairs get random
    targets. Learnable in a few hundred updates by a tiny transformer."""
    pairs = []
    for _ in range(n):
        words = [rng.randrange(VOCAB) for _ in range(rng.randint(3, 9))]
        target = [f"t{w}" for w in reversed(words)]
        if rng.random() < noise:
            target = [f"t{rng.randrange(VOCAB)}" for _ in range(rng.randint(3, 9))]
        pairs.append((" ".join(f"s{w}" for w in words), " ".join(target)))
    return pairs


def write_corpus(directory: Path, sizes: Dict[str, int], noise: float = 0.3, seed: int = 0):
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, n in sizes.items():
        pairs = synthetic_pairs(n, rng, noise if split == "train" else 0.0)
        for side, lang in enumerate(("src", "tgt")):
            (directory / f"{split}.{lang}").write_text("".join(p[side] + "\n" for p in pairs))


def binarize(text: Path, dest: Path, clean: str = "clean", extra: Optional[List[str]] = None):
    """fairseq-preprocess in-process; the clean split goes in as valid1 and is renamed."""
    parser = options.get_preprocessing_parser()
    args = parser.parse_args(
        [
            "--source-lang", "src", "--target-lang", "tgt",
            "--trainpref", str(text / "train"),
            "--validpref", f"{text / 'valid'},{text / clean}",
            "--testpref", str(text / "test"),
            "--destdir", str(dest), "--workers", "1",
        ]  # fmt: skip
        + (extra or [])
    )
    from fairseq_cli import preprocess

    preprocess.main(args)
    for path in dest.glob("valid1.*"):
        path.rename(dest / path.name.replace("valid1", "clean", 1))


def train_args(data: Path, save_dir: Path, *extra: str) -> List[str]:
    return [
        str(data), "--user-dir", user_dir(),
        "--task", "translation_with_clean_set",
        "--criterion", "gradient_masked_cross_entropy", "--label-smoothing", "0.1",
        *TINY_MODEL,
        "--optimizer", "adam", "--lr", "0.003", "--max-tokens", "400",
        "--clean-max-tokens", "150", "--cpu", "--seed", "3", "--num-workers", "0",
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--log-format", "simple",
        "--log-interval", "1", "--no-progress-bar",
        *extra,
    ]  # fmt: skip


def parse_train(argv: List[str]):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    return convert_namespace_to_omegaconf(args)


def train(argv: List[str]) -> None:
    """fairseq-train in this process (much faster than a subprocess)."""
    from fairseq_cli import train as train_cli

    train_cli.main(parse_train(argv))


def build(argv: List[str]):
    """The task, model and criterion fairseq-train would build, with the train split."""
    cfg = parse_train(argv)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion


def load_params(checkpoint: Path) -> Dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu")["model"]


def tiny_transformer(
    share_all_embeddings: bool, dropout: float = 0.0, seed: int = 0, **architecture
):
    """A standalone 1+1-layer fairseq transformer with its dictionary; ``architecture``
    overrides fairseq's arguments (e.g. encoder_learned_pos=True)."""
    from fairseq.data import Dictionary

    torch.manual_seed(seed)
    dictionary = Dictionary()
    for i in range(VOCAB):
        dictionary.add_symbol(f"w{i}")
    args = argparse.Namespace(
        encoder_layers=1, decoder_layers=1, encoder_embed_dim=16, decoder_embed_dim=16,
        encoder_ffn_embed_dim=32, decoder_ffn_embed_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, share_all_embeddings=share_all_embeddings,
        dropout=dropout, attention_dropout=dropout, activation_dropout=dropout,
        max_source_positions=64, max_target_positions=64, **architecture,
    )  # fmt: skip
    base_architecture(args)
    task = argparse.Namespace(source_dictionary=dictionary, target_dictionary=dictionary)
    return TransformerModel.build_model(args, task), dictionary


def copy_bin(data_bin: Path, dest: Path) -> Path:
    shutil.copytree(data_bin, dest)
    return dest



def fairseq_train(argv: List[str], **env: str) -> subprocess.CompletedProcess:
    """fairseq-train in a subprocess with the user's default warning filters (no
    PYTHONWARNINGS), so that spurious warnings would show."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [str(Path(sys.executable).parent / "fairseq-train"), *argv], capture_output=True,
        text=True, env={**environment, **env}, timeout=300,
    )  # fmt: skip
