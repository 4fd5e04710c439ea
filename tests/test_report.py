"""gglm-report on a hand-made record: ranking, filtered corpus, plots, AUCs and errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gglm_fairseq.noise import read_lines, write_lines
from gglm_fairseq.record import RECORD_FILE, ExampleRecord
from gglm_fairseq.report import detection_auc, main

REPO = Path(__file__).resolve().parents[1]

# Per example: seen, masked, rate, mean alignment, last alignment (id 6 never seen).
# 0: 3, 3,    1.0,  -1.0,  -1.0      4: 1, 0.25, 0.25, 0.5, 0.5
# 1: 2, 0,    0.0,   1.5,   1.0      5: 1, 1,    1.0, -2.0, -2.0
# 2: 3, 2,    2/3,  -0.4/3, -0.4     6: 0
# 3: 2, 0,    0.0,   1.5,   2.0
UPDATES = [
    (1, [0, 1, 2, 3, 4, 5], [-1.0, 2.0, -0.5, 1.0, 0.5, -2.0], [1, 0, 1, 0, 0.25, 1]),
    (2, [0, 1, 2, 3], [-1.0, 1.0, 0.5, 2.0], [1, 0, 0, 0]),
    (3, [0, 2], [-1.0, -0.4], [1, 1]),
]
# Mask rate descending, ties by mean alignment ascending, then id; never seen last.
EXPECTED_ORDER = [5, 0, 2, 4, 1, 3, 6]
LABELS = ["misaligned", "clean", "clean", "V", "untranslated", "misaligned", "truncated"]
# Seen noisy rates {1, .25, 1} vs clean {0, 2/3, 0}: 3 + 3 + 2 wins of 9 pairs.
EXPECTED_AUC = {"all": 8 / 9, "misaligned": 1.0, "untranslated": 2 / 3}


def make_record() -> ExampleRecord:
    record = ExampleRecord(16)  # longer than the corpus, as a grown record can be
    for update_num, ids, alignments, masks in UPDATES:
        record.update(ids, alignments, masks, update_num)
    return record


@pytest.fixture
def inputs(tmp_path):
    source = [f"source {i}" for i in range(7)]
    target = [f"target {i}" for i in range(7)]
    target[3] = "target\t3"  # a tab must not shift the TSV columns
    paths = {
        "src": tmp_path / "train.en",
        "tgt": tmp_path / "train.de",
        "labels": tmp_path / "train.labels",
        "record": tmp_path / "ckpt" / RECORD_FILE,
    }
    write_lines(str(paths["src"]), source)
    write_lines(str(paths["tgt"]), target)
    write_lines(str(paths["labels"]), LABELS)
    make_record().save(str(paths["record"]))
    return source, target, paths


def argv_for(paths, out, labels=True):
    argv = ["--record", str(paths["record"]), "--src", str(paths["src"])]
    argv += ["--tgt", str(paths["tgt"]), "--out", str(out)]
    return argv + (["--labels", str(paths["labels"])] if labels else [])


def read_tsv(path):
    rows = [line.split("\t") for line in read_lines(str(path))]
    return rows[0], rows[1:]


def assert_png(path):
    data = Path(path).read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_with_labels(inputs, tmp_path, capsys):
    source, target, paths = inputs
    out = tmp_path / "report"
    assert main(argv_for(paths, out)) == 0
    printed = capsys.readouterr().out

    header, rows = read_tsv(out / "ranked.tsv")
    assert header == [
        "id",
        "mask_rate",
        "times_seen",
        "times_masked",
        "alignment_mean",
        "alignment_last",
        "label",
        "source",
        "target",
    ]
    assert [int(row[0]) for row in rows] == EXPECTED_ORDER
    by_id = {int(row[0]): row[1:] for row in rows}
    assert by_id[2] == ["0.666667", "3", "2", "-0.133333", "-0.4", "clean", "source 2", "target 2"]
    assert by_id[4] == ["0.25", "1", "0.25", "0.5", "0.5", "untranslated", "source 4", "target 4"]
    assert by_id[3] == ["0", "2", "0", "1.5", "2", "V", "source 3", "target 3"]
    assert by_id[6] == ["", "0", "0", "", "", "truncated", "source 6", "target 6"]

    kept = [1, 3, 4, 6]  # mask rate < 0.5, or never seen
    assert read_lines(str(out / "filtered.en")) == [source[i] for i in kept]
    assert read_lines(str(out / "filtered.de")) == [target[i] for i in kept]
    assert "kept 4 of 7 pairs, dropped 3" in printed

    for name in ("mask_rate_over_training.png", "mask_rate_by_label.png"):
        assert_png(out / name)

    header, rows = read_tsv(out / "auc.tsv")
    assert header == ["comparison", "n_noisy", "n_clean", "auc"]
    table = {row[0]: (int(row[1]), int(row[2]), float(row[3])) for row in rows}
    assert set(table) == set(EXPECTED_AUC)  # 'truncated' was never seen: no AUC
    assert table["all"][:2] == (3, 3)
    assert table["misaligned"][:2] == (2, 3)
    for name, auc in EXPECTED_AUC.items():
        assert table[name][2] == pytest.approx(auc, abs=1e-6)
    assert "noisy (3) vs clean (3): 0.8889" in printed


def test_threshold_and_record_folder(inputs, tmp_path):
    source, _, paths = inputs
    out = tmp_path / "strict"
    argv = argv_for(paths, out, labels=False) + ["--max-mask-rate", "0.2"]
    argv[1] = str(paths["record"].parent)  # the checkpoint folder finds gglm_record.npz
    assert main(argv) == 0
    assert read_lines(str(out / "filtered.en")) == [source[i] for i in (1, 3, 6)]
    header, _ = read_tsv(out / "ranked.tsv")
    assert "label" not in header
    assert not (out / "auc.tsv").exists()
    assert not (out / "mask_rate_by_label.png").exists()
    assert_png(out / "mask_rate_over_training.png")


def test_detection_auc_by_hand():
    rate = make_record().mask_rate()[:7]
    assert detection_auc(rate, LABELS, {"clean", "V"}) == pytest.approx(EXPECTED_AUC)
    # With only 'clean' as clean, V (rate 0) is noisy: 5.5 of 8 pairs; V alone 0.5 of 2.
    auc = detection_auc(rate, LABELS, {"clean"})
    assert auc == pytest.approx({"all": 5.5 / 8, "misaligned": 1.0, "untranslated": 0.5, "V": 0.25})
    assert detection_auc(rate, LABELS, "clean, V") == pytest.approx(EXPECTED_AUC)
    assert detection_auc(rate, LABELS, {"nothing"}) == {}
    with pytest.raises(ValueError, match="7 mask rates but 6 labels"):
        detection_auc(rate, LABELS[:6], {"clean"})


def test_empty_record_and_same_extensions(tmp_path, capsys):
    write_lines(str(tmp_path / "a.txt"), ["x", "y"])
    write_lines(str(tmp_path / "b.txt"), ["u", "v"])
    ExampleRecord().save(str(tmp_path / RECORD_FILE))
    argv = ["--record", str(tmp_path / RECORD_FILE), "--src", str(tmp_path / "a.txt")]
    argv += ["--tgt", str(tmp_path / "b.txt"), "--out", str(tmp_path / "out")]
    assert main(argv + ["--labels", str(tmp_path / "a.txt")]) == 0
    printed = capsys.readouterr().out
    assert "kept 2 of 2 pairs" in printed and "not defined" in printed
    assert read_lines(str(tmp_path / "out" / "filtered.src")) == ["x", "y"]
    assert read_lines(str(tmp_path / "out" / "filtered.tgt")) == ["u", "v"]
    assert_png(tmp_path / "out" / "mask_rate_over_training.png")


def test_errors(inputs, tmp_path, capsys):
    source, target, paths = inputs
    out = tmp_path / "err"

    argv = argv_for(paths, out)
    argv[1] = str(tmp_path / "nowhere" / RECORD_FILE)
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == (
        f"gglm-report: error: record not found: {tmp_path / 'nowhere' / RECORD_FILE}"
    )

    write_lines(str(paths["src"]), source[:5])
    write_lines(str(paths["tgt"]), target[:5])
    assert main(argv_for(paths, out)) == 1
    err = capsys.readouterr().err
    assert "example id 5 but the corpus has only 5 lines" in err
    assert len(err.strip().splitlines()) == 1

    write_lines(str(paths["src"]), source)
    assert main(argv_for(paths, out)) == 1
    assert "has 7 lines but" in capsys.readouterr().err

    write_lines(str(paths["tgt"]), target)
    write_lines(str(paths["labels"]), LABELS[:6])
    assert main(argv_for(paths, out)) == 1
    assert "train.labels has 6 lines but the corpus has 7" in capsys.readouterr().err

    np.savez(str(tmp_path / "other.npz"), x=np.zeros(3))
    argv = argv_for(paths, out, labels=False)
    argv[1] = str(tmp_path / "other.npz")
    assert main(argv) == 1
    assert "not a GGLM record" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_subprocess(inputs, tmp_path):
    _, _, paths = inputs
    out = tmp_path / "sub"
    command = [sys.executable, "-m", "gglm_fairseq.report", *argv_for(paths, out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kept 4 of 7 pairs" in done.stdout
    assert "misaligned (2) vs clean (3): 1.0000" in done.stdout
    assert (out / "ranked.tsv").read_text(encoding="utf-8").count("\n") == 8
