"""What the clean pass costs, and what its batch size, interval and EMA do to the direction.

::

    python scripts/experiments/clean_gradient_probe.py --work runs/m30k-quick-p0.4 \\
        --system baseline --pairs 1000

    # a second checkpoint: its table is added to the same page next to the first one's
    python scripts/experiments/clean_gradient_probe.py --work runs/m30k-full-p0.4 \\
        --pairs 1000 --also runs/m30k-quick-p0.4/clean_gradient-baseline.json

    # along a trajectory of updates (staleness real), and the costs over a whole clean epoch,
    # added to the results already there
    python scripts/experiments/clean_gradient_probe.py --work runs/m30k-quick-p0.4 \\
        --pairs 1000 --retime --add-trajectory --trajectory 22,29
    python scripts/experiments/clean_gradient_probe.py --work runs/m30k-quick-p0.4 \\
        --pairs 1000 --add-trajectory --trajectory 22,29 \\
        --trajectory-settings 1:0:4,0.25:0.5:2,0.25:0.75:2

    # only rebuild the page from results already computed
    python scripts/experiments/clean_gradient_probe.py --render \\
        runs/m30k-quick-p0.4/clean_gradient-baseline.json \\
        runs/m30k-full-p0.4/clean_gradient-baseline.json

Reads a noisy Multi30k work directory (``noisy_multi30k.py``) and the last checkpoint of
``--system``, as ``alignment_probe.py`` does (whose functions it reuses). At that fixed model
it compares the clean directions GGLM could use at an update:

- one clean batch of ``--clean-max-tokens`` = 1/4, 1/2 and 1 x the profile's training
  ``--max-tokens`` (1 x is today's default);
- ``--gglm-clean-grad-ema d`` for d in 0.5, 0.75, 0.9 with quarter- and full-size batches;
- ``--gglm-clean-grad-interval K`` for K in 1, 2, 4, 8.

The directions come from the plugin's own ``TranslationWithCleanSetTask.clean_gradient``
(its seeded clean-batch sequence, its EMA), called for updates 0, 1, 2, ... at the fixed
model, and are read at ``--positions`` updates spaced ``--spacing`` apart after
``--ema-warmup`` updates (so the EMA has forgotten its start). Parameter drift between the
updates is *not* simulated there; ``--drift-updates`` measures it separately: plain Adam
updates from the checkpoint (its optimiser state restored, the schedule's final learning
rate), and the cosine of the whole-clean-set gradient after m of them with the one before.
At a fixed model an interval K reuses one batch's direction, so its direction is the K=1
direction and only its cost changes; staleness is what the drift rows bound. ``--trajectory``
replays settings along such plain updates instead: each setting's task computes, reuses or
averages its direction at the current model, as in training, and at the given updates it is
compared with that model's whole-set gradient and default direction.

For each setting: the clean pass's cost per update (eval forward + ``autograd.grad`` of its
batch, median of ``--reps`` repetitions per batch, mean over batches, divided by K; plus the
EMA's averaging), also as a multiple of one plain training update (dropout on, forward,
backward, fairseq's Adam, on the first training batches of ``--max-tokens``; timed in the same
loop, interleaved); the cosine with the gradient of the whole clean set (mean, spread and
minimum over the positions); the agreement of the masks (a_i <= 0, exact ``jvp`` alignments,
dropout off) over the probed training pairs with the whole-set direction's masks and with
the default's (one full-size batch) at the same update; the ROC-AUC of -a_i against the
injected noise labels. Results go to ``WORK/clean_gradient-SYSTEM.json`` and the page
``--doc`` (default ``docs/clean_gradient.md``).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from alignment_probe import alignments, batches, clean_gradient, cosine, summary
from common import PROFILES, REPO, final_lr, log, machine, read_lines
from fairseq import checkpoint_utils, utils
from fairseq.optim.adam import Adam

from gglm_fairseq.alignment import trainable_parameters
from gglm_fairseq.clean_gradient import CleanGradientEstimator, EstimatorSettings
from gglm_fairseq.criterions.gradient_masked_cross_entropy import (
    GradientMaskedCrossEntropyConfig,
    GradientMaskedCrossEntropyCriterion,
)
from gglm_fairseq.tasks.translation_with_clean_set import (
    TranslationWithCleanSetConfig,
    TranslationWithCleanSetTask,
)

Direction = List[torch.Tensor]
FRACTIONS = (0.25, 0.5, 1.0)  # clean batch tokens / the training --max-tokens
DECAYS = (0.5, 0.75, 0.9)  # d = 0 is the single-batch row of each size
EMA_FRACTIONS = (0.25, 1.0)
INTERVALS = (1, 2, 4, 8)
# The budget: GGLM update <= 1.5 x a plain one, of which everything but the clean
# pass (alignments, masking, record) costs about +0.3 x. Not measured here.
BUDGET, REST_OF_GGLM = 1.5, 0.3


@dataclass(frozen=True)
class Setting:
    """One way to get the clean direction: batch size, EMA decay, recompute interval."""

    fraction: float
    decay: float = 0.0
    interval: int = 1

    @property
    def name(self) -> str:
        size = {0.25: "1/4", 0.5: "1/2", 1.0: "1"}.get(self.fraction, f"{self.fraction:g}")
        return f"size {size}, d={self.decay:g}, K={self.interval}"

    @property
    def is_default(self) -> bool:
        return self.fraction == 1.0 and self.decay == 0.0 and self.interval == 1


DEFAULT = Setting(1.0)


def settings() -> List[Setting]:
    """Every setting of the table; directions are computed for those with K = 1."""
    out = [Setting(f) for f in FRACTIONS]
    out += [Setting(f, d) for f in EMA_FRACTIONS for d in DECAYS]
    out += [Setting(f, 0.0, k) for f in EMA_FRACTIONS for k in INTERVALS if k > 1]
    # Interval and EMA together: the EMA then runs over recomputations, K updates apart.
    out += [Setting(0.25, d, k) for d in DECAYS for k in (2, 4)]
    return out


def make_criterion(
    task, interval: int = 1, decay: float = 0.0
) -> GradientMaskedCrossEntropyCriterion:
    """GGLM's criterion as the runner configures it (label smoothing 0.1, token average), with
    the task's clean-gradient estimator set to this interval and decay."""
    task.estimator = CleanGradientEstimator(EstimatorSettings(interval=interval, decay=decay))
    cfg = GradientMaskedCrossEntropyConfig(label_smoothing=0.1, sentence_avg=False)
    return GradientMaskedCrossEntropyCriterion(task, cfg)


