"""gptcourse.data: sliding windows of token ids and the seeded DataLoader. Exact integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptcourse.data import SlidingWindowDataset, make_loader

IDS = list(range(100, 121))  # 21 distinct tokens: a window's content tells where it starts


@pytest.mark.parametrize(
    "n, block, stride, expected",
    [
        (21, 4, None, 5),   # stride = block: starts 0, 4, 8, 12, 16 (16 + 4 + 1 = 21 tokens)
        (21, 4, 1, 17),     # every start 0..16
        (21, 4, 3, 6),      # 0, 3, 6, 9, 12, 15
        (21, 20, None, 1),  # exactly block + 1 tokens: one window
        (21, 5, 100, 1),    # a huge stride still gives the first window
        (20, 4, None, 4),   # 16 + 5 = 21 > 20: the last window does not fit
    ],
)
def test_length(n, block, stride, expected):
    assert len(SlidingWindowDataset(IDS[:n], block, stride)) == expected


def test_windows_and_stride():
    ds = SlidingWindowDataset(IDS, block_size=4, stride=3)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.tolist() == IDS[3 * i : 3 * i + 4]


def test_target_is_input_shifted_by_one():
    ds = SlidingWindowDataset(IDS, block_size=6, stride=2)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == y.shape == (6,)
        assert y[:-1].tolist() == x[1:].tolist()
        assert y[-1].item() == IDS[2 * i + 6]


def test_window_dtype_is_long():
    x, y = SlidingWindowDataset(np.array(IDS, dtype=np.uint16), 4)[0]
    assert x.dtype == y.dtype == torch.int64


def test_negative_index():
    ds = SlidingWindowDataset(IDS, block_size=4)
    for i in range(1, len(ds) + 1):
        assert torch.equal(ds[-i][0], ds[len(ds) - i][0])


@pytest.mark.parametrize("i", [5, 6, -6, 100])
def test_index_error(i):
    ds = SlidingWindowDataset(IDS, block_size=4)  # 5 windows
    with pytest.raises(IndexError, match="out of range for 5 windows"):
        ds[i]


def test_iteration_stops():
    assert len(list(SlidingWindowDataset(IDS, block_size=4))) == 5


@pytest.mark.parametrize("n", [0, 4, 5])
def test_too_short_input(n):
    with pytest.raises(ValueError, match="at least block_size \\+ 1 = 6 tokens.*got " + str(n)):
        SlidingWindowDataset(IDS[:n], block_size=5)


@pytest.mark.parametrize("block", [0, -1])
def test_bad_block_size(block):
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        SlidingWindowDataset(IDS, block)


@pytest.mark.parametrize("block", [2.0, True, None])
def test_block_size_of_the_wrong_type(block):
    with pytest.raises(TypeError, match="block_size must be an int"):
        SlidingWindowDataset(IDS, block)


@pytest.mark.parametrize(("stride", "error"), [(0, ValueError), (-2, ValueError),
                                               (1.5, TypeError), (False, TypeError)])
def test_bad_stride(stride, error):
    with pytest.raises(error, match="stride"):
        SlidingWindowDataset(IDS, 4, stride)


@pytest.mark.parametrize(
    "ids",
    [IDS, tuple(IDS), np.array(IDS), np.array(IDS, dtype=np.int32), torch.tensor(IDS), torch.tensor(IDS)[None]],
    ids=["list", "tuple", "np-int64", "np-int32", "tensor", "tensor-2d"],
)
def test_input_types_agree(ids):
    ds = SlidingWindowDataset(ids, block_size=4, stride=2)
    ref = SlidingWindowDataset(IDS, block_size=4, stride=2)
    assert len(ds) == len(ref)
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], ref[i][0]) and torch.equal(ds[i][1], ref[i][1])


# --------------------------------------------------------------------------------------
# make_loader
# --------------------------------------------------------------------------------------


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_batch_shapes_and_drop_last():
    loader = make_loader(IDS, block_size=4, batch_size=2, stride=1)  # 17 windows
    got = batches(loader)
    assert len(got) == 8  # the odd window is dropped
    assert all(x.shape == y.shape == (2, 4) for x, y in got)


def test_loader_keep_last():
    got = batches(make_loader(IDS, 4, 2, stride=1, drop_last=False))
    assert len(got) == 9 and got[-1][0].shape == (1, 4)


def test_loader_seeded_shuffle_is_reproducible():
    a = batches(make_loader(IDS, 4, 3, stride=1, seed=123))
    b = batches(make_loader(IDS, 4, 3, stride=1, seed=123))
    c = batches(make_loader(IDS, 4, 3, stride=1, seed=124))
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


def test_loader_shuffles_and_covers_every_window_once():
    loader = make_loader(IDS, 4, 1, stride=1, seed=0)
    starts = [x[0, 0].item() - 100 for x, _ in loader]
    assert sorted(starts) == list(range(17))
    assert starts != list(range(17))


def test_loader_without_shuffle_is_in_order():
    starts = [x[:, 0].tolist() for x, _ in make_loader(IDS, 4, 2, stride=1, shuffle=False)]
    assert [s for pair in starts for s in pair] == [100 + i for i in range(16)]


def test_loader_epochs_differ_but_replay_with_seed():
    loader = make_loader(IDS, 4, 1, stride=1, seed=5)
    epoch1 = [x[0, 0].item() for x, _ in loader]
    epoch2 = [x[0, 0].item() for x, _ in loader]
    again = make_loader(IDS, 4, 1, stride=1, seed=5)
    assert epoch1 != epoch2
    assert [x[0, 0].item() for x, _ in again] == epoch1
    assert [x[0, 0].item() for x, _ in again] == epoch2
