#!/usr/bin/env python
"""Wall time and peak memory of one training update: plain fairseq vs GGLM with each engine.

Every update is the one fairseq's trainer runs: zero the gradients, ``task.train_step``
(criterion forward + backward), scale the gradients by 1/sample_size, take the gradient norm,
``task.optimizer_step`` (Adam). The plain update uses ``label_smoothed_cross_entropy``; a GGLM
update uses the ``gradient_masked_cross_entropy`` criterion with the
``translation_with_clean_set`` task, whose ``train_step`` computes the clean gradient
(``torch.autograd.grad``, dropout off) before the criterion runs the alignment engine and the
masked loss. Only the clean-batch iterator is replaced: every update gets a fixed clean batch
of 1/4 or 1/1 of the training batch's target tokens.

Timing runs in this process, interleaved: each repetition runs every method once (the order
rotates between repetitions), after warm-up repetitions; the table gives the median. Peak
memory: on CUDA, ``torch.cuda.max_memory_allocated`` around each timed update. On CPU, each
(method, configuration) runs in a fresh process (forked from a server that has only imported
the libraries): one warm-up update (the plain one for the slow loop and vmap engines), then
the resident-set high-water mark is reset and one update is measured; peak = bytes held
between updates (parameters, Adam state, the task's cached clean gradient) + the RSS growth
during the update.

The jvp cost breakdown runs the same jvp update step by step (clean pass, dual forward, loss
and its tangent, mask, masked backward, optimizer), synchronising at each step, and checks
that its alignments equal the engine's.

    python scripts/bench_step.py          # the default benchmark (~10-15 min on 2 shared cores)
    python scripts/bench_step.py --quick --out /tmp/b.md
    python scripts/bench_step.py --device cuda --dtype bf16 --sizes base-2x256,base-6x512
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import fairseq
import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from fairseq import utils
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    label_smoothed_nll_loss,
)
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.models.transformer import TransformerModel
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from gglm_fairseq.alignment import (
    get_engine,
    mask_from_scores,
    substituted_parameters,
    trainable_parameters,
    unfused_attention,
    units,
)
from gglm_fairseq.alignment.ghost import Recording, Tape, TapeGradients
from gglm_fairseq.criterions import (
    GradientMaskedCrossEntropyConfig,
    GradientMaskedCrossEntropyCriterion,
)
from gglm_fairseq.tasks import TranslationWithCleanSetConfig, TranslationWithCleanSetTask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_record  # noqa: E402  (beside this script)
import bench_train  # noqa: E402  (beside this script)

LABEL_SMOOTHING = 0.1
SENTENCE_LENGTHS = (10, 30)  # tokens per sentence, end-of-sentence included, uniform
CLEAN_FRACTIONS = (0.25, 1.0)  # clean-batch target tokens / training-batch target tokens
TARGET_CLEAN = 0.25  # the targets are judged with the smaller clean batch
# One backward per example (loop) or per-example gradients in chunks (vmap): seconds to
# minutes per update on a CPU, so they get fewer timed runs (--slow-reps).
SLOW_ENGINES = ("loop", "vmap")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MiB = 1024.0 * 1024.0

# fairseq 0.12 on a recent torch: harmless deprecation notices, once per update otherwise.
warnings.filterwarnings("ignore", message=r"`torch.cuda.amp.autocast", category=FutureWarning)
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")


@dataclass(frozen=True)
class ModelSize:
    name: str
    layers: int  # encoder layers = decoder layers
    dim: int
    heads: int
    ffn: int
    vocab: int
    base_shaped: bool  # counts for the targets


SIZES = {
    size.name: size
    for size in (
        ModelSize("tiny", 1, 64, 2, 128, 1000, False),
        ModelSize("base-2x256", 2, 256, 4, 1024, 8000, True),
        ModelSize("base-6x512", 6, 512, 8, 2048, 8000, True),
    )
}


@dataclass(frozen=True)
class Method:
    engine: Optional[str] = None  # None: plain label-smoothed cross-entropy
    granularity: str = "sentence"
    clean: float = 0.0  # clean-batch tokens as a fraction of the training batch's

    @property
    def name(self) -> str:
        if self.engine is None:
            return "plain"
        fraction = "1/4" if self.clean == 0.25 else "1/1" if self.clean == 1.0 else f"{self.clean}"
        return f"gglm {self.engine} {self.granularity} clean {fraction}"


PLAIN = Method()
METHODS: Tuple[Method, ...] = (PLAIN,) + tuple(
    Method(engine, granularity, clean)
    for engine, granularity in (
        ("loop", "sentence"),
        ("vmap", "sentence"),
        ("jvp", "sentence"),
        ("jvp", "token"),
        ("ghost", "sentence"),
    )
    for clean in CLEAN_FRACTIONS
)


def method_names() -> List[str]:
    """Every method the benchmark reports, in table order."""
    return [method.name for method in METHODS]


# --- building a fairseq model, task, criteria, optimizer and batches -------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that a clock reading covers the work before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FixedCleanBatch:
    """Stands in for the task's endless clean iterator: every update gets the same batch."""

    def __init__(self, batch: Dict) -> None:
        self._batch = batch

    def batch(self, index: int) -> Dict:
        return self._batch


