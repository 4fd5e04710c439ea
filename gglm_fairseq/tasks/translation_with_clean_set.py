"""Translation that also loads a small trusted ("clean") split and, once per update,
hands the criterion the gradient of a clean batch's loss.

The clean data is only used for that gradient; it is never trained on.
"""

import collections
import contextlib
import filecmp
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Iterator, List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import data_utils, indexed_dataset
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import utils as distributed_utils
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import register_task
from fairseq.tasks.translation import (
    TranslationConfig,
    TranslationTask,
    load_langpair_dataset,
)
from omegaconf import II

from gglm_fairseq.alignment import adam_second_moment, trainable_parameters
from gglm_fairseq.clean_gradient import (
    CleanGradient,
    CleanGradientEstimator,
    EstimatorSettings,
)
from gglm_fairseq.criterions.gradient_masked_cross_entropy import (
    Decisions,
    GradientMaskedCrossEntropyCriterion,
)
from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.record import RECORD_FILE, ExampleRecord, gather_decisions

logger = logging.getLogger(__name__)

# The key of GGLM's state (record, clean-gradient estimator) in a checkpoint's task_state.
STATE_KEY = "gglm"
# Warn once when at least MOSTLY_MASKED of the examples of the last MASKED_WINDOW recorded
# updates were masked: measured, a clean set from another domain masked 87% of the pairs
# (99% of each batch by the end) and the model learnt next to nothing (docs/results.md).
MASKED_WINDOW = 20
MOSTLY_MASKED = 0.9
CLEAN_BATCH_SHARE = 4  # the default clean batch: 1/4 of the training batch


class CleanSetError(GGLMUserError):
    """The clean split is missing, empty, or does not match the training data."""


@dataclass
class TranslationWithCleanSetConfig(TranslationConfig):
    clean_subset: str = field(
        default="clean",
        metadata={"help": "name of the trusted split whose gradient guides the masking"},
    )
    clean_data: Optional[str] = field(
        default=None,
        metadata={
            "help": "directory holding the clean split (default: the first data directory); "
            "its dict.*.txt, if present, must equal the training dictionaries"
        },
    )
    clean_max_tokens: Optional[int] = field(
        default=None,
        metadata={
            "help": "max tokens in a clean batch (default: a quarter of --max-tokens, at "
            "least the longest clean pair; ours, see docs/benchmarks.md)"
        },
    )
    clean_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "max sentences in a clean batch (default: a quarter of --batch-size)"},
    )
    clean_batches_per_update: int = field(
        default=1,
        metadata={"help": "clean batches whose gradients are pooled for each update"},
    )
    gglm_clean_grad_interval: int = field(
        default=1,
        metadata={"help": "recompute the clean gradient every K updates, reuse in between"},
    )
    gglm_clean_grad_ema: float = field(
        default=0.75,
        metadata={
            "help": "average the clean gradient across updates: g <- d*g_old + (1-d)*g_new "
            "with this decay d in [0, 1) (0: the current clean batch alone; ours: with the "
            "default quarter-size clean batch it is closer to the whole clean set's gradient "
            "than one full-size batch, see docs/benchmarks.md)"
        },
    )
    gglm_preconditioner: ChoiceEnum(["none", "adam"]) = field(
        default="none",
        metadata={
            "help": "measure alignments in the optimiser's geometry: adam = <grad l_i, P "
            "g_clean> with Adam's P, the first-order change of the clean loss under the "
            "Adam step actually taken (fairseq's Adam: P = sqrt(1-beta2^t)/(sqrt(v)+eps); "
            "zero for a parameter without Adam state) (ours; the raw gradient until Adam's "
            "first step); none = the raw <grad l_i, g_clean>"
        },
    )
    gglm_parameters: str = field(
        default="",
        metadata={
            "help": "measure alignments over the parameters whose names match this regular "
            "expression only (the clean gradient is zero elsewhere), e.g. 'encoder_attn' for "
            "the decoder's cross-attention (ours); empty: all parameters"
        },
    )
    rebuild_batches: bool = field(
        default=False,
        metadata={
            "help": "rebuild the training batches at every epoch from seed + epoch (fairseq's "
            "task option, read by its get_batch_iterator): a run resumed at a later epoch then "
            "trains on the same batches as an uninterrupted one, which by default keeps the "
            "first epoch's batches while the resumed run builds its resume epoch's"
        },
    )
    # Filled from the rest of fairseq's configuration (no flags of their own).
    gglm_record_dir: Optional[str] = II("checkpoint.save_dir")
    restore_file: Optional[str] = II("checkpoint.restore_file")
    train_max_tokens: Optional[int] = II("dataset.max_tokens")
    train_batch_size: Optional[int] = II("dataset.batch_size")
    seed: int = II("common.seed")


