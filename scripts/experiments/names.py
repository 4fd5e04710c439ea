"""Names the Multi30k runner writes and the results page reads (one definition for both)."""

from typing import Optional

# The runner's default --clean-set (val lines 0-499, the split "clean").
DEFAULT_CLEAN_SET = "val500"
# Systems that read the clean set: another --clean-set NAME adds -clean-NAME to their names.
CLEAN_USERS = ("gglm", "finetune", "finetune-gglm")
# Setup changes a run's setting names when they differ from the profile's defaults
# (--dropout, --subword-data, --ffn); runs without them are the default setup.
SETUP_CHANGES = ("dropout", "subword_data", "ffn")
# Systems that continue another system's training on the clean set -> the system they start from.
FINE_TUNED = {"finetune": "baseline", "finetune-gglm": "gglm"}
# Systems --tag names (variants beside the default system of the kind); a tagged fine-tuned
# system starts from the system of the same tag.
TAGGED = ("gglm", "baseline", *FINE_TUNED)


def clean_suffix(clean_set: str) -> str:
    """What a clean set adds to the names of ``CLEAN_USERS``."""
    return "" if clean_set == DEFAULT_CLEAN_SET else f"-clean-{clean_set}"


def system_name(
    kind: str, tag: str = "", clean_set: str = DEFAULT_CLEAN_SET,
    finetune_updates: Optional[int] = None,
) -> str:  # fmt: skip
    """The runner's name of a system of ``kind``: ``KIND-TAG`` for a tagged one (``TAGGED``),
    then ``-uN`` for a fine-tuned system given ``--finetune-updates N``, then the clean set's
    suffix."""
    name = f"{kind}-{tag}" if kind in TAGGED and tag else kind
    if kind in FINE_TUNED and finetune_updates is not None:
        name += f"-u{finetune_updates}"
    return name + clean_suffix(clean_set) if kind in CLEAN_USERS else name