def clean_task(
    template: TranslationWithCleanSetTask, clean_max_tokens: int
) -> TranslationWithCleanSetTask:
    """A task like ``template`` whose clean batches hold <= ``clean_max_tokens``, sharing its
    datasets. Fresh, so its clean-batch sequence, cache and EMA start at update 0."""
    cfg = copy.deepcopy(template.cfg)
    cfg.clean_max_tokens = clean_max_tokens
    task = TranslationWithCleanSetTask(cfg, template.src_dict, template.tgt_dict)
    task.datasets = template.datasets
    return task


def directions_at(
    model: torch.nn.Module, task: TranslationWithCleanSetTask, criterion,
    positions: Sequence[int],
) -> Dict[int, Direction]:
    """The clean direction the task hands the criterion at each update in ``positions``, at
    the fixed model. With an EMA every update up to the last position is computed (the
    average depends on all of them); without one only the positions are."""
    wanted = set(positions)
    settings = task.estimator.settings
    every = settings.decay > 0 or settings.interval > 1
    out: Dict[int, Direction] = {}
    for update in range(max(positions) + 1) if every else sorted(wanted):
        direction = task.clean_gradient(model, criterion, update).direction
        if direction is None:
            raise RuntimeError(f"non-finite clean gradient at update {update}")
        if update in wanted:
            # A copy: the task may reuse what it handed over as the next update's average.
            out[update] = [g.detach().clone() for g in direction]
    return out


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_update(model: torch.nn.Module, criterion, optimizer: Adam, batch: dict) -> None:
    """One update of plain training as fairseq-train runs it on CPU: dropout on, the token
    mean of the label-smoothed loss, backward, fairseq's Adam."""
    model.train()
    optimizer.zero_grad()
    losses, _ = criterion.token_losses(model, batch)
    (losses.sum() / batch["ntokens"]).backward()
    optimizer.step()


def training_batches(task, model: torch.nn.Module, max_tokens: int, seed: int, count: int):
    """The first ``count`` batches of fairseq's training iterator (epoch 1, shuffled)."""
    iterator = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True, seed=seed, num_workers=0, epoch=1,
        disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=True)  # fmt: skip
    return [next(iterator) for _ in range(count)]


def time_costs(
    model: torch.nn.Module, criterion, clean: Dict[float, List[dict]], train: List[dict],
    reps: int, lr: float,
) -> Dict[str, object]:
    """Seconds of one clean pass per batch size and of one plain update, interleaved over
    ``reps`` rounds so that a slow spell of the (shared) machine hits both alike."""
    trained = copy.deepcopy(model)  # plain updates change the weights: not the probed model
    optimizer = Adam(trainable_parameters(trained), lr=lr, betas=(0.9, 0.98), eps=1e-8)
    plain_update(trained, criterion, optimizer, train[0])  # Adam's state, allocator warm-up
    clean_gradient(model, criterion, clean[max(clean)][:1])
    clean_times = {f: [[] for _ in batches_] for f, batches_ in clean.items()}
    plain_times: List[List[float]] = [[] for _ in train]
    for _ in range(reps):
        for fraction, batches_ in clean.items():
            for k, batch in enumerate(batches_):
                clean_times[fraction][k].append(
                    seconds(lambda b=batch: clean_gradient(model, criterion, [b]))
                )
        for k, batch in enumerate(train):
            plain_times[k].append(
                seconds(lambda b=batch: plain_update(trained, criterion, optimizer, b))
            )
    model.eval()

    def per_batch(times: List[List[float]]) -> float:
        return float(np.mean([statistics.median(t) for t in times]))

    return {
        "plain_s": per_batch(plain_times),
        "plain_tokens": [int(b["ntokens"]) for b in train],
        "clean_s": {str(f): per_batch(t) for f, t in clean_times.items()},
        "clean_tokens": {str(f): [int(b["ntokens"]) for b in bs] for f, bs in clean.items()},
    }


