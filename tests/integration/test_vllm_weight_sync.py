"""Bucket packing for weight sync (weights/buckets.py): layout, dtypes, round trips. No vLLM needed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from nemo_rlvr.types import WeightBucket
from nemo_rlvr.weights.buckets import bucket_nbytes, iter_bucket_tensors, pack_buckets
from nemo_rlvr.weights.gloo import param_meta


def _params():
    g = torch.Generator().manual_seed(0)
    return [
        ("a", torch.randn(10, 10, generator=g)),        # 400 B
        ("b", torch.randn(25, generator=g)),            # 100 B
        ("c", torch.randn(300, generator=g)),           # 1200 B: larger than a bucket
        ("d", torch.randn(5, generator=g).bfloat16()),  # new dtype starts a new bucket
        ("e", torch.randn(2, 3, generator=g).bfloat16()),
        ("f", torch.randn(4, generator=g)),
    ]


def test_buckets_respect_size_dtype_and_order():
    buckets = pack_buckets(_params(), bucket_bytes=600)
    # a+b = 500 B fit in 600; c alone (over the limit); d+e bf16; f fp32 again
    assert [b.names for b in buckets] == [("a", "b"), ("c",), ("d", "e"), ("f",)]
    assert [b.dtype for b in buckets] == ["float32", "float32", "bfloat16", "float32"]
    assert buckets[0].offsets == (0, 100) and buckets[2].offsets == (0, 5)  # elements, no padding
    assert all(isinstance(b.data, np.ndarray) and b.data.ndim == 1 for b in buckets)
    assert buckets[2].data.dtype == np.uint16  # bf16 bits travel as uint16
    assert [bucket_nbytes(b) for b in buckets] == [500, 1200, 22, 16]


def test_round_trip_is_bit_exact_including_bf16():
    params = _params()
    out = dict(iter_bucket_tensors(pack_buckets(params, bucket_bytes=600)))
    assert list(out) == [n for n, _ in params]
    for name, t in params:
        assert out[name].dtype == t.dtype and out[name].shape == t.shape
        assert torch.equal(out[name], t)


def test_buckets_are_copies_and_read_only_buffers_work():
    params = _params()
    buckets = pack_buckets(params, bucket_bytes=1 << 20)
    params[0][1].zero_()  # the learner keeps training: buckets must not change
    assert not torch.equal(dict(iter_bucket_tensors(buckets))["a"], params[0][1])
    # Ray's object store hands out read-only arrays
    ro = []
    for b in buckets:
        data = b.data.copy()
        data.setflags(write=False)
        ro.append(WeightBucket(b.names, b.shapes, b.offsets, b.dtype, data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable NumPy array" warning either
        got = dict(iter_bucket_tensors(ro))
    assert torch.equal(got["b"], params[1][1])


def test_through_ray_object_store():
    ray = pytest.importorskip("ray")
    params = _params()
    buckets = pack_buckets(params, bucket_bytes=600)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        got = ray.get(ray.put(buckets))
        assert all(not b.data.flags.writeable for b in got if b.data.nbytes > 100)  # zero-copy views
        out = dict(iter_bucket_tensors(got))
        for name, t in params:
            assert torch.equal(out[name], t)
    finally:
        if started:
            ray.shutdown()


def test_param_meta_and_errors():
    assert param_meta(_params()[:2]) == [("a", "float32", [10, 10]), ("b", "float32", [25])]
    with pytest.raises(ValueError, match="bucket_bytes"):
        pack_buckets(_params(), bucket_bytes=0)
    with pytest.raises(TypeError, match="int64"):
        pack_buckets([("i", torch.arange(3))], bucket_bytes=100)

