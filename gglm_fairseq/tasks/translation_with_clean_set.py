"""Translation that also loads a small trusted ("clean") split and, once per update,
hands the criterion the gradient of a clean batch's loss.

The clean data is only used for that gradient; it is never trained on.
"""


import contextlib
import filecmp
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import indexed_dataset
from fairseq.distributed import utils as distributed_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import (
    TranslationConfig,
    TranslationTask,
    load_langpair_dataset,
)
from omegaconf import II

from gglm_fairseq.alignment import (
    adam_preconditioned,
    adam_second_moment,
    gradient,
    selected_parameters,
    trainable_parameters,
)
from gglm_fairseq.criterions.gradient_masked_cross_entropy import CleanGradient
from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.record import RECORD_FILE, ExampleRecord, write_atomically

logger = logging.getLogger(__name__)

# Beside the checkpoints: the --gglm-clean-grad-ema average (fairseq's trainer does not hand
# a task its saved state back on resume, so it is kept like the per-example record).
CLEAN_AVERAGE_FILE = "gglm_clean_grad_ema.pt"
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
    # Filled from the rest of fairseq's configuration (no flags of their own).
    gglm_record_dir: Optional[str] = II("checkpoint.save_dir")
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
        self.clean_batches: Optional[CleanBatches] = None
        self.record = ExampleRecord()
        self._record_checked = False
        self._clean_cache: Optional[CleanGradient] = None
        self._clean_average: Optional[List[torch.Tensor]] = None
        self._clean_average_update = -1  # the update the average was last taken at
        self._selected: Optional[List[bool]] = None  # --gglm-parameters, once known
        self._criterion = None

    # --- data -------------------------------------------------------------------------
    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs) -> None:
        super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)
        if split == self.cfg.train_subset and self.cfg.clean_subset not in self.datasets:
            self.load_clean_dataset()

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
        """The gradient of the mean per-token loss over update ``update_num``'s clean
        batches (all data-parallel ranks together), cached for the clean-gradient interval,
        with ``--gglm-clean-grad-ema`` averaged with the earlier ones, and with
        ``--gglm-preconditioner adam`` seen through ``optimizer``'s second moment."""
        interval = criterion.cfg.gglm_clean_grad_interval
        anchor = update_num - update_num % interval
        if self._clean_cache is not None and self._clean_cache.update_num == anchor:
            return self._clean_cache
        base = _unwrapped(model)
        if self.clean_batches is None:
            self.clean_batches = self.clean_batch_iterators(base)
        params = trainable_parameters(base)
        device = params[0].device
        per_update = self.cfg.clean_batches_per_update
        first = (update_num // interval) * per_update
        batches = [self.clean_batches.batch(first + k) for k in range(per_update)]
        batches = [b for b in batches if b and "net_input" in b]  # a tiny set's empty shard
        group = distributed_utils.get_data_parallel_group() if self._world_size() > 1 else None
        tokens = torch.tensor([float(sum(b["ntokens"] for b in batches))], device=device)
        if group is not None:
            tokens = distributed_utils.all_reduce(tokens, group=group)
        total_tokens = max(float(tokens.item()), 1.0)

        grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        clean_loss = torch.zeros((), device=device)
        # Dropout off: g_clean estimates a direction, it is not a training step.
        was_training = base.training
        base.eval()
        try:
            for batch in batches:
                batch = utils.move_to_cuda(batch, device) if device.type == "cuda" else batch
                with torch.enable_grad():
                    losses, _ = criterion.token_losses(base, batch)
                    batch_loss = losses.float().sum() / total_tokens
                    for total, g in zip(grads, gradient(batch_loss, params)):
                        total.add_(g.float())
                clean_loss += batch_loss.detach()
        finally:
            base.train(was_training)
        if group is not None:
            flat = torch.cat([clean_loss.view(1)] + [g.view(-1) for g in grads])
            flat = distributed_utils.all_reduce(flat, group=group)
            clean_loss = flat[0]
            grads = [
                chunk.view_as(g)
                for chunk, g in zip(torch.split(flat[1:], [g.numel() for g in grads]), grads)
            ]
        finite = bool(torch.isfinite(clean_loss)) and all(
            bool(torch.isfinite(g).all()) for g in grads
        )
        if not finite:
            logger.warning(
                "gglm: non-finite clean gradient at update %d: this update trains unmasked",
                update_num,
            )
        else:
            if criterion.cfg.gglm_parameters:
                if self._selected is None:  # the names and the pattern are fixed for the run
                    self._selected = selected_parameters(base, criterion.cfg.gglm_parameters)
                for g, keep in zip(grads, self._selected):
                    if not keep:
                        g.zero_()  # fresh tensors: zeroed in place, nothing allocated per update
            grads = self._averaged(grads, criterion.cfg.gglm_clean_grad_ema, anchor)
            if str(criterion.cfg.gglm_preconditioner) == "adam" and optimizer is not None:
                state = adam_second_moment(optimizer, params)
                if state is not None:
                    grads = adam_preconditioned(grads, *state)
        self._clean_cache = CleanGradient(
            direction=grads if finite else None,
            loss=float(clean_loss),
            update_num=anchor,
        )
        return self._clean_cache

    def _averaged(
        self, grads: List[torch.Tensor], decay: float, update_num: int
    ) -> List[torch.Tensor]:
        """Exponential moving average of the clean gradients (decay 0: the newest alone)."""
        if decay > 0 and self._clean_average is not None:
            # New tensors (one kernel each): an earlier update's direction must not change.
            grads = [torch.lerp(a, g, 1 - decay) for a, g in zip(self._clean_average, grads)]
        self._clean_average, self._clean_average_update = grads, update_num
        return grads

    @staticmethod
    def _world_size() -> int:
        return distributed_utils.get_data_parallel_world_size()

    # --- hooks into fairseq's training loop -------------------------------------------
    def train_step(
        self, sample, model, criterion, optimizer, update_num, ignore_grad=False
    ):
        if not hasattr(criterion, "begin_step"):
            return super().train_step(
                sample, model, criterion, optimizer, update_num, ignore_grad
            )
        self._criterion = criterion
        if not self._record_checked:
            self._restore_record(update_num)
            self._restore_clean_average(update_num, criterion, model)
        clean = None
        if criterion.masks_update(update_num):
            clean = self.clean_gradient(model, criterion, update_num, optimizer)
        criterion.begin_step(
            clean, record_examples=not ignore_grad, loss_scale=loss_scale(optimizer)
        )
        try:
            return super().train_step(
                sample, model, criterion, optimizer, update_num, ignore_grad
            )
        finally:
            criterion.end_step()

    def optimizer_step(self, optimizer, model, update_num) -> None:
        super().optimizer_step(optimizer, model, update_num)
        if self._criterion is not None:
            self._commit_record(self._criterion.take_pending(), update_num)

    def _commit_record(self, pending: List, update_num: int) -> None:
        """Add this update's decisions, gathered from every data-parallel rank."""
        entries = [
            (ids.numpy(), alignment.double().numpy(), masked.double().numpy())
            for ids, alignment, masked in pending
        ]
        if self._world_size() > 1:
            gathered: List[Any] = [None] * self._world_size()
            torch.distributed.all_gather_object(
                gathered, entries, group=distributed_utils.get_data_parallel_group()
            )
            entries = [entry for rank_entries in gathered for entry in rank_entries]
        for ids, alignment, masked in entries:
            self.record.update(ids, alignment, masked, update_num)

    def record_path(self) -> Optional[str]:
        directory = self.cfg.gglm_record_dir
        return os.path.join(directory, RECORD_FILE) if directory else None

    def _restore_record(self, update_num: int) -> None:
        self._record_checked = True
        path = self.record_path()
        if update_num == 0 or path is None or not os.path.exists(path):
            return
        self.record = ExampleRecord.load(path)
        if self.record.update_num != update_num - 1:
            logger.warning(
                "gglm: %s was written after update %d but training resumes at update %d",
                path,
                self.record.update_num + 1,
                update_num,
            )
        logger.info("gglm: restored the per-example record from %s", path)

    def _clean_average_path(self, criterion) -> Optional[str]:
        directory = self.cfg.gglm_record_dir
        if not directory or criterion is None or criterion.cfg.gglm_clean_grad_ema <= 0:
            return None
        return os.path.join(directory, CLEAN_AVERAGE_FILE)

    def _restore_clean_average(self, update_num: int, criterion, model) -> None:
        path = self._clean_average_path(criterion)
        if update_num == 0 or path is None:
            return
        if not os.path.exists(path):
            logger.warning("gglm: no %s to resume from: the clean-gradient average starts "
                           "again", path)  # fmt: skip
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        params = trainable_parameters(_unwrapped(model))
        average = saved["average"]
        if [tuple(a.shape) for a in average] != [tuple(p.shape) for p in params]:
            logger.warning("gglm: %s does not fit this model: the clean-gradient average "
                           "starts again", path)  # fmt: skip
            return
        self._clean_average = [a.to(p.device) for a, p in zip(average, params)]
        self._clean_average_update = saved["update_num"]
        logger.info("gglm: restored the clean-gradient average of update %d from %s",
                    saved["update_num"], path)  # fmt: skip

    def state_dict(self) -> Dict[str, Any]:
        # fairseq asks for the task state when it writes a checkpoint (on the saving rank
        # only): the record and the clean-gradient average go next to the checkpoints at the
        # same moment.
        path = self.record_path()
        if path is not None and len(self.record) > 0:
            self.record.save(path)
        average_path = self._clean_average_path(self._criterion)
        if average_path is not None and self._clean_average is not None:
            state = {
                "update_num": self._clean_average_update,
                "average": [a.detach().cpu() for a in self._clean_average],
            }
            write_atomically(average_path, lambda f: torch.save(state, f))
        return super().state_dict()