def ema_seconds(template: TranslationWithCleanSetTask, like: Direction, reps: int) -> float:
    """The EMA's own cost per recomputation: the estimator's averaging of two gradients."""
    times = []
    for _ in range(reps):
        average = [torch.randn_like(g) for g in like]
        fresh = [torch.randn_like(g) for g in like]
        times.append(
            seconds(lambda a=average, g=fresh: [torch.lerp(x, y, 0.1) for x, y in zip(a, g)])
        )
    return statistics.median(times)


def masks(alignment: np.ndarray, probed: np.ndarray) -> np.ndarray:
    """GGLM's decision per probed pair: masked where a_i <= 0."""
    return alignment[probed] <= 0


def spread(values: Sequence[float]) -> Dict[str, float]:
    return {
        "mean": round(float(np.mean(values)), 4),
        "std": round(float(np.std(values)), 4),
        "min": round(float(np.min(values)), 4),
    }


def measure_costs(
    model: torch.nn.Module, template: TranslationWithCleanSetTask, max_tokens: int, seed: int,
    reps: int, lr: float, plain_batches: int = 4,
) -> Dict[str, object]:
    """Seconds of the clean pass per size, averaged over *every* batch of one clean epoch
    (what an update pays on average: the epoch's short last batch included), of the EMA's
    averaging and of one plain update (the first ``plain_batches`` training batches)."""
    clean: Dict[float, List[dict]] = {}
    for fraction in FRACTIONS:
        sequence = clean_task(template, max(1, int(fraction * max_tokens))).clean_batch_iterators(
            model
        )
        clean[fraction] = [sequence.batch(i) for i in range(sequence.batches_per_epoch)]
    train = training_batches(template, model, max_tokens, seed, plain_batches)
    costs = time_costs(model, make_criterion(template), clean, train, reps, lr)
    like = [torch.zeros_like(p) for p in trainable_parameters(model)]
    costs["ema_s"] = ema_seconds(template, like, reps)
    return costs


def cost_of(setting: Setting, costs: Dict[str, object]) -> Dict[str, float]:
    """A setting's clean cost per update: one pass (plus the EMA's averaging) every K."""
    pass_s = costs["clean_s"][str(setting.fraction)]
    pass_s += costs["ema_s"] if setting.decay > 0 else 0.0
    per_update = pass_s / setting.interval
    return {
        "cost_ms": round(1000 * per_update, 2),
        "cost_x_plain": round(per_update / costs["plain_s"], 4),
    }


