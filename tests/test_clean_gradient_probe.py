"""The clean-gradient probe on the tiny corpus: its directions are the task's, its reference
rows are exact, its costs are real."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import build, train_args

from gglm_fairseq.noise import CLEAN

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "experiments"))
import clean_gradient_probe as cgp  # noqa: E402
from alignment_probe import clean_gradient, cosine  # noqa: E402

MAX_TOKENS = 400  # helpers.train_args' --max-tokens


@pytest.fixture(scope="module")
def tiny(data_bin, tmp_path_factory):
    task, model, _ = build(train_args(data_bin, tmp_path_factory.mktemp("save")))
    model.eval()
    return task, model


def assert_same(a, b, tol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=tol, rtol=1e-5)


def test_ema_and_interval_directions_are_the_tasks(tiny):
    task, model = tiny
    quarter = cgp.clean_task(task, MAX_TOKENS // 4)
    single = cgp.directions_at(model, quarter, cgp.make_criterion(quarter), [0, 1, 3])
    # d = 0 is one batch's gradient: the batch the task's seeded sequence gives that update.
    for update, direction in single.items():
        batch = quarter.clean_batches.batch(update)
        assert_same(direction, clean_gradient(model, cgp.make_criterion(quarter), [batch]))
    # d = 0.5 at update 1 averages updates 0 and 1 (the first EMA value is the batch alone).
    ema_task = cgp.clean_task(task, MAX_TOKENS // 4)
    ema = cgp.directions_at(model, ema_task, cgp.make_criterion(ema_task, decay=0.5), [0, 1])
    assert_same(ema[0], single[0])
    assert_same(ema[1], [0.5 * a + 0.5 * b for a, b in zip(single[0], single[1])])
    # K = 2 reuses: updates 2 and 3 both get the K = 1 direction of update 1.
    k_task = cgp.clean_task(task, MAX_TOKENS // 4)
    reused = cgp.directions_at(model, k_task, cgp.make_criterion(k_task, interval=2), [2, 3])
    assert_same(reused[2], single[1])
    assert_same(reused[3], single[1])
    # Different sizes really are different batches.
    assert cosine(single[0], single[1]) < 0.9999


def test_probe_rows_reference_and_costs(tiny):
    task, model = tiny
    n = len(task.dataset("train"))
    labels = [CLEAN if i % 3 else "misaligned" for i in range(n)]
    probed = np.random.default_rng(0).choice(n, size=60, replace=False)
    result = cgp.probe(model, task, labels, probed, MAX_TOKENS, positions=[3, 4], reps=1,
                       lr=1e-3, seed=3)  # fmt: skip
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"whole clean set"} | {s.name for s in cgp.settings()}
    whole, default = rows["whole clean set"], rows[cgp.DEFAULT.name]
    # The whole-set direction against itself.
    assert whole["cosine_with_whole"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert whole["agreement_with_whole"]["mean"] == 1.0
    # Agreement is symmetric: whole vs default = default vs whole.
    assert whole["agreement_with_default"]["mean"] == pytest.approx(
        default["agreement_with_whole"]["mean"], abs=1e-4
    )
    for row in result["rows"]:
        assert -1.0 <= row["cosine_with_whole"]["min"] <= 1.0001
        for key in ("agreement_with_whole", "agreement_with_default", "auc"):
            assert 0.0 <= row[key]["mean"] <= 1.0
    # Costs: positive, per update, and K divides the same pass.
    costs = result["costs"]
    assert costs["plain_s"] > 0 and costs["ema_s"] > 0
    assert all(v > 0 for v in costs["clean_s"].values())
    one = rows[cgp.Setting(0.25).name]
    for k in (2, 4, 8):
        row = rows[cgp.Setting(0.25, 0.0, k).name]
        assert row["cost_ms"] == pytest.approx(one["cost_ms"] / k, abs=0.02)
        assert row["cosine_with_whole"] == one["cosine_with_whole"]  # same direction
    # The page holds every row and the budget check.
    page = cgp.render([{**result, "work": "tiny", "system": "x", "command": "c",
                        "checkpoint": "ckpt", "profile": "p", "max_tokens": MAX_TOKENS,
                        "seed": 3, "pairs": 60, "clean_pairs": 40, "positions": [3, 4],
                        "reps": 1, "machine": {}}])  # fmt: skip
    assert all(name in page for name in rows) and "(default)" in page


def test_trajectory_and_costs_over_a_clean_epoch(tiny):
    task, model = tiny
    before = [p.detach().clone() for p in model.parameters()]
    n = len(task.dataset("train"))
    labels = [CLEAN if i % 3 else "misaligned" for i in range(n)]
    probed = np.random.default_rng(1).choice(n, size=40, replace=False)
    chosen = (cgp.DEFAULT, cgp.Setting(0.25), cgp.Setting(0.25, 0.75, 2))
    along = cgp.trajectory(model, task, None, 1e-3, MAX_TOKENS, 3, [1, 3], labels, probed,
                           chosen)  # fmt: skip
    rows = {r["setting"]: r for r in along["rows"]}
    # The default against itself at the same update and model.
    assert rows[cgp.DEFAULT.name]["agreement_with_default"]["mean"] == 1.0
    assert not along["optimizer_state_restored"]
    for row in along["rows"]:
        assert -1.0 <= row["cosine_with_whole"]["min"] <= 1.0001
    # The updates ran on a copy: the probed model is unchanged.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    costs = cgp.measure_costs(model, task, MAX_TOKENS, 3, reps=1, lr=1e-3, plain_batches=2)
    # Every batch of one clean epoch is timed: together they hold the whole clean set.
    clean_tokens = int(task.dataset("clean").tgt_sizes.sum())
    for fraction in cgp.FRACTIONS:
        assert sum(costs["clean_tokens"][str(fraction)]) == clean_tokens
