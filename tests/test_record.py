"""The per-example record: compact arrays, checkpoint state, the mappable export, earlier
versions' files, atomic saves, and the gather of every rank's decisions (two gloo ranks)."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gglm_fairseq.record as record_module
from gglm_fairseq.errors import GGLMUserError
from gglm_fairseq.record import RECORD_FILE, ExampleRecord, gather_decisions

UPDATES = [
    (1, [0, 3, 5], [1.5, -2.0, 0.25], [1.0, 0.0, 0.5]),
    (1, [3, 7], [9.0, 0.5], [1.0, 1.0]),  # id 3 again in update 1: not counted twice
    (2, [3, 9], [1.0, -0.5], [1.0, 0.25]),
]


def make_record() -> ExampleRecord:
    record = ExampleRecord()
    for update_num, ids, alignments, masks in UPDATES:
        record.update(ids, alignments, masks, update_num)
    return record


def assert_same(a: ExampleRecord, b: ExampleRecord) -> None:
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        assert a.arrays[name].dtype == b.arrays[name].dtype, name
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name], err_msg=name)
    np.testing.assert_array_equal(a.history, b.history)
    assert a.update_num == b.update_num


def test_compact_arrays_count_like_before():
    record = ExampleRecord(1000)
    assert sum(a.nbytes for a in record.arrays.values()) == 24 * 1000  # was 40 (5 x 8 bytes)
    record = make_record()
    assert record.seen[:10].tolist() == [1, 0, 0, 2, 0, 1, 0, 1, 0, 1]
    assert record.masked[[3, 5, 9]].tolist() == [1.0, 0.5, 0.25]
    assert record.alignment_sum[3] == -1.0 and record.alignment_last[3] == 1.0
    assert record.last_update[[0, 1, 9]].tolist() == [1, -1, 2]
    assert record.history.tolist() == [[1, 4, 2.5], [2, 2, 1.25]]
    # The sum stays float64: in float32, 1e8 + 1 - 1e8 would be 0.
    record.update([1], [1e8], [0], 3)
    record.update([1], [1.0], [0], 4)
    record.update([1], [-1e8], [0], 5)
    assert record.alignment_sum[1] == 1.0


def test_history_grows_past_its_first_block():
    record = ExampleRecord()
    for update_num in range(40):
        record.update([update_num, update_num + 1], [0.0, 1.0], [0.0, 1.0], update_num)
    assert record.history.shape == (40, 3)
    assert record.history[:, 0].tolist() == list(range(40))
    assert record.history[:, 1:].tolist() == [[2, 1]] * 40


def test_state_dict_round_trip_through_a_safe_load(tmp_path):
    record = make_record()
    state = record.state_dict()
    assert all(isinstance(v, (torch.Tensor, int)) for v in state.values())
    torch.save(state, tmp_path / "state.pt")
    restored = ExampleRecord.from_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert_same(restored, record)
    # A copy: updates after state_dict() leave the state alone.
    record.update([0], [5.0], [1.0], 3)
    assert state["seen"][0] == 1 and state["history"].shape == (2, 3)
    restored.update([0], [5.0], [1.0], 3)
    assert_same(restored, record)
    # The same update again merges into its history row, as in the original.
    record.update([11], [1.0], [1.0], 3)
    restored.update([11], [1.0], [1.0], 3)
    assert_same(restored, record)


def test_state_dict_without_a_field_is_a_user_error():
    state = make_record().state_dict()
    del state["masked"]
    with pytest.raises(GGLMUserError, match=r"missing \['masked'\]"):
        ExampleRecord.from_state_dict(state)


def test_export_is_mapped_in_place(tmp_path):
    record = make_record()
    path = str(tmp_path / RECORD_FILE)
    record.save(path)
    mapped = ExampleRecord.load(path, mmap=True)
    assert_same(mapped, record)
    for name, array in mapped.arrays.items():
        assert isinstance(array, np.memmap) and not array.flags.writeable, name
        assert array.offset % 64 == 0, name
    copied = ExampleRecord.load(path)
    assert_same(copied, record)
    assert not any(isinstance(a, np.memmap) for a in copied.arrays.values())
    copied.update([0], [1.0], [1.0], 3)  # a copied record trains on
    with np.load(path) as data:  # still a plain .npz for numpy
        np.testing.assert_array_equal(data["alignment_sum"], record.alignment_sum)
        assert int(data["update_num"]) == 2


def test_empty_record_round_trips(tmp_path):
    path = str(tmp_path / RECORD_FILE)
    ExampleRecord().save(path)
    for mmap in (False, True):
        loaded = ExampleRecord.load(path, mmap=mmap)
        assert len(loaded) == 0 and loaded.history.shape == (0, 3)


@pytest.mark.parametrize("with_history", [True, False])
def test_reads_an_earlier_versions_npz(tmp_path, with_history):
    path = str(tmp_path / RECORD_FILE)
    history = {"history": np.array([[4.0, 2.0, 1.0]])} if with_history else {}
    np.savez(path, update_num=np.int64(4), seen=np.array([2, 0, 1]),
             masked=np.array([1.0, 0.0, 0.5]), alignment_sum=np.array([0.1, 0.0, -3.0]),
             alignment_last=np.array([0.25, 0.0, -3.0]), last_update=np.array([4, -1, 4]),
             **history)  # fmt: skip
    for mmap in (False, True):
        record = ExampleRecord.load(path, mmap=mmap)
        assert record.seen.dtype == np.uint32 and record.seen.tolist() == [2, 0, 1]
        assert record.alignment_sum.tolist() == [0.1, 0.0, -3.0]
        assert record.last_update.tolist() == [4, -1, 4] and record.update_num == 4
        assert record.history.tolist() == ([[4.0, 2.0, 1.0]] if with_history else [])


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / RECORD_FILE
    make_record().save(str(path))
    before = path.read_bytes()
    written = []

    def fail_at_the_third_array(f, archive, name, array):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(name)
        original(f, archive, name, array)

    original = record_module._write_member
    monkeypatch.setattr(record_module, "_write_member", fail_at_the_third_array)
    bigger = make_record()
    bigger.update([40], [1.0], [1.0], 3)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(str(path))
    assert written == ["seen", "masked"]
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [RECORD_FILE]  # no temporary file left behind


# --- gather_decisions on two gloo ranks -------------------------------------------------------
# Per case: each rank's (ids, alignments (float32), masked (float64)).
GATHER_CASES = [
    ([[4, 1, 7], []], [[0.1, -2.5, 3.0], []], [[1.0, 0.0, 0.5], []]),
    ([[2, 3], [9, 8, 5, 6]], [[0.3, 0.7], [-0.1, 1e-30, 2.0, 5.5]], [[0, 1], [1, 1, 0.2, 0]]),
    ([[], []], [[], []], [[], []]),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gather_on_rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    results = []
    for ids, alignments, masked in GATHER_CASES:
        results.append(gather_decisions(
            torch.tensor(ids[rank], dtype=torch.int64),
            torch.tensor(alignments[rank], dtype=torch.float32),
            torch.tensor(masked[rank], dtype=torch.float64),
            group=dist.new_group([0, 1]),
        ))  # fmt: skip
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_gather_decisions_on_two_gloo_ranks(tmp_path):
    mp.spawn(gather_on_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for (ids, alignment, masked), (want_ids, want_alignments, want_masked) in zip(
            results, GATHER_CASES
        ):
            assert ids.dtype == torch.int64 and ids.tolist() == want_ids[0] + want_ids[1]
            assert alignment.dtype == torch.float32 and masked.dtype == torch.float64
            want = torch.tensor(want_alignments[0] + want_alignments[1], dtype=torch.float32)
            assert torch.equal(alignment, want)  # bit for bit, rank 0's first
            assert masked.tolist() == want_masked[0] + want_masked[1]


def test_gather_decisions_in_one_process_returns_its_input():
    ids, alignment, masked = torch.tensor([3, 1]), torch.tensor([0.5, -1.0]), torch.ones(2)
    gathered = gather_decisions(ids, alignment, masked, group=None)
    assert all(a is b for a, b in zip(gathered, (ids, alignment, masked)))


def test_pack_and_unpack_keep_every_bit():
    ids = torch.tensor([5, 2**40])
    alignment = torch.tensor([0.1, -1e-300], dtype=torch.float64)
    masked = torch.tensor([0.5, 1.0], dtype=torch.float64)
    packed = record_module.pack_decisions(ids, alignment, masked, 3)
    assert packed.shape == (3, 3) and packed[:, 2].tolist() == [0, 0, 0]
    gathered = torch.stack([packed, record_module.pack_decisions(ids[:0], alignment[:0],
                                                                 masked[:0], 3)])  # fmt: skip
    got = record_module.unpack_decisions(gathered, (2, 0), torch.float64, torch.float64)
    for a, b in zip(got, (ids, alignment, masked)):
        assert torch.equal(a, b)
