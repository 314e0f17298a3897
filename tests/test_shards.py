"""gptcourse.data.shards: the on-disk token format, random and sequential windows. Exact integers."""

import json
import os

import numpy as np
import pytest
import torch

from gptcourse.data import ShardError, ShardWriter, TokenShards
from gptcourse.data.shards import dtype_for


def _write(folder, ids_by_split, vocab_size=1000, shard_tokens=7, **extra):
    w = ShardWriter(folder, vocab_size=vocab_size, shard_tokens=shard_tokens)
    for split, ids in ids_by_split.items():
        for chunk in np.array_split(np.asarray(ids), 3):
            w.add(split, chunk)
    return w.finish(**extra)


def test_dtype_follows_vocabulary_size():
    assert dtype_for(50257) == np.uint16
    assert dtype_for(65535) == np.uint16
    assert dtype_for(65536) == np.uint32


def test_sizes_of_the_wrong_type_are_type_errors(tmp_path):
    with pytest.raises(TypeError, match="vocab_size must be an int, got '50257'"):
        dtype_for("50257")
    with pytest.raises(ValueError, match="vocab_size must be >= 1, got 0"):
        dtype_for(0)
    with pytest.raises(TypeError, match="shard_tokens must be an int, got 1.5"):
        ShardWriter(tmp_path, vocab_size=100, shard_tokens=1.5)
    with pytest.raises(TypeError, match="block_size must be an int, got True"):
        TokenShards.from_ids(np.arange(50)).windows([0], True)


def test_round_trip_across_shards(tmp_path):
    ids = np.arange(50) % 997
    meta = _write(tmp_path, {"train": ids, "val": ids[:9]})
    assert meta["splits"]["train"]["tokens"] == 50
    assert len(meta["splits"]["train"]["shards"]) == 8  # ceil(50 / 7)
    ts = TokenShards(tmp_path, "train", verify=True)
    assert len(ts) == 50
    np.testing.assert_array_equal(ts.read(0, 50), ids)
    np.testing.assert_array_equal(ts.read(5, 11), ids[5:16])  # crosses two boundaries
    assert len(TokenShards(tmp_path, "val")) == 9


def test_uint32_when_vocab_is_large(tmp_path):
    ids = np.array([0, 70000, 99999, 5])
    meta = _write(tmp_path, {"train": ids}, vocab_size=100_000)
    assert meta["dtype"] == "uint32"
    np.testing.assert_array_equal(TokenShards(tmp_path).read(0, 4), ids)


def test_windows_are_shifted_targets(tmp_path):
    ids = np.arange(40)
    _write(tmp_path, {"train": ids})
    x, y = TokenShards(tmp_path).windows([0, 3, 30], 6)
    assert x.dtype == torch.long and x.shape == (3, 6)
    assert x[1].tolist() == list(range(3, 9))
    assert y[1].tolist() == list(range(4, 10))
    assert y[2].tolist() == list(range(31, 37))


def test_memory_and_disk_windows_agree(tmp_path):
    ids = np.random.default_rng(0).integers(0, 500, size=300)
    _write(tmp_path, {"train": ids}, shard_tokens=64)
    disk, mem = TokenShards(tmp_path), TokenShards.from_ids(ids)
    off = disk.random_offsets(16, 32, seed=1, step=3)
    np.testing.assert_array_equal(off, mem.random_offsets(16, 32, seed=1, step=3))
    for a, b in zip(disk.windows(off, 32), mem.windows(off, 32)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_random_offsets_depend_only_on_seed_and_step():
    ts = TokenShards.from_ids(np.arange(1000))
    a = ts.random_offsets(8, 16, seed=0, step=5)
    np.testing.assert_array_equal(a, ts.random_offsets(8, 16, seed=0, step=5))
    assert not np.array_equal(a, ts.random_offsets(8, 16, seed=0, step=6))
    assert not np.array_equal(a, ts.random_offsets(8, 16, seed=1, step=5))
    big = ts.random_offsets(10_000, 16, seed=0, step=0)
    assert big.min() >= 0 and big.max() <= 1000 - 16 - 1


def test_sequential_covers_each_window_once_across_ranks():
    ts = TokenShards.from_ids(np.arange(101))
    whole = torch.cat([x for x, _ in ts.sequential(10, 3)])
    assert whole.shape == (10, 10)
    assert whole.flatten().tolist() == list(range(100))
    parts = [torch.cat([x for x, _ in ts.sequential(10, 3, rank=r, world_size=2)]) for r in (0, 1)]
    assert sorted(torch.cat(parts)[:, 0].tolist()) == list(range(0, 100, 10))
    assert sum(1 for _ in ts.sequential(10, 3, max_batches=2)) == 2
    assert sum(1 for _ in ts.sequential(10, 3, max_batches=3, rank=1, world_size=2)) == 1


def test_short_split_names_the_fix():
    with pytest.raises(ShardError, match="block_size \\+ 1 = 9"):
        TokenShards.from_ids(np.arange(5)).windows([0], 8)


def test_unfinished_folder_is_refused(tmp_path):
    w = ShardWriter(tmp_path, vocab_size=100, shard_tokens=4)
    w.add("train", np.arange(10))
    with pytest.raises(ShardError, match="did not finish"):
        TokenShards(tmp_path)


def test_truncated_shard_is_refused(tmp_path):
    _write(tmp_path, {"train": np.arange(30)})
    (tmp_path / "train_000001.bin").write_bytes(b"\x00\x00")
    with pytest.raises(ShardError, match="truncated"):
        TokenShards(tmp_path)


def test_corrupt_shard_fails_verification(tmp_path):
    _write(tmp_path, {"train": np.arange(30)})
    f = tmp_path / "train_000000.bin"
    data = bytearray(f.read_bytes())
    data[0] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="does not match its sha256"):
        TokenShards(tmp_path)  # verified by default, although the sizes still match
    assert len(TokenShards(tmp_path, verify=False)) == 30  # the opt-out for speed