class CleanBatches:
    """An endless, seeded, reshuffled sequence of clean batches with random access.

    Batch ``index`` is batch ``index % n`` of epoch ``index // n + 1``, so the batch for an
    update is a function of the update number and a resumed run continues exactly where an
    uninterrupted one would be.
    """

    def __init__(self, make_epoch_iterator) -> None:
        self._make_epoch_iterator = make_epoch_iterator
        first = make_epoch_iterator(1)
        self.batches_per_epoch = len(first)
        if self.batches_per_epoch == 0:
            raise CleanSetError("the clean split gives no batch (all examples too long?)")
        self._iterator = None
        self._next_index: Optional[int] = None

    def batch(self, index: int) -> Dict[str, Any]:
        epoch, position = divmod(index, self.batches_per_epoch)
        # A new torch DataLoader iterator draws a seed from the global torch RNG, which
        # fairseq seeds per update for dropout: a resumed run builds its iterator at another
        # update than an uninterrupted one, so the draw must not touch the global state.
        with torch.random.fork_rng(devices=[]):
            if self._next_index != index or position == 0:
                self._iterator = self._make_epoch_iterator(epoch + 1).next_epoch_itr(shuffle=True)
                self._iterator.skip(position)
            self._next_index = index + 1
            return next(self._iterator)


