"""Per-example record of what GGLM decided: times seen, times masked, alignments.

Indexed by the dataset's example id. ``masked`` counts whole-sentence masks at sentence
granularity and the masked fraction of the sentence's tokens at token granularity, so
``masked / seen`` is a mask rate in both cases. Each example is counted at most once per
update, so an update that fairseq re-runs (AMP overflow) is not counted twice.

``history`` keeps one row per recorded update: (update, sentences seen, masked sentences or
token fractions summed), for plots of the mask rate over training.

Sizes: 24 bytes per example (``FIELDS``), 2.4 GB for a 100M-example corpus. ``seen`` (uint32)
and ``last_update`` (int32, -1: never) are counts far below 2**31. ``masked`` is float32:
sentence masks are whole numbers, exact up to 2**24 visits, and summed token fractions lose
at most ~100 * 6e-8 relative over 100 visits; it is only reported, never fed back.
``alignment_last`` is float32 because the alignment is computed in float32 or below.
``alignment_sum`` stays float64: it sums signed values that cancel, and its mean decides masks
under ``--gglm-score running``. A float32 sum would mostly do (over 100 visits of 1M simulated
examples: at most 3.2e-7 of the sum of magnitudes off, no mean's sign flipped; bound 100 * 6e-8),
but float64 keeps accumulation out of the decision for 4 bytes an example.

Where it lives: ``state_dict()`` / ``from_state_dict()`` for fairseq's checkpoint (tensors
and ints only, so ``torch.load(weights_only=True)`` reads it), and ``save()`` / ``load()``
for the export that ``gglm-report`` reads (``RECORD_FILE``).

The export is a ``.npz`` that ``np.load`` reads as usual (one ``.npy`` member per array plus
``update_num`` and ``history``), written uncompressed with each member's data starting at a
multiple of 64 bytes of the file, so ``load(path, mmap=True)`` maps the arrays in place
instead of reading 2.4 GB. It is written to a temporary file and renamed, so a reader sees
the old file or the new one. A copying load checks each member's CRC; a mapped one reads no
array data, so a flipped byte in a large array goes unnoticed there. ``load`` also reads the
``np.savez`` files of earlier versions (64-bit arrays, converted on load).

``gather_decisions`` collects an update's decisions from every data-parallel rank with two
``all_gather`` calls of fixed-size tensors, without pickling.
"""

from __future__ import annotations

import io
import math
import os
import struct
import tempfile
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import ArrayLike

from gglm_fairseq.errors import GGLMUserError

RECORD_FILE = "gglm_record.npz"
FIELDS = {
    "seen": np.uint32,
    "masked": np.float32,
    "alignment_sum": np.float64,
    "alignment_last": np.float32,
    "last_update": np.int32,
}
_ALIGN = 64  # bytes: where each mapped array starts in the export
_PADDING_FIELD = 0xD935  # zip extra-field id for alignment padding (as Android's zipalign)
_CHUNK = 1 << 24  # bytes read at a time by a copying load
# What zipfile and numpy raise on a damaged or foreign file (RuntimeError: "encrypted").
_UNREADABLE = (
    OSError, EOFError, ValueError, TypeError, RuntimeError, NotImplementedError, OverflowError,
    struct.error, zipfile.BadZipFile, zlib.error,
)  # fmt: skip


def fit_to(array: np.ndarray, size: int, fill: float = np.nan) -> np.ndarray:
    """A per-example array cut or padded with ``fill`` to ``size`` examples: the record grows
    in steps, so it can be longer or shorter than the corpus."""
    out = np.full(size, fill, dtype=np.float64)
    out[: min(size, len(array))] = array[:size]
    return out


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into a temporary file beside ``path``, then rename it: a reader (or a crash)
    sees the old file or the new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- the export file --------------------------------------------------------------------------
