from pathlib import Path

import pytest
from helpers import binarize, write_corpus


@pytest.fixture(scope="session")
def data_bin(tmp_path_factory) -> Path:
    """Binarised tiny corpus: train (30% noise), valid, test and a clean split."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root / "text", {"train": 240, "valid": 30, "test": 30, "clean": 40})
    binarize(root / "text", root / "bin")
    return root / "bin"


@pytest.fixture(scope="session")
def joined_data_bin(tmp_path_factory) -> Path:
    """The same kind of corpus with one joined dictionary, for --share-all-embeddings."""
    root = tmp_path_factory.mktemp("joined")
    write_corpus(root / "text", {"train": 120, "valid": 20, "test": 20, "clean": 30}, seed=4)
    binarize(root / "text", root / "bin", extra=["--joined-dictionary"])
    return root / "bin"
