"""The Multi30k experiment runner end to end on a tiny slice (``--profile smoke``): data,
sentencepiece, binarisation, every system, generation, BLEU/chrF and detection AUCs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "multi30k"
SYSTEMS = ("baseline", "gglm", "oracle", "filtered", "finetune", "finetune-gglm", "oracle-mask",
           "random-mask")  # fmt: skip
sys.path.insert(0, str(REPO / "scripts" / "experiments"))
from make_results import CONTROLS  # noqa: E402


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/multi30k is missing")
def test_noisy_multi30k_smoke(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "experiments" / "noisy_multi30k.py"),
         "--profile", "smoke", "--work", str(tmp_path), "--noise", "0.4", "--seed", "1",
         "--systems", ",".join(SYSTEMS), "--data", str(DATA)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["setting"] == {"profile": "smoke", "noise": 0.4, "seed": 1}
    assert results["data"]["train_pairs"] == 400
    # The filter removes every copied target and (nearly) every French one, and little else.
    filtered, labels = results["data"]["filtered"], results["data"]["label_counts"]
    assert filtered["pairs"] + sum(filtered["removed"].values()) == 400
    assert filtered["removed"]["untranslated"] == labels["untranslated"]
    assert filtered["removed"]["wrong_language"] >= 0.8 * labels["wrong_language"]
    assert filtered["removed"].get("clean", 0) <= 0.02 * labels["clean"]
    assert (tmp_path / "bin-filtered" / "train.en-de.de.bin").stat().st_size > 0
    assert set(results["systems"]) == set(SYSTEMS)
    for name in SYSTEMS:
        entry = results["systems"][name]
        for test_set in ("valid", "test_2016_flickr", "test_2017_flickr"):
            assert isinstance(entry[test_set]["bleu"], float)
            assert isinstance(entry[test_set]["chrf"], float)
            assert entry[test_set]["bleu_signature"].startswith("nrefs:1")
    aucs = results["systems"]["gglm"]["detection"]["mask_rate"]
    assert {"all", "misaligned", "untranslated", "wrong_language", "truncated", "shuffled"} <= set(
        aucs
    )
    assert all(0.0 <= auc <= 1.0 for auc in aucs.values())
    assert 0.0 <= results["systems"]["gglm"]["detection"]["neg_alignment_last"]["all"] <= 1.0

    # A system already scored is skipped, but its detection scores are refreshed from the record.
    del results["systems"]["gglm"]["detection"]["neg_alignment_last"]
    (tmp_path / "results.json").write_text(json.dumps(results))
    again = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "experiments" / "noisy_multi30k.py"),
         "--profile", "smoke", "--work", str(tmp_path), "--noise", "0.4", "--seed", "1",
         "--systems", "gglm", "--data", str(DATA)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "gglm: already scored, skipped" in again.stdout + again.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert "neg_alignment_last" in results["systems"]["gglm"]["detection"]

    # The alignment probe of the baseline: every clean gradient and parameter group scored.
    probed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "experiments" / "alignment_probe.py"),
         "--work", str(tmp_path), "--system", "baseline", "--pairs", "60", "--clean-batches", "2",
         "--clean-max-tokens", "256"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probed.returncode == 0, (probed.stdout + probed.stderr)[-3000:]
    probe = json.loads((tmp_path / "probe-baseline.json").read_text())
    assert probe["pairs"] == 60 and len(probe["clean_batch_tokens"]) == 2
    kinds = {(row["direction"], row["parameters"], row["dropout"]) for row in probe["rows"]}
    assert ("one clean batch #2", "all", True) in kinds
    assert ("whole clean set", "cross-attention", False) in kinds
    for row in probe["rows"]:
        assert 0.0 <= row["auc"]["all"] <= 1.0 and 0.0 <= row["clean_masked"] <= 1.0
        if row["direction"] == "whole clean set" and row["parameters"] == "all":
            assert row["cosine_with_whole"] == 1.0

    # The results page is regenerated from those files: tables, targets, controls, plots.
    out = tmp_path / "docs" / "results.md"
    made = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "experiments" / "make_results.py"),
         str(tmp_path / "results.json"), str(tmp_path / "missing" / "results.json"),
         str(tmp_path / "probe-baseline.json"),
         "--out", str(out), "--command", "run_all.sh --profile smoke"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    page = out.read_text()
    for heading in ("## Noisy Multi30k en-de, noise 0.4, profile smoke", "### Targets",
                    "### What masking costs and what choosing gains (controls)",
                    "### Noise detection", "## GGLM variants", "## Alignment probe"):  # fmt: skip
        assert heading in page, heading
    assert "Not run (no results file)" in page and "run_all.sh --profile smoke" in page
    assert f"| oracle-mask | {CONTROLS['oracle-mask']} |" in page
    assert "| gglm | neg_alignment_last |" in page
    assert (out.parent / f"results_{tmp_path.name}_bleu.png").stat().st_size > 0


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/multi30k is missing")
def test_baseline_long_contains_the_baseline_and_scores_a_curve(tmp_path):
    """baseline-long's checkpoint at the profile's budget equals a baseline trained to that
    budget (so one run gives both), and --curve-every scores validation BLEU along the way."""
    import torch

    def runner(work, systems, *extra):
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "experiments" / "noisy_multi30k.py"),
             "--profile", "smoke", "--work", str(work), "--noise", "0.4", "--seed", "1",
             "--systems", systems, "--data", str(DATA), *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return json.loads((work / "results.json").read_text())["systems"]

    long_run = runner(tmp_path / "long", "baseline-long,finetune", "--curve-every", "2")
    plain = runner(tmp_path / "plain", "baseline", "--curve-every", "2")
    assert [p["updates"] for p in long_run["baseline-long"]["curve"]] == [2, 4, 6]
    assert [p["updates"] for p in long_run["baseline"]["curve"]] == [2, 4]
    assert [p["updates"] for p in plain["baseline"]["curve"]] == [2, 4]
    seconds = [p["seconds"] for p in long_run["baseline-long"]["curve"]]
    assert seconds == sorted(seconds) and seconds[-1] > 0
    assert long_run["baseline"]["train_command"][1:] == [
        c.replace("/plain/", "/long/") for c in plain["baseline"]["train_command"][1:]
    ]
    assert long_run["baseline"]["valid"]["bleu"] == plain["baseline"]["valid"]["bleu"]
    assert "finetune" in long_run

    from fairseq.checkpoint_utils import load_checkpoint_to_cpu

    def weights(work):
        return load_checkpoint_to_cpu(
            str(work / "checkpoints" / "baseline" / "checkpoint_last.pt")
        )["model"]

    derived, trained = weights(tmp_path / "long"), weights(tmp_path / "plain")
    assert derived.keys() == trained.keys()
    for key in derived:
        assert torch.equal(derived[key], trained[key]), key


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/multi30k is missing")
def test_other_clean_sets_feed_gglm_and_fine_tuning(tmp_path):
    """--clean-set: a newstest2021 folder (local files, laid out as the WMT release) or a
    tiny slice of the default set becomes GGLM's and fine-tuning's clean split; the
    systems get their own names, the baseline is shared."""
    wmt21 = tmp_path / "wmt21"
    wmt21.mkdir()
    for name in ("newstest2021.en-de.src.en", "newstest2021.en-de.ref.A.de"):
        lines = (DATA.parent / "wmt21" / name).read_text(encoding="utf-8").splitlines()[:20]
        (wmt21 / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    work = tmp_path / "work"

    def runner(systems, *extra):
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "experiments" / "noisy_multi30k.py"),
             "--profile", "smoke", "--work", str(work), "--noise", "0.4", "--seed", "1",
             "--systems", systems, "--data", str(DATA), "--wmt21", str(wmt21), *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return json.loads((work / "results.json").read_text())

    runner("baseline")
    runner("gglm,finetune,finetune-gglm", "--clean-set", "wmt21")
    results = runner("finetune", "--clean-set", "val50")
    systems = results["systems"]
    assert set(systems) == {"baseline", "gglm-clean-wmt21", "finetune-clean-wmt21",
                            "finetune-gglm-clean-wmt21", "finetune-clean-val50"}  # fmt: skip
    assert results["data"]["clean_sets"] == {
        "wmt21": {"pairs": 20,
                  "text": "newstest2021 en-de (ref A) lines 0-19: news, another domain"},
        "val50": {"pairs": 50, "text": "val lines 0-49"},
    }  # fmt: skip
    gglm = systems["gglm-clean-wmt21"]["train_command"]
    assert gglm[gglm.index("--clean-subset") + 1] == "clean_wmt21"
    tuned = systems["finetune-gglm-clean-wmt21"]["train_command"]
    assert tuned[tuned.index("--train-subset") + 1] == "clean_wmt21"
    assert tuned[tuned.index("--restore-file") + 1].endswith("gglm-clean-wmt21/checkpoint_last.pt")
    assert systems["finetune-clean-val50"]["clean_set"] == "val50"
    # fairseq itself loaded the new splits, with their sizes.
    logs = work / "logs"
    assert "clean_wmt21 en-de 20 examples" in (logs / "train-gglm-clean-wmt21.log").read_text()
    assert "clean_val50 en-de 50 examples" in (logs / "train-finetune-clean-val50.log").read_text()
    assert "detection" in systems["gglm-clean-wmt21"]


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/multi30k is missing")
def test_setup_changes_reach_every_system_and_need_their_own_work(tmp_path):
    """--dropout, --ffn and --subword-data clean: named in the setting, in every training
    command and in what sentencepiece learned from; the default setup cannot reuse the folder."""

    def runner(*extra):
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / "experiments" / "noisy_multi30k.py"),
             "--profile", "smoke", "--work", str(tmp_path), "--noise", "0.4", "--seed", "1",
             "--data", str(DATA), *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    result = runner("--systems", "baseline,gglm", "--dropout", "0.3", "--subword-data", "clean",
                    "--ffn", "48")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["setting"] == {"profile": "smoke", "noise": 0.4, "seed": 1, "dropout": 0.3,
                                  "ffn": 48, "subword_data": "clean"}  # fmt: skip
    assert results["profile_config"]["dropout"] == 0.3
    assert results["profile_config"]["ffn"] == 48
    for entry in results["systems"].values():
        command = entry["train_command"]
        assert command[command.index("--dropout") + 1] == "0.3"
        assert command[command.index("--encoder-ffn-embed-dim") + 1] == "48"
        assert command[command.index("--decoder-ffn-embed-dim") + 1] == "48"
    assert results["data"]["sentencepiece"]["on"] == "train en+de before the noise"
    text = tmp_path / "text"
    original = (DATA / "train.de").read_text(encoding="utf-8").splitlines()[:400]
    assert (text / "uncorrupted.de").read_text(encoding="utf-8").splitlines() == original
    assert (text / "train.de").read_text(encoding="utf-8").splitlines() != original  # noisy

    again = runner("--systems", "baseline")  # the default setup: another --work
    assert again.returncode != 0 and "use another --work" in again.stderr


def test_trained_tokens_are_what_the_mask_left_up_to_the_budget(tmp_path):
    from noisy_multi30k import trained_tokens

    log = tmp_path / "train.log"
    line = ("2026-12-02 05:32:26 | INFO | train_inner | epoch 001:     25 / 79 loss=13.2, "
            "gglm_masked_tok={masked}, wpb={wpb}, bsz=366.4, num_updates={updates}, lr=6e-05")
    log.write_text("\n".join([line.format(masked=0.25, wpb=4000.0, updates=25),
                              line.format(masked=0.75, wpb=2000.0, updates=50),
                              line.format(masked=0.0, wpb=9999.0, updates=75)]))  # fmt: skip
    assert trained_tokens(log, 50) == (3000.0 + 500.0) / 2
    plain = tmp_path / "plain.log"  # no mask: every token trained
    plain.write_text(line.replace("gglm_masked_tok={masked}, ", "").format(wpb=3131.0, updates=25))
    assert trained_tokens(plain, 1300) == 3131.0
    assert trained_tokens(tmp_path / "missing.log", 1300) is None


def test_finetune_updates_name_the_recipe_and_set_its_budget(tmp_path):
    from noisy_multi30k import PROFILES, parse_args, system_command

    args = parse_args(["--profile", "full", "--work", str(tmp_path), "--systems",
                       "finetune,finetune-gglm", "--finetune-updates", "10",
                       "--clean-set", "val50"])  # fmt: skip
    assert args.system_names == ["finetune-u10-clean-val50", "finetune-gglm-u10-clean-val50"]
    # The recipe changes the fine-tuning, not what it starts from.
    assert args.starts == {"finetune-u10-clean-val50": "baseline",
                           "finetune-gglm-u10-clean-val50": "gglm-clean-val50"}  # fmt: skip
    command = system_command("finetune-u10-clean-val50", args, PROFILES["full"], tmp_path)
    assert command[command.index("--max-update") + 1] == "10"
    assert command[command.index("--train-subset") + 1] == "clean_val50"
    default = parse_args(["--profile", "full", "--work", str(tmp_path), "--systems", "finetune"])
    command = system_command("finetune", default, PROFILES["full"], tmp_path)
    assert command[command.index("--max-update") + 1] == "50"
