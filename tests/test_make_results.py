"""The results page's cross-run tables, from hand-made results (no training)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "experiments"))
from make_results import (  # noqa: E402
    TESTS,
    asked_systems,
    gain_follows_baseline,
    gain_follows_failed_outputs,
    keep_tokens_section,
    noise_levels_section,
    seeds_section,
    setups_section,
    variants_section,
)


def entry(valid: float, test: float, rates=None) -> dict:
    scores = {"valid": {"bleu": valid}, **{t: {"bleu": test} for t in TESTS}}
    if rates is not None:
        scores["detection"] = {"mean_mask_rate": rates}
    return scores


def run(noise: float, systems: dict) -> dict:
    return {"setting": {"profile": "quick", "noise": noise, "seed": 1}, "systems": systems}


RUNS = [
    run(0.0, {"baseline": entry(20.0, 19.0), "gglm": entry(19.5, 18.0, {"clean": 0.2})}),
    run(0.4, {
        "baseline": entry(7.0, 7.0),
        "gglm": entry(8.0, 9.5, {"clean": 0.1, "misaligned": 0.3, "truncated": 0.5}),
        "gglm-adam": entry(9.0, 6.0, {"clean": 0.1}),
        "oracle": entry(11.0, 11.0),
    }),
]  # fmt: skip


def test_noise_levels_table_rows_by_noise_with_gain_and_mask_rates():
    lines = noise_levels_section(RUNS)
    assert lines[0] == "## Across noise levels (noisy Multi30k, seed 1)"
    rows = [line for line in lines if line.startswith("| quick")]
    # Highest noise first; oracle missing at noise 0; noisy mask rate = mean over types.
    assert rows[0] == "| quick | 0.4 | 7.00 | 8.00 | 11.00 | – | – | 2.50 / 2.50 | 0.100 | 0.400 |"
    assert rows[1] == "| quick | 0.0 | 20.00 | 19.50 | – | – | – | -1.00 / -1.00 | 0.200 | – |"


def test_noise_levels_table_needs_two_runs_of_seed_one():
    assert noise_levels_section(RUNS[1:]) == []
    other_seed = run(0.2, RUNS[1]["systems"]) | {"setting": {"profile": "quick", "noise": 0.2,
                                                             "seed": 2}}  # fmt: skip
    assert noise_levels_section(RUNS[1:] + [other_seed]) == []


def test_variants_are_ranked_within_their_run():
    rows = [line for line in variants_section(RUNS) if line.startswith("| quick")]
    names = [row.split(" | ")[1] for row in rows]
    # Noise 0 run first, then noise 0.4 by validation BLEU (not mixed across runs).
    assert names == ["baseline", "gglm", "gglm-adam", "gglm", "baseline"]


def seeded(seed: int, gglm: float, finetune: float) -> dict:
    curve = [{"updates": 2, "seconds": 60.0, "valid_bleu": 3.0},
             {"updates": 4, "seconds": 120.0, "valid_bleu": gglm}]  # fmt: skip
    systems = {
        "baseline": entry(10.0, 10.0) | {"train_seconds": 600.0},
        "gglm": entry(gglm, gglm) | {"train_seconds": 900.0, "curve": curve},
        "finetune": entry(finetune, finetune) | {"train_seconds": 30.0},
    }
    return {"setting": {"profile": "full", "noise": 0.4, "seed": seed}, "systems": systems}


def test_seeds_section_means_paired_differences_and_the_curve(tmp_path):
    runs = [seeded(1, 12.0, 14.0), seeded(2, 14.0, 14.5), run(0.4, {"baseline": entry(1, 1)})]
    lines = seeds_section(runs, tmp_path)
    assert lines[0] == "## Over seeds: noisy Multi30k, noise 0.4, profile full"
    assert "| gglm | 13.00 ± 1.41 (n=2) | 13.00 ± 1.41 (n=2) | 13.00 ± 1.41 (n=2) |" in (
        "\n".join(lines)
    )
    # gglm - baseline: +2, +4 (mean 3 > sd 1.41); gglm - finetune: -2, -0.5 (1.25 > 1.06).
    assert "| gglm − baseline | valid | 3.00 ± 1.41 (n=2) | +2.00, +4.00 | yes |" in lines
    assert "| gglm − finetune | valid | -1.25 ± 1.06 (n=2) | -2.00, -0.50 | yes |" in lines
    assert (tmp_path / "results_m30k-full-p0.4_seeds_curve.png").stat().st_size > 0
    assert seeds_section([seeded(1, 12.0, 14.0)], tmp_path) == []  # one seed: no section


def test_seeds_section_sets_the_filtered_baseline_beside_gglm_and_fine_tuning(tmp_path):
    runs = [seeded(1, 12.0, 14.0), seeded(2, 14.0, 14.5)]
    for record, bleu in zip(runs, (15.0, 16.0)):
        record["systems"]["filtered"] = entry(bleu, bleu) | {"train_seconds": 600.0}
    lines = seeds_section(runs, tmp_path)
    assert "| filtered − baseline | valid | 5.50 ± 0.71 (n=2) | +5.00, +6.00 | yes |" in lines
    assert "| gglm − filtered | valid | -2.50 ± 0.71 (n=2) | -3.00, -2.00 | yes |" in lines
    assert "| filtered − finetune | valid | 1.25 ± 0.35 (n=2) | +1.00, +1.50 | yes |" in lines


def test_other_clean_sets_sit_beside_the_default_and_stay_out_of_the_variants():
    from make_results import asked_systems, clean_sets_section

    wmt21 = {"clean_set": "wmt21", "train_seconds": 120.0,
             "detection": {"mask_rate": {"all": 0.6}, "mean_mask_rate": {"clean": 0.25}}}
    results = run(0.4, {
        "baseline": entry(10.0, 10.0),
        "gglm": entry(12.0, 13.0),
        "finetune": entry(14.0, 15.0),
        "gglm-clean-wmt21": entry(11.0, 11.5) | wmt21,
        "finetune-clean-wmt21": entry(8.0, 9.0) | {"clean_set": "wmt21"},
    })  # fmt: skip
    results["data"] = {"clean_set": "val lines 0-499",
                       "clean_sets": {"wmt21": {"pairs": 500, "text": "newstest2021"}}}
    lines = clean_sets_section([results])
    assert lines[0] == "## Other clean sets: noisy Multi30k, noise 0.4, profile quick, seed 1"
    assert "is shared: BLEU 10.00 / 10.00 / 10.00 (valid" in lines[2]
    rows = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    assert rows["| val500: val lines 0-499"].split(" | ")[1:4] == [
        "12.00 / 13.00 / 13.00 (Δ +3.00 / +3.00)", "14.00 / 15.00 / 15.00 (Δ +5.00 / +5.00)",
        "not run"]  # fmt: skip
    assert rows["| wmt21: newstest2021"].split(" | ")[1:] == [
        "11.00 / 11.50 / 11.50 (Δ +1.50 / +1.50)", "8.00 / 9.00 / 9.00 (Δ -1.00 / -1.00)",
        "not run", "0.600", "25.0%", "2.0 |"]  # fmt: skip
    # No run with another clean set: no section; and such a GGLM is not a variant.
    assert clean_sets_section(RUNS) == []
    names = [row.split(" | ")[1] for row in variants_section([results]) if row.startswith("| q")]
    assert names == ["gglm", "baseline"]
    results["commands"] = [
        "noisy_multi30k.py --systems gglm,finetune,baseline --clean-set val50 --tag x"]
    # A tag names the baseline and the fine-tuned systems too.
    assert asked_systems(results) == ["gglm-x-clean-val50", "finetune-x-clean-val50",
                                      "baseline-x"]  # fmt: skip


def test_run_all_page_only_archives_the_results_and_reads_the_archive_back(tmp_path):
    """run_all.sh --page-only trains nothing: it makes the page from the results files, copies
    each to DOCS/data/KEY.json, and takes a run that is no longer on disk from that copy."""
    import json
    import shutil
    import subprocess

    runs, docs = tmp_path / "runs", tmp_path / "docs"
    for seed, work in ((1, "m30k-full-p0.4"), (2, "m30k-full-p0.4-s2")):
        results = seeded(seed, 12.0 + seed, 14.0) | {"experiment": "noisy_multi30k"}
        for name in results["systems"]:
            results["systems"][name]["valid"]["bleu_signature"] = "nrefs:1"
            results["systems"][name]["valid"]["chrf_signature"] = "nrefs:1"
        (runs / work).mkdir(parents=True)
        (runs / work / "results.json").write_text(json.dumps(results))
    command = ["bash", str(REPO / "scripts" / "experiments" / "run_all.sh"), "--page-only",
               "--profiles", "full", "--seeds", "1 2", "--clean-sets", "", "--runs", str(runs),
               "--docs", str(docs)]  # fmt: skip

    def page() -> str:
        made = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr[-3000:]
        return (docs / "results.md").read_text()

    first = page()
    assert "## Over seeds: noisy Multi30k, noise 0.4, profile full" in first
    assert sorted(p.name for p in (docs / "data").iterdir()) == [
        "m30k-full-p0.4-s2.json", "m30k-full-p0.4.json"]  # fmt: skip
    assert "probe-baseline.json" in first  # not run, and listed as such
    shutil.rmtree(runs)
    assert page() == first  # the same page, from the archive


def with_setup(results: dict, **changes) -> dict:
    return results | {"setting": results["setting"] | changes}


def test_setup_changes_get_their_own_rows_and_stay_out_of_seeds_and_noise_levels(tmp_path):
    default = seeded(1, 12.0, 14.0)
    dropout = with_setup(seeded(1, 10.5, 13.0), dropout=0.3)
    dropout["systems"]["gglm"]["detection"] = {"mask_rate": {"all": 0.7},
                                               "mean_mask_rate": {"clean": 0.25}}  # fmt: skip
    subwords = with_setup(seeded(1, 11.0, 13.0), subword_data="clean")
    heldout = with_setup(seeded(1, 11.0, 13.0), dropout=0.3, subword_data="clean", ffn=512)
    lines = setups_section([default, dropout, subwords, heldout])
    rows = [line for line in lines if line.startswith("| full p=0.4 seed")]
    assert [row.split(" | ")[1] for row in rows] == [
        "default", "dropout 0.3", "sentencepiece on the text before the noise",
        "dropout 0.3, sentencepiece on the text before the noise, FFN 512"]
    # gglm - baseline on the tests: +2 (met) in the default setup, +0.5 (not met) with dropout.
    assert rows[0].startswith("| full p=0.4 seed 1 | default | 10.00 / 10.00 / 10.00 | "
                              "12.00 / 12.00 / 12.00 | 14.00 / 14.00 / 14.00 | not run | "
                              "+2.00 / +2.00 | yes |")  # fmt: skip
    assert rows[1].startswith("| full p=0.4 seed 1 | dropout 0.3 | 10.00 / 10.00 / 10.00 | "
                              "10.50 / 10.50 / 10.50 | 13.00 / 13.00 / 13.00 | not run | "
                              "+0.50 / +0.50 | no | 0.700 | 25.0% |")  # fmt: skip
    assert setups_section([default]) == []
    # A changed setup is neither another seed nor another noise level of the default one.
    assert seeds_section([default, with_setup(seeded(2, 1.0, 1.0), dropout=0.3)], tmp_path) == []
    quick = with_setup(run(0.0, RUNS[0]["systems"]), subword_data="clean")
    assert noise_levels_section([RUNS[1], quick]) == []


def test_setups_over_seeds_average_the_paired_gains_per_setup():
    def tuned(results: dict, gglm: float) -> dict:
        results["systems"]["finetune-gglm"] = entry(gglm, gglm)
        return results

    runs = [tuned(seeded(1, 12.0, 14.0), 13.0), tuned(seeded(2, 14.0, 14.0), 15.0),
            with_setup(tuned(seeded(1, 10.5, 13.0), 12.0), dropout=0.3),
            with_setup(tuned(seeded(2, 12.5, 13.0), 12.0), dropout=0.3),
            with_setup(seeded(1, 11.0, 13.0), subword_data="clean")]  # fmt: skip
    del runs[-1]["systems"]["gglm"]  # a setup whose GGLM has not finished: no row
    lines = setups_section(runs)
    rows = [line for line in lines[lines.index("Over seeds, per setup (paired differences, "
                                               "same seed and data; mean ± sd):"):]
            if line.startswith("| full")]  # fmt: skip
    # Default: gains +2, +4 (mean 3, met); dropout: +0.5, +2.5 (mean 1.5, met) and
    # finetune-gglm - finetune -1, -1.
    assert rows == [
        "| full p=0.4 | default | 1, 2 | 3.00 ± 1.41 (n=2) | 3.00 ± 1.41 (n=2) | yes | "
        "0.00 ± 1.41 (n=2) | 0.00 ± 1.41 (n=2) |",
        "| full p=0.4 | dropout 0.3 | 1, 2 | 1.50 ± 1.41 (n=2) | 1.50 ± 1.41 (n=2) | yes | "
        "-1.00 ± 0.00 (n=2) | -1.00 ± 0.00 (n=2) |"]  # fmt: skip
    # Without a changed setup that ran GGLM there is nothing to set beside the default.
    assert "Over seeds, per setup" not in "\n".join(setups_section(runs[:2] + runs[4:]))


def test_a_gglm_variant_tried_in_a_changed_setup_gets_rows_beside_its_setup():
    def with_variant(results: dict, gglm: float, tuned: float) -> dict:
        results["systems"] |= {
            "gglm-nodrop": entry(gglm, gglm) | {"gglm_args": "--gglm-alignment-without-dropout"},
            "finetune-gglm-nodrop": entry(tuned, tuned),
            "gglm-clean-val50": entry(1.0, 1.0) | {"clean_set": "val50"},  # not a variant
        }
        return results

    runs = [seeded(1, 12.0, 14.0), seeded(2, 14.0, 14.0),
            with_setup(with_variant(seeded(1, 10.5, 13.0), 12.0, 13.5), dropout=0.3),
            with_setup(with_variant(seeded(2, 10.0, 13.0), 13.0, 12.5), dropout=0.3)]  # fmt: skip
    lines = setups_section(runs)
    variant = "dropout 0.3 + `--gglm-alignment-without-dropout`"
    rows = [line for line in lines if line.startswith("| full p=0.4 seed 1")]
    assert [row.split(" | ")[1] for row in rows] == ["default", "dropout 0.3", variant]
    # The variant in GGLM's and fine-tuned GGLM's places, beside the same baseline and
    # fine-tuned baseline; its gain on the tests is +2 (met).
    assert rows[2].startswith(f"| full p=0.4 seed 1 | {variant} | 10.00 / 10.00 / 10.00 | "
                              "12.00 / 12.00 / 12.00 | 13.00 / 13.00 / 13.00 | "
                              "13.50 / 13.50 / 13.50 | +2.00 / +2.00 | yes |")  # fmt: skip
    over_seeds = lines[lines.index("Over seeds, per setup (paired differences, "
                                   "same seed and data; mean ± sd):"):]  # fmt: skip
    rows = [line for line in over_seeds if line.startswith("| full")]
    assert [row.split(" | ")[1] for row in rows] == ["default", "dropout 0.3", variant]
    # Gains +2 and +3 over the baseline; fine-tuned: +0.5 and -0.5 over the fine-tuned baseline.
    assert rows[2] == (f"| full p=0.4 | {variant} | 1, 2 | 2.50 ± 0.71 (n=2) | "
                       "2.50 ± 0.71 (n=2) | yes | 0.00 ± 0.71 (n=2) | 0.00 ± 0.71 (n=2) |")


def test_keep_tokens_section_shows_trained_tokens_beside_mask_only():
    def trained(name_flags: str, max_tokens: int, tokens: float) -> dict:
        return entry(9.0, 9.0) | {"gglm_args": name_flags, "trained_tokens_per_update": tokens,
                                  "train_command": ["--max-tokens", str(max_tokens)]}  # fmt: skip

    results = seeded(1, 12.0, 14.0)
    results["systems"] |= {"gglm-keep-tokens": trained("--gglm-keep-tokens 3100", 8192, 3050.0)}
    results["systems"]["gglm"] |= {"train_command": ["--max-tokens", "4096"],
                                   "trained_tokens_per_update": 2268.0}  # fmt: skip
    results["systems"]["baseline-8192"] = trained("", 8192, 6300.0)
    lines = keep_tokens_section([results])
    assert lines[0] == "## Keeping the update full: noisy Multi30k, noise 0.4, profile full, seed 1"
    rows = [line for line in lines if line.startswith("| baseline") or line.startswith("| gglm")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| baseline", "| baseline-8192", "| gglm", "| gglm-keep-tokens"]
    assert rows[1].startswith("| baseline-8192 |  | 8192 | 6300 | 9.00 / 9.00 / 9.00 |")
    assert rows[2].startswith("| gglm |  | 4096 | 2268 | 12.00 / 12.00 / 12.00 |")
    assert rows[3].startswith("| gglm-keep-tokens | `--gglm-keep-tokens 3100` | 8192 | 3050 |")
    assert keep_tokens_section([seeded(1, 12.0, 14.0)]) == []  # no keep-tokens system: nothing


def test_asked_systems_are_named_as_the_runner_names_them():
    runner = "python scripts/experiments/noisy_multi30k.py --profile full --work w "
    results = {"commands": [runner + "--systems ''",
                            runner + "--systems gglm,finetune --tag keep --clean-set val50",
                            runner + "--systems baseline,finetune,finetune-gglm "
                            "--finetune-updates 10 --clean-set val100"]}  # fmt: skip
    assert asked_systems(results) == ["gglm-keep-clean-val50", "finetune-keep-clean-val50",
                                      "baseline",
                                      "finetune-u10-clean-val100",
                                      "finetune-gglm-u10-clean-val100"]  # fmt: skip


def test_fine_tuning_recipes_are_chosen_on_validation_per_clean_set():
    from make_results import clean_sets_section

    val50 = {"clean_set": "val50"}
    results = run(0.4, {
        "baseline": entry(10.0, 10.0),
        "finetune": entry(14.0, 15.0),
        "finetune-clean-val50": entry(11.0, 12.0) | val50,
        # Best on validation, though worse on the tests: validation decides.
        "finetune-u10-clean-val50": entry(13.0, 11.0) | val50 | {"finetune_updates": 10},
        "finetune-u25-clean-val50": entry(12.0, 14.0) | val50 | {"finetune_updates": 25},
    })  # fmt: skip
    results["profile_config"] = {"finetune_updates": 50}
    results["data"] = {"clean_set": "val lines 0-499",
                       "clean_sets": {"val50": {"pairs": 50, "text": "val lines 0-49"}}}
    lines = clean_sets_section([results])
    header = next(line for line in lines if line.startswith("| clean set"))
    assert header.split(" | ")[4:6] == ["finetune, recipe chosen on valid",
                                        "finetune-gglm, recipe chosen on valid"]  # fmt: skip
    rows = {line.split(" | ")[0]: line.split(" | ") for line in lines if line.startswith("| val")}
    assert rows["| val50: val lines 0-49"][4:6] == [
        "10 updates: 13.00 / 11.00 / 11.00 (Δ +1.00 / +1.00) (of 3)", "not run"]
    assert rows["| val500: val lines 0-499"][4] == (
        "50 updates: 14.00 / 15.00 / 15.00 (Δ +5.00 / +5.00) (of 1)")
    assert "Recipes: 50 updates (the default) and 10, 25 updates" in "\n".join(lines)


def test_seeds_compare_keep_tokens_with_the_recipe_each_seed_chose_on_validation(tmp_path):
    runs = [seeded(1, 12.0, 14.0), seeded(2, 14.0, 14.5)]
    # Seed 1 tried two more recipes (25 beats the default on validation, 10 does not);
    # seed 2 only the default: no chosen row for it.
    runs[0]["profile_config"] = {"finetune_updates": 50}
    runs[0]["systems"] |= {
        "finetune-u25": entry(15.0, 13.0) | {"finetune_updates": 25, "train_seconds": 15.0},
        "finetune-u10": entry(13.0, 16.0) | {"finetune_updates": 10, "train_seconds": 6.0},
    }
    for results, keep in zip(runs, (16.0, 15.0)):
        results["systems"]["gglm-keep-tokens"] = entry(keep, keep) | {"train_seconds": 1200.0}
    # The control at equal candidate cost (mask-only on the same batches), seed 1 only.
    runs[0]["systems"]["gglm-mask-8192"] = entry(14.5, 14.0) | {"train_seconds": 1300.0}
    # The baseline on the same batches (is the gain the batch's or the mask's?), both seeds.
    for results, large in zip(runs, (15.0, 13.0)):
        results["systems"]["baseline-8192"] = entry(large, large) | {"train_seconds": 900.0}
    # Both fine-tuned from their own starts (tagged as those), two recipes each on seed 1.
    runs[0]["systems"] |= {
        "finetune-gglm-keep-tokens": entry(17.0, 17.5) | {"train_seconds": 15.0},
        "finetune-gglm-keep-tokens-u10": entry(18.0, 16.5) | {"finetune_updates": 10,
                                                              "train_seconds": 5.0},
        "finetune-8192": entry(16.0, 16.0) | {"train_seconds": 15.0},
        "finetune-8192-u10": entry(15.0, 17.0) | {"finetune_updates": 10, "train_seconds": 5.0},
    }
    text = "\n".join(seeds_section(runs, tmp_path))
    keep = "| finetune-gglm-keep-tokens, recipe chosen on valid | 18.00 (n=1) | 16.50 (n=1) |"
    assert keep in text
    assert "| finetune-8192, recipe chosen on valid | 16.00 (n=1) | 16.00 (n=1) |" in text
    tuned = ("| finetune-gglm-keep-tokens, recipe chosen on valid − finetune-8192, recipe chosen "
             "on valid | test_2016_flickr | 0.50 (n=1) | +0.50 | – |")
    assert tuned in text
    assert "| baseline-8192 | 14.00 ± 1.41 (n=2) |" in text
    large = "| gglm-keep-tokens − baseline-8192 | valid | 1.50 ± 0.71 (n=2) | +1.00, +2.00 | yes |"
    assert large in text
    assert "| gglm-mask-8192 − baseline-8192 | valid | -0.50 (n=1) | -0.50 | – |" in text
    assert "| gglm-keep-tokens | 15.50 ± 0.71 (n=2) |" in text
    assert "| gglm-mask-8192 | 14.50 (n=1) |" in text
    assert "| gglm-keep-tokens − gglm-mask-8192 | valid | 1.50 (n=1) | +1.50 | – |" in text
    assert "| finetune, recipe chosen on valid | 15.00 (n=1) | 13.00 (n=1) |" in text
    chosen_gain = "| gglm-keep-tokens − finetune, recipe chosen on valid | test_2016_flickr |"
    assert f"{chosen_gain} 3.00 (n=1) | +3.00 | – |" in text
    assert "| gglm-keep-tokens − gglm | valid | 2.50 ± 2.12 (n=2) | +4.00, +1.00 | yes |" in text
    assert ("Recipes chosen on validation (fine-tuning updates): finetune seed 1: 25, "
            "finetune-8192 seed 1: 50, finetune-gglm-keep-tokens seed 1: 10.") in text


def test_the_page_names_the_machine_that_trained_each_system():
    """A results file's own machine is its newest runner's; train times compare only on one
    machine, so the page lists which machine trained which system."""
    from make_results import setting_lines

    amd = {"Model name": "AMD EPYC", "CPU(s)": "2", "torch_threads": 1}
    results = seeded(1, 12.0, 14.0) | {"machine": amd}
    assert not any(line.startswith("- trained on") for line in setting_lines(results))
    results["systems"]["gglm"]["machine"] = amd
    results["systems"]["finetune"]["machine"] = amd | {"Model name": "Intel Xeon"}
    lines = setting_lines(results)
    assert "- machine of the newest runner: AMD EPYC, 2 CPUs, torch threads 1" in lines[2]
    assert ("- trained on: not recorded: baseline; AMD EPYC, 2 CPUs, torch threads 1: gglm; "
            "Intel Xeon, 2 CPUs, torch threads 1: finetune") in lines


def test_gain_follows_baseline_gives_spreads_and_correlations_over_runs_with_both_systems():
    # Baselines 10, 14, 18 (sd 4) and GGLM 20, 21, 19 (sd 1): centred (-4, 0, 4) and (0, 1, -1),
    # r = -4 / (sqrt(32) sqrt(2)) = -0.50; gains 10, 7, 1, centred (4, 1, -5):
    # r = -36 / (sqrt(32) sqrt(42)) = -0.98.
    runs = [run(0.4, {"baseline": entry(b, b), "gglm": entry(g, g)})
            for b, g in ((10.0, 20.0), (14.0, 21.0), (18.0, 19.0))]  # fmt: skip
    runs.append(run(0.4, {"baseline": entry(1.0, 1.0)}))  # no GGLM: left out
    row = "| quick p=0.4 | 3 |" + " 4.00 / 1.00 | -0.50 | -0.98 |" * 3
    assert row in gain_follows_baseline(runs)
    assert gain_follows_baseline(runs[1:]) == []  # two runs: no correlation shown


def test_gain_follows_failed_outputs_fits_the_gain_on_fewer_copied_and_french_outputs():
    # Copied + French (points) falls by 10, 5, 0 and BLEU rises by 6, 3.5, 1: gain = 1 - 0.5 x,
    # r = -1 exactly, nothing left; copied falls by 4, 2, 0 and French by 6, 3, 0 on average
    # -2 and -3 points.
    def shares(bleu: float, copied: float, french: float) -> dict:
        scores = {"bleu": bleu, "copied": copied, "french": french}
        return {subset: dict(scores) for subset in ("valid", *TESTS)}

    runs = [run(0.4, {"baseline": shares(10.0, 0.02 * k, 0.03 * k),
                      "gglm": shares(10.0 + 1.0 + 2.5 * k, 0.0, 0.0)})
            for k in (2, 1, 0)]  # fmt: skip
    runs.append(run(0.4, {"baseline": entry(5.0, 5.0), "gglm": entry(6.0, 6.0)}))  # no shares
    # Two runs measured where both translate: +1 and +2 BLEU on 900 and 800 sentences.
    for record, gain in zip(runs, (1.0, 2.0)):
        record["systems"]["gglm"]["valid"]["both_translated"] = {
            "sentences": 1000 - 100 * gain, "bleu": 20.0 + gain, "baseline_bleu": 20.0}
    lines = gain_follows_failed_outputs(runs)
    row = "| quick p=0.4 | valid | 3 | 3.50 ± 2.50 (n=3) | -2.0 | -3.0 | -1.00 | -0.50 | +1.00 |"
    assert row + " 0.00 | 1.50 ± 0.71 (n=2) | 850 |" in lines
    assert row.replace("valid", TESTS[0]) + " 0.00 | – | – |" in lines  # none measured there
    assert sum(line.startswith("| quick p=0.4 |") for line in lines) == 3  # each set once
    assert gain_follows_failed_outputs(runs[1:]) == []  # two runs with shares: no line