def test_writer_refuses_to_mix_with_old_shards(tmp_path):
    _write(tmp_path, {"train": np.arange(30)})
    with pytest.raises(ShardError, match="overwrite=True"):
        ShardWriter(tmp_path, vocab_size=100)
    w = ShardWriter(tmp_path, vocab_size=100, overwrite=True)
    assert not (tmp_path / "meta.json").exists()
    w.add("train", [1, 2, 3])
    w.finish()
    assert len(TokenShards(tmp_path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train_000000.bin"]


def test_out_of_vocabulary_id_is_refused(tmp_path):
    w = ShardWriter(tmp_path, vocab_size=10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        w.add("train", [3, 10])


def test_extra_metadata_and_split_stats(tmp_path):
    _write(tmp_path, {"train": np.arange(20), "val": np.arange(10)},
           tokenizer={"name": "char:the-verdict", "vocab_size": 1000, "eot_id": None},
           split_stats={"val": {"documents": 2, "nats": 25.0}})
    val = TokenShards(tmp_path, "val")
    assert val.documents == 2 and val.nats == 25.0 and val.entropy_per_token == 2.5
    assert TokenShards(tmp_path, "train").nats is None
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["tokenizer"]["name"] == "char:the-verdict"


def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        _write(tmp_path, {"train": np.arange(10)})
    finally:
        os.umask(old)
    for f in tmp_path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


def test_from_ids_can_carry_the_entropy_floor():
    ts = TokenShards.from_ids(np.arange(100), 100, nats=50.0, documents=4)
    assert ts.entropy_per_token == pytest.approx(0.5)  # 50 nats over 100 tokens
    assert ts.documents == 4 and ts.nats == 50.0
    assert TokenShards.from_ids(np.arange(100)).entropy_per_token is None


@pytest.mark.parametrize("bad", [{"nats": -1.0}, {"nats": float("nan")}, {"documents": -1}])
def test_from_ids_rejects_impossible_facts(bad):
    with pytest.raises(ValueError, match="must be"):
        TokenShards.from_ids(np.arange(10), 10, **bad)


@pytest.mark.parametrize("bad", [{"nats": "50"}, {"documents": 1.5}, {"documents": True}])
def test_from_ids_rejects_facts_of_the_wrong_type(bad):
    with pytest.raises(TypeError, match=next(iter(bad))):
        TokenShards.from_ids(np.arange(10), 10, **bad)


def _edit_meta(folder, edit):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(edit(meta)))


@pytest.mark.parametrize("dtype", ["float16", "int8", "uint8", "bogus"])
def test_meta_with_a_dtype_the_writer_never_writes_is_refused(tmp_path, dtype):
    _write(tmp_path, {"train": np.arange(30)})
    _edit_meta(tmp_path, lambda m: {**m, "dtype": dtype})
    with pytest.raises(ShardError, match=f"has dtype '{dtype}'; shards hold token ids as uint16"):
        TokenShards(tmp_path, verify=False)


@pytest.mark.parametrize("key", ["dtype", "vocab_size", "splits"])
def test_meta_without_a_key_names_the_key_and_the_file(tmp_path, key):
    _write(tmp_path, {"train": np.arange(30)})
    _edit_meta(tmp_path, lambda m: {k: v for k, v in m.items() if k != key})
    with pytest.raises(ShardError, match=f"meta.json has no '{key}' key"):
        TokenShards(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda m: [m], "holds a JSON list, not an object"),
    (lambda m: {**m, "vocab_size": 70_000}, "vocab_size 70,000 does not fit dtype uint16"),
    (lambda m: {**m, "splits": {"train": {"tokens": 30}}}, "splits.train has no 'shards' list"),
    (lambda m: {**m, "splits": {"train": {"tokens": 30, "shards": [{"file": "train_000000.bin"}]}}},
     "shard 0 of split 'train' has no valid 'tokens'"),
], ids=["list", "vocab-too-big", "no-shards", "no-tokens"])
def test_malformed_meta_is_a_shard_error_naming_the_file(tmp_path, edit, message):
    _write(tmp_path, {"train": np.arange(30)})
    _edit_meta(tmp_path, edit)
    with pytest.raises(ShardError, match=message) as err:
        TokenShards(tmp_path)
    assert "meta.json" in str(err.value)


def test_writer_removes_the_part_files_of_a_killed_writer(tmp_path):
    (tmp_path / ".train_000000.bin.k1ll.part").write_bytes(b"\x01\x00")
    (tmp_path / ".meta.json.x9.part").write_text("{")
    _write(tmp_path, {"train": np.arange(10)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "meta.json", "train_000000.bin", "train_000001.bin"]
