"""The Multi30k runner's output checks: copies of the source and French outputs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "experiments"))
import noisy_multi30k  # noqa: E402
from common import PROFILES  # noqa: E402
from noisy_multi30k import (  # noqa: E402
    EVAL_SETS,
    add_output_measures,
    both_translated,
    output_shares,
    parse_args,
    system_command,
)


def test_output_shares_count_copies_and_french():
    sources = ["A man runs .", "Two dogs play .", "A girl sings .", "A boy reads ."]
    hypotheses = [
        "A man runs .",  # a copy of the source
        "Deux chiens jouent dans la neige .",  # French
        "Ein Mädchen singt auf der Bühne .",  # German
        "Un garçon lit un livre .",  # French, but no listed function word: missed
    ]
    assert output_shares(hypotheses, sources) == {"copied": 0.25, "french": 0.25}
    mixed = ["le chien und die Katze mit dem Ball"]  # German function words outnumber
    assert output_shares(mixed, ["x"]) == {"copied": 0.0, "french": 0.0}


def test_both_translated_scores_both_systems_where_neither_copied_nor_wrote_french():
    sources = ["A man runs .", "Two dogs play .", "A girl sings .", "A boy reads ."]
    references = ["Ein Mann rennt .", "Zwei Hunde spielen .", "Ein Mädchen singt .",
                  "Ein Junge liest ."]  # fmt: skip
    ours = ["Ein Mann rennt .", "Zwei Hunde spielen .", "Ein Mädchen singt .", "A boy reads ."]
    baseline = ["A man runs .", "Les chiens et le chat .", "Ein Mädchen singt .",
                "Ein Junge liest ."]  # fmt: skip
    # Sentence 3 only: the baseline copied 1 and wrote French for 2, ours copied 4.
    assert both_translated(ours, baseline, sources, references) == {
        "sentences": 1, "bleu": 100.0, "baseline_bleu": 100.0}
    baseline[2] = "Ein Junge liest ."
    measured = both_translated(ours, baseline, sources, references)
    assert measured["sentences"] == 1 and measured["bleu"] > measured["baseline_bleu"]
    assert both_translated(sources, sources, sources, references) == {"sentences": 0}


def test_add_output_measures_keeps_the_record_where_the_outputs_are_gone(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "hyp").mkdir()
    for subset, label in EVAL_SETS.items():
        (tmp_path / "text" / f"{subset}.en").write_text("A man runs .\n", encoding="utf-8")
        (tmp_path / "text" / f"{subset}.de").write_text("Ein Mann rennt .\n", encoding="utf-8")
        (tmp_path / "hyp" / f"baseline.{label}.de").write_text("A man runs .\n", encoding="utf-8")
    recorded = {"bleu": 1.0, "copied": 0.5, "french": 0.5}
    entry = {label: dict(recorded) for label in EVAL_SETS.values()}
    valid = EVAL_SETS["valid"]
    (tmp_path / "hyp" / f"gglm.{valid}.de").write_text("Ein Mann rennt .\n", encoding="utf-8")
    add_output_measures(entry, "gglm", tmp_path)
    # valid: measured again (no copy, no French; the baseline copied, so nothing both translate)
    assert entry[valid] == {"bleu": 1.0, "copied": 0.0, "french": 0.0,
                            "both_translated": {"sentences": 0}}  # fmt: skip
    assert all(entry[label] == recorded for label in EVAL_SETS.values() if label != valid)


def flag(command, name):
    return command[command.index(name) + 1]


def test_candidate_max_tokens_enlarges_the_tagged_systems_batches(tmp_path):
    profile = PROFILES["quick"]
    args = parse_args(["--work", str(tmp_path), "--candidate-max-tokens", "8192", "--tag", "big",
                       "--systems", "baseline,gglm,finetune",
                       "--gglm-args", "--gglm-keep-tokens 4096"])  # fmt: skip
    assert args.system_names == ["baseline-big", "gglm-big", "finetune-big"]
    gglm = system_command("gglm-big", args, profile, tmp_path)
    assert flag(gglm, "--max-tokens") == "8192" and gglm.count("--max-tokens") == 1
    assert flag(gglm, "--clean-max-tokens") == str(profile.max_tokens // 4)
    assert flag(gglm, "--gglm-keep-tokens") == "4096"
    # The control: the baseline on the same batches, without a mask, under its own name.
    baseline = system_command("baseline-big", args, profile, tmp_path)
    assert flag(baseline, "--max-tokens") == "8192" and baseline.count("--max-tokens") == 1
    assert flag(baseline, "--criterion") == "label_smoothed_cross_entropy"
    # Fine-tuning starts from the baseline of the same tag, on the profile's batches.
    assert args.starts == {"finetune-big": "baseline-big"}
    finetune = system_command("finetune-big", args, profile, tmp_path)
    assert flag(finetune, "--max-tokens") == "4096"
    assert flag(finetune, "--restore-file").endswith("checkpoints/baseline-big/checkpoint_last.pt")
    plain = parse_args(["--work", str(tmp_path)])
    default = system_command("gglm", plain, profile, tmp_path)
    assert flag(default, "--max-tokens") == "4096" and "--clean-max-tokens" not in default


def test_larger_batches_without_a_tag_are_refused(tmp_path, capsys):
    """Untagged, the larger batches would overwrite the default baseline's and GGLM's records."""
    import pytest

    with pytest.raises(SystemExit):
        parse_args(["--work", str(tmp_path), "--candidate-max-tokens", "8192"])
    assert "--candidate-max-tokens needs --tag" in capsys.readouterr().err


def test_a_second_runner_on_the_same_folder_is_refused(tmp_path):
    """Two runners on one --work would delete each other's checkpoints: the second stops."""
    import subprocess

    from common import lock_work

    lock_work(tmp_path)
    scripts = str(Path(__file__).parents[1] / "scripts" / "experiments")
    script = (f"import sys; sys.path.insert(0, {scripts!r}); from pathlib import Path; "
              f"from common import lock_work; lock_work(Path({str(tmp_path)!r}))")  # fmt: skip
    second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert second.returncode == 1
    assert "is in use by another runner" in second.stderr
    other = tmp_path / "other"
    other.mkdir()
    free = subprocess.run([sys.executable, "-c", script.replace(str(tmp_path), str(other))],
                          capture_output=True, text=True)  # fmt: skip
    assert free.returncode == 0, free.stderr


