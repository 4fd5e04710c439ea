"""Bad input files, fuzzed: a truncated, byte-flipped, foreign or empty record or gglm-noise
input either loads or raises GGLMUserError (never another exception type), and gglm-report
and gglm-noise then say so in one line, exit 1, and leave their outputs as they were."""

import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pytest

from gglm_fairseq import noise, report
from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.noise import read_lines, write_lines
from gglm_fairseq.record import RECORD_FILE, ExampleRecord

REPO = Path(__file__).resolve().parents[1]
CASES = 300  # mutations per file, seeded
SOURCE = [f"Grüße {i} – naïve café №{i}" for i in range(12)]  # multi-byte UTF-8 to cut into
TARGET = [f"target {i} ist schön" for i in range(12)]
TYPES = [t for t in noise.NOISE_TYPES if t != "wrong_language"]  # gglm-noise's without --third


def mutations(data: bytes, seed: int) -> Iterator[Tuple[str, bytes]]:
    """Seeded truncations and 1-4 byte flips of ``data``, each with a description."""
    rng = np.random.default_rng(seed)
    for _ in range(CASES):
        if rng.random() < 0.3:
            cut = int(rng.integers(len(data)))
            yield f"cut to {cut} bytes", data[:cut]
        else:
            flipped = bytearray(data)
            positions = rng.integers(len(data), size=int(rng.integers(1, 5))).tolist()
            for position in positions:
                flipped[position] ^= int(rng.integers(1, 256))
            yield f"bytes {positions} flipped", bytes(flipped)


def make_record() -> ExampleRecord:
    record = ExampleRecord()
    record.update(range(10), np.linspace(-1, 1, 10), [1, 0] * 5, 0)
    record.update([2, 3, 11], [0.5, -0.5, 2.0], [0, 1, 0.5], 1)
    return record


@pytest.fixture
def corpus(tmp_path):
    paths = {"src": tmp_path / "train.en", "tgt": tmp_path / "train.de"}
    write_lines(str(paths["src"]), SOURCE)
    write_lines(str(paths["tgt"]), TARGET)
    paths["record"] = tmp_path / RECORD_FILE
    make_record().save(str(paths["record"]))
    return paths


@pytest.mark.parametrize("mmap", [False, True])
def test_fuzzed_record_loads_or_is_a_user_error(corpus, mmap):
    path = corpus["record"]
    valid = path.read_bytes()
    assert len(ExampleRecord.load(str(path), mmap=mmap)) == len(make_record())
    outcomes = {"loaded": 0, "user error": 0}
    for description, data in mutations(valid, seed=1):
        path.write_bytes(data)
        try:
            loaded = ExampleRecord.load(str(path), mmap=mmap)
        except GGLMUserError as error:
            assert str(path) in str(error) and "\n" not in str(error), description
            outcomes["user error"] += 1
        except Exception as error:  # the test's point: no other exception type
            pytest.fail(f"{description}: {type(error).__name__}: {error}")
        else:
            assert len({len(a) for a in loaded.arrays.values()}) == 1, description
            outcomes["loaded"] += 1
    # Flips in the data load (mapped: no CRC check; copied: only where no CRC covers them,
    # e.g. the zip's padding); cuts and header flips do not.
    assert outcomes["user error"] > CASES // 4 and outcomes["loaded"] > 0, outcomes


def foreign_files(folder: Path) -> List[Tuple[str, Path]]:
    """Files that are no GGLM record, by what they are."""
    folder.mkdir(exist_ok=True)
    (folder / "empty.npz").write_bytes(b"")
    (folder / "notes.txt").write_text("not a record\n")
    np.savez(str(folder / "other.npz"), x=np.zeros(3))
    np.save(str(folder / "bare.npy"), np.zeros(3))
    fields = ("seen", "masked", "alignment_sum", "alignment_last", "last_update", "update_num")
    np.savez(str(folder / "pickled.npz"), **{k: np.array([None]) for k in fields})
    np.savez_compressed(str(folder / "lengths.npz"), update_num=0, seen=np.zeros(3),
                        masked=np.zeros(2), alignment_sum=np.zeros(3),
                        alignment_last=np.zeros(3), last_update=np.zeros(3))  # fmt: skip
    names = ["empty", "text", "other keys", "a bare .npy", "pickled objects",
             "compressed, lengths differ"]  # fmt: skip
    files = ["empty.npz", "notes.txt", "other.npz", "bare.npy", "pickled.npz", "lengths.npz"]
    return [(name, folder / file) for name, file in zip(names, files)]