def build_dictionary(size: int) -> Dictionary:
    dictionary = Dictionary()
    for word in range(size - len(dictionary)):
        dictionary.add_symbol(f"w{word}")
    return dictionary


def make_batch(
    rng: np.random.Generator,
    dictionary: Dictionary,
    sentences: Optional[int] = None,
    target_tokens: Optional[int] = None,
) -> Dict:
    """A fairseq batch of random sentence pairs: ``sentences`` of them, or as many as it
    takes to reach ``target_tokens`` target tokens."""
    low, high = SENTENCE_LENGTHS
    sources: List[Tensor] = []
    targets: List[Tensor] = []

    def sentence() -> Tensor:
        words = rng.integers(dictionary.nspecial, len(dictionary), rng.integers(low, high + 1) - 1)
        return torch.cat([torch.from_numpy(words), torch.tensor([dictionary.eos()])]).long()

    while (sentences is not None and len(targets) < sentences) or (
        target_tokens is not None and sum(len(t) for t in targets) < target_tokens
    ):
        sources.append(sentence())
        targets.append(sentence())
    dataset = LanguagePairDataset(
        sources, [len(s) for s in sources], dictionary, targets, [len(t) for t in targets],
        dictionary,
    )
    return dataset.collater([dataset[i] for i in range(len(dataset))])


def model_args(size: ModelSize) -> argparse.Namespace:
    """transformer (base) hyper-parameters with the size's shape; base_architecture fills
    the rest (dropout 0.1, sinusoidal positions, post-norm)."""
    return argparse.Namespace(
        arch="transformer",
        encoder_layers=size.layers,
        decoder_layers=size.layers,
        encoder_embed_dim=size.dim,
        decoder_embed_dim=size.dim,
        encoder_attention_heads=size.heads,
        decoder_attention_heads=size.heads,
        encoder_ffn_embed_dim=size.ffn,
        decoder_ffn_embed_dim=size.ffn,
        share_all_embeddings=True,
        max_source_positions=1024,
        max_target_positions=1024,
    )


