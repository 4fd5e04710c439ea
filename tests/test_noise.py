"""Noise injection: counts, types, determinism and what each noise type does to a target."""

import collections
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gglm_fairseq.noise import NOISE_TYPES, corrupt, main, read_lines, write_lines

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"


def make_corpus(n: int, seed: int = 0):
    """Seeded pairs with distinct words per line (so shuffles and misalignments are visible)."""
    rng = np.random.default_rng(seed)
    source, target, third = [], [], []
    for i in range(n):
        length = int(rng.integers(3, 12))
        source.append(" ".join(f"s{i}w{k}" for k in range(length)))
        target.append(" ".join(f"t{i}w{k}" for k in range(length + int(rng.integers(0, 3)))))
        third.append(" ".join(f"f{i}w{k}" for k in range(length)))
    return source, target, third


def check_noise(source, target, third, noisy, labels):
    """Assert that every pair is what its label says."""
    for i, (label, new) in enumerate(zip(labels, noisy)):
        words, new_words = target[i].split(), new.split()
        if label == "clean":
            assert new == target[i]
        elif label == "misaligned":
            assert new != target[i] and new in target
        elif label == "untranslated":
            assert new == source[i]
        elif label == "wrong_language":
            assert new == third[i]
        elif label == "truncated":
            assert new_words == words[: len(new_words)]
            assert 1 <= len(new_words)
            assert len(new_words) <= max(1, math.floor(0.6 * len(words) + 0.5))
            assert len(new_words) >= math.ceil(0.2 * len(words) - 0.5)
            if len(words) >= 2:
                assert len(new_words) < len(words)
        elif label == "shuffled":
            assert sorted(new_words) == sorted(words)
            if len(set(words)) >= 2:
                assert new_words != words
        else:
            raise AssertionError(f"unexpected label {label!r}")


@pytest.mark.parametrize("n, fraction", [(50, 0.4), (37, 0.3), (10, 0.7), (8, 1.0), (9, 0.0)])
def test_counts_and_even_spread(n, fraction):
    source, target, third = make_corpus(n)
    noisy, labels = corrupt(source, target, fraction, seed=3, third_language=third)
    assert len(noisy) == len(labels) == n
    counts = collections.Counter(labels)
    k = round(fraction * n)
    assert n - counts["clean"] == k
    per_type = [counts[t] for t in NOISE_TYPES]
    assert sum(per_type) == k
    assert max(per_type) - min(per_type) <= 1
    check_noise(source, target, third, noisy, labels)


def test_each_type_does_what_it_says():
    source, target, third = make_corpus(200, seed=1)
    noisy, labels = corrupt(source, target, 0.5, seed=7, third_language=third)
    assert collections.Counter(labels) == {"clean": 100, **{t: 20 for t in NOISE_TYPES}}
    check_noise(source, target, third, noisy, labels)
    # A misaligned target comes from another pair, not a fixed one.
    moved = [noisy[i] for i, label in enumerate(labels) if label == "misaligned"]
    assert len(set(moved)) > 10


def test_types_subset_and_order():
    source, target, _ = make_corpus(30)
    noisy, labels = corrupt(source, target, 0.4, seed=2, types=["shuffled", "untranslated"])
    assert collections.Counter(labels) == {"clean": 18, "shuffled": 6, "untranslated": 6}
    check_noise(source, target, None, noisy, labels)
    # A single type may be given as a plain string.
    _, labels = corrupt(source, target, 0.2, seed=2, types="truncated")
    assert collections.Counter(labels) == {"clean": 24, "truncated": 6}


def test_deterministic_and_seed_sensitive():
    source, target, third = make_corpus(60)
    first = corrupt(source, target, 0.4, seed=11, third_language=third)
    assert corrupt(source, target, 0.4, seed=11, third_language=third) == first
    other = corrupt(source, target, 0.4, seed=12, third_language=third)
    assert other[1] != first[1]
    assert other[0] != first[0]
    # The inputs are not modified in place.
    assert (source, target, third) == make_corpus(60)


def test_shuffle_with_repeated_words_still_differs():
    source = ["x"] * 40
    target = ["a a b"] * 20 + ["b b b b"] * 20
    noisy, labels = corrupt(source, target, 1.0, seed=0, types=["shuffled"])
    assert set(labels) == {"shuffled"}
    assert all(new != "a a b" for new in noisy[:20])
    assert noisy[20:] == target[20:]  # one distinct word: no different order exists


def test_misaligned_avoids_duplicate_targets():
    source = [f"s{i}" for i in range(30)]
    target = ["same"] * 29 + ["other"]
    noisy, _ = corrupt(source, target, 1.0, seed=4, types=["misaligned"])
    assert noisy == ["other"] * 29 + ["same"]


