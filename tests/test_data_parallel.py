"""Data-parallel training with every engine: two CPU ranks (gloo) train exactly as one
process whose updates hold both ranks' batches, under fairseq's legacy_ddp and under torch's
DistributedDataParallel (c10d, the GPU default); torch DDP with --find-unused-parameters
refuses the engines it breaks.

The equivalence: with R ranks of --update-freq F, rank r's k-th micro-batch of update u is
batch (u*F + k)*R + r of the epoch's shuffled batch list (fairseq shuffles, then shards),
and its clean batch is clean batch u*R + r; so one process with --update-freq R*F and
--clean-batches-per-update R sees the same training batches in each update and pools the
same clean batches into its clean gradient. The trainer sums gradients and sample sizes over
micro-batches and ranks alike, so masks, losses and parameters agree up to the order of
float additions. Dropout is off: its random numbers are drawn per process, in order.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from cpu_ddp_rank import train_logged
from helpers import build, load_params, train_args
from test_distributed import free_port

from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.record import RECORD_FILE, ExampleRecord

ENGINES = ("ghost", "jvp", "vmap", "loop")
RANKS, UPDATE_FREQ = 2, 2
# 3 updates of 2 x 2 micro-batches stay inside the first epoch (14 batches of 200 tokens)
# and its 6 clean batches; the threshold masks about 40% of the sentences. SGD, not Adam:
# Adam scales a gradient that is zero but for rounding (attention key biases) up to a full
# step, and it would hide gradients mis-scaled by the number of ranks.
COMMON = [
    "--max-update", "3", "--dropout", "0", "--max-tokens", "200", "--clean-max-tokens", "60",
    "--gglm-threshold", "2", "--log-format", "json", "--disable-validation",
    "--optimizer", "sgd", "--lr", "0.1",
]  # fmt: skip
# Per-update statistics that must agree (fairseq rounds them to 3 or 4 decimals).
STATS = (
    "loss", "nll_loss", "masked_loss", "gglm_masked_sent", "gglm_masked_tok",
    "gglm_clean_loss", "gglm_align_mean", "gglm_align_min", "gglm_align_max", "gnorm",
)  # fmt: skip
FIND_UNUSED = ("--ddp-backend", "c10d", "--find-unused-parameters")
# name: the run's own arguments
DATA_PARALLEL_RUNS = {
    **{
        f"{backend}-{engine}": ("--ddp-backend", backend, "--gglm-engine", engine)
        for backend in ("legacy_ddp", "c10d")
        for engine in ENGINES
    },
    "find_unused-auto": FIND_UNUSED,
    **{f"find_unused-{engine}": (*FIND_UNUSED, "--gglm-engine", engine) for engine in ENGINES[:3]},
}


def per_update_stats(log: Path) -> List[Dict[str, float]]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [{key: float(line[key]) for key in STATS} for line in lines if "update" in line]


@pytest.fixture(scope="module")
def data_parallel(data_bin, tmp_path_factory) -> Path:
    """All data-parallel runs, in one pair of rank processes (start-up is most of the cost)."""
    root = tmp_path_factory.mktemp("data_parallel")
    distributed = [
        "--update-freq", str(UPDATE_FREQ), "--distributed-world-size", str(RANKS),
        "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}",
        "--distributed-no-spawn", "--distributed-backend", "gloo", "--device-id", "0",
    ]  # fmt: skip
    runs = [
        [train_args(data_bin, root / name, *COMMON, *distributed, *extra), str(root / name)]
        for name, extra in DATA_PARALLEL_RUNS.items()
    ]
    (root / "runs.json").write_text(json.dumps(runs))
    script = str(Path(__file__).parent / "cpu_ddp_rank.py")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ranks = [
        subprocess.Popen([sys.executable, script, str(rank), str(root / "runs.json")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(RANKS)
    ]  # fmt: skip
    for rank in ranks:
        output = rank.communicate(timeout=300)[0]
        assert rank.returncode == 0, output[-3000:]
    return root


@pytest.fixture(scope="module")
def one_process(data_bin, tmp_path_factory):
    """The single-process reference of each engine, trained on demand (in this process)."""
    root = tmp_path_factory.mktemp("one_process")

    def reference(engine: str) -> Path:
        save = root / engine
        if not save.exists():
            argv = train_args(
                data_bin, save, *COMMON, "--gglm-engine", engine,
                "--update-freq", str(RANKS * UPDATE_FREQ),
                "--clean-batches-per-update", str(RANKS),
            )  # fmt: skip
            train_logged(argv, str(save) + ".rank0")
        return save

    return reference


def assert_same_training(run: Path, reference: Path) -> None:
    """Same parameters, per-example decisions and per-update statistics."""
    for name in (f"{run}.rank0.error", f"{run}.rank1.error"):
        assert not os.path.exists(name), Path(name).read_text()[-3000:]
    expected = load_params(reference / "checkpoint_last.pt")
    got = load_params(run / "checkpoint_last.pt")
    scale = max(t.abs().max() for t in expected.values())
    for name, tensor in expected.items():
        assert (got[name] - tensor).abs().max() / scale < 1e-6, name

    record = ExampleRecord.load(str(run / RECORD_FILE))
    reference_record = ExampleRecord.load(str(reference / RECORD_FILE))
    # Both ranks' sentences, each update: some masked, some kept, as in one process.
    assert np.array_equal(record.history, reference_record.history)
    assert 0 < record.masked.sum() < record.seen.sum()
    assert np.array_equal(record.seen, reference_record.seen)
    assert np.array_equal(record.masked, reference_record.masked)
    alignment_scale = np.abs(reference_record.alignment_sum).max()
    assert np.abs(record.alignment_sum - reference_record.alignment_sum).max() < (
        1e-5 * alignment_scale
    )

    stats = per_update_stats(Path(f"{run}.rank0"))
    assert len(stats) == 3 and stats == per_update_stats(Path(f"{run}.rank1"))
    for got_update, expected_update in zip(stats, per_update_stats(Path(f"{reference}.rank0"))):
        for key in STATS:
            assert got_update[key] == pytest.approx(expected_update[key], abs=2e-3), key


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["legacy_ddp", "c10d"])
@pytest.mark.parametrize("engine", ENGINES)
def test_two_ranks_train_as_one_process(data_parallel, one_process, backend, engine):
    assert_same_training(data_parallel / f"{backend}-{engine}", one_process(engine))


@pytest.mark.slow
def test_auto_under_find_unused_parameters_trains_with_loop(data_parallel, one_process):
    assert_same_training(data_parallel / "find_unused-auto", one_process("loop"))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES[:3])
def test_find_unused_parameters_refuses_at_start_up(data_parallel, engine):
    for rank in range(RANKS):
        error = Path(f"{data_parallel / f'find_unused-{engine}'}.rank{rank}.error").read_text()
        assert error.strip().splitlines()[-1] == (
            f"gglm_fairseq.errors.GGLMUserError: --gglm-engine {engine} cannot run under "
            "--ddp-backend c10d with --find-unused-parameters (torch DDP's output hook breaks "
            "it): use --ddp-backend legacy_ddp, drop --find-unused-parameters, or use "
            "--gglm-engine loop"
        )
    assert not (data_parallel / f"find_unused-{engine}" / "checkpoint_last.pt").exists()


def criterion_for(data_bin, tmp_path, *extra):
    """The model and criterion fairseq-train builds with these options, in one process."""
    _, model, criterion = build(train_args(data_bin, tmp_path, *extra))
    return model, criterion


@pytest.mark.parametrize(
    "distributed",
    [
        ("--distributed-world-size", "2", "--ddp-backend", "legacy_ddp",
         "--find-unused-parameters"),
        ("--distributed-world-size", "2", "--ddp-backend", "c10d"),
        ("--distributed-world-size", "1", *FIND_UNUSED),  # fairseq wraps no model then
    ],
)  # fmt: skip
def test_what_is_not_refused(data_bin, tmp_path, distributed):
    for engine in ENGINES:
        model, criterion = criterion_for(data_bin, tmp_path, *distributed, "--gglm-engine", engine)
        assert criterion.engine_for(model) == engine
    model, criterion = criterion_for(data_bin, tmp_path, *distributed)
    assert criterion.engine_for(model) == "ghost"


@pytest.mark.parametrize("engine", ENGINES[:3])
def test_find_unused_parameters_refuses_the_engines_it_breaks(data_bin, tmp_path, engine):
    distributed = ("--distributed-world-size", "2", *FIND_UNUSED)
    with pytest.raises(GGLMUserError, match=f"--gglm-engine {engine} cannot run under"):
        criterion_for(data_bin, tmp_path, *distributed, "--gglm-engine", engine)
    model, criterion = criterion_for(data_bin, tmp_path, *distributed, "--gglm-engine", "loop")
    assert criterion.engine_for(model) == "loop"


@pytest.mark.parametrize(
    "granularity_and_similarity",
    [(), ("--gglm-granularity", "token"),
     ("--gglm-similarity", "cosine", "--gglm-threshold", "0.1")],
)  # fmt: skip
def test_auto_never_picks_a_refused_engine(data_bin, tmp_path, granularity_and_similarity):
    """auto's choices (ghost, jvp at token level, vmap for gradient norms) become loop."""
    model, criterion = criterion_for(
        data_bin, tmp_path, "--distributed-world-size", "2", *FIND_UNUSED,
        *granularity_and_similarity,
    )  # fmt: skip
    assert criterion.engine_for(model) == "loop"