class Bench:
    """One model size and training batch, with everything an update needs."""

    def __init__(
        self, size: ModelSize, sentences: int, device: torch.device, dtype: torch.dtype, seed: int
    ) -> None:
        torch.manual_seed(seed)
        rng = np.random.default_rng([seed, sentences])
        dictionary = build_dictionary(size.vocab)
        self.device = device
        self.task = TranslationWithCleanSetTask(
            TranslationWithCleanSetConfig(
                gglm_record_dir=None, train_max_tokens=None, train_batch_size=None, seed=seed
            ),
            dictionary,
            dictionary,
        )
        self.model = TransformerModel.build_model(model_args(size), self.task)
        self.model.to(device=device, dtype=dtype)
        # As fairseq's trainer: the optimizer gets the distinct trainable parameters. With
        # bf16 it steps the bf16 weights (fairseq's --bf16 keeps fp32 master copies).
        self.optimizer = FairseqAdam(
            FairseqAdamConfig(lr=[5e-4], adam_betas="(0.9, 0.98)", tpu=False),
            trainable_parameters(self.model),
        )
        self.plain = LabelSmoothedCrossEntropyCriterion(
            self.task, sentence_avg=False, label_smoothing=LABEL_SMOOTHING
        )
        self.gglm = {
            (engine, granularity): GradientMaskedCrossEntropyCriterion(
                self.task,
                GradientMaskedCrossEntropyConfig(
                    sentence_avg=False,
                    label_smoothing=LABEL_SMOOTHING,
                    gglm_engine=engine,
                    gglm_granularity=granularity,
                ),
            )
            for engine, granularity in {(m.engine, m.granularity) for m in METHODS if m.engine}
        }
        self.sample = utils.apply_to_sample(
            lambda t: t.to(device), make_batch(rng, dictionary, sentences=sentences)
        )
        self.clean = {
            fraction: utils.apply_to_sample(
                lambda t: t.to(device),
                make_batch(
                    rng, dictionary, target_tokens=math.ceil(fraction * self.sample["ntokens"])
                ),
            )
            for fraction in CLEAN_FRACTIONS
        }
        self.num_updates = 0

    def step(self, sample_size: float) -> None:
        """The trainer's part after the backward: 1/sample_size, grad norm (clip_norm 0
        only measures it), Adam."""
        self.optimizer.multiply_grads(1.0 / (sample_size or 1.0))
        self.optimizer.clip_grad_norm(0.0)
        self.task.optimizer_step(self.optimizer, self.model, self.num_updates)

    def update(self, method: Method) -> None:
        """One training update with ``method``, as fairseq's trainer runs it."""
        self.num_updates += 1  # a new update number: the task recomputes the clean gradient
        self.optimizer.zero_grad()
        if method.engine is None:
            criterion = self.plain
        else:
            criterion = self.gglm[(method.engine, method.granularity)]
            self.task.clean_batches = FixedCleanBatch(self.clean[method.clean])
        _, sample_size, _ = self.task.train_step(
            self.sample, self.model, criterion, self.optimizer, self.num_updates
        )
        self.step(sample_size)

    def resident_bytes(self) -> int:
        """Bytes of the tensors kept between updates: parameters, Adam state and the
        clean gradient the task caches (what CUDA's memory_allocated counts before one)."""
        tensors = list(self.model.parameters())
        for state in self.optimizer.optimizer.state.values():
            tensors += [t for t in state.values() if torch.is_tensor(t)]
        cache = self.task.estimator.current
        if cache is not None and cache.direction is not None:
            tensors += cache.direction
        distinct = {t.data_ptr(): t.numel() * t.element_size() for t in tensors}
        return sum(distinct.values())


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Measurement:
    seconds: List[float]
    peak_bytes: Optional[float] = None  # whole footprint at the peak of an update
    extra_bytes: Optional[float] = None  # above what is held between updates
    skipped: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_update(bench: Bench, method: Method) -> Tuple[float, Optional[float], Optional[float]]:
    """Seconds of one update, and on CUDA its peak and extra allocated bytes."""
    cuda = bench.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(bench.device)
        before = torch.cuda.memory_allocated(bench.device)
    synchronize(bench.device)
    start = time.perf_counter()
    bench.update(method)
    synchronize(bench.device)
    seconds = time.perf_counter() - start
    if not cuda:
        return seconds, None, None
    peak = torch.cuda.max_memory_allocated(bench.device)
    return seconds, float(peak), float(peak - before)


def time_methods(
    bench: Bench, methods: Sequence[Method], reps: int, warmup: int, slow_reps: int
) -> Dict[Method, Measurement]:
    """Round-robin over ``methods`` for warm-up + ``reps`` repetitions, the order rotated
    each time. The slow engines take part in the first ``slow_reps`` timed repetitions only,
    without a warm-up of their own (the other methods have warmed the same kernels)."""
    results = {m: Measurement([]) for m in methods}
    peaks: Dict[Method, List[Tuple[float, float]]] = {m: [] for m in methods}
    for rep in range(warmup + reps):
        rotation = rep % len(methods)
        for method in list(methods[rotation:]) + list(methods[:rotation]):
            timed = rep >= warmup
            if method.engine in SLOW_ENGINES and (not timed or rep - warmup >= slow_reps):
                continue
            seconds, peak, extra = time_update(bench, method)
            if timed:
                results[method].seconds.append(seconds)
                if peak is not None:
                    peaks[method].append((peak, extra))
    for method, values in peaks.items():
        if values:
            results[method].peak_bytes = statistics.median(p for p, _ in values)
            results[method].extra_bytes = statistics.median(e for _, e in values)
    return results


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_in_child(
    size_name: str, sentences: int, method: Method, dtype_name: str, seed: int, threads: int
) -> Optional[Tuple[float, float]]:
    """In a fresh process: (peak bytes, extra bytes) of one warm CPU update, or None where
    the RSS high-water mark cannot be reset."""
    try:
        # glibc keeps freed heap memory resident; giving blocks of 64 KiB and more their own
        # mappings returns them on free, so the RSS follows the live tensors.
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass
    torch.set_num_threads(threads)
    bench = Bench(SIZES[size_name], sentences, torch.device("cpu"), DTYPES[dtype_name], seed)
    # Warm-up: Adam state, the cached clean gradient, lazily built caches. A slow engine is
    # warmed up with the plain update, which runs the same kernels.
    bench.update(PLAIN if method.engine in SLOW_ENGINES else method)
    gc.collect()
    before = _status_kib("VmRSS")
    if not _reset_peak_rss():
        return None
    bench.update(method)
    extra = (_status_kib("VmHWM") - before) * 1024.0
    # Held after the update: with the new clean gradient cached, as it is at the peak.
    return bench.resident_bytes() + extra, extra