def _npy_header(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    return buffer.getvalue()


def _write_member(f: BinaryIO, archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    """One ``.npy`` member, stored, padded so that its data starts at a multiple of _ALIGN."""
    array = np.asarray(array, order="C")  # ascontiguousarray would make a scalar 1-D
    header = _npy_header(array)
    info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
    # Local header: 30 fixed bytes, the name, the padding field (4 + pad), zip64 sizes (20).
    data_start = f.tell() + 30 + len(info.filename) + 4 + 20 + len(header)
    pad = -data_start % _ALIGN
    info.extra = struct.pack("<HH", _PADDING_FIELD, pad) + bytes(pad)
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(header)
        member.write(memoryview(array.reshape(-1)).cast("B"))


def _write_export(f: BinaryIO, arrays: Dict[str, np.ndarray]) -> None:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            _write_member(f, archive, name, array)


def _data_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start in the file (past its local header)."""
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {info.filename}")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _read_into(member: BinaryIO, array: np.ndarray) -> None:
    """Fill ``array`` from ``member`` in chunks (zipfile checks the CRC at the member's end)."""
    view = memoryview(array.reshape(-1)).cast("B")
    for start in range(0, len(view), _CHUNK):
        chunk = member.read(min(_CHUNK, len(view) - start))
        if len(chunk) != min(_CHUNK, len(view) - start):
            raise ValueError("member ends early")
        view[start : start + len(chunk)] = chunk


def _read_member(
    path: str, f: BinaryIO, archive: zipfile.ZipFile, info: zipfile.ZipInfo, mmap: bool
) -> np.ndarray:
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{info.filename}: .npy version {version}")
        read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
        shape, fortran_order, dtype = read_header(member)
        header_size = member.tell()
        if dtype.hasobject or (fortran_order and len(shape) > 1):
            raise ValueError(f"{info.filename}: unexpected array layout")
        nbytes = math.prod(shape) * dtype.itemsize
        if header_size + nbytes != info.file_size:
            raise ValueError(f"{info.filename}: {info.file_size} bytes, its header says more")
        if not (mmap and nbytes and shape and info.compress_type == zipfile.ZIP_STORED):
            array = np.empty(shape, dtype)
            _read_into(member, array)
            return array
    offset = _data_offset(f, info) + header_size
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _read_export(path: str, f: BinaryIO, mmap: bool) -> Dict[str, np.ndarray]:
    with zipfile.ZipFile(f) as archive:
        return {
            info.filename[: -len(".npy")]: _read_member(path, f, archive, info, mmap)
            for info in archive.infolist()
            if info.filename.endswith(".npy")
        }


# --- the record -------------------------------------------------------------------------------
class ExampleRecord:
    def __init__(self, size: int = 0) -> None:
        self.arrays: Dict[str, np.ndarray] = {
            name: np.zeros(size, dtype=dtype) for name, dtype in FIELDS.items()
        }
        self.arrays["last_update"][:] = -1
        self.update_num = 0
        self._history = np.zeros((0, 3), dtype=np.float64)  # rows in use: _history_rows
        self._history_rows = 0

    def __len__(self) -> int:
        return len(self.arrays["seen"])

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def _grow(self, size: int) -> None:
        if size <= len(self):
            return
        size = max(size, 2 * len(self))
        for name, array in self.arrays.items():
            grown = np.zeros(size, dtype=array.dtype)
            if name == "last_update":
                grown[:] = -1
            grown[: len(array)] = array
            self.arrays[name] = grown

    def _add_history(self, update_num: int, sentences: int, masked: float) -> None:
        rows = self._history_rows
        if rows and self._history[rows - 1, 0] == update_num:
            self._history[rows - 1, 1:] += (sentences, masked)
            return
        if rows == len(self._history):  # doubling: one copy per doubling, not per update
            grown = np.zeros((max(16, 2 * rows), 3), dtype=np.float64)
            grown[:rows] = self._history[:rows]
            self._history = grown
        self._history[rows] = (update_num, sentences, masked)
        self._history_rows = rows + 1

    def update(
        self,
        ids: ArrayLike,
        alignments: ArrayLike,
        mask_fractions: ArrayLike,
        update_num: int,
    ) -> None:
        """Count one decision per example: its sentence alignment and masked fraction.
        ids (n,), alignments (n,), mask_fractions (n,): lists, arrays or CPU tensors."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return
        alignments = np.asarray(alignments, dtype=np.float64).reshape(-1)
        masked = np.asarray(mask_fractions, dtype=np.float64).reshape(-1)
        self._grow(int(ids.max()) + 1)
        fresh = self.last_update[ids] != update_num
        ids, alignments, masked = ids[fresh], alignments[fresh], masked[fresh]
        np.add.at(self.seen, ids, 1)
        np.add.at(self.masked, ids, masked)
        np.add.at(self.alignment_sum, ids, alignments)
        self.alignment_last[ids] = alignments
        self.last_update[ids] = update_num
        self.update_num = max(self.update_num, update_num)
        self._add_history(update_num, len(ids), float(masked.sum()))

    @property
    def history(self) -> np.ndarray:
        """(updates, 3): update number, sentences recorded, masked (fractions summed)."""
        return self._history[: self._history_rows]

    def running_alignment(self, ids: torch.Tensor, alignment: torch.Tensor) -> torch.Tensor:
        """Each example's mean alignment over the times recorded so far and this one."""
        index = ids.cpu().numpy()
        self._grow(int(index.max()) + 1 if index.size else 0)
        past_sum = torch.from_numpy(self.alignment_sum[index]).to(alignment)
        past_seen = torch.from_numpy(self.seen[index].astype(np.int64)).to(alignment)
        return (past_sum + alignment) / (past_seen + 1)

    def mask_rate(self) -> np.ndarray:
        """masked / seen, NaN for examples never seen."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.seen > 0, self.masked / np.maximum(self.seen, 1), np.nan)

    def alignment_mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.seen > 0, self.alignment_sum / np.maximum(self.seen, 1), np.nan)

    def state_dict(self) -> Dict[str, Any]:
        """For fairseq's checkpoint: the arrays as tensors (copies, so that the next update
        does not change a checkpoint being written), ``update_num`` and ``history`` (k, 3)."""
        state: Dict[str, Any] = {
            name: torch.from_numpy(np.array(array)) for name, array in self.arrays.items()
        }
        state["update_num"] = self.update_num
        state["history"] = torch.from_numpy(self.history.copy())
        return state

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> ExampleRecord:
        """The record ``state_dict()`` returned (its tensors are used, not copied)."""
        arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        return cls._from_arrays(arrays, "the checkpoint's record state")

    def save(self, path: str) -> None:
        """Write the export (see the module docstring) atomically."""
        arrays = {**self.arrays, "update_num": np.int64(self.update_num), "history": self.history}
        write_atomically(path, lambda f: _write_export(f, arrays))

    @classmethod
    def load(cls, path: str, mmap: bool = False) -> ExampleRecord:
        """Read an export (or an earlier version's ``.npz``). ``mmap``: map the arrays
        read-only instead of reading them (for reports; such a record cannot be updated).
        A damaged or foreign file raises GGLMUserError."""
        try:
            f = open(path, "rb")
        except OSError as error:  # missing, a folder, unreadable: not a question of format
            raise GGLMUserError(f"cannot read the record {path}: {error}") from error
        with f:
            try:
                arrays = _read_export(path, f, mmap)
            except _UNREADABLE as error:  # OSError too: a seek to a corrupted offset
                raise GGLMUserError(f"{path}: not a GGLM record ({error})") from error
        return cls._from_arrays(arrays, path)

    @classmethod
    def _from_arrays(cls, arrays: Dict[str, Any], source: str) -> ExampleRecord:
        """A record from its named arrays, after checking their shapes and kinds."""
        missing = [name for name in (*FIELDS, "update_num") if name not in arrays]
        if missing:
            raise GGLMUserError(f"{source}: not a GGLM record (missing {missing})")
        fields = {name: np.asanyarray(arrays[name]) for name in FIELDS}  # memmaps stay maps
        history = np.asarray(arrays.get("history", np.zeros((0, 3))))
        update_num = np.asarray(arrays["update_num"])
        lengths = {array.shape for array in fields.values()}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise GGLMUserError(f"{source}: not a GGLM record (arrays of shapes {lengths})")
        numeric = [*fields.values(), history, update_num]
        if any(a.dtype.kind not in "biuf" for a in numeric) or update_num.shape != ():
            raise GGLMUserError(f"{source}: not a GGLM record (non-numeric or bad update_num)")
        if history.ndim != 2 or history.shape[1] != 3:
            raise GGLMUserError(f"{source}: not a GGLM record (history of shape {history.shape})")
        record = cls()
        record.arrays = {
            name: fields[name].astype(dtype, copy=False) for name, dtype in FIELDS.items()
        }
        record.update_num = int(update_num)
        record._history = np.array(history, dtype=np.float64)
        record._history_rows = len(history)
        return record


# --- gathering the ranks' decisions -----------------------------------------------------------
def pack_decisions(
    ids: torch.Tensor, alignment: torch.Tensor, masked: torch.Tensor, length: int
) -> torch.Tensor:
    """(3, length) int64: ids, then alignment and masked as their float64 bits (so nothing
    is rounded), zero-padded from n = ids.numel() to ``length``."""
    packed = torch.zeros(3, length, dtype=torch.int64)
    n = ids.numel()
    packed[0, :n] = ids.reshape(-1)
    packed[1, :n] = alignment.reshape(-1).to(torch.float64).view(torch.int64)
    packed[2, :n] = masked.reshape(-1).to(torch.float64).view(torch.int64)
    return packed


def unpack_decisions(
    gathered: torch.Tensor,
    sizes: Tuple[int, ...],
    alignment_dtype: torch.dtype,
    masked_dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gathered (ranks, 3, length) of pack_decisions, sizes (ranks,) of their n: ids (N,),
    alignment (N,) and masked (N,), rank after rank, N = sum(sizes). Each its own copy (views
    of one buffer as two dtypes could not be torch.save'd together)."""
    rows = torch.cat([gathered[rank, :, :n] for rank, n in enumerate(sizes)], dim=1)
    alignment = rows[1].view(torch.float64).to(alignment_dtype, copy=True)
    masked = rows[2].view(torch.float64).to(masked_dtype, copy=True)
    return rows[0].clone(), alignment, masked


def _collective_device(group: Optional[Any]) -> torch.device:
    # NCCL gathers CUDA tensors only; gloo gathers CPU tensors.
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_decisions(
    ids: torch.Tensor, alignment: torch.Tensor, masked: torch.Tensor, group: Optional[Any] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every rank's decisions of one update, on every rank, concatenated in rank order.

    ids (n,) int64, alignment (n,) and masked (n,) floating, n may differ between ranks (and
    be 0); returns (N,) each, N the sum of the ranks' n, in the inputs' dtypes and device.
    ``group``: a torch.distributed group (None: the default one). Without an initialised
    torch.distributed, or in a one-rank group, the inputs come back as they are.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return ids, alignment, masked
    ranks = dist.get_world_size(group)
    if ranks == 1:
        return ids, alignment, masked
    device = _collective_device(group)
    size = torch.tensor([ids.numel()], dtype=torch.int64, device=device)
    sizes_gathered = [torch.empty_like(size) for _ in range(ranks)]
    dist.all_gather(sizes_gathered, size, group=group)
    sizes = tuple(int(s) for s in torch.cat(sizes_gathered).tolist())
    if max(sizes) == 0:  # every rank knows it: all return without a second collective
        return ids, alignment, masked
    packed = pack_decisions(ids, alignment, masked, max(sizes)).to(device)
    gathered = [torch.empty_like(packed) for _ in range(ranks)]
    dist.all_gather(gathered, packed, group=group)
    result = unpack_decisions(torch.stack(gathered).cpu(), sizes, alignment.dtype, masked.dtype)
    return tuple(t.to(ids.device) for t in result)
