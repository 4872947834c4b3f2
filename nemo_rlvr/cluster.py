"""Ray start/attach and worker placement (placement groups; GPU or CPU bundles).

    start_ray(cfg.cluster)  ->  place_workers(cfg.cluster, ...)  ->  actor options

On a CPU-only machine every worker gets one CPU bundle. With CUDA, `split` gives
generators and learner their own GPUs; `colocated` packs one generator and one
learner rank on each GPU bundle (0.5 GPU each). Nothing puts vLLM to sleep while the
learner trains yet (#12), so a colocated vLLM keeps its memory: size
generation.gpu_memory_utilization for both. GPU placement has not run on a GPU yet.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from nemo_rlvr.config import ClusterConfig, ConfigError

log = logging.getLogger(__name__)


def start_ray(cfg: ClusterConfig, *, min_cpus: int = 1) -> None:
    """Attach to `cfg.address` or start a local Ray sized from the machine: `cluster.num_cpus`, else
    the machine's cores but at least `min_cpus` (one logical CPU per worker actor: in synchronous
    mode the generate and train phases take turns, so more actors than cores is fine)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")       # no token written to ~/.ray locally
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True,
                                  logging_level=logging.WARNING, configure_logging=False)
    if cfg.address:
        try:
            ray.init(address=cfg.address, **kwargs)
        except ConnectionError as e:
            raise ConfigError(f"cluster.address={cfg.address!r}: cannot reach a Ray cluster there ({e}). "
                              f"Start one with `ray start --head` or leave cluster.address unset.") from None
        return
    ray.init(num_cpus=cfg.num_cpus or max(os.cpu_count() or 1, min_cpus),
             object_store_memory=cfg.object_store_mb * 2**20,
             **kwargs)


@dataclass(frozen=True)
class Placement:
    """Actor options for each role; apply with `ActorClass.options(**opts).remote(...)`."""

    generator: list[dict[str, Any]]
    learner: list[dict[str, Any]]
    use_gpu: bool


def place_workers(cfg: ClusterConfig, *, num_generators: int, gen_tp: int, num_learners: int) -> Placement:
    """Reserve a placement group and return per-actor scheduling options."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    res = ray.cluster_resources()
    use_gpu = res.get("GPU", 0) > 0
    if use_gpu and cfg.placement == "colocated":
        if num_generators * gen_tp != num_learners:
            raise ConfigError(
                f"cluster.placement=colocated needs generation.num_workers * tensor_parallel_size "
                f"({num_generators}*{gen_tp}) == learner.num_workers ({num_learners}): each GPU holds "
                f"one learner rank and one generator shard.")
        bundles = [{"GPU": 1, "CPU": 1} for _ in range(num_learners)]
        gen_bundle = [i * gen_tp for i in range(num_generators)]
        learn_bundle = list(range(num_learners))
        gen_res = {"num_gpus": 0.5 if gen_tp == 1 else 0.0, "num_cpus": 0.5}
        learn_res = {"num_gpus": 0.5, "num_cpus": 0.5}
    elif use_gpu:
        bundles = [{"GPU": gen_tp, "CPU": 1} for _ in range(num_generators)]
        bundles += [{"GPU": 1, "CPU": 1} for _ in range(num_learners)]
        gen_bundle = list(range(num_generators))
        learn_bundle = [num_generators + i for i in range(num_learners)]
        gen_res = {"num_gpus": gen_tp if gen_tp == 1 else 0.0, "num_cpus": 1}
        learn_res = {"num_gpus": 1, "num_cpus": 1}
    else:
        bundles = [{"CPU": 1} for _ in range(num_generators + num_learners)]
        gen_bundle = list(range(num_generators))
        learn_bundle = [num_generators + i for i in range(num_learners)]
        gen_res = learn_res = {"num_cpus": 1}
    need = sum(b.get("CPU", 0) for b in bundles)
    if need > res.get("CPU", 0):
        raise ConfigError(
            f"the run needs {need} CPUs for {num_generators} generator(s) and {num_learners} learner(s) "
            f"but the Ray cluster has {res.get('CPU', 0)}; lower generation.num_workers or raise "
            f"cluster.num_cpus.")
    pg = placement_group(bundles, strategy="PACK")
    ray.get(pg.ready(), timeout=120)

    def opts(idx: int, base: dict[str, Any]) -> dict[str, Any]:
        return {**base, "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=idx)}

    return Placement([opts(i, gen_res) for i in gen_bundle], [opts(i, learn_res) for i in learn_bundle],
                     use_gpu)
