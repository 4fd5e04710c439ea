"""The results page's cross-run tables, from hand-made results (no training)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "experiments"))
from make_results import TESTS, noise_levels_section, variants_section  # noqa: E402


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