def test_foreign_files_are_user_errors(tmp_path):
    for _, path in foreign_files(tmp_path):
        for mmap in (False, True):
            with pytest.raises(GGLMUserError, match=f"{path}: not a GGLM record"):
                ExampleRecord.load(str(path), mmap=mmap)
    with pytest.raises(GGLMUserError, match="cannot read the record"):
        ExampleRecord.load(str(tmp_path))  # a folder


def report_argv(paths, out: Path, record: Path):
    return ["--record", str(record), "--src", str(paths["src"]), "--tgt", str(paths["tgt"]),
            "--out", str(out)]  # fmt: skip


def test_report_on_a_bad_record_writes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "ranked.tsv").write_text("an earlier report\n")
    for name, path in foreign_files(tmp_path / "foreign"):
        assert report.main(report_argv(corpus, out, path)) == 1, name
        err = capsys.readouterr().err
        assert err.startswith("gglm-report: error: ") and len(err.splitlines()) == 1, err
    # A label named like the overall AUC is found before anything is written, too.
    write_lines(str(tmp_path / "labels"), ["all"] * 6 + ["clean"] * 6)
    argv = report_argv(corpus, out, corpus["record"]) + ["--labels", str(tmp_path / "labels")]
    assert report.main(argv) == 1
    assert "a noisy label is called 'all'" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["ranked.tsv"]
    assert (out / "ranked.tsv").read_text() == "an earlier report\n"


def test_fuzzed_noise_input_reads_or_is_a_user_error(corpus, tmp_path, capsys):
    src = corpus["src"]
    valid = src.read_bytes()
    out_tgt, out_labels = tmp_path / "noisy.de", tmp_path / "noisy.labels"
    argv = ["--src", str(src), "--tgt", str(corpus["tgt"]), "--fraction", "0.5",
            "--out-tgt", str(out_tgt), "--out-labels", str(out_labels)]  # fmt: skip
    failures = 0
    for description, data in mutations(valid, seed=2):
        src.write_bytes(data)
        out_tgt.write_text("old\n")
        out_labels.write_text("old\n")
        try:
            noise.corrupt(read_lines(str(src)), TARGET, 0.5, seed=1, types=TYPES)
        except GGLMUserError:
            failures += 1
            assert noise.main(argv) == 1, description
            err = capsys.readouterr().err
            assert err.startswith("gglm-noise: error: ") and len(err.splitlines()) == 1, err
            assert out_tgt.read_text() == out_labels.read_text() == "old\n", description
        except Exception as error:  # the test's point: no other exception type
            pytest.fail(f"{description}: {type(error).__name__}: {error}")
        else:
            assert noise.main(argv) == 0, description
            assert len(read_lines(str(out_labels))) == len(SOURCE), description
            capsys.readouterr()
    assert CASES // 4 < failures < CASES, failures  # broken UTF-8 and lost lines fail; not all


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def assert_one_line_error(done: subprocess.CompletedProcess, prefix: str) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), done.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["cut", "text"])
def test_report_cli_on_a_bad_record(corpus, tmp_path, damage):
    record = corpus["record"]
    if damage == "cut":
        record.write_bytes(record.read_bytes()[:700])
    else:
        record.write_text("seen,masked\n1,0\n")
    done = run_cli("-m", "gglm_fairseq.report", *report_argv(corpus, tmp_path / "out", record))
    line = assert_one_line_error(done, "gglm-report: error: ")
    assert f"{record}: not a GGLM record" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_noise_cli_on_a_binary_input(corpus, tmp_path):
    corpus["src"].write_bytes(corpus["src"].read_bytes()[:-30] + b"\xff\xfe\n")
    (tmp_path / "noisy.de").write_text("old\n")
    done = run_cli("-m", "gglm_fairseq.noise", "--src", str(corpus["src"]),
                   "--tgt", str(corpus["tgt"]), "--fraction", "0.5",
                   "--out-tgt", str(tmp_path / "noisy.de"),
                   "--out-labels", str(tmp_path / "noisy.labels"))  # fmt: skip
    line = assert_one_line_error(done, "gglm-noise: error: ")
    assert f"{corpus['src']} is not UTF-8 text" in line
    assert (tmp_path / "noisy.de").read_text() == "old\n"
    assert not (tmp_path / "noisy.labels").exists()


@pytest.mark.slow
def test_a_bad_record_through_the_excepthook(tmp_path):
    (tmp_path / RECORD_FILE).write_bytes(b"PK\x03\x04" + bytes(100))
    code = "import sys, gglm_fairseq.record as r; r.ExampleRecord.load(sys.argv[1])"
    done = run_cli("-c", code, str(tmp_path / RECORD_FILE))
    assert_one_line_error(done, "-c: error: ")
