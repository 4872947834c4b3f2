"""place_workers on a real Ray with logical GPUs (this machine has none): the placement group's
bundles are the plan's, each bundle sits on its planned node (also on a simulated 2-node cluster,
where plain PACK could split a TP group), and actors scheduled with the returned options land in
their planned bundle. The probe actors never touch CUDA; each test starts and shuts down its Ray."""

from __future__ import annotations

import importlib
import os
import re

import pytest

from nemo_rlvr.cluster import place_workers, start_ray
from nemo_rlvr.config import ClusterConfig, ConfigError

ray = pytest.importorskip("ray")
from ray.util.placement_group import placement_group_table, remove_placement_group

QUIET = {"include_dashboard": False, "log_to_driver": False}


@ray.remote
class Probe:
    """Reports where it runs: node id, placement group, bundle index, the GPU ids Ray gave it."""

    def where(self) -> dict:
        ctx = ray.get_runtime_context()
        # the raw names of the actor's resources carry its bundle: CPU_group_<index>_<pg id>
        raw = ray._private.worker.global_worker.core_worker.resource_ids()
        bundles = {int(m[1]) for r in raw if (m := re.fullmatch(r"(?:CPU|GPU)_group_(\d+)_\w+", r))}
        current = ray.util.get_current_placement_group()  # what vLLM's Ray executor reads
        return {"node": ctx.get_node_id(), "pg": ctx.get_placement_group_id(), "bundles": bundles,
                "gpus": ctx.get_accelerator_ids().get("GPU", []),
                "current_pg": None if current is None else current.id.hex()}

    def child_on_bundle(self, index: int) -> dict:
        """A one-GPU actor on bundle `index` of the current group, as vLLM's executor starts its TP
        workers (VLLM_RAY_BUNDLE_INDICES); where it landed."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        child = Probe.options(num_cpus=0, num_gpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=ray.util.get_current_placement_group(), placement_group_bundle_index=index)).remote()
        try:
            return ray.get(child.where.remote(), timeout=60)
        finally:
            ray.kill(child)


@pytest.fixture
def fresh_ray():
    if ray.is_initialized():   # another module's session: ours needs its own resources
        ray.shutdown()
    yield
    ray.shutdown()


def node_ids() -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def check_bundles(place) -> dict[int, str]:
    """The group's bundles are the plan's and each sits on its planned node; bundle -> node id."""
    plan, ids = place.plan, node_ids()
    table = placement_group_table(place.placement_group)
    assert table["strategy"] == "PACK" and table["state"] == "CREATED"
    assert [dict(b) for b in table["bundles"].values()] == [dict(b) for b in plan.bundles]
    where = table["bundles_to_node_id"]
    assert where == {i: ids[n] for i, n in enumerate(plan.bundle_nodes)}
    for shards in place.generator_bundles:      # a TP group never straddles nodes
        assert len({where[b] for b in shards}) == 1
    return where


def probe(place) -> tuple[list[dict], list[dict]]:
    """One probe actor per generator and learner rank, started with the returned options."""
    gens = [Probe.options(**o).remote() for o in place.generator]
    learners = [Probe.options(**o).remote() for o in place.learner]
    out = ray.get([a.where.remote() for a in gens + learners], timeout=60)
    for a in gens + learners:
        ray.kill(a)
    return out[: len(gens)], out[len(gens):]


def check_actors(place, where: dict[int, str]) -> tuple[list[dict], list[dict]]:
    gens, learners = probe(place)
    pg = place.placement_group.id.hex()
    for got, shards in zip(gens, place.generator_bundles):
        assert got["pg"] == pg and got["bundles"] == {shards[0]} and got["node"] == where[shards[0]]
    for got, b in zip(learners, place.learner_bundles):
        assert got["pg"] == pg and got["bundles"] == {b} and got["node"] == where[b]
    return gens, learners


def test_one_node_split_colocated_and_no_fit(fresh_ray, monkeypatch):
    ray.init(num_cpus=8, num_gpus=8, **QUIET)

    # split: 2 replicas x TP2 (bundles 0-1, 2-3) + 4 learner ranks (bundles 4-7), 8 one-GPU bundles
    place = place_workers(ClusterConfig(placement="split"), num_generators=2, gen_tp=2, num_learners=4)
    assert place.use_gpu and place.generator_bundles == [[0, 1], [2, 3]] and place.learner_bundles == [4, 5, 6, 7]
    where = check_bundles(place)
    gens, learners = check_actors(place, where)
    assert all(g["gpus"] == [] for g in gens)                   # TP>1: the engine's workers take the GPUs
    assert all(g["current_pg"] == place.placement_group.id.hex() for g in gens)  # captured for the executor
    for shards in place.generator_bundles:  # each TP shard's worker gets its bundle's GPU
        actor = Probe.options(**place.generator[place.generator_bundles.index(shards)]).remote()
        workers = [ray.get(actor.child_on_bundle.remote(b), timeout=90) for b in shards]
        ray.kill(actor)
        assert [w["bundles"] for w in workers] == [{b} for b in shards] and all(len(w["gpus"]) == 1 for w in workers)
        assert len({w["gpus"][0] for w in workers}) == len(shards) and {w["node"] for w in workers} == {where[shards[0]]}
    assert len({x for got in learners for x in got["gpus"]}) == 4  # one GPU each, none shared
    remove_placement_group(place.placement_group)

    # colocated: 2 replicas x TP1 + 2 learner ranks; rank i shares bundle i (and its GPU) with generator i
    place = place_workers(ClusterConfig(placement="colocated"), num_generators=2, gen_tp=1, num_learners=2)
    assert place.generator_bundles == [[0], [1]] and place.learner_bundles == [0, 1]
    gens, learners = check_actors(place, check_bundles(place))
    assert [g["gpus"] for g in gens] == [got["gpus"] for got in learners]
    assert len({g["gpus"][0] for g in gens}) == 2
    remove_placement_group(place.placement_group)

    # does not fit (8 + 8 GPUs on 8): ConfigError before any placement group is made
    before = len(placement_group_table())
    with pytest.raises(ConfigError, match=r"16 GPUs .*generation.num_workers"):
        place_workers(ClusterConfig(placement="split"), num_generators=2, gen_tp=4, num_learners=8)
    assert len(placement_group_table()) == before

    # a Ray without bundle label selectors (pyproject allows ray>=2.40): unpinned PACK, still placed
    pg_module = importlib.import_module("ray.util.placement_group")  # the module: ray.util names the function
    real = pg_module.placement_group

    def old_ray_placement_group(bundles, strategy="PACK", **kw):
        if "bundle_label_selector" in kw:
            raise TypeError("placement_group() got an unexpected keyword argument 'bundle_label_selector'")
        return real(bundles, strategy=strategy, **kw)

    monkeypatch.setattr(pg_module, "placement_group", old_ray_placement_group)
    place = place_workers(ClusterConfig(placement="split"), num_generators=1, gen_tp=4, num_learners=4)
    assert check_bundles(place)[0] == node_ids()[0]


def test_two_nodes_tp_groups_stay_on_one_node(fresh_ray):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "num_gpus": 8,
                                                                 "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=8, num_gpus=8)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, **QUIET)
        ids = node_ids()

        # 4 replicas x TP2 fill node 0, the 8 learner ranks node 1
        place = place_workers(ClusterConfig(), num_generators=4, gen_tp=2, num_learners=8)
        where = check_bundles(place)
        assert [where[b] for b in range(16)] == [ids[0]] * 8 + [ids[1]] * 8
        remove_placement_group(place.placement_group)

        # TP3: 2 replicas per node (bundles 0-5 on node 0, 6-11 on node 1), learner ranks on the
        # 2 + 2 GPUs left (bundles 12-13 on node 0, 14-15 on node 1); Ray's PACK alone would put
        # bundles 0-7 on one node and split replica 2 (bundles 6-8) across the two
        place = place_workers(ClusterConfig(), num_generators=4, gen_tp=3, num_learners=4)
        where = check_bundles(place)
        assert [where[b] for b in range(16)] == [ids[0]] * 6 + [ids[1]] * 6 + [ids[0]] * 2 + [ids[1]] * 2
        gens, _ = check_actors(place, where)
        assert [g["node"] for g in gens] == [ids[0], ids[0], ids[1], ids[1]]
        remove_placement_group(place.placement_group)
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_cpu_only_more_actors_than_cores(fresh_ray):
    start_ray(ClusterConfig(), min_cpus=(os.cpu_count() or 1) + 3)   # logical CPUs: one per actor
    if ray.cluster_resources().get("GPU"):
        pytest.skip("this machine has GPUs: the CPU-only plan does not apply")
    n = (os.cpu_count() or 1) + 3
    place = place_workers(ClusterConfig(), num_generators=2, gen_tp=1, num_learners=n - 2)
    assert not place.use_gpu and place.plan.bundles == ({"CPU": 1.0},) * n
    assert place.generator_bundles == [[0], [1]] and place.learner_bundles == list(range(2, n))
    check_bundles(place)
    assert all(o["num_cpus"] == 1 and "num_gpus" not in o for o in place.generator + place.learner)