class MemoryProbe:
    """Runs :func:`memory_in_child` in a fresh process per call."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("forkserver")
        # The server imports what this script needs, and torch._dynamo, which the optimizer
        # imports lazily, so that a child spends its time on the update, not on imports.
        # (By name: Python 3.11's server neither preloads "__main__" nor takes our sys.path.)
        context.set_forkserver_preload(
            [
                "torch._dynamo",
                "fairseq.criterions.label_smoothed_cross_entropy",
                "fairseq.data",
                "fairseq.models.transformer",
                "fairseq.optim.adam",
                "gglm_fairseq",
            ]
        )
        self._context = context

    def measure(self, *args) -> Optional[Tuple[float, float]]:
        with self._context.Pool(1, maxtasksperchild=1) as pool:
            return pool.apply(memory_in_child, args)


# --- the jvp cost breakdown -------------------------------------------------------------------


class Stopwatch:
    """Lap times with the device synchronised at every reading."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: Dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


def _begin_phases(bench: Bench, watch: Stopwatch, engine: str, training: bool) -> List[Tensor]:
    """A GGLM update's first phase, as the task runs it: the clean gradient (clean 1/4)."""
    bench.num_updates += 1
    bench.optimizer.zero_grad()
    bench.task.clean_batches = FixedCleanBatch(bench.clean[TARGET_CLEAN])
    watch.start()
    criterion = bench.gglm[(engine, "sentence")]
    direction = bench.task.clean_gradient(bench.model, criterion, bench.num_updates).direction
    watch.lap("clean")
    bench.model.train(training)
    bench.model.set_num_updates(bench.num_updates)
    return direction


def _token_losses(bench: Bench, net_output) -> Tensor:
    criterion, sample = bench.plain, bench.sample
    lprobs, target = criterion.get_lprobs_and_target(bench.model, net_output, sample)
    loss, _ = label_smoothed_nll_loss(
        lprobs, target, criterion.eps, ignore_index=criterion.padding_idx, reduce=False
    )
    return loss.view(sample["target"].size(0), -1)


def _mask(bench: Bench, alignment: Tensor, losses: Tensor) -> Tuple[Tensor, float]:
    """The mask and the sample size, as the criterion computes them."""
    keep = bench.sample["target"].ne(bench.plain.padding_idx)
    mask = mask_from_scores(alignment)
    return mask, (mask.unsqueeze(1).to(losses.dtype) * keep).sum().item()


def _end_phases(bench: Bench, watch: Stopwatch, masked_loss: Tensor, sample_size: float) -> None:
    """The last phases of a GGLM update: fairseq's backward call, then the optimizer."""
    watch.lap("mask")
    bench.optimizer.backward(masked_loss)
    watch.lap("backward")
    bench.step(sample_size)
    watch.lap("optimizer")


def jvp_update_phases(bench: Bench, watch: Stopwatch, training: bool = True) -> Tensor:
    """A GGLM jvp update (sentence level, clean 1/4) cut into phases; the same steps as the
    task, the jvp engine and the criterion, without the criterion's logging. Returns the
    alignments."""
    direction = _begin_phases(bench, watch, "jvp", training)
    model = bench.model
    params = trainable_parameters(model)
    with fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH):
        duals = [fwAD.make_dual(p, d.to(p.dtype)) for p, d in zip(params, direction)]
        with substituted_parameters(model, params, duals):
            net_output = model(**bench.sample["net_input"])
            watch.lap("forward")
            loss = _token_losses(bench, net_output)
        token_losses, tangent = fwAD.unpack_dual(loss)
        alignment = units(tangent, "sentence").detach().float()
    watch.lap("loss")
    mask, sample_size = _mask(bench, alignment, token_losses)
    _end_phases(bench, watch, (token_losses.sum(dim=1) * mask).sum(), sample_size)
    return alignment


def ghost_update_phases(bench: Bench, watch: Stopwatch, training: bool = True) -> Tensor:
    """A GGLM ghost update (sentence level, clean 1/4) cut into phases, as the task, the
    ghost engine and the criterion run it. Returns the alignments."""
    direction = _begin_phases(bench, watch, "ghost", training)
    model = bench.model
    tape = Tape(model, trainable_parameters(model), direction)
    with unfused_attention(model), Recording(tape):
        net_output = model(**bench.sample["net_input"])
        watch.lap("forward")
        losses = _token_losses(bench, net_output).sum(dim=1)
    watch.lap("loss")
    tape.backward(losses, torch.ones_like(losses), retain=False)
    watch.lap("activation")
    alignment = tape.alignment(losses.numel())
    watch.lap("dots")
    mask, sample_size = _mask(bench, alignment, losses)
    used = [tape.params[k] for k in tape.used()]
    masked_loss = TapeGradients.apply((losses.detach() * mask).sum(), tape, mask, 1.0, *used)
    _end_phases(bench, watch, masked_loss, sample_size)
    return alignment


