"""plan_placement: one-GPU bundles, TP groups on one node, learner ranks packed node 0 first, and
one-paragraph errors naming the keys to change (pure: no Ray)."""

from __future__ import annotations

import pytest

from nemo_rlvr.cluster import plan_placement
from nemo_rlvr.config import ConfigError

NODE8 = {"CPU": 16.0, "GPU": 8.0, "memory": 1e11, "node:10.0.0.1": 1.0}   # as ray.nodes() reports
GPU_BUNDLE = {"GPU": 1.0, "CPU": 1.0}


def plan(nodes, placement, g, tp, n):
    return plan_placement(nodes=nodes, placement=placement, num_generators=g, gen_tp=tp, num_learners=n)


def test_colocated_one_node_tp2():
    p = plan([NODE8], "colocated", 4, 2, 8)
    # 4 replicas x TP2 = 8 shards on the 8 GPUs; learner rank i shares bundle i with one shard
    assert p.use_gpu and p.bundles == (GPU_BUNDLE,) * 8 and p.bundle_nodes == (0,) * 8
    assert p.generator_bundles == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert p.learner_bundles == (0, 1, 2, 3, 4, 5, 6, 7)
    # TP>1: the generator actor takes no GPU (its engine's shard workers do); a learner rank half one
    assert p.generator_resources == {"num_gpus": 0.0, "num_cpus": 0.5}
    assert p.learner_resources == {"num_gpus": 0.5, "num_cpus": 0.5}
    text = p.describe()
    assert "node 0: generator replicas 0-3 (tensor_parallel_size 2; bundles 0-1, 2-3, 4-5, 6-7)" in text
    assert "learner ranks 0-7 (bundles 0-7)" in text and "0 GPUs left idle" in text


def test_colocated_one_node_tp1():
    p = plan([NODE8], "colocated", 8, 1, 8)
    assert p.generator_bundles == tuple((i,) for i in range(8)) and p.learner_bundles == tuple(range(8))
    assert p.generator_resources == p.learner_resources == {"num_gpus": 0.5, "num_cpus": 0.5}
    assert "generator replicas 0-7 (bundles 0-7) sharing those GPUs with learner ranks 0-7" in p.describe()


def test_split_one_node():
    p = plan([NODE8], "split", 2, 2, 4)
    # generators first (2 x 2 = bundles 0-3), then the 4 learner ranks (bundles 4-7): 8 GPUs, none shared
    assert p.bundles == (GPU_BUNDLE,) * 8 and p.bundle_nodes == (0,) * 8
    assert p.generator_bundles == ((0, 1), (2, 3)) and p.learner_bundles == (4, 5, 6, 7)
    assert p.generator_resources == {"num_gpus": 0.0, "num_cpus": 1.0}
    assert p.learner_resources == {"num_gpus": 1.0, "num_cpus": 1.0}


def test_split_tp1_generator_takes_its_gpu():
    p = plan([NODE8], "split", 3, 1, 2)
    assert p.generator_bundles == ((0,), (1,), (2,)) and p.learner_bundles == (3, 4)
    assert p.generator_resources == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert "3 GPUs left idle" in p.describe()    # 8 - (3 + 2)


def test_split_two_nodes_tp2():
    p = plan([NODE8, NODE8], "split", 4, 2, 8)
    # first fit: the 4 TP2 replicas fill node 0 (bundles 0-7), the 8 learner ranks node 1 (8-15)
    assert p.bundle_nodes == (0,) * 8 + (1,) * 8
    assert p.generator_bundles == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert p.learner_bundles == tuple(range(8, 16))
    text = p.describe()
    assert text.startswith("Placement split on 2 nodes x 8 GPUs = 16 GPUs: 16 bundles of 1 GPU + 1 CPU")
    assert "node 0: generator replicas 0-3" in text and "node 1: learner ranks 0-7 (bundles 8-15)" in text


def test_split_two_nodes_tp3_never_straddles():
    p = plan([NODE8, NODE8], "split", 4, 3, 4)
    # 8 // 3 = 2 replicas per node: r0, r1 on node 0 (6 GPUs), r2, r3 on node 1; the 2 + 2 GPUs left
    # take learner ranks 0-1 (node 0) and 2-3 (node 1)
    assert p.generator_bundles == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))
    assert p.bundle_nodes == (0,) * 6 + (1,) * 6 + (0, 0, 1, 1)
    for shards in p.generator_bundles:
        assert len({p.bundle_nodes[b] for b in shards}) == 1


def test_split_skips_gpu_less_head_node():
    p = plan([{"CPU": 4.0}, NODE8], "split", 1, 4, 4)
    assert p.bundle_nodes == (1,) * 8 and p.node_gpus == (0, 8)