def probe(
    model: torch.nn.Module, template: TranslationWithCleanSetTask, labels: Sequence[str],
    probed: np.ndarray, max_tokens: int, positions: Sequence[int], reps: int, lr: float,
    seed: int,
) -> Dict[str, object]:
    """The core: every setting's cost and direction at the fixed ``model``.

    ``template`` holds the ``train`` and ``clean`` datasets; ``labels`` one label per
    training pair; ``probed`` the ids of the pairs whose masks are compared; ``max_tokens``
    the training batch size the clean sizes are fractions of.
    """
    criterion = make_criterion(template)
    train_set, clean_set = template.dataset("train"), template.dataset("clean")
    train_batches = batches(train_set, probed.tolist(), max_tokens)
    whole = clean_gradient(model, criterion, batches(clean_set, range(len(clean_set)), max_tokens))

    def aligned(direction: Direction) -> np.ndarray:
        return alignments(model, criterion, train_batches, direction, len(labels), False)

    whole_a = aligned(whole)
    whole_masks = masks(whole_a, probed)
    computed: Dict[Setting, Dict[str, object]] = {}
    # The default first: every other setting's masks are compared with its masks.
    ordered = [DEFAULT] + [s for s in settings() if s.interval == 1 and not s.is_default]
    default_masks: Dict[int, np.ndarray] = {}
    for setting in ordered:
        task = clean_task(template, max(1, int(setting.fraction * max_tokens)))
        crit = make_criterion(task, decay=setting.decay)
        found = directions_at(model, task, crit, positions)
        found_a = {position: aligned(found[position]) for position in positions}
        found_masks = {position: masks(a, probed) for position, a in found_a.items()}
        if setting.is_default:
            default_masks = found_masks
        cosines, with_whole, with_default, aucs, clean_masked, noisy_masked = [], [], [], [], [], []
        for k, position in enumerate(positions):
            a, mask = found_a[position], found_masks[position]
            cosines.append(cosine(found[position], whole))
            with_whole.append(float(np.mean(mask == whole_masks)))
            # The default against itself at the same update is trivially 1: against the
            # next position instead, how much its decisions change from update to update.
            other = positions[(k + 1) % len(positions)] if setting.is_default else position
            with_default.append(float(np.mean(mask == default_masks[other])))
            stats = summary(a, labels)
            aucs.append(stats["auc"].get("all", float("nan")))
            clean_masked.append(stats["clean_masked"])
            noisy_masked.append(stats["noisy_masked"])
        computed[setting] = {
            "cosine_with_whole": spread(cosines),
            "agreement_with_whole": spread(with_whole),
            "agreement_with_default": spread(with_default),
            "auc": spread(aucs),
            "clean_masked": round(float(np.mean(clean_masked)), 4),
            "noisy_masked": round(float(np.mean(noisy_masked)), 4),
        }
        log(f"{setting.name}: cosine {computed[setting]['cosine_with_whole']['mean']}, "
            f"agreement whole {computed[setting]['agreement_with_whole']['mean']}, "
            f"default {computed[setting]['agreement_with_default']['mean']}")  # fmt: skip

    costs = measure_costs(model, template, max_tokens, seed, reps, lr)
    whole_stats = summary(whole_a, labels)
    rows = [{
        "setting": "whole clean set", "fraction": None, "decay": None, "interval": None,
        "cost_ms": None, "cost_x_plain": None,
        "cosine_with_whole": spread([cosine(whole, whole)]),
        "agreement_with_whole": spread([float(np.mean(whole_masks == whole_masks))]),
        "agreement_with_default": spread(
            [float(np.mean(whole_masks == m)) for m in default_masks.values()]
        ),
        "auc": spread([whole_stats["auc"].get("all", float("nan"))]),
        "clean_masked": whole_stats["clean_masked"], "noisy_masked": whole_stats["noisy_masked"],
    }]  # fmt: skip
    for setting in settings():
        # At a fixed model an interval reuses the K = 1 direction (same batch sequence,
        # the EMA over recomputations): only the cost differs.
        direction = computed[Setting(setting.fraction, setting.decay)]
        rows.append({
            "setting": setting.name, "fraction": setting.fraction, "decay": setting.decay,
            "interval": setting.interval, **cost_of(setting, costs), **direction,
        })  # fmt: skip
    return {"rows": rows, "costs": costs, "whole_clean_tokens": int(sum(
        clean_set.num_tokens(i) for i in range(len(clean_set))))}


def continued(model: torch.nn.Module, optimizer_state: Optional[dict], lr: float):
    """A copy of ``model`` with fairseq's Adam as training left it (its moments restored from
    the checkpoint, at ``lr``), so that plain updates continue the run; and whether the
    moments could be restored (fresh ones would take sign-like, much larger first steps)."""
    moved = copy.deepcopy(model)
    optimizer = Adam(trainable_parameters(moved), lr=lr, betas=(0.9, 0.98), eps=1e-8)
    restored = False
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
            restored = True
        except (ValueError, KeyError) as error:  # another parameter layout: start fresh
            log(f"optimiser state not restored ({error}); fresh Adam moments")
    for group in optimizer.param_groups:
        group["lr"] = lr  # the restored state carries the last update's lr; set it anyway
    return moved, optimizer, restored


# Settings replayed along a trajectory of updates, where staleness is real.
TRAJECTORY = (
    DEFAULT, Setting(0.25), Setting(0.25, 0.5), Setting(0.25, 0.75), Setting(0.25, 0.9),
    Setting(0.25, 0.0, 2), Setting(0.25, 0.75, 2), Setting(0.25, 0.9, 2), Setting(0.25, 0.75, 4),
)  # fmt: skip