UPDATE_PHASES = {"jvp": jvp_update_phases, "ghost": ghost_update_phases}


def plain_update_phases(bench: Bench, watch: Stopwatch) -> None:
    """The plain update cut into the same phases."""
    model, sample = bench.model, bench.sample
    bench.num_updates += 1
    bench.optimizer.zero_grad()
    model.train()
    model.set_num_updates(bench.num_updates)
    watch.start()
    net_output = model(**sample["net_input"])
    watch.lap("forward")
    loss = _token_losses(bench, net_output).sum()
    watch.lap("loss")
    bench.optimizer.backward(loss)
    watch.lap("backward")
    bench.step(sample["ntokens"])
    watch.lap("optimizer")


def check_phases_mirror_engine(bench: Bench, engine: str) -> float:
    """Relative difference between the phase-by-phase alignments and the engine's, with
    dropout off and the same clean gradient: the breakdown must time what the engine does."""
    criterion = bench.gglm[(engine, "sentence")]
    bench.task.clean_batches = FixedCleanBatch(bench.clean[TARGET_CLEAN])
    direction = bench.task.clean_gradient(bench.model, criterion, bench.num_updates + 1).direction
    bench.model.eval()
    expected = get_engine(engine)(bench.model, criterion.token_losses, bench.sample, direction)
    got = UPDATE_PHASES[engine](bench, Stopwatch(bench.device), training=False)
    bench.model.train()
    scale = expected.alignment.abs().max().clamp_min(1e-30)
    return float((got - expected.alignment).abs().max() / scale)


PHASES = {
    "jvp": (
        ("clean", "clean pass: eval forward + autograd.grad for g_c"),
        ("forward", "network forward (jvp: dual, i.e. primal + tangent matmuls)"),
        ("loss", "log-softmax + label-smoothed loss (jvp: + loss tangent, alignments)"),
        ("mask", "mask and masked sum"),
        ("backward", "backward (jvp: of the masked loss)"),
        ("optimizer", "1/sample_size, grad norm, Adam"),
    ),
    "ghost": (
        ("clean", "clean pass: eval forward + autograd.grad for g_c"),
        ("forward", "network forward (ghost: recorded, parameters detached, explicit attention)"),
        ("loss", "log-softmax + label-smoothed loss"),
        ("activation", "activation-only backward of the unmasked loss"),
        ("dots", "ghost dots: each layer's per-example <delta, G x> terms"),
        ("mask", "mask and masked sum"),
        ("backward", "weight gradients, once, with the mask (fairseq's backward call)"),
        ("optimizer", "1/sample_size, grad norm, Adam"),
    ),
}


WHOLE = "update"  # the whole update, timed as in the first table


def profile(bench: Bench, engine: str, reps: int, warmup: int) -> Dict[str, Tuple[float, float]]:
    """Median seconds per phase and of the whole update (key WHOLE), as (engine, plain).
    Each repetition runs both phase-by-phase updates and both whole updates, so that the sums
    of phases and the whole updates are compared under the same machine load."""
    method = Method(engine, "sentence", TARGET_CLEAN)
    laps: Dict[str, Tuple[List[float], List[float]]] = {
        name: ([], []) for name in [phase for phase, _ in PHASES[engine]] + [WHOLE]
    }
    for rep in range(warmup + reps):
        engine_watch, plain_watch = Stopwatch(bench.device), Stopwatch(bench.device)
        UPDATE_PHASES[engine](bench, engine_watch)
        plain_update_phases(bench, plain_watch)
        engine_watch.laps[WHOLE] = time_update(bench, method)[0]
        plain_watch.laps[WHOLE] = time_update(bench, PLAIN)[0]
        if rep < warmup:
            continue
        for name, (engine_laps, plain_laps) in laps.items():
            engine_laps.append(engine_watch.laps[name])
            if name in plain_watch.laps:  # the plain update has no clean pass and no mask
                plain_laps.append(plain_watch.laps[name])
    return {
        name: (statistics.median(e), statistics.median(p) if p else 0.0)
        for name, (e, p) in laps.items()
    }


# --- the report -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
        if match:
            return match.group(1).strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, load_start: Sequence[float]) -> List[str]:
    load_end = os.getloadavg()
    lines = [
        f"- torch {torch.__version__}, fairseq {fairseq.__version__}, Python "
        f"{platform.python_version()}, {platform.platform()}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}",
        "- load average (1, 5, 15 min): at start "
        + ", ".join(f"{x:.2f}" for x in load_start)
        + "; at end "
        + ", ".join(f"{x:.2f}" for x in load_end),
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    return lines


def ratio(value: Optional[float], reference: Optional[float]) -> str:
    if value is None or reference is None or reference <= 0:
        return "n/a"
    return f"{value / reference:.2f}x"


def mib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / MiB:.0f}"


