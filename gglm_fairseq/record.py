"""Per-example record of what GGLM decided: times seen, times masked, alignments.

Indexed by the dataset's example id. ``masked`` counts whole-sentence masks at sentence
granularity and the masked fraction of the sentence's tokens at token granularity, so
``masked / seen`` is a mask rate in both cases. Each example is counted at most once per
update, so an update that fairseq re-runs (AMP overflow) is not counted twice.

``history`` keeps one row per recorded update: (update, sentences seen, masked sentences or
token fractions summed), for plots of the mask rate over training.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable, Dict, Iterable, List

import numpy as np
import torch

RECORD_FILE = "gglm_record.npz"
_FIELDS = {
    "seen": np.int64,
    "masked": np.float64,
    "alignment_sum": np.float64,
    "alignment_last": np.float64,
    "last_update": np.int64,
}


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


class ExampleRecord:
    def __init__(self, size: int = 0) -> None:
        self.arrays: Dict[str, np.ndarray] = {
            name: np.zeros(size, dtype=dtype) for name, dtype in _FIELDS.items()
        }
        self.arrays["last_update"][:] = -1
        self.update_num = 0
        self._history: List[List[float]] = []

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

    def update(
        self,
        ids: Iterable[int],
        alignments: Iterable[float],
        mask_fractions: Iterable[float],
        update_num: int,
    ) -> None:
        """Count one decision per example: its sentence alignment and masked fraction."""
        ids = np.asarray(list(ids), dtype=np.int64)
        if ids.size == 0:
            return
        alignments = np.asarray(list(alignments), dtype=np.float64)
        masked = np.asarray(list(mask_fractions), dtype=np.float64)
        self._grow(int(ids.max()) + 1)
        fresh = self.last_update[ids] != update_num
        ids, alignments, masked = ids[fresh], alignments[fresh], masked[fresh]
        np.add.at(self.seen, ids, 1)
        np.add.at(self.masked, ids, masked)
        np.add.at(self.alignment_sum, ids, alignments)
        self.alignment_last[ids] = alignments
        self.last_update[ids] = update_num
        self.update_num = max(self.update_num, update_num)
        if self._history and self._history[-1][0] == update_num:
            self._history[-1][1] += len(ids)
            self._history[-1][2] += float(masked.sum())
        else:
            self._history.append([update_num, len(ids), float(masked.sum())])

    @property
    def history(self) -> np.ndarray:
        """(updates, 3): update number, sentences recorded, masked (fractions summed)."""
        return np.asarray(self._history, dtype=np.float64).reshape(-1, 3)

    def running_alignment(self, ids: torch.Tensor, alignment: torch.Tensor) -> torch.Tensor:
        """Each example's mean alignment over the times recorded so far and this one."""
        index = ids.cpu().numpy()
        self._grow(int(index.max()) + 1 if index.size else 0)
        past_sum = torch.from_numpy(self.alignment_sum[index]).to(alignment)
        past_seen = torch.from_numpy(self.seen[index]).to(alignment)
        return (past_sum + alignment) / (past_seen + 1)

    def mask_rate(self) -> np.ndarray:
        """masked / seen, NaN for examples never seen."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.seen > 0, self.masked / np.maximum(self.seen, 1), np.nan)

    def alignment_mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.seen > 0, self.alignment_sum / np.maximum(self.seen, 1), np.nan)

    def state_dict(self) -> Dict[str, object]:
        """Tensors and numbers only (loads under torch.load(weights_only=True))."""
        state: Dict[str, object] = {n: torch.from_numpy(a.copy()) for n, a in self.arrays.items()}
        state["update_num"] = int(self.update_num)
        state["history"] = torch.from_numpy(self.history.copy())
        return state

    @classmethod
    def from_state_dict(cls, state: Dict[str, object]) -> ExampleRecord:
        record = cls()
        record.arrays = {n: state[n].numpy().astype(dtype) for n, dtype in _FIELDS.items()}
        record.update_num = int(state["update_num"])
        record._history = state["history"].numpy().tolist()
        return record

    def save(self, path: str) -> None:
        write_atomically(
            path,
            lambda f: np.savez(
                f, update_num=np.int64(self.update_num), history=self.history, **self.arrays
            ),
        )

    @classmethod
    def load(cls, path: str) -> ExampleRecord:
        with np.load(path) as data:
            missing = [name for name in _FIELDS if name not in data]
            if missing:
                raise ValueError(f"{path}: not a GGLM record (missing {missing})")
            record = cls()
            record.arrays = {name: data[name].astype(dtype) for name, dtype in _FIELDS.items()}
            record.update_num = int(data["update_num"])
            if "history" in data:
                record._history = data["history"].tolist()
        return record