def trajectory(
    model: torch.nn.Module, template: TranslationWithCleanSetTask, optimizer_state: Optional[dict],
    lr: float, max_tokens: int, seed: int, positions: Sequence[int], labels: Sequence[str],
    probed: np.ndarray, chosen: Sequence[Setting] = TRAJECTORY,
) -> Dict[str, object]:
    """The settings as training meets them: plain updates continue the run from the
    checkpoint, and at every update each setting's task hands over its direction at the
    current model (computed now, reused from K updates ago, or averaged with older ones).
    At the ``positions`` the directions are compared with the whole-clean-set gradient and
    the default's direction *of that update and model*."""
    criterion = make_criterion(template)
    clean_set = template.dataset("clean")
    whole_batches = batches(clean_set, range(len(clean_set)), max_tokens)
    train_batches = batches(template.dataset("train"), probed.tolist(), max_tokens)
    moved, optimizer, restored = continued(model, optimizer_state, lr)
    tasks = {}
    for setting in chosen:
        task = clean_task(template, max(1, int(setting.fraction * max_tokens)))
        tasks[setting] = (task, make_criterion(task, setting.interval, setting.decay))
    updates = training_batches(template, moved, max_tokens, seed + 2, max(positions) + 1)
    found: Dict[Setting, Dict[str, List[float]]] = {
        s: {"cosine": [], "whole": [], "default": [], "auc": []} for s in chosen
    }
    for update, batch in enumerate(updates):
        directions = {
            s: task.clean_gradient(moved, crit, update).direction
            for s, (task, crit) in tasks.items()
        }
        if update in positions:
            whole = clean_gradient(moved, criterion, whole_batches)

            def aligned(direction: Direction) -> np.ndarray:
                return alignments(moved, criterion, train_batches, direction, len(labels), False)

            whole_masks = masks(aligned(whole), probed)
            default_masks = None
            for setting in chosen:  # the default first (TRAJECTORY's order)
                a = aligned(directions[setting])
                mask = masks(a, probed)
                default_masks = mask if default_masks is None else default_masks
                row = found[setting]
                row["cosine"].append(cosine(directions[setting], whole))
                row["whole"].append(float(np.mean(mask == whole_masks)))
                row["default"].append(float(np.mean(mask == default_masks)))
                row["auc"].append(summary(a, labels)["auc"].get("all", float("nan")))
            log(f"trajectory update {update}: default cosine {found[DEFAULT]['cosine'][-1]:.3f}")
        plain_update(moved, criterion, optimizer, batch)
    moved.eval()
    return {
        "optimizer_state_restored": restored, "lr": lr, "positions": list(positions),
        "rows": [{
            "setting": s.name, "cosine_with_whole": spread(v["cosine"]),
            "agreement_with_whole": spread(v["whole"]),
            "agreement_with_default": spread(v["default"]), "auc": spread(v["auc"]),
        } for s, v in found.items()],
    }  # fmt: skip


def drift(
    model: torch.nn.Module, template: TranslationWithCleanSetTask, optimizer_state: Optional[dict],
    lr: float, max_tokens: int, seed: int, steps: Sequence[int], labels: Sequence[str],
    probed: np.ndarray,
) -> List[Dict[str, object]]:
    """How far the whole-clean-set gradient turns in m plain updates from the checkpoint:
    its cosine with the checkpoint's, and (at the last m) the agreement of the masks the
    old direction gives at the new model with the new direction's."""
    criterion = make_criterion(template)
    clean_set = template.dataset("clean")
    whole_batches = batches(clean_set, range(len(clean_set)), max_tokens)
    moved, optimizer, restored = continued(model, optimizer_state, lr)
    params = trainable_parameters(moved)
    start = clean_gradient(moved, criterion, whole_batches)
    original = [p.detach().clone() for p in params]
    train = training_batches(template, moved, max_tokens, seed + 1, max(steps))
    rows = []
    for m, batch in enumerate(train, start=1):
        plain_update(moved, criterion, optimizer, batch)
        if m not in steps:
            continue
        now = clean_gradient(moved, criterion, whole_batches)
        change = sum(float((p - q).pow(2).sum()) for p, q in zip(params, original)) ** 0.5
        row: Dict[str, object] = {
            "updates": m, "cosine_with_start": round(cosine(now, start), 4),
            "parameter_change_norm": round(change, 4),
        }  # fmt: skip
        if m == max(steps):
            train_batches = batches(template.dataset("train"), probed.tolist(), max_tokens)
            old = alignments(moved, criterion, train_batches, start, len(labels), False)
            new = alignments(moved, criterion, train_batches, now, len(labels), False)
            row["mask_agreement_old_vs_new"] = round(
                float(np.mean(masks(old, probed) == masks(new, probed))), 4
            )
        rows.append(row)
        log(f"drift after {m} updates: cosine {row['cosine_with_start']}")
    moved.eval()
    return [{"optimizer_state_restored": restored, "lr": lr}, *rows]


def load(work: Path, system: str):
    """Model, a clean-set task over the work directory's data, labels and optimiser state."""
    checkpoint = work / "checkpoints" / system / "checkpoint_last.pt"
    if not checkpoint.exists():
        raise SystemExit(f"{checkpoint} is missing: train --systems {system} first")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(work / "bin")}
    )
    model = models[0].float().eval()
    known = TranslationWithCleanSetConfig.__dataclass_fields__
    values = {k: v for k, v in dict(task.cfg).items() if k in known and k != "_name"}
    # The interpolated fields (II(...)) have no value outside fairseq-train: set them.
    clean_cfg = TranslationWithCleanSetConfig(
        **values, train_max_tokens=cfg.dataset.max_tokens, train_batch_size=None,
        seed=cfg.common.seed, gglm_record_dir=None,
    )  # fmt: skip
    template = TranslationWithCleanSetTask(clean_cfg, task.src_dict, task.tgt_dict)
    template.load_dataset("train")  # loads the clean split too
    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint)).get("last_optimizer_state")
    return checkpoint, model, template, int(cfg.dataset.max_tokens), state


