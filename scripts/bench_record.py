"""The per-example record at corpus scale: its memory, the export and checkpoint-state costs,
and what it adds to each update.

Builds the record of a corpus of ``--examples`` examples after one epoch (every example seen,
one history row per update of ``--batch-examples`` examples, ~200 for 4k tokens), then times:
``save()`` (the export gglm-report maps) and its size on disk, ``load()`` mapped and copied,
``state_dict()`` with ``torch.save`` / ``torch.load(weights_only=True)`` of it and its size,
``update()`` for one batch, and the local part of ``gather_decisions`` (pack two ranks'
batches, unpack them) next to the pickling that ``all_gather_object`` did before. Prints a
markdown table; with ``--out``, also puts it into that page's section "Per-example record at
corpus scale" (replaced if there, else appended; ``scripts/bench_step.py`` keeps it when it
rewrites ``docs/benchmarks.md``).

Usage::

    python scripts/bench_record.py [--examples 100000000] [--dir /tmp] [--out docs/benchmarks.md]
"""

import argparse
import os
import pickle
import platform
import shlex
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from gglm_fairseq.record import (
    ExampleRecord,
    pack_decisions,
    unpack_decisions,
    write_atomically,
)

CHUNK = 10_000_000  # examples filled at a time, to keep the random temporaries small
GB = 1e9
SECTION = "## Per-example record at corpus scale"
NOTES = [
    "- before this format: five 8-byte arrays, 40 bytes per example (4.0 GB at 100M), and the "
    "history as Python lists; gglm-report read the whole export into memory",
    "- the record is that of one epoch: every example seen 1-3 times, one history row per "
    "update; update() and the gather's local part are timed on random batches, so update() "
    "pays cache misses into the full-size arrays",
    "- save, load and torch.save times include this machine's page cache and disk (a large "
    "write can wait for writeback), and vary from run to run",
]


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_epoch_record(examples: int, batch_examples: int, rng: np.random.Generator) -> ExampleRecord:
    """A record with every example seen a few times and one history row per update."""
    state = {
        "seen": np.zeros(examples, np.uint32),
        "masked": np.zeros(examples, np.float32),
        "alignment_sum": np.zeros(examples, np.float64),
        "alignment_last": np.zeros(examples, np.float32),
        "last_update": np.zeros(examples, np.int32),
    }
    updates = max(1, examples // batch_examples)
    for start in range(0, examples, CHUNK):
        part = slice(start, min(start + CHUNK, examples))
        n = part.stop - part.start
        state["seen"][part] = rng.integers(1, 4, n)
        state["masked"][part] = rng.random(n, np.float32) * state["seen"][part]
        state["alignment_sum"][part] = rng.standard_normal(n)
        state["alignment_last"][part] = rng.standard_normal(n, np.float32)
        state["last_update"][part] = rng.integers(0, updates, n)
    history = np.zeros((updates, 3))  # update, sentences, masked
    history[:, 0], history[:, 1], history[:, 2] = np.arange(updates), batch_examples, 60.0
    tensors = {name: torch.from_numpy(array) for name, array in state.items()}
    return ExampleRecord.from_state_dict(
        {**tensors, "update_num": updates - 1, "history": torch.from_numpy(history)}
    )


def seconds(run: Callable[[], object]) -> Tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def median_us(run: Callable[[int], object], repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def batch(rng: np.random.Generator, examples: int, size: int) -> Tuple[torch.Tensor, ...]:
    ids = torch.from_numpy(rng.choice(examples, size=min(size, examples), replace=False))
    return ids, torch.randn(len(ids)), torch.rand(len(ids)).round()


def memory_rows(record: ExampleRecord, resident: int) -> List[Tuple[str, str]]:
    examples, history = len(record), record.history
    array_bytes = sum(a.nbytes for a in record.arrays.values())
    return [
        ("examples", f"{examples:,}"),
        ("bytes per example (arrays)", f"{array_bytes / examples:g}"),
        ("record arrays", f"{array_bytes / GB:.3f} GB"),
        ("resident memory added by building the record", f"{resident / GB:.3f} GB"),
        ("history rows (one epoch)", f"{len(history):,} ({history.nbytes / GB:.4f} GB)"),
    ]


def export_rows(record: ExampleRecord, directory: str) -> List[Tuple[str, str]]:
    path = os.path.join(directory, "bench_gglm_record.npz")
    took, _ = seconds(lambda: record.save(path))
    rows = [("save(): export written", f"{took:.2f} s, {os.path.getsize(path) / GB:.3f} GB")]
    took, _ = seconds(lambda: ExampleRecord.load(path, mmap=True))
    rows.append(("load(mmap=True): export mapped", f"{1e3 * took:.1f} ms"))
    took, _ = seconds(lambda: ExampleRecord.load(path))
    rows.append(("load(): export read and CRC-checked", f"{took:.2f} s"))
    os.unlink(path)
    return rows


def state_rows(record: ExampleRecord, directory: str) -> List[Tuple[str, str]]:
    path = os.path.join(directory, "bench_gglm_state.pt")
    took, state = seconds(record.state_dict)
    rows = [("state_dict() (copies)", f"{took:.2f} s")]
    took, _ = seconds(lambda: torch.save(state, path))
    rows.append(("torch.save(state_dict())", f"{took:.2f} s, {os.path.getsize(path) / GB:.3f} GB"))
    took, _ = seconds(
        lambda: ExampleRecord.from_state_dict(torch.load(path, weights_only=True))
    )
    rows.append(("torch.load(weights_only=True) + from_state_dict()", f"{took:.2f} s"))
    os.unlink(path)
    return rows


def per_update_rows(
    record: ExampleRecord, batch_examples: int, updates: int, rng: np.random.Generator
) -> List[Tuple[str, str]]:
    next_update = record.update_num + 1
    batches = [batch(rng, len(record), batch_examples) for _ in range(updates)]

    def local_gather(i: int) -> None:
        ids, alignment, masked = batches[i]
        other = batches[(i + 1) % len(batches)]
        length = max(len(ids), len(other[0]))
        packed = torch.stack([pack_decisions(ids, alignment, masked, length),
                              pack_decisions(*other, length)])  # fmt: skip
        unpack_decisions(packed, (len(ids), len(other[0])), alignment.dtype, masked.dtype)

    def pickled_gather(i: int) -> None:  # all_gather_object's local work, before
        entries = [tuple(t.double().numpy() if t.is_floating_point() else t.numpy()
                         for t in batches[i])]  # fmt: skip
        for data in (pickle.dumps(entries), pickle.dumps(entries)):
            pickle.loads(data)

    update_us = median_us(lambda i: record.update(*batches[i], next_update + i), updates)
    return [
        (f"update() per batch of {batch_examples}", f"{update_us:.1f} µs"),
        ("gather_decisions local part (2 ranks: pack, unpack)",
         f"{median_us(local_gather, updates):.1f} µs"),
        ("before: all_gather_object pickling (2 ranks)",
         f"{median_us(pickled_gather, updates):.1f} µs"),
    ]  # fmt: skip


def measure(args: argparse.Namespace) -> List[Tuple[str, str]]:
    rng = np.random.default_rng(0)
    before = resident_bytes()
    record = one_epoch_record(args.examples, args.batch_examples, rng)
    rows = memory_rows(record, resident_bytes() - before)
    rows += export_rows(record, args.dir)
    rows += state_rows(record, args.dir)
    return rows + per_update_rows(record, args.batch_examples, args.updates, rng)


def table(rows: List[Tuple[str, str]]) -> str:
    lines = ["| measure | value |", "| --- | --- |"]
    return "\n".join(lines + [f"| {name} | {value} |" for name, value in rows])


def environment(load_start: Tuple[float, float, float], wall: float) -> List[str]:
    with open("/proc/meminfo") as f:
        memory = dict(line.split(":", 1) for line in f)
    load = ", ".join(f"{x:.2f}" for x in load_start) + "; at end "
    return [
        f"- torch {torch.__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}, {platform.platform()}, {os.cpu_count()} logical CPUs",
        f"- memory: {memory['MemTotal'].strip()} total, {memory['MemAvailable'].strip()} "
        "available at the end",
        "- load average (1, 5, 15 min): at start " + load
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"- wall time: {wall:.0f} s",
    ]


def _section_span(text: str) -> Tuple[int, int]:
    """Where the record section is: its heading up to the blank line before the next level-2
    heading (or the end); (-1, -1) if absent."""
    start = text.find(SECTION + "\n")
    if start < 0:
        return -1, -1
    end = text.find("\n## ", start + len(SECTION))
    return start, end if end >= 0 else len(text)


def section_in(text: str) -> str:
    """The record section of a page, or ""."""
    start, end = _section_span(text)
    return text[start:end].rstrip("\n") + "\n" if start >= 0 else ""


def with_section(text: str, section: str) -> str:
    """``text`` with its record section replaced by ``section``, or with it appended."""
    start, end = _section_span(text)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    return text[:start] + section.rstrip("\n") + "\n" + text[end:]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000_000, help="corpus size")
    parser.add_argument("--batch-examples", type=int, default=200, help="examples per update")
    parser.add_argument("--updates", type=int, default=2000, help="updates timed")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the files")
    parser.add_argument("--out", help="markdown page to put the section into")
    args = parser.parse_args(argv)
    load_start, started = os.getloadavg(), time.perf_counter()
    rows = measure(args)
    print(table(rows))
    if args.out:
        command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])
        section = "\n".join([
            SECTION, "", f"Written by `python {command}`.", "",
            *environment(load_start, time.perf_counter() - started), *NOTES, "",
            table(rows), "",
        ])  # fmt: skip
        old = open(args.out, encoding="utf-8").read() if os.path.exists(args.out) else ""
        page = with_section(old, section).encode("utf-8")
        write_atomically(args.out, lambda f: f.write(page))


if __name__ == "__main__":
    main()
