"""Weight transfer through vLLM's handshake, on the CPU: the dicts our code sends are parsed by
vLLM's own info classes for every backend (API drift fails here, not on a GPU), the gloo engines
are what vLLM's factories resolve, and a real transfer lands the learner's weights in an HF
generator (the receive side both backends share; vLLM's runs in tests/integration/test_grpo_vllm.py).
"""

from __future__ import annotations

import importlib.util
import socket

import pytest
import torch

from nemo_rlvr.weights.gloo import param_meta
from nemo_rlvr.weights.transfer import (
    GeneratorClient,
    GlooTrainer,
    GlooTrainerInitInfo,
    WeightSender,
    init_info_dict,
    trainer_init_info,
    update_info_dict,
)

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CheckedGenerator:
    """A real HF generator whose weight-transfer calls first parse their dicts with vLLM's classes
    (as vLLM's worker does: `init_info_cls(**d)`), recording the calls in order."""

    def __init__(self, generator, calls: list[str]):
        self.gen, self.calls = generator, calls

    def init_weight_transfer_engine(self, init_info):
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferInitInfo

        NCCLWeightTransferInitInfo(**init_info)
        self.calls.append(f"init rank_offset={init_info['rank_offset']}")
        self.gen.init_weight_transfer_engine(init_info)

    def start_weight_update(self):
        self.calls.append("start")
        self.gen.start_weight_update()

    def update_weights(self, update_info):
        from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo

        NCCLWeightTransferUpdateInfo(**update_info)
        self.calls.append("update")
        return self.gen.update_weights(update_info)

    def finish_weight_update(self):
        self.calls.append("finish")
        self.gen.finish_weight_update()


class Recorder:
    """A generator replica that keeps what the client sends it (the client's fan-out is the unit)."""

    def __init__(self):
        self.init = None

    def init_weight_transfer_engine(self, init_info):
        self.init = init_info


@needs_vllm
def test_our_dicts_parse_as_vllms_info_classes_for_every_backend():
    """gloo: our dicts; nccl and ipc: the worker init payloads vLLM's own trainer engines send,
    after our client fanned them out to 2 replicas of TP 2. Each parses with vLLM's class."""
    from dataclasses import asdict

    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferInitInfo
    from vllm.distributed.weight_transfer.nccl_common import worker_init_payload
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerInitInfo,
        NCCLWeightTransferInitInfo,
        NCCLWeightTransferUpdateInfo,
    )

    from nemo_rlvr.weights.vllm_engine import GlooWeightTransferEngine

    meta = param_meta([("a.weight", torch.zeros(3, 2)), ("b", torch.zeros(4, dtype=torch.bfloat16))])
    init = init_info_dict(master_address="10.0.0.1", master_port=29500, world_size=3, bucket_bytes=1 << 20,
                          rank_offset=1)
    nccl = NCCLWeightTransferInitInfo(**init)  # nccl and gloo share the class
    assert (nccl.rank_offset, nccl.world_size, nccl.packed, nccl.packed_buffer_size_bytes) == (1, 3, True, 1 << 20)
    upd = NCCLWeightTransferUpdateInfo(**update_info_dict(meta))
    assert (upd.names, upd.dtype_names, upd.shapes) == (["a.weight", "b"], ["float32", "bfloat16"], [[3, 2], [4]])
    assert GlooWeightTransferEngine.init_info_cls is NCCLWeightTransferInitInfo
    assert GlooWeightTransferEngine.update_info_cls is NCCLWeightTransferUpdateInfo
    with pytest.raises(TypeError):  # the classes do check: a missing rank_offset is refused
        NCCLWeightTransferInitInfo(**{k: v for k, v in init.items() if k != "rank_offset"})

    # nccl: vLLM's trainer engine sends rank_offset 1 to all; the client gives replica g of TP 2
    # ranks 1 + 2g, 2 + 2g (vLLM adds the engine's TP rank) in a group of 1 + 2 x 2 = 5
    info = trainer_init_info("nccl", rank=0, world_size=5, bucket_bytes=1 << 20, master_address="10.0.0.1",
                             master_port=29500)
    assert isinstance(info, NCCLTrainerInitInfo) and info.is_sender and info.backend == "nccl"
    sent = worker_init_payload(NCCLWeightTransferInitInfo(
        master_address=info.master_address, master_port=info.master_port, rank_offset=1,
        world_size=info.world_size, packed=info.packed, packed_buffer_size_bytes=info.packed_buffer_size_bytes,
        packed_num_buffers=info.packed_num_buffers))
    replicas = [Recorder(), Recorder()]
    client = GeneratorClient(replicas, ranks_per_replica=2)
    client.init_weight_transfer_engine(sent)
    got = [NCCLWeightTransferInitInfo(**r.init) for r in replicas]
    assert [(g.rank_offset, g.world_size) for g in got] == [(1, 5), (3, 5)]
    assert all(g.packed and g.packed_buffer_size_bytes == 1 << 20 for g in got)

    # ipc: no ranks; vLLM's IPC trainer sends {"packed": ...}, which reaches every replica as is
    info = trainer_init_info("ipc", rank=1, world_size=5, bucket_bytes=1 << 20)
    assert info.backend == "ipc" and not info.is_sender and info.packed
    client.init_weight_transfer_engine({"packed": info.packed})
    assert [IPCWeightTransferInitInfo(**r.init).packed for r in replicas] == [True, True]
    assert "rank_offset" not in asdict(IPCWeightTransferInitInfo(**replicas[0].init))