@dataclass
class Config:
    size: ModelSize
    sentences: int
    target_tokens: int
    clean_tokens: Dict[float, int]
    results: Dict[Method, Measurement]


def results_table(configs: Sequence[Config]) -> List[str]:
    lines = [
        "| model | sentences | target tokens | method | clean tokens | time ms | time vs plain "
        "| peak MiB | peak vs plain | extra MiB | extra vs plain | runs |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config in configs:
        plain = config.results[PLAIN]
        for method in METHODS:
            result = config.results[method]
            clean = str(config.clean_tokens[method.clean]) if method.engine else "-"
            head = (
                f"| {config.size.name} | {config.sentences} | {config.target_tokens} | "
                f"{method.name} | {clean} |"
            )
            if result.skipped:
                lines.append(f"{head} skipped: {result.skipped} |||||||")
                continue
            lines.append(
                f"{head} {result.median * 1e3:.0f} | {ratio(result.median, plain.median)} | "
                f"{mib(result.peak_bytes)} | {ratio(result.peak_bytes, plain.peak_bytes)} | "
                f"{mib(result.extra_bytes)} | {ratio(result.extra_bytes, plain.extra_bytes)} | "
                f"{len(result.seconds)} |"
            )
    return lines


def memory_ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return None if value is None or reference is None else value / reference


def verdict(ok: Optional[bool]) -> str:
    return "NOT MEASURED" if ok is None else "PASS" if ok else "MISS"


def targets(configs: Sequence[Config]) -> List[str]:
    """PASS/MISS per target and base-shaped configuration (clean 1/4, sentence level)."""
    ghost = Method("ghost", "sentence", TARGET_CLEAN)
    jvp = Method("jvp", "sentence", TARGET_CLEAN)
    token = Method("jvp", "token", TARGET_CLEAN)
    loop = Method("loop", "sentence", TARGET_CLEAN)
    lines = []
    for config in configs:
        if not config.size.base_shaped:
            continue
        r = config.results
        where = f"{config.size.name}, {config.sentences} sentences"
        time_x = r[ghost].median / r[PLAIN].median
        peak_x = memory_ratio(r[ghost].peak_bytes, r[PLAIN].peak_bytes)
        lines += [
            f"- {verdict(time_x <= 1.6)} ghost time <= 1.6x plain, must ({where}): {time_x:.2f}x",
            f"- {verdict(time_x <= 1.4)} ghost time <= 1.4x plain, goal ({where}): {time_x:.2f}x",
            f"- {verdict(None if peak_x is None else peak_x <= 1.3)} ghost peak memory <= 1.3x "
            f"plain ({where}): " + ("n/a" if peak_x is None else f"{peak_x:.2f}x"),
            f"- {verdict(r[ghost].median < r[jvp].median)} ghost faster than jvp, so auto takes "
            f"it ({where}): {r[jvp].median / r[ghost].median:.2f}x faster",
        ]
        if config.sentences >= 64 and not r[loop].skipped:
            speedup = r[loop].median / r[ghost].median
            lines.append(f"- {verdict(speedup >= 10)} ghost >= 10x faster than loop ({where}): "
                         f"{speedup:.1f}x")  # fmt: skip
        gap = r[token].median / r[jvp].median - 1.0
        lines.append(
            f"- {verdict(abs(gap) <= 0.10)} jvp (the token-level engine) token level within 10% "
            f"of sentence level ({where}): {gap:+.1%}"
        )
    return lines or ["- NOT MEASURED: no base-shaped model in --sizes"]


def profile_table(
    engine: str, phases: Dict[str, Tuple[float, float]], config: Config, mirror_error: float
) -> List[str]:
    total = sum(phases[name][0] for name, _ in PHASES[engine])
    plain_total = sum(phases[name][1] for name, _ in PHASES[engine])
    whole, whole_plain = phases[WHOLE]
    lines = [
        f"{engine} update (sentence level, clean 1/4) on {config.size.name}, "
        f"{config.sentences} sentences, {config.target_tokens} target tokens; phase alignments "
        f"equal the {engine} engine's to {mirror_error:.1e} (relative, dropout off).",
        "",
        f"| phase | {engine} ms | plain ms | {engine} share |",
        "|---|---:|---:|---:|",
    ]
    for name, label in PHASES[engine]:
        seconds, plain_seconds = phases[name]
        plain_cell = f"{plain_seconds * 1e3:.1f}" if plain_seconds > 0 else "-"
        lines.append(f"| {label} | {seconds * 1e3:.1f} | {plain_cell} | {seconds / total:.0%} |")
    lines += [
        f"| sum of phases | {total * 1e3:.1f} | {plain_total * 1e3:.1f} | 100% |",
        f"| whole update, same repetitions (adds the criterion's logging and record) | "
        f"{whole * 1e3:.1f} | {whole_plain * 1e3:.1f} | |",
        "",
        f"- whole {engine} update / whole plain update here: {whole / whole_plain:.2f}x",
    ]
    forward, plain_forward = phases["forward"]
    if engine == "jvp":
        tangent = forward - plain_forward
        lines.append(
            f"- tangent matmuls (dual forward - plain forward): {tangent * 1e3:.1f} ms "
            f"({forward / max(plain_forward, 1e-12):.2f}x the plain forward)"
        )
    else:
        clean, dots = phases["clean"][0], phases["dots"][0]
        floor = plain_total + clean + dots
        backward = phases["activation"][0] + phases["backward"][0]
        lines += [
            f"- the floor on paper, plain phases + clean pass + ghost dots: {floor * 1e3:.1f} ms "
            f"= {floor / plain_total:.2f}x plain; measured {total * 1e3:.1f} ms = "
            f"{total / plain_total:.2f}x",
            f"- ghost dots: {dots * 1e3:.1f} ms = {dots / max(plain_forward, 1e-12):.2f}x the "
            f"plain forward (paper: about 1/3 of the linear layers' share of a step)",
            f"- beyond the floor: recorded forward {(forward - plain_forward) * 1e3:+.1f} ms, "
            f"activation backward + weight gradients against the plain backward "
            f"{(backward - phases['backward'][1]) * 1e3:+.1f} ms, loss "
            f"{(phases['loss'][0] - phases['loss'][1]) * 1e3:+.1f} ms, mask "
            f"{phases['mask'][0] * 1e3:+.1f} ms, optimizer "
            f"{(phases['optimizer'][0] - phases['optimizer'][1]) * 1e3:+.1f} ms",
        ]
    return lines


# The probe of the clean pass's cost and direction (scripts/experiments/clean_gradient_probe.py)
# writes this page; its tables are copied into the report, which is the one page of costs.
CLEAN_GRADIENT_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                                   "clean_gradient.md")  # fmt: skip