def test_preparing_the_data_again_keeps_the_other_clean_sets(tmp_path, monkeypatch):
    """A results file restored from the archive into an empty folder has its data prepared
    again; the descriptions of the other clean sets its systems used must survive that."""
    monkeypatch.setattr(noisy_multi30k, "prepare_data", lambda *_: {"train_pairs": 400})
    args = parse_args(["--work", str(tmp_path)])
    val50 = {"val50": {"pairs": 50, "text": "val lines 0-49"}}
    earlier = {"train_pairs": 400, "clean_sets": val50}
    data = noisy_multi30k.prepared_again(args, PROFILES["smoke"], tmp_path, earlier)
    assert data == {"train_pairs": 400, "clean_sets": val50}
    assert noisy_multi30k.prepared_again(args, PROFILES["smoke"], tmp_path, {}) == {
        "train_pairs": 400}


def test_data_prepared_again_must_match_the_record(tmp_path, monkeypatch):
    """A restored results file's systems were trained on the recorded data: data that come
    out otherwise (another sentencepiece, noise or dictionary) stop the runner."""
    import pytest

    sums = {"text/train.de": "ab12"}
    fresh = {"train_pairs": 400, "dictionary_size": 7996, "checksums": sums}
    monkeypatch.setattr(noisy_multi30k, "prepare_data", lambda *_: dict(fresh))
    args = parse_args(["--work", str(tmp_path)])
    again = noisy_multi30k.prepared_again
    # An archive from before the checksums: checked on the rest, and gets them.
    assert again(args, PROFILES["smoke"], tmp_path, {"dictionary_size": 7996}) == fresh
    assert again(args, PROFILES["smoke"], tmp_path, dict(fresh, prepare_seconds=9.0)) == fresh
    with pytest.raises(SystemExit, match="differ from the results file's record in checksums"):
        again(args, PROFILES["smoke"], tmp_path, dict(fresh, checksums={"text/train.de": "cd"}))
    with pytest.raises(SystemExit, match="in dictionary_size"):
        again(args, PROFILES["smoke"], tmp_path, {"dictionary_size": 8000})


def test_data_checksums_name_each_data_file(tmp_path):
    for name in noisy_multi30k.DATA_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    sums = noisy_multi30k.data_checksums(tmp_path)
    assert list(sums) == list(noisy_multi30k.DATA_FILES)
    assert len(set(sums.values())) == len(sums) and all(len(v) == 16 for v in sums.values())
