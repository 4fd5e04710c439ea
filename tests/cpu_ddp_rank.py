"""fairseq-train runs for the data-parallel tests: one CPU rank runs several in one process
(start-up is most of a tiny run's time), and the single-process reference uses the same
function in-process.

    python cpu_ddp_rank.py RANK RUNS.json    RUNS.json: [[argv, log_path], ...]

torch DDP on CPU: fairseq's c10d backend passes ``device_ids``, which torch refuses for a
CPU module; the shim drops them and is otherwise torch's DistributedDataParallel (the same
reducer a GPU rank gets). Each run's per-update statistics (fairseq's json progress lines)
go to its log_path (a rank's to log_path.rank<R>).
"""

import json
import logging
import sys
import traceback
from typing import List

import torch
from fairseq.distributed import utils as distributed_utils
from fairseq.models import distributed_fairseq_model
from fairseq_cli.train import main as train_main
from helpers import parse_train


class CPUDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, device_ids=None, output_device=None, **kwargs) -> None:
        super().__init__(module, **kwargs)


def train_logged(argv: List[str], log_path: str) -> None:
    """fairseq-train ``argv`` (distributed if it says so), its progress lines into log_path."""
    handler = logging.FileHandler(log_path)
    progress = logging.getLogger("fairseq.logging.progress_bar")
    level = progress.level
    progress.setLevel(logging.INFO)  # fairseq quiets all but rank 0, pytest all loggers
    progress.addHandler(handler)
    try:
        distributed_utils.call_main(parse_train(argv), train_main)
    finally:
        progress.removeHandler(handler)
        progress.setLevel(level)
        handler.close()


def main() -> None:
    distributed_fairseq_model.DistributedDataParallel = CPUDistributedDataParallel
    rank, runs_file = sys.argv[1], sys.argv[2]
    with open(runs_file) as f:
        runs = json.load(f)
    for argv, log_path in runs:
        try:
            train_logged(argv + ["--distributed-rank", rank], f"{log_path}.rank{rank}")
        except Exception:  # the next runs still give their results; the test reads this
            with open(f"{log_path}.rank{rank}.error", "w") as f:
                f.write(traceback.format_exc())


if __name__ == "__main__":
    main()
