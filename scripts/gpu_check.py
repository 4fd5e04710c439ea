#!/usr/bin/env python
"""The checks that need a GPU, in one run (about 5 minutes on one GPU): run it through
``scripts/gpu_check.sh``, which adds time limits.

1. Every engine against the per-example loop on CUDA (fp32; sentence and token level), and
   the fast engines on a bf16 and an fp16 model against the fp32 loop.
2. A few ``fairseq-train`` updates under ``--fp16``, ``--bf16`` and ``--amp`` with the ghost
   and jvp engines: the run finishes, masks (gglm_active > 0) and its losses are finite.
3. ``scripts/bench_step.py`` on CUDA (fp32 and bf16) and ``scripts/bench_train.py --fp16``.

``--device cpu`` runs the same code paths as far as a CPU allows (fp32 only, no fairseq
half-precision training), as the test suite does to keep this script from rotting.
Results go to ``OUT/gpu_check.md`` (and the benchmark reports beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (beside this script)
import bench_train  # noqa: E402

from gglm_fairseq.alignment import get_engine, trainable_parameters  # noqa: E402

FAST_ENGINES = ("vmap", "jvp", "ghost")
LOW_PRECISION_TOLERANCE = 0.05  # relative to the largest fp32 alignment


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-30)
    return float((actual.float() - expected.float()).abs().max() / scale)


def engine_checks(device: torch.device, low_precision: bool) -> List[str]:
    """Rows of (engine, granularity, dtype, relative error vs the fp32 loop, verdict)."""
    rows = []
    bench = bench_step.Bench(bench_step.SIZES["tiny"], 8, device, torch.float32, seed=1)
    model, sample = bench.model, bench.sample
    model.eval()
    generator = torch.Generator().manual_seed(2)
    direction = [
        torch.randn(p.shape, generator=generator).to(device) for p in trainable_parameters(model)
    ]
    criterion = bench.gglm[("jvp", "sentence")]  # any criterion: its token_losses
    for granularity in ("sentence", "token"):
        expected = get_engine("loop")(
            model, criterion.token_losses, sample, direction, granularity=granularity
        ).alignment
        for engine in FAST_ENGINES:
            got = get_engine(engine)(
                model, criterion.token_losses, sample, direction, granularity=granularity
            ).alignment
            error = relative_error(got, expected)
            rows.append((engine, granularity, "fp32", error, error < 1e-4))
        if not low_precision or granularity == "token":
            continue
        for dtype in (torch.bfloat16, torch.float16):
            model.to(dtype)
            for engine in ("jvp", "ghost"):
                got = get_engine(engine)(
                    model, criterion.token_losses, sample, direction, granularity=granularity
                ).alignment
                error = relative_error(got, expected)
                name = str(dtype).replace("torch.", "")
                rows.append((engine, granularity, name, error, error < LOW_PRECISION_TOLERANCE))
            model.float()
    lines = ["| engine | granularity | model dtype | rel. error vs fp32 loop | ok |",
             "|---|---|---|---:|---|"]  # fmt: skip
    lines += [f"| {e} | {g} | {d} | {err:.1e} | {'PASS' if ok else 'FAIL'} |"
              for e, g, d, err, ok in rows]  # fmt: skip
    return lines


def training_checks(device: str, precisions: List[str], work: Path) -> List[str]:
    data = bench_train.write_corpus(work, vocab=1000, seed=1)
    options = argparse.Namespace(
        max_tokens=800, updates=8, log_interval=2, seed=1, device=device, fp16=False
    )
    lines = ["| precision | engine | exit | gglm_active | last loss | seconds |",
             "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for precision in precisions:
        for engine in ("ghost", "jvp"):
            flags = [] if precision == "fp32" else [f"--{precision}"]
            command = bench_train.train_command(data, "tiny", True, options)
            command += ["--gglm-engine", engine, *flags]
            start = time.perf_counter()
            run = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            found = re.findall(r"(\{\"epoch\".*\})", run.stdout + run.stderr)
            logs = [json.loads(line) for line in found]
            inner = [log for log in logs if "gglm_active" in log]
            active = max((float(log["gglm_active"]) for log in inner), default=0.0)
            loss = float(inner[-1]["loss"]) if inner else float("nan")
            ok = run.returncode == 0 and active > 0 and loss == loss and loss < float("inf")
            lines.append(f"| {precision} | {engine} | {run.returncode} | {active:.2f} | "
                         f"{loss:.3f} | {seconds:.0f} |" + ("" if ok else " FAIL"))  # fmt: skip
            if not ok:
                lines.append(f"\n```\n{run.stderr[-2000:]}\n```\n")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--skip-bench", action="store_true", help="checks 1 and 2 only")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    load_start = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    report = ["# GPU check", "", f"Command: `python {' '.join(sys.argv)}`", ""]
    report += bench_step.environment(torch.device(args.device), load_start) + [""]
    print("1. engines against the loop", file=sys.stderr, flush=True)
    report += ["## Engines against the loop", ""] + engine_checks(torch.device(args.device), cuda)
    print("2. fairseq-train under each precision", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as work:
        precisions = ["fp16", "bf16", "amp"] if cuda else ["fp32"]
        report += ["", "## fairseq-train, 8 updates", ""]
        report += training_checks(args.device, precisions, Path(work))
    if not args.skip_bench:
        print("3. benchmarks", file=sys.stderr, flush=True)
        script = Path(__file__).resolve().parent
        runs = (
            [["--device", "cuda", "--dtype", dtype, "--sizes", "base-2x256,base-6x512",
              "--batch-sentences", "80,256", "--skip-vmap-above", "80",
              "--train-reps", "3", "--train-updates", "40", "--train-max-tokens", "4096",
              "--out", str(out / f"benchmarks-cuda-{dtype}.md")] for dtype in ("fp32", "bf16")]
            if cuda else [["--quick", "--out", str(out / "benchmarks-cpu.md")]]
        )  # fmt: skip
        for extra in runs:
            subprocess.run([sys.executable, str(script / "bench_step.py"), *extra], check=True)
        report += ["", "## Benchmarks", ""] + [f"- `{path.name}`" for path in
                                                sorted(out.glob("benchmarks-*.md"))]  # fmt: skip
    text = "\n".join(report) + "\n"
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 1 if "FAIL" in text else 0


if __name__ == "__main__":
    sys.exit(main())