def render(results: Sequence[Dict[str, object]]) -> str:
    """The markdown page of one or more probe results."""

    def cell(stat: Optional[Dict[str, float]], std: bool = True) -> str:
        if not stat:
            return ""
        text = f"{stat['mean']:.3f}"
        return text + (f" ± {stat['std']:.3f}" if std and stat["std"] > 0 else "")

    lines = [
        "# The clean pass: batch size, interval and EMA",
        "",
        "Generated by `scripts/experiments/clean_gradient_probe.py` (its docstring says what"
        " is measured and how). At a fixed trained checkpoint; masks are a_i <= 0 with exact"
        " (`jvp`) alignments, dropout off, over the probed training pairs.",
        "",
        "Columns: **cost** = the clean pass per update (eval forward + `autograd.grad` of one"
        " clean batch, mean over batches of the median of the repetitions, / K, + the EMA's"
        " averaging), in ms and as a multiple of one plain training update timed in the same"
        " loop; **est. total** = 1 + " + f"{REST_OF_GGLM:g}" + " (the rest of a GGLM update, the"
        " issue's figure, not measured here) + cost, against the budget " + f"{BUDGET:g}"
        + " x; **cosine** = with the whole-clean-set gradient, mean ± std over the positions"
        " (min in brackets); **agree whole / default** = share of probed pairs whose mask equals"
        " the whole-set direction's / the default's (one full-size batch) at the same update"
        " (for the default itself: its masks at the next position, i.e. how much the default's"
        " decisions change between updates); **AUC** = ROC-AUC of -a_i against the injected"
        " noise; **clean / noisy masked** = share of clean / noisy pairs masked.",
        "",
        "Rows with K > 1 have the K = 1 direction: at a fixed model an interval only reuses it"
        " (the EMA then averages recomputations K updates apart). The EMA is simulated over"
        " the task's seeded clean-batch sequence at the fixed model, so it has no staleness"
        " either. What reuse and averaging lose to staleness is measured, where run, along a"
        " trajectory of updates (second table) and bounded by the drift table.",
    ]
    for result in results:
        lines += ["", f"## {result['work']} ({result['system']})", ""]
        lines += [
            f"- command: `{result['command']}`",
            f"- checkpoint: `{result['checkpoint']}` (profile `{result['profile']}`, training"
            f" --max-tokens {result['max_tokens']}), seed {result['seed']}",
            f"- probed: {result['pairs']} training pairs; clean set {result['clean_pairs']}"
            f" pairs ({result['whole_clean_tokens']} tokens); positions (updates)"
            f" {result['positions']}; {result['reps']} timing repetitions",
            f"- machine: {result['machine'].get('Model name', '?')},"
            f" {result['machine'].get('CPU(s)', '?')} CPUs, torch threads"
            f" {result['machine'].get('torch_threads')}; shared with other jobs (run under"
            " nice): the ms vary from run to run, the multiples less",
            f"- one plain update: {1000 * result['costs']['plain_s']:.0f} ms (training batches"
            f" of {result['costs']['plain_tokens']} tokens); EMA averaging"
            f" {1000 * result['costs']['ema_s']:.1f} ms",
            *([f"- {result['costs_note']}"] if result.get("costs_note") else []),
            "",
            "| setting | cost ms | cost x plain | est. total | cosine (min) | agree whole |"
            " agree default | AUC | clean masked | noisy masked |",
            "|---|---:|---:|---:|---|---|---|---|---:|---:|",
        ]
        for row in result["rows"]:
            cost = "" if row["cost_ms"] is None else f"{row['cost_ms']:.0f}"
            times = "" if row["cost_x_plain"] is None else f"{row['cost_x_plain']:.3f}"
            total = ""
            if row["cost_x_plain"] is not None:
                estimate = 1 + REST_OF_GGLM + row["cost_x_plain"]
                total = f"{estimate:.2f}" + (" ✓" if estimate <= BUDGET else "")
            cos = row["cosine_with_whole"]
            name = row["setting"] + (" (default)" if row["setting"] == DEFAULT.name else "")
            lines.append(
                f"| {name} | {cost} | {times} | {total} | {cell(cos)} ({cos['min']:.3f}) |"
                f" {cell(row['agreement_with_whole'])} | {cell(row['agreement_with_default'])} |"
                f" {cell(row['auc'])} | {row['clean_masked']:.3f} | {row['noisy_masked']:.3f} |"
            )
        costs = {r["setting"]: r["cost_x_plain"] for r in result["rows"]}

        def choices(
            rows: Sequence[Dict[str, object]], fresh_only: bool, costs: Dict[str, float]
        ) -> List[str]:
            out = []
            for against, what in (("agreement_with_default", "the default's masks"),
                                  ("agreement_with_whole", "the whole-set masks")):
                choice = cheapest(rows, costs, against, fresh_only)
                out.append(
                    f"- cheapest within the budget agreeing with {what} at least as much as the"
                    " default agrees with the whole-set masks: "
                    + (f"**{choice}**" if choice else "none")
                )  # fmt: skip
            return out

        fixed = choices(result["rows"], True, costs)
        lines += ["", "At the fixed model (K = 1 rows only):", "", *fixed]
        for along in [result.get("trajectory"), *result.get("more_trajectories", [])]:
            if not along:
                continue
            lines += [
                "",
                "Along a trajectory: plain Adam updates continue the run from the checkpoint"
                f" (lr {along['lr']:.3g}, optimiser state"
                f" {'restored' if along['optimizer_state_restored'] else 'fresh'}); at every"
                " update each setting's task computes, reuses or averages its direction at the"
                " current model, as in training, so EMA and interval are stale as they would be."
                f" Compared at updates {along['positions']} with the whole-clean-set gradient"
                " and the default's direction of the same update and model"
                + (f" (command: `{along['command']}`)" if along.get("command") else "") + ".",
                "",
                "| setting | cost x plain | cosine (min) | agree whole | agree default | AUC |",
                "|---|---:|---|---|---|---|",
            ]
            for row in along["rows"]:
                cos = row["cosine_with_whole"]
                cost = costs.get(row["setting"])
                lines.append(
                    f"| {row['setting']} | {'' if cost is None else f'{cost:.3f}'} |"
                    f" {cell(cos)} ({cos['min']:.3f}) | {cell(row['agreement_with_whole'])} |"
                    f" {cell(row['agreement_with_default'])} | {cell(row['auc'])} |"
                )
            lines += ["", "Along the trajectory:", "", *choices(along["rows"], False, costs)]
        if result.get("drift"):
            info, *steps = result["drift"]
            lines += [
                "",
                f"Drift: plain Adam updates from the checkpoint at lr {info['lr']:.3g}"
                f" (optimiser state {'restored' if info['optimizer_state_restored'] else 'fresh'}):"
                " the whole-clean-set gradient after m updates against the checkpoint's.",
                "",
                "| m updates | cosine with the checkpoint's | parameter change (L2) |"
                " masks of old vs new direction |",
                "|---:|---:|---:|---:|",
            ]
            for step in steps:
                agree = step.get("mask_agreement_old_vs_new")
                lines.append(
                    f"| {step['updates']} | {step['cosine_with_start']:.4f} |"
                    f" {step['parameter_change_norm']:.3f} |"
                    f" {'' if agree is None else f'{agree:.4f}'} |"
                )
    return "\n".join(lines) + "\n"


