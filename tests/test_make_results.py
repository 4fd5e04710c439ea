"""The results page's cross-run tables, from hand-made results (no training)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "experiments"))
from make_results import TESTS, noise_levels_section, seeds_section, variants_section  # noqa: E402,E501


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


def test_noise_levels_table_needs_two_runs():
    assert noise_levels_section(RUNS[1:]) == []


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