@needs_vllm
def test_vllm_factories_resolve_the_gloo_engines():
    from vllm.config import WeightTransferConfig
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    from nemo_rlvr.weights.transfer import register_with_vllm
    from nemo_rlvr.weights.vllm_engine import GlooWeightTransferEngine, register

    register()
    register()  # idempotent
    assert register_with_vllm()
    assert WeightTransferConfig(backend="gloo").backend == "gloo"
    assert WeightTransferEngineFactory._registry["gloo"]() is GlooWeightTransferEngine  # a lazy loader
    info = GlooTrainerInitInfo(master_address="127.0.0.1", master_port=1, world_size=2,
                               packed_buffer_size_bytes=64, rank=1)  # rank 1: no rendezvous
    trainer = WeightTransferTrainerFactory.trainer_init(info, client=None, source=lambda: [])
    assert isinstance(trainer, GlooTrainer) and not trainer.is_sender
    # and vLLM's own trainer engines for the GPU backends, under the names our config uses
    for backend in ("nccl", "ipc"):
        assert WeightTransferTrainerFactory._registry[backend]().__module__.endswith(f"{backend}_engine")


def test_gloo_transfer_lands_the_weights_in_an_hf_generator(tiny_model_dir):
    """The learner-side engine sends a changed model over gloo; the generator (in this process,
    on its own thread, as in cluster.mode=local) ends with exactly those weights."""
    from transformers import AutoModelForCausalLM

    from nemo_rlvr.rollout.hf import HFGenerator

    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for i, p in enumerate(source.parameters()):
            p.add_(0.01 * (i + 1))
    gen = HFGenerator(tiny_model_dir)
    calls: list[str] = []
    target = CheckedGenerator(gen, calls) if importlib.util.find_spec("vllm") else gen
    info = trainer_init_info("gloo", rank=0, world_size=2, bucket_bytes=64 * 1024,  # several buckets
                             master_address="127.0.0.1", master_port=free_port())
    sender = WeightSender(info, client=GeneratorClient([target]), module=source)  # through vLLM's factory
    for _ in range(2):  # a second update through the same group
        metrics = sender.send()
    want = dict(source.named_parameters())
    for name, p in gen.model.named_parameters():
        torch.testing.assert_close(p, want[name], rtol=0, atol=0, msg=name)
    nbytes = sum(p.numel() * 4 for p in source.parameters())
    assert metrics["weight_sync/bytes"] == nbytes and metrics["weight_sync/gb_per_s"] > 0
    assert 0 < metrics["weight_sync/apply_s"] <= metrics["weight_sync/seconds"]
    if calls:
        assert calls == ["init rank_offset=1"] + ["start", "update", "finish"] * 2


class FailingGenerator:
    """A real HF generator that joins the group, then fails on the update before receiving
    anything (as an engine that ran out of memory would)."""

    def __init__(self, generator):
        self.gen = generator

    def init_weight_transfer_engine(self, init_info):
        self.gen.init_weight_transfer_engine(init_info)

    def start_weight_update(self):
        self.gen.start_weight_update()

    def update_weights(self, update_info):
        raise MemoryError("engine out of memory while loading")