def cheapest(
    rows: Sequence[Dict[str, object]], costs: Dict[str, float], against: str,
    fresh_only: bool,
) -> Optional[str]:
    """The cheapest setting (cost from ``costs``) whose est. total is within the budget and
    whose mask agreement ``against`` ("agreement_with_default" or "agreement_with_whole") is
    at least the default's agreement with the whole-set direction. ``fresh_only``: K = 1
    rows only (at a fixed model a K > 1 row has the K = 1 direction: its staleness is not
    in the numbers, so it would always look as good as K = 1)."""
    default = next(r for r in rows if r["setting"] == DEFAULT.name)
    bar = default["agreement_with_whole"]["mean"]
    fits = [
        r for r in rows
        if costs.get(r["setting"]) is not None
        and 1 + REST_OF_GGLM + costs[r["setting"]] <= BUDGET
        and r["setting"] != DEFAULT.name and r[against]["mean"] >= bar
        and not (fresh_only and not r["setting"].endswith("K=1"))
    ]  # fmt: skip
    return min(fits, key=lambda r: costs[r["setting"]])["setting"] if fits else None


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", help="a noisy_multi30k.py work directory")
    parser.add_argument("--system", default="baseline", help="whose last checkpoint to probe")
    parser.add_argument("--pairs", type=int, default=1000, help="training pairs probed")
    parser.add_argument("--positions", type=int, default=4, help="updates read per setting")
    parser.add_argument("--ema-warmup", type=int, default=23,
                        help="first update read (0.9^24 ~ 8%%: the EMA's start is forgotten)")
    parser.add_argument("--spacing", type=int, default=7,
                        help="updates between positions (best not a multiple of the clean"
                             " batches per epoch: 3 and 6 at full and half size on Multi30k)")
    parser.add_argument("--reps", type=int, default=5, help="timing repetitions per batch")
    parser.add_argument("--drift-updates", default="1,2,4,8,16,32",
                        help="plain updates after which the drift is measured ('' to skip)")
    parser.add_argument("--trajectory", default="",
                        help="updates (comma-separated) at which the settings are compared along"
                             " plain updates continuing the run ('' to skip)")
    parser.add_argument("--add-trajectory", action="store_true",
                        help="add --trajectory to the existing results, recomputing nothing else")
    parser.add_argument("--trajectory-settings", default="",
                        help="with --add-trajectory: other settings FRACTION:DECAY:K,... (the"
                             " default is added) for another trajectory, kept next to the first")
    parser.add_argument("--retime", action="store_true",
                        help="measure the costs again into the existing results (nothing else)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--doc", default=str(REPO / "docs" / "clean_gradient.md"))
    parser.add_argument("--also", nargs="*", default=[],
                        help="earlier results JSONs shown on the page before this one")
    parser.add_argument("--render", nargs="*", default=None,
                        help="only rebuild --doc from these results JSONs")
    args = parser.parse_args(argv)
    if args.render is None and not args.work:
        parser.error("--work is required (or --render JSON...)")
    return args