def clean_gradient_section(path: str) -> List[str]:
    """The clean-pass probe's page with its headings one level down, or nothing."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as page:
        lines = page.read().splitlines()
    return [("#" + line if line.startswith("#") else line) for line in lines] + [""]


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,base-2x256", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--batch-sentences", default="40,80", help="training batch sizes")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument(
        "--slow-reps", type=int, default=1, help="timed runs of the slow loop and vmap engines"
    )
    parser.add_argument(
        "--skip-loop-above", type=int, default=None,
        help="do not run the loop engine on batches of more sentences than this",
    )
    parser.add_argument(
        "--skip-vmap-above", type=int, default=48,
        help="do not run the vmap engine on batches of more sentences than this (on a CPU "
        "it takes minutes per update on the base-shaped model at 80 sentences)",
    )
    parser.add_argument("--profile-reps", type=int, default=5, help="reps of the jvp breakdown")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads on a CPU (0: torch's default). 1 by default: on a shared machine "
        "OpenMP threads spin-waiting for a busy core made updates 3x slower and erratic",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="docs/benchmarks.md", help="markdown report")
    # The fairseq-train figure (scripts/bench_train.py); --train-reps 0 leaves it out.
    bench_train.add_arguments(parser, "train-")
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run: tiny model, 4 and 8 sentences, 1 warm-up and 1 timed repetition",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.batch_sentences = "tiny", "4,8"
        args.reps = args.warmup = args.slow_reps = args.profile_reps = args.train_reps = 1
        args.train_size, args.train_vocab, args.train_max_tokens = "tiny", 1000, 400
        args.train_updates, args.train_log_interval = 6, 2
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    load_start = os.getloadavg()
    started = time.perf_counter()
    device = torch.device(args.device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    sizes = [SIZES[name] for name in args.sizes.split(",")]
    batch_sentences = [int(n) for n in args.batch_sentences.split(",")]
    probe = MemoryProbe() if device.type == "cpu" else None
    configs: List[Config] = []
    for size in sizes:
        for sentences in batch_sentences:
            limits = {"loop": args.skip_loop_above, "vmap": args.skip_vmap_above}
            methods = [
                m for m in METHODS if limits.get(m.engine) is None or sentences <= limits[m.engine]
            ]
            bench = Bench(size, sentences, device, DTYPES[args.dtype], args.seed)
            print(f"{size.name}, {sentences} sentences: timing", file=sys.stderr, flush=True)
            results = time_methods(bench, methods, args.reps, args.warmup, args.slow_reps)
            for method in METHODS:
                if method not in results:
                    flag = f"--skip-{method.engine}-above {limits[method.engine]}"
                    results[method] = Measurement([], skipped=flag)
            configs.append(
                Config(
                    size,
                    sentences,
                    int(bench.sample["ntokens"]),
                    {f: int(batch["ntokens"]) for f, batch in bench.clean.items()},
                    results,
                )
            )
            del bench
            if probe is not None:
                print(f"{size.name}, {sentences} sentences: memory", file=sys.stderr, flush=True)
                for method in methods:
                    start = time.perf_counter()
                    measured = probe.measure(
                        size.name, sentences, method, args.dtype, args.seed,
                        torch.get_num_threads(),
                    )
                    print(
                        f"  {method.name}: {time.perf_counter() - start:.1f} s",
                        file=sys.stderr, flush=True,
                    )
                    if measured is not None:
                        results[method].peak_bytes, results[method].extra_bytes = measured

    # The breakdowns run on the largest base-shaped configuration (else the largest one).
    profiled = max(configs, key=lambda c: (c.size.base_shaped, c.size.dim, c.sentences))
    bench = Bench(profiled.size, profiled.sentences, device, DTYPES[args.dtype], args.seed)
    breakdowns: List[str] = []
    for engine in ("ghost", "jvp"):
        print(f"{engine} breakdown", file=sys.stderr, flush=True)
        mirror_error = check_phases_mirror_engine(bench, engine)
        if mirror_error > 1e-3:
            raise RuntimeError(f"the phase breakdown differs from the {engine} engine "
                               f"({mirror_error})")  # fmt: skip
        phases = profile(bench, engine, args.profile_reps, args.warmup)
        breakdowns += [f"## {engine} cost breakdown", "",
                       *profile_table(engine, phases, profiled, mirror_error), ""]  # fmt: skip

    training: List[str] = []
    if args.train_reps > 0:
        print("fairseq-train updates per second", file=sys.stderr, flush=True)
        train_options = bench_train.options(args, "train-")
        training = [
            "## fairseq-train: GGLM at its defaults against plain training",
            "",
            *bench_train.report(train_options, bench_train.measure(train_options)),
            "",
        ]

    clean_pass = clean_gradient_section(CLEAN_GRADIENT_PAGE)

    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    memory_note = (
        "torch.cuda.max_memory_allocated over each timed update (peak) and its excess over "
        "memory_allocated before it (extra), median"
        if probe is None
        else "one update per method in a fresh process after a warm-up update (the plain one "
        "for loop and vmap); extra = growth of the resident set (VmHWM reset before the "
        "update, glibc returning freed blocks >= 64 KiB); peak = extra + the bytes held "
        "between updates (parameters, Adam state, the task's cached clean gradient)"
    )
    report = [
        "# Benchmark: one training update, plain vs GGLM",
        "",
        "Written by `scripts/bench_step.py`; do not edit by hand.",
        "",
        f"Command: `python {command}`",
        "",
        *environment(device, load_start),
        f"- device {device}, dtype {args.dtype}; {args.reps} timed repetitions after "
        f"{args.warmup} warm-up, interleaved, median; loop and vmap engines: {args.slow_reps} "
        "timed run(s) each, no warm-up of their own",
        f"- memory: {memory_note}",
        "- update = zero_grad + task.train_step (GGLM: clean gradient, engine, masked "
        "backward) + 1/sample_size + grad norm + Adam; random tokens, sentence lengths "
        f"{SENTENCE_LENGTHS[0]}-{SENTENCE_LENGTHS[1]}, label smoothing {LABEL_SMOOTHING}, "
        "dropout 0.1, shared embeddings; vmap chunk size "
        f"{GradientMaskedCrossEntropyConfig.gglm_vmap_chunk_size} (the criterion's default)",
        *(
            f"- {s.name}: {s.layers}+{s.layers} layers, dim {s.dim}, {s.heads} heads, ffn "
            f"{s.ffn}, vocabulary {s.vocab}"
            for s in sizes
        ),
        f"- wall time of the whole benchmark: {time.perf_counter() - started:.0f} s",
        "",
        "## Time and peak memory per update",
        "",
        *results_table(configs),
        "",
        "## Targets (clean batch 1/4 of the training tokens, sentence level, base-shaped model)",
        "",
        *targets(configs),
        "",
        *training,
        *breakdowns,
        *clean_pass,
    ]
    text = "\n".join(report)
    if os.path.exists(args.out):  # the section scripts/bench_record.py wrote stays
        with open(args.out, encoding="utf-8") as old:
            kept = bench_record.section_in(old.read())
        text = bench_record.with_section(text, kept) if kept else text
    print(text)
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as out:
        out.write(text)


if __name__ == "__main__":
    main()
