"""Weight buckets from an FSDP2-sharded model: two gloo ranks each hold half of every
parameter (DTensor shards); `pack_buckets` gathers them one parameter at a time and every
rank ends with the same buckets as packing the unsharded model."""

from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp

from nemo_rlvr.weights.buckets import pack_buckets
from tests.helpers.dist_buckets import make_model, pack_sharded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_parameters_pack_into_the_same_buckets(tmp_path):
    bucket_bytes = 4 * 64  # 64 fp32 values: the 60-value first weight fills a bucket of its own
    mp.spawn(pack_sharded, args=(2, free_port(), bucket_bytes, str(tmp_path)), nprocs=2, join=True)
    full = pack_buckets(make_model().named_parameters(), bucket_bytes)
    # Linear(6,10): weight [10,6] (60 values), bias [10]; Linear(10,3): weight [3,10], bias [3].
    # 60 + 10 > 64 closes the first bucket; 10 + 30 + 3 = 43 fit in the second.
    assert [b.names for b in full] == [("0.weight",), ("0.bias", "2.weight", "2.bias")]
    assert [b.offsets for b in full] == [(0,), (0, 10, 40)]
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        # FSDP2 shards dim 0 across the 2 ranks: [10, 6] -> [5, 6]; [3] -> [2] and [1]
        assert got["local_shapes"]["0.weight"] == (5, 6)
        assert got["local_shapes"]["2.bias"] == ((2,) if rank == 0 else (1,))
        assert len(got["buckets"]) == len(full)
        for (names, shapes, offsets, dtype, data), want in zip(got["buckets"], full):
            assert (names, shapes, offsets, dtype) == (want.names, want.shapes, want.offsets, want.dtype)
            torch.testing.assert_close(data, torch.from_numpy(want.data), rtol=0, atol=0)