def test_unequal_nodes_first_fit():
    p = plan([{"CPU": 8.0, "GPU": 2.0}, NODE8], "split", 2, 4, 2)
    # node 0 (2 GPUs) cannot hold a TP4 replica, so both fill node 1 (2 x 4 = 8); the 2 learner
    # ranks take node 0's 2 GPUs
    assert p.bundle_nodes == (1,) * 8 + (0, 0)


def test_cpu_only_cluster():
    # logical CPUs: start_ray(min_cpus=5) gives 5 on a 2-core machine (more actors than cores is fine)
    p = plan([{"CPU": 5.0}], "split", 2, 1, 3)
    # no GPU anywhere: one CPU bundle per actor, generators then learners
    assert not p.use_gpu and p.bundles == ({"CPU": 1.0},) * 5
    assert p.generator_bundles == ((0,), (1,)) and p.learner_bundles == (2, 3, 4)
    assert p.generator_resources == p.learner_resources == {"num_cpus": 1.0}
    assert "CPU-only" in p.describe()


def test_cpu_only_ignores_colocated_and_tp():
    p = plan([{"CPU": 8.0}], "colocated", 2, 2, 3)     # 2*2 != 3 matters only with GPUs
    assert p.generator_bundles == ((0,), (1,)) and p.learner_bundles == (2, 3, 4)


def test_cpu_only_too_few_logical_cpus():
    with pytest.raises(ConfigError) as e:
        plan([{"CPU": 2.0}], "split", 3, 1, 2)
    msg = str(e.value)
    assert "needs 5 CPUs" in msg and "has 2 CPUs and no GPU" in msg
    assert all(k in msg for k in ("generation.num_workers", "learner.num_workers", "cluster.num_cpus"))


def no_fit(nodes, placement, g, tp, n) -> str:
    with pytest.raises(ConfigError) as e:
        plan(nodes, placement, g, tp, n)
    msg = str(e.value)
    assert "\n" not in msg and msg.count("Placement does not fit") == 1   # one paragraph
    return msg


def test_too_many_gpus_in_total():
    msg = no_fit([NODE8], "split", 2, 4, 8)
    assert ("asks for 2 generator replicas x generation.tensor_parallel_size 4 = 8 GPUs + 8 learner ranks "
            "= 16 GPUs (cluster.placement=split") in msg
    assert "has 1 node x 8 GPUs" in msg and "the 16 GPUs asked are 8 more than the 8 it has" in msg
    # fixes that fit: the same 8 GPUs for both roles, or half of each (1 x 4 + 4 = 8)
    assert "e.g. cluster.placement=colocated; or generation.num_workers=1 learner.num_workers=4" in msg
    # every suggestion fits
    plan([NODE8], "colocated", 2, 4, 8)
    plan([NODE8], "split", 1, 4, 4)


def test_tp_group_larger_than_any_node():
    msg = no_fit([NODE8, NODE8], "split", 1, 16, 8)
    assert "1 generator replica x generation.tensor_parallel_size 16 = 16 GPUs + 8 learner ranks = 24 GPUs" in msg
    assert "has 2 nodes x 8 GPUs = 16 GPUs" in msg
    assert "generation.tensor_parallel_size=16 puts a replica's 16 shards on one node" in msg
    assert "no node has more than 8 GPUs" in msg
    assert "e.g. generation.tensor_parallel_size=8 generation.num_workers=1" in msg
    plan([NODE8, NODE8], "split", 1, 8, 8)   # the suggestion fits: 8 on node 0, learners on node 1


def test_colocated_unequal_counts():
    msg = no_fit([NODE8], "colocated", 4, 2, 6)
    assert "cluster.placement=colocated: each GPU holds one learner rank and one generator shard" in msg
    assert ("colocated needs generation.num_workers x generation.tensor_parallel_size (4 x 2 = 8) == "
            "learner.num_workers (6)") in msg
    assert "e.g. generation.num_workers=3; or learner.num_workers=8" in msg   # 3 x 2 = 6; 4 x 2 = 8


def test_tp_groups_fragmented_across_nodes():
    msg = no_fit([NODE8, NODE8], "split", 5, 3, 1)    # 15 + 1 = 16 GPUs, but 8 // 3 = 2 per node
    assert "only 4 replicas of 3 GPUs fit whole on the nodes (2 + 2 per node), not 5" in msg
    assert "generation.num_workers=4" in msg


def test_gpu_bundles_need_cpus():
    msg = no_fit([{"CPU": 4.0, "GPU": 8.0}], "split", 2, 1, 4)
    assert "of which 4 usable" in msg and "cluster.num_cpus" in msg
