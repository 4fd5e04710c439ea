"""Let fairseq checkpoints load under torch >= 2.6's ``weights_only=True`` default.

fairseq's ``checkpoint_utils`` calls ``torch.load`` without ``weights_only``; its
checkpoints hold an ``argparse.Namespace`` (the ``args`` entry) besides tensors and plain
containers. Allow-listing that one class keeps the safe unpickler on for everything else,
unlike ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.
"""

import argparse

import torch

SAFE_CHECKPOINT_GLOBALS = [argparse.Namespace]


def allow_fairseq_checkpoints() -> None:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 has no weights_only default to satisfy
        add_safe_globals(SAFE_CHECKPOINT_GLOBALS)
