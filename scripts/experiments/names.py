"""Names the Multi30k runner writes and the results page reads (one definition for both)."""

# The runner's default --clean-set (val lines 0-499, the split "clean").
DEFAULT_CLEAN_SET = "val500"
# Systems that read the clean set: another --clean-set NAME adds -clean-NAME to their names.
CLEAN_USERS = ("gglm", "finetune", "finetune-gglm")
# Setup changes a run's setting names when they differ from the profile's defaults
# (--dropout, --subword-data); runs without them are the default setup.
SETUP_CHANGES = ("dropout", "subword_data")


def clean_suffix(clean_set: str) -> str:
    """What a clean set adds to the names of ``CLEAN_USERS``."""
    return "" if clean_set == DEFAULT_CLEAN_SET else f"-clean-{clean_set}"