def test_truncate_and_shuffle_edge_lines():
    source = ["s"] * 3
    target = ["one", "", "two  words"]
    noisy, _ = corrupt(source, target, 1.0, seed=0, types=["truncated"])
    assert noisy == ["one", "", "two"]
    noisy, _ = corrupt(source, target, 1.0, seed=0, types=["shuffled"])
    assert noisy == ["one", "", "words two"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fraction": -0.1}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": float("nan")}, "fraction"),
        ({"target": ["a"] * 4}, "target has 4"),
        ({"third_language": ["a"] * 4}, "third_language has 4"),
        ({"types": ["misaligned", "typo"]}, "unknown noise type"),
        ({"types": []}, "no noise types"),
        ({"types": ["shuffled", "shuffled"]}, "repeated"),
        ({"third_language": None}, "wrong_language"),
    ],
)
def test_bad_arguments(kwargs, message):
    source, target, third = make_corpus(5)
    arguments = dict(
        source=source, target=target, fraction=0.4, seed=0, third_language=third, types=NOISE_TYPES
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        corrupt(**arguments)


def test_misaligned_needs_two_pairs():
    with pytest.raises(ValueError, match="at least 2"):
        corrupt(["s"], ["t"], 1.0, seed=0, types=["misaligned"])


def write_corpus(tmp_path, n=20):
    source, target, third = make_corpus(n)
    paths = {name: tmp_path / f"train.{name}" for name in ("en", "de", "fr")}
    for lines, path in zip((source, target, third), paths.values()):
        write_lines(str(path), lines)
    return (source, target, third), paths


def test_cli_in_process(tmp_path, capsys):
    (source, target, third), paths = write_corpus(tmp_path)
    out_tgt, out_labels = tmp_path / "noisy.de", tmp_path / "noisy.labels"
    argv = ["--src", str(paths["en"]), "--tgt", str(paths["de"]), "--fraction", "0.5"]
    argv += ["--seed", "5", "--out-tgt", str(out_tgt), "--out-labels", str(out_labels)]
    assert main(argv + ["--third", str(paths["fr"])]) == 0
    noisy, labels = read_lines(str(out_tgt)), read_lines(str(out_labels))
    assert (noisy, labels) == corrupt(source, target, 0.5, 5, third)
    assert "clean 10" in capsys.readouterr().out

    # Without a third language the default types leave 'wrong_language' out.
    assert main(argv) == 0
    labels = read_lines(str(out_labels))
    assert "wrong_language" not in labels
    assert labels.count("clean") == 10
    assert sorted(labels.count(t) for t in NOISE_TYPES if t != "wrong_language") == [2, 2, 3, 3]

    assert main(argv + ["--types", "shuffled,truncated"]) == 0
    assert set(read_lines(str(out_labels))) == {"clean", "shuffled", "truncated"}


def test_cli_errors(tmp_path, capsys):
    _, paths = write_corpus(tmp_path)
    argv = ["--src", str(paths["en"]), "--tgt", str(paths["de"]), "--out-tgt", "x"]
    argv += ["--out-labels", str(tmp_path / "y")]
    assert main(argv + ["--fraction", "2"]) == 1
    assert "gglm-noise: error: fraction must be in [0, 1]" in capsys.readouterr().err
    assert main(argv + ["--fraction", "0.5", "--types", "wrong_language"]) == 1
    assert "needs third_language" in capsys.readouterr().err
    missing = ["--src", str(tmp_path / "missing.en")] + argv[2:] + ["--fraction", "0.5"]
    assert main(missing) == 1
    assert "missing.en" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_subprocess(tmp_path):
    (source, target, third), paths = write_corpus(tmp_path)
    out_tgt, out_labels = tmp_path / "noisy.de", tmp_path / "noisy.labels"
    command = [sys.executable, "-m", "gglm_fairseq.noise", "--src", str(paths["en"])]
    command += ["--tgt", str(paths["de"]), "--third", str(paths["fr"]), "--fraction", "0.4"]
    command += ["--seed", "1", "--out-tgt", str(out_tgt), "--out-labels", str(out_labels)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gglm-noise: 20 pairs: clean 12" in done.stdout
    assert (read_lines(str(out_tgt)), read_lines(str(out_labels))) == corrupt(
        source, target, 0.4, 1, third
    )


def test_multi30k_with_french_as_wrong_language():
    if not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is not here")
    source, target, third = (
        read_lines(str(MULTI30K / f"train.{lang}"))[:150] for lang in ("en", "de", "fr")
    )
    noisy, labels = corrupt(source, target, 0.4, seed=1, third_language=third)
    assert collections.Counter(labels) == {"clean": 90, **{t: 12 for t in NOISE_TYPES}}
    check_noise(source, target, third, noisy, labels)