def write_doc(path: Path, paths: Sequence[Path]) -> None:
    results = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    path.write_text(render(results), encoding="utf-8")
    log(f"page: {path}")


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if args.render is not None:
        write_doc(Path(args.doc), [Path(p) for p in args.render])
        return 0
    work = Path(args.work)
    torch.manual_seed(args.seed)
    checkpoint, model, template, max_tokens, state = load(work, args.system)
    settings_of_run = json.loads((work / "results.json").read_text(encoding="utf-8"))["setting"]
    profile = PROFILES[settings_of_run["profile"]]
    lr = final_lr(profile)
    labels = read_lines(work / "text" / "train.labels")
    train_set = template.dataset("train")
    if len(labels) != len(train_set):
        raise SystemExit(f"{len(labels)} labels but {len(train_set)} training pairs")
    rng = np.random.default_rng(args.seed)  # the same pairs alignment_probe.py draws
    probed = rng.choice(len(train_set), size=min(args.pairs, len(train_set)), replace=False)
    positions = [args.ema_warmup + k * args.spacing for k in range(args.positions)]
    log(f"{args.system}: {len(probed)} pairs, clean set {len(template.dataset('clean'))} pairs,"
        f" positions {positions}")  # fmt: skip
    out = work / f"clean_gradient-{args.system}.json"
    along = [int(s) for s in args.trajectory.split(",") if s.strip()]
    command = "python scripts/experiments/clean_gradient_probe.py " + shlex.join(argv)
    if args.add_trajectory or args.retime:
        result = json.loads(out.read_text(encoding="utf-8"))
        if args.retime:
            costs = measure_costs(model, template, max_tokens, args.seed, args.reps, lr)
            result.update(costs=costs, retime_command=command, machine=machine())
            for row in result["rows"]:
                if row["fraction"] is not None:
                    setting = Setting(row["fraction"], row["decay"], row["interval"])
                    row.update(cost_of(setting, costs))
        if args.add_trajectory:
            chosen = TRAJECTORY
            if args.trajectory_settings:
                # The default first: the others are compared with it.
                chosen = (DEFAULT, *(Setting(float(f), float(d), int(k)) for f, d, k in (
                    item.split(":") for item in args.trajectory_settings.split(","))))
                torch.manual_seed(args.seed + 2)  # this trajectory's dropout, reproducibly
            found = trajectory(model, template, state, lr, max_tokens, args.seed, along,
                               labels, probed, chosen)  # fmt: skip
            found["command"] = command
            if args.trajectory_settings:  # another trajectory: kept next to the first
                result.setdefault("more_trajectories", []).append(found)
            else:
                result["trajectory"] = found
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
        write_doc(Path(args.doc), [*map(Path, args.also), out])
        return 0
    result: Dict[str, object] = {
        "experiment": "clean_gradient_probe", "work": str(work), "system": args.system,
        "command": command,
        "checkpoint": str(checkpoint), "profile": settings_of_run["profile"],
        "max_tokens": max_tokens, "seed": args.seed, "pairs": len(probed),
        "clean_pairs": len(template.dataset("clean")), "positions": positions,
        "reps": args.reps, "machine": machine(),
    }  # fmt: skip
    result.update(probe(model, template, labels, probed, max_tokens, positions, args.reps, lr,
                        args.seed))  # fmt: skip
    steps = [int(s) for s in args.drift_updates.split(",") if s.strip()]
    if steps:
        result["drift"] = drift(model, template, state, lr, max_tokens, args.seed, steps,
                                labels, probed)  # fmt: skip
    if along:
        result["trajectory"] = trajectory(model, template, state, lr, max_tokens, args.seed,
                                          along, labels, probed)  # fmt: skip
    out = work / f"clean_gradient-{args.system}.json"
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    log(f"results: {out}")
    print(render([result]))
    write_doc(Path(args.doc), [*map(Path, args.also), out])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
