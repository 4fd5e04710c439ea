"""Silence the warnings fairseq 0.12 triggers on every command with the set-up's Hydra 1.3
(fairseq calls Hydra APIs deprecated since 1.1) and torch 2.x (deprecated torch calls in
fairseq's own code; pinned memory asked for on CPU-only machines). None of them is anything a
user can act on; all other warnings stay."""

import warnings
from typing import Tuple, Type

SPURIOUS: Tuple[Tuple[str, Type[Warning]], ...] = (
    (r"hydra\.experimental\.(initialize|compose)\(\) is no longer experimental", UserWarning),
    (r"\s*The version_base parameter is not specified", UserWarning),
    (r"In '.*': Usage of deprecated keyword in package header", UserWarning),
    (r"\s*'.*' is validated against ConfigStore schema with the same name", UserWarning),
    (r"\s*The strict flag in the compose API is deprecated", UserWarning),
    (r"'pin_memory' argument is set as true but no accelerator is found", UserWarning),
    (r"Support for mismatched key_padding_mask and attn_mask is deprecated", UserWarning),
    (r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated", FutureWarning),
)


def silence_spurious_warnings() -> None:
    """Ignore exactly the warnings in :data:`SPURIOUS`."""
    for message, category in SPURIOUS:
        warnings.filterwarnings("ignore", message=message, category=category)