def test_a_generator_failing_an_update_gives_its_own_error(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from nemo_rlvr.rollout.hf import HFGenerator

    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    target = FailingGenerator(HFGenerator(tiny_model_dir))
    info = GlooTrainerInitInfo(master_address="127.0.0.1", master_port=free_port(), world_size=2,
                               packed_buffer_size_bytes=64 * 1024, rank=0, timeout_s=3.0)
    trainer = GlooTrainer.trainer_init(info, client=GeneratorClient([target]), source=source.named_parameters)
    with pytest.raises(RuntimeError, match=r"a generator raised MemoryError: engine out of memory while "
                                           r"loading\. The transfer group is unusable now"):
        trainer.send_weights()


def test_shm_transfer_lands_the_weights_and_leaves_no_file(tiny_model_dir):
    """The shared-memory transport (weights/shm.py): the learner writes a changed model into a
    /dev/shm region the generator mapped; after two updates the generator holds exactly those
    weights, and the file was unlinked as soon as the generator mapped it."""
    import glob

    from transformers import AutoModelForCausalLM

    from nemo_rlvr.rollout.hf import HFGenerator

    before = set(glob.glob("/dev/shm/nemo_rlvr_weights_*"))
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gen = HFGenerator(tiny_model_dir)
    calls: list[str] = []
    class Calls:  # the HF generator, each weight-transfer call recorded in order
        def __getattr__(self, name):
            def record(*args):
                calls.append(name.removesuffix("_weight_update").removesuffix("_weight_transfer_engine"))
                return getattr(gen, name)(*args)
            return record

    sender = WeightSender(trainer_init_info("shm", rank=0, world_size=2, bucket_bytes=1),
                          client=GeneratorClient([Calls()]), module=source)
    assert set(glob.glob("/dev/shm/nemo_rlvr_weights_*")) == before        # unlinked, still mapped
    for step in range(2):
        with torch.no_grad():
            for i, p in enumerate(source.parameters()):
                p.add_(0.01 * (i + 1 + step))
        metrics = sender.send()
        want = dict(source.named_parameters())
        for name, p in gen.model.named_parameters():
            torch.testing.assert_close(p, want[name], rtol=0, atol=0, msg=name)
    assert metrics["weight_sync/bytes"] == sum(p.numel() * 4 for p in source.parameters())
    assert calls == ["init"] + ["start", "update_weights", "finish"] * 2


def test_shm_region_layout_mixed_dtypes():
    from nemo_rlvr.weights.shm import ALIGN, region_bytes, region_plans, views

    meta = [("a", "float32", [2, 3]), ("b", "float32", [5]), ("c", "bfloat16", [3]), ("d", "float32", [1])]
    plans = region_plans(meta)
    # runs of one dtype, in order: (a, b) fp32 = 44 bytes -> 64-aligned; c bf16 6 bytes -> next 64; d
    assert [(off, p.names, p.dtype) for off, p in plans] == [
        (0, ("a", "b"), torch.float32), (ALIGN, ("c",), torch.bfloat16), (2 * ALIGN, ("d",), torch.float32)]
    assert region_bytes(meta) == 2 * ALIGN + 4
    region = torch.zeros(region_bytes(meta), dtype=torch.uint8)
    got = dict(views(region, meta))
    got["a"].fill_(1.5)
    got["c"].fill_(2.0)
    assert region[:24].view(torch.float32).tolist() == [1.5] * 6 and not region[24:44].any()
    assert got["c"].dtype == torch.bfloat16 and region[ALIGN:ALIGN + 6].view(torch.bfloat16).tolist() == [2.0] * 3


def test_shm_needs_the_learners_machine(tmp_path):
    from nemo_rlvr.weights.shm import ShmReceiver

    with pytest.raises(RuntimeError, match=r"does not exist here.*generation.weight_transfer=gloo"):
        ShmReceiver({"shm_path": str(tmp_path / "elsewhere"), "shm_bytes": 64})


def test_no_room_in_dev_shm_falls_back_to_gloo(tiny_model_dir, tmp_path, caplog):
    """auto picks shm for HF generators on one machine; where /dev/shm cannot hold the weights
    (here: RLIMIT_FSIZE below the model's 2.7 MB, as a container's small /dev/shm would refuse
    them) the learner says so before any generator is touched and the run syncs over gloo. With
    generation.weight_transfer=shm set explicitly it is an error naming the setting."""
    import logging
    import resource

    from nemo_rlvr.build import make_workers
    from nemo_rlvr.config import ConfigError, load_config

    overrides = [f"model.path={tiny_model_dir}", "cluster.mode=local", f"output_dir={tmp_path}"]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with caplog.at_level(logging.WARNING, logger="nemo_rlvr.build"):
            gens, learner = make_workers(load_config(None, overrides), tiny_model_dir)
        assert "shared-memory weight transfer unavailable" in caplog.text and "File too large" in caplog.text
        assert learner._transfer_args[1] == "gloo"
        learner.push_weights(gens, 1 << 20)                    # and the gloo path works
        with pytest.raises(ConfigError, match=r"generation.weight_transfer=shm: .*cannot hold"):
            make_workers(load_config(None, [*overrides, "generation.weight_transfer=shm"]), tiny_model_dir)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_shm_unavailable_reaches_the_driver_as_itself_through_ray(monkeypatch):
    """build.connect_weights catches ShmUnavailable from a learner actor: Ray's task error must
    be an instance of it (Ray raises the cause's class alongside RayTaskError)."""
    import ray

    from nemo_rlvr.weights.shm import ShmUnavailable

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")

    @ray.remote
    class Writer:
        def region(self, nbytes):
            import os
            import resource

            from nemo_rlvr.weights.shm import map_region

            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            path = f"/dev/shm/nemo_rlvr_weights_test_{os.getpid()}"
            try:
                map_region(path, nbytes, create=True)
            finally:
                if os.path.exists(path):
                    os.unlink(path)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(ShmUnavailable, match="cannot hold 3.0 MiB"):
            ray.get(Writer.remote().region.remote(3 << 20))
    finally:
        ray.shutdown()