def _data_parallel_rank() -> int:
    if distributed_utils.get_data_parallel_world_size() == 1:
        return 0  # fairseq asks torch.distributed, which is not initialised then
    return distributed_utils.get_data_parallel_rank()


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def loss_scale(optimizer: Any) -> float:
    """The factor fairseq's backward multiplies the loss by: the fp16 optimisers' dynamic
    scale, AMP's grad-scaler scale, else 1."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is not None and getattr(scaler, "loss_scale", None):
        return float(scaler.loss_scale)
    grad_scaler = getattr(optimizer, "_grad_scaler", None)
    if grad_scaler is not None:
        return float(grad_scaler.get_scale())
    return 1.0


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module"):
        model = model.module
    return model


@register_task("translation_with_clean_set", dataclass=TranslationWithCleanSetConfig)
class TranslationWithCleanSetTask(TranslationTask):
    cfg: TranslationWithCleanSetConfig

    def __init__(self, cfg: TranslationWithCleanSetConfig, src_dict, tgt_dict) -> None:
        super().__init__(cfg, src_dict, tgt_dict)
        if cfg.clean_batches_per_update < 1:
            raise GGLMUserError("--clean-batches-per-update must be >= 1")
        self.estimator = CleanGradientEstimator(
            EstimatorSettings(
                interval=cfg.gglm_clean_grad_interval,
                decay=cfg.gglm_clean_grad_ema,
                preconditioner=str(cfg.gglm_preconditioner),
                parameters=cfg.gglm_parameters,
            )
        )
        self.clean_batches: Optional[CleanBatches] = None
        self.record = ExampleRecord()
        self._decisions: List[Decisions] = []  # this update's, recorded once it is applied
        self._next_update = 0  # the update the record and the estimator are ready for
        self._gglm = False  # trained with the GGLM criterion: its state goes to checkpoints
        self._running_score = False  # --gglm-score running: every rank reads the record
        self._resumed = False
        # Masked share of the last recorded updates (a diagnostic: not saved, refills on resume).
        self._masked_shares: Deque[float] = collections.deque(maxlen=MASKED_WINDOW)
        self._warned_mostly_masked = False
        self._shard_offset = 0  # epoch-sharded data: ids of earlier shards come first

    # --- data -------------------------------------------------------------------------
    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> None:
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if split != self.cfg.train_subset:
            return
        self._shard_offset = self.shard_offset(split, epoch)
        if self.cfg.clean_subset not in self.datasets:
            self.load_clean_dataset()

    def shard_offset(self, split: str, epoch: int) -> int:
        """Epoch-sharded data (``data-bin/a:data-bin/b``) restarts example ids in each shard;
        the record keys an example by the examples of the shards before it plus its id."""
        paths = utils.split_paths(self.cfg.data)
        shard = (epoch - 1) % len(paths)
        offset = 0
        src, tgt, impl = self.cfg.source_lang, self.cfg.target_lang, self.cfg.dataset_impl
        for path in paths[:shard]:
            # fairseq combines train, train1, train2, ... of a shard, in either pair order.
            for k in itertools.count():
                name = split + (str(k) if k > 0 else "")
                prefixes = [os.path.join(path, f"{name}.{pair}.{src}")
                            for pair in (f"{src}-{tgt}", f"{tgt}-{src}")]  # fmt: skip
                found = [x for x in prefixes if indexed_dataset.dataset_exists(x, impl=impl)]
                if not found:
                    break
                offset += len(data_utils.load_indexed_dataset(found[0], None, impl))
        return offset

    def clean_prefix(self) -> str:
        directory = self.cfg.clean_data or utils.split_paths(self.cfg.data)[0]
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
            prefix = os.path.join(directory, f"{self.cfg.clean_subset}.{pair}.")
            if indexed_dataset.dataset_exists(prefix + src, impl=self.cfg.dataset_impl):
                return prefix
        return os.path.join(directory, f"{self.cfg.clean_subset}.{src}-{tgt}.")

    def load_clean_dataset(self) -> None:
        """Load and check the clean split; raise :class:`CleanSetError` naming the file."""
        prefix = self.clean_prefix()
        directory = os.path.dirname(prefix)
        for lang in (self.cfg.source_lang, self.cfg.target_lang):
            if not indexed_dataset.dataset_exists(prefix + lang, impl=self.cfg.dataset_impl):
                raise CleanSetError(
                    f"clean split not found: {prefix}{lang}.bin/.idx (binarise it with "
                    f"fairseq-preprocess --validpref VALID,CLEAN and rename valid1.* to "
                    f"{self.cfg.clean_subset}.*, or set --clean-subset/--clean-data)"
                )
            if os.path.getsize(prefix + lang + ".bin") == 0:
                raise CleanSetError(f"clean split is empty: {prefix}{lang}.bin")
            dict_file = os.path.join(directory, f"dict.{lang}.txt")
            train_dict_file = os.path.join(utils.split_paths(self.cfg.data)[0], f"dict.{lang}.txt")
            if (
                os.path.exists(dict_file)
                and os.path.abspath(dict_file) != os.path.abspath(train_dict_file)
                and not filecmp.cmp(dict_file, train_dict_file, shallow=False)
            ):
                raise CleanSetError(
                    f"clean split dictionary {dict_file} differs from the training "
                    f"dictionary {train_dict_file}: binarise the clean split with the "
                    f"training dictionaries (fairseq-preprocess --srcdict/--tgtdict)"
                )
        dataset = load_langpair_dataset(
            directory,
            self.cfg.clean_subset,
            self.cfg.source_lang,
            self.src_dict,
            self.cfg.target_lang,
            self.tgt_dict,
            combine=False,
            dataset_impl=self.cfg.dataset_impl,
            upsample_primary=1,
            left_pad_source=self.cfg.left_pad_source,
            left_pad_target=self.cfg.left_pad_target,
            max_source_positions=self.cfg.max_source_positions,
            max_target_positions=self.cfg.max_target_positions,
            truncate_source=self.cfg.truncate_source,
            shuffle=True,
            pad_to_multiple=self.cfg.required_seq_len_multiple,
        )
        if len(dataset) == 0:
            raise CleanSetError(f"clean split is empty: {prefix}{self.cfg.source_lang}.bin")
        for side, data, dictionary in (
            (self.cfg.source_lang, dataset.src, self.src_dict),
            (self.cfg.target_lang, dataset.tgt, self.tgt_dict),
        ):
            largest = max(int(data[i].max()) for i in range(len(data)))
            if largest >= len(dictionary):
                raise CleanSetError(
                    f"clean split {prefix}{side}.bin holds token id {largest} but the "
                    f"training dictionary has {len(dictionary)} entries: it was binarised "
                    f"with another dictionary"
                )
        logger.info("clean split %s: %d sentence pairs", prefix, len(dataset))
        self.datasets[self.cfg.clean_subset] = dataset

    def clean_batch_iterators(self, model: torch.nn.Module) -> CleanBatches:
        dataset = self.datasets[self.cfg.clean_subset]
        max_tokens, max_sentences = self.cfg.clean_max_tokens, self.cfg.clean_batch_size
        # Default: a quarter of the training batch, with a clean-gradient average over
        # updates (the criterion's default): as good a direction as a full-size batch at a
        # quarter of its cost (docs/benchmarks.md).
        if max_tokens is None and self.cfg.train_max_tokens:
            longest = int(dataset.num_tokens_vec(np.arange(len(dataset))).max())
            max_tokens = max(self.cfg.train_max_tokens // CLEAN_BATCH_SHARE, longest)
        if max_sentences is None and self.cfg.train_batch_size:
            max_sentences = max(self.cfg.train_batch_size // CLEAN_BATCH_SHARE, 1)
        max_positions = utils.resolve_max_positions(self.max_positions(), model.max_positions())
        kept, ignored = dataset.filter_indices_by_size(dataset.ordered_indices(), max_positions)
        if len(kept) == 0:
            raise CleanSetError(
                f"all {len(dataset)} clean pairs are longer than the model's max positions "
                f"{max_positions}: raise --max-source-positions/--max-target-positions"
            )
        if len(ignored):
            logger.warning("gglm: %d of %d clean pairs are longer than the model's max "
                           "positions %s and are skipped", len(ignored), len(dataset),
                           max_positions)  # fmt: skip

        def make_epoch_iterator(epoch: int):
            # fairseq logs three lines per iterator built: once per clean epoch is noise.
            with _quiet(logging.getLogger("fairseq.tasks.fairseq_task")):
                return self.get_batch_iterator(
                    dataset=dataset,
                    max_tokens=max_tokens,
                    max_sentences=max_sentences,
                    max_positions=max_positions,
                    ignore_invalid_inputs=True,
                    seed=self.cfg.seed,
                    num_shards=distributed_utils.get_data_parallel_world_size(),
                    shard_id=_data_parallel_rank(),
                    num_workers=0,
                    epoch=epoch,
                    disable_iterator_cache=True,
                )

        return CleanBatches(make_epoch_iterator)

    # --- the clean gradient -----------------------------------------------------------
    def clean_gradient(
        self, model: torch.nn.Module, criterion, update_num: int, optimizer: Any = None
    ) -> CleanGradient:
        """Update ``update_num``'s direction from the estimator: this rank's clean batches,
        summed over data-parallel ranks, in ``optimizer``'s geometry where asked."""
        base = _unwrapped(model)
        if self.clean_batches is None:
            self.clean_batches = self.clean_batch_iterators(base)
        per_update = self.cfg.clean_batches_per_update

        def batches(index: int) -> List[Dict[str, Any]]:
            # Only when the estimator computes a new direction, not on every micro-batch.
            device = trainable_parameters(base)[0].device
            found = [self.clean_batches.batch(index * per_update + k) for k in range(per_update)]
            found = [b for b in found if b and "net_input" in b]  # a tiny set's empty shard
            return [utils.move_to_cuda(b, device) if device.type == "cuda" else b for b in found]

        group = distributed_utils.get_data_parallel_group() if self._world_size() > 1 else None
        all_reduce = None
        if group is not None:

            def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
                return distributed_utils.all_reduce(tensor, group=group)

        def adam_state():
            if optimizer is None:
                return None
            return adam_second_moment(optimizer, trainable_parameters(base))

        return self.estimator.estimate(
            update_num, base, criterion.token_losses, batches,
            loss_scale=loss_scale(optimizer) if optimizer is not None else 1.0,
            all_reduce=all_reduce, adam_state=adam_state,
        )  # fmt: skip

    @staticmethod
    def _world_size() -> int:
        return distributed_utils.get_data_parallel_world_size()

    # --- the update: hooks into fairseq's training loop ---------------------------------
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """One micro-batch of update ``update_num``, top to bottom: the direction, the masked
        loss and its decisions, the backward. The decisions are recorded in
        :meth:`optimizer_step`, only if fairseq applies the update."""
        if not isinstance(criterion, GradientMaskedCrossEntropyCriterion):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        self._gglm = True
        self._running_score = criterion.running_score
        if not self._resumed:
            self._resume(update_num, model)
        if _starts_update(model):
            # fairseq zeroes the gradients before each try at an update: decisions of a try it
            # discarded (fp16 overflow, OOM) are dropped with them.
            self._decisions = []
        clean = None
        if criterion.masks_update(update_num):
            clean = self.clean_gradient(model, criterion, update_num, optimizer)
        model.train()
        model.set_num_updates(update_num)
        record = self.record if criterion.running_score else None
        with torch.autograd.profiler.record_function("forward"):
            with torch.autocast("cuda", enabled=isinstance(optimizer, AMPOptimizer)):
                loss, sample_size, logging_output, decisions = criterion.masked_forward(
                    model, sample, clean, loss_scale(optimizer), record
                )
        if ignore_grad:
            loss *= 0  # fairseq's dummy batch: nothing trained, nothing recorded
        elif decisions is not None:
            self._decisions.append(decisions)
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        return loss, sample_size, logging_output

    def optimizer_step(self, optimizer, model, update_num) -> None:
        scale = loss_scale(optimizer)
        super().optimizer_step(optimizer, model, update_num)
        decisions, self._decisions = self._decisions, []
        if isinstance(optimizer, AMPOptimizer) and loss_scale(optimizer) < scale:
            return  # AMP's scaler skipped the step (non-finite gradients): not applied
        if self._gglm:
            self._commit(decisions, update_num)

    def _commit(self, decisions: List[Decisions], update_num: int) -> None:
        """Record update ``update_num``'s decisions, gathered from every data-parallel rank."""
        ids = torch.cat([d.ids for d in decisions] or [torch.zeros(0, dtype=torch.long)])
        alignment = torch.cat([d.alignment.double() for d in decisions] or [torch.zeros(0)])
        masked = torch.cat([d.masked.double() for d in decisions] or [torch.zeros(0)])
        group = distributed_utils.get_data_parallel_group() if self._world_size() > 1 else None
        # One process: gather_decisions hands its inputs back.
        ids, alignment, masked = gather_decisions(
            ids + self._shard_offset, alignment, masked, group=group
        )
        if self._holds_record():
            self.record.update(ids.numpy(), alignment.numpy(), masked.numpy(), update_num)
        self._next_update = update_num + 1
        self._watch_masked_share(masked.numpy(), update_num)

    def _holds_record(self) -> bool:
        """Only the rank that writes checkpoints keeps the record, unless --gglm-score running
        reads it for every rank's masks (at corpus scale it is 24 bytes per example)."""
        return self._running_score or _data_parallel_rank() == 0

    def _watch_masked_share(self, masked: np.ndarray, update_num: int) -> None:
        if masked.size == 0 or self._warned_mostly_masked:
            return
        self._masked_shares.append(float(masked.mean()))
        share = sum(self._masked_shares) / MASKED_WINDOW
        if len(self._masked_shares) == MASKED_WINDOW and share >= MOSTLY_MASKED:
            self._warned_mostly_masked = True
            logger.warning(
                "gglm: %.0f%% of the training examples were masked over the last %d updates "
                "(up to update %d): little is trained on; check that the clean set matches "
                "the training data (domain, language direction, preprocessing: a news clean "
                "set for image captions masked 99%% of each batch by the end of training) or "
                "lower --gglm-threshold",
                100 * share, MASKED_WINDOW, update_num,
            )  # fmt: skip

    # --- GGLM's state, inside fairseq's checkpoints ---------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """fairseq writes this into every checkpoint (crash.pt included) as ``task_state``,
        so the record and the estimator always belong to the checkpoint that holds them."""
        state = super().state_dict()
        if self._gglm:
            state[STATE_KEY] = {
                "next_update": self._next_update,
                "record": self.record.state_dict(),
                "clean_gradient": self.estimator.state_dict(),
            }
            path = self.record_path()
            if path is not None and len(self.record) > 0:
                self.record.save(path)  # an export for gglm-report; resume reads the checkpoint
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Inference (fairseq's load_model_ensemble_and_task) hands task_state back here."""
        state = dict(state_dict)
        gglm = state.pop(STATE_KEY, None)
        super().load_state_dict(state)
        if gglm is not None:
            self.record = ExampleRecord.from_state_dict(gglm["record"])

    def record_path(self) -> Optional[str]:
        directory = self.cfg.gglm_record_dir
        return os.path.join(directory, RECORD_FILE) if directory else None

    def resume_path(self) -> Optional[str]:
        """The checkpoint fairseq-train resumes from (its checkpoint_utils.load_checkpoint)."""
        restore = self.cfg.restore_file or "checkpoint_last.pt"
        if restore == "checkpoint_last.pt":
            if not self.cfg.gglm_record_dir:
                return None
            return os.path.join(self.cfg.gglm_record_dir, "checkpoint_last.pt")
        return restore

    def _resume(self, update_num: int, model: torch.nn.Module) -> None:
        """At the first update: GGLM's state from the checkpoint fairseq resumed from."""
        self._resumed = True
        self._next_update = update_num
        path = self.resume_path()
        if update_num == 0 or path is None or not os.path.exists(path):
            if update_num > 0:
                logger.warning("gglm: resuming at update %d without %s: the record and the "
                               "clean-gradient average start again", update_num, path)  # fmt: skip
            return
        gglm = load_task_state(path).get(STATE_KEY)
        if gglm is None:
            logger.info("gglm: %s holds no GGLM state (a plain checkpoint): the record and "
                        "the clean-gradient average start here", path)  # fmt: skip
            return
        if int(gglm["next_update"]) != update_num:
            raise GGLMUserError(
                f"{path} holds GGLM state for update {int(gglm['next_update'])} but fairseq "
                f"resumed at update {update_num}: pass the checkpoint you resume from with "
                f"--restore-file"
            )
        if self._holds_record():
            self.record = ExampleRecord.from_state_dict(gglm["record"])
        self.estimator.load_state_dict(
            gglm["clean_gradient"], trainable_parameters(_unwrapped(model))
        )
        logger.info("gglm: restored the record and the clean-gradient state of update %d "
                    "from %s", update_num, path)  # fmt: skip


def _starts_update(model: torch.nn.Module) -> bool:
    """No gradient yet: the first micro-batch of a try at an update (fairseq's zero_grad
    sets them to None)."""
    return all(p.grad is None for p in model.parameters() if p.requires_grad)


def load_task_state(path: str) -> Dict[str, Any]:
    """The task_state of a fairseq checkpoint, memory-mapped (the model is not read in)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated or foreign file: say which and why
        raise GGLMUserError(f"cannot read the checkpoint {path} ({error})") from None
    # Copies: fairseq copies its first checkpoint file onto checkpoint_last.pt in place, which
    # would change arrays still mapped from it (measured: a corrupted record after resume).
    return _copied(state.get("task_state") or {})


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(item) for item in value)
    return value
