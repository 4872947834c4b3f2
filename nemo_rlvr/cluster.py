"""Ray start/attach and worker placement: a pure planner turns nodes x GPUs and the run's roles
into one-GPU bundles (or says in one paragraph what does not fit), then one placement group.

    start_ray(cfg.cluster) -> place_workers(cfg.cluster, ...) -> ray.nodes() -> plan_placement(...)
        -> placement_group(bundles, pinned per node) -> Placement (actor options per role)

Every GPU bundle is `{"GPU": 1, "CPU": 1}`: vLLM's Ray executor rejects a bundle with more than
one GPU. A generator replica's tensor-parallel (TP) shards are consecutive bundles on one node
(they talk over NVLink every layer). `split` gives generators and learner ranks GPUs of their
own; `colocated` puts one learner rank and one generator shard on each GPU (0.5 GPU each).
A colocated vLLM sleeps (KV cache dropped, weights offloaded) while the learner trains
(controller.py). On a CPU-only cluster every actor gets
one CPU bundle. GPU placement has not run on a GPU yet (tests use Ray's logical GPUs).
A TP generator actor captures the group for its children: vLLM's Ray executor, started inside it,
takes the bundles named by VLLM_RAY_BUNDLE_INDICES (rollout/vllm.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from nemo_rlvr.config import ClusterConfig, ConfigError

log = logging.getLogger(__name__)

NODE_ID_LABEL = "ray.io/node-id"
"""The label every Ray node carries with its id; a bundle's label selector pins it to a node."""


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
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                              "logging_level": logging.WARNING, "configure_logging": False}
    if cfg.address:
        try:
            ray.init(address=cfg.address, **kwargs)
        except ConnectionError as e:
            raise ConfigError(f"cluster.address={cfg.address!r}: cannot reach a Ray cluster there ({e}). "
                              f"Start one with `ray start --head` or leave cluster.address unset.") from None
        return
    # Ray runs workers at nice 15 so its own daemons stay responsive; here the workers are the
    # run's compute and every daemon is ours, and at nice 15 each wake-up of a daemon (dashboard,
    # log monitor, agents: ~14 % of a core together) preempts a torch thread and stalls its OpenMP
    # barrier. Measured on the tiny recipe (2 cores): the learner's train call 17.0 -> 15.8 ms,
    # the same as in one process (benchmarks/RESULTS.md).
    os.environ.setdefault("RAY_worker_niceness", "0")
    # The generator and learner actors take turns on the same cores (synchronous loop). An OpenMP
    # thread whose phase ended spins before it sleeps (libgomp: 300,000 spins, ~8 ms measured
    # here) and takes a core from the next phase's threads; 20,000 spins (well under 1 ms) still
    # catch the back-to-back parallel regions inside a phase. Tiny recipe, 2 cores, medians of 3
    # runs at commit b3753d3: step 0.063 -> 0.051 s; no spinning at all (OMP_WAIT_POLICY=PASSIVE)
    # was slower, 0.068. With the shared-memory weight sync and the queued push that came after,
    # 20,000 / 100,000 / 300,000 spins measure the same within noise (benchmarks/RESULTS.md).
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")
    ray.init(num_cpus=cfg.num_cpus or max(os.cpu_count() or 1, min_cpus),
             object_store_memory=cfg.object_store_mb * 2**20,
             **kwargs)
    _watch(ray)


def _watch(ray) -> None:
    """Start nemo_rlvr.watchdog for the local cluster just started: it takes the cluster's processes
    down if this driver dies without `ray.shutdown()` (SIGKILL, OOM)."""
    import subprocess
    import sys

    import psutil

    try:
        session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
    except AttributeError:  # a Ray whose internals moved: no watchdog, say so
        log.warning("ray %s: cannot find the session folder; a SIGKILLed driver may leave Ray processes "
                    "behind (`ray stop` removes them)", ray.__version__)
        return
    procs = [f"{p.pid}:{p.create_time()}" for p in psutil.Process().children(recursive=True)]
    subprocess.Popen([sys.executable, "-m", "nemo_rlvr.watchdog", str(os.getpid()), session_dir, *procs],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, close_fds=True)


# ---------------------------------------------------------------------------------------------
# The plan (pure: no Ray)


@dataclass(frozen=True)
class PlacementPlan:
    """Where every actor goes: bundles, the node each bundle is planned on, and per role the bundle
    indices and the resources its actor asks for inside its bundle."""

    placement: Literal["colocated", "split"]
    use_gpu: bool
    """False on a CPU-only cluster: one `{"CPU": 1}` bundle per actor, no GPU rules."""
    gen_tp: int
    bundles: tuple[dict[str, float], ...]
    """One GPU (and one CPU) per bundle with GPUs; one CPU per bundle without."""
    bundle_nodes: tuple[int, ...]
    """Per bundle, the index (into the planner's `nodes`) of the node it is planned on."""
    generator_bundles: tuple[tuple[int, ...], ...]
    """Per generator replica, the bundle indices of its TP shards (consecutive, one node); the
    generator actor itself sits in the first."""
    learner_bundles: tuple[int, ...]
    """Per learner rank, its bundle index."""
    generator_resources: dict[str, float]
    """Ray actor options (`num_gpus`, `num_cpus`) of a generator actor inside its bundle."""
    learner_resources: dict[str, float]
    """Ray actor options of a learner rank inside its bundle."""
    node_gpus: tuple[int, ...]
    """GPUs of each node the planner was given (whole GPUs)."""
    node_cpus: tuple[int, ...]
    """CPUs of each node the planner was given (whole logical CPUs)."""

    def describe(self) -> str:
        """One paragraph for the log: what goes where."""
        kind = "1 GPU + 1 CPU" if self.use_gpu else "1 CPU"
        head = (f"Placement {self.placement} on {_cluster_text(self.node_gpus)}" if self.use_gpu else
                f"Placement on a CPU-only cluster ({_count(len(self.node_cpus), 'node')}, "
                f"{sum(self.node_cpus)} CPUs; cluster.placement does not apply)")
        used = len(self.bundles) if self.use_gpu else 0
        idle = f", {sum(self.node_gpus) - used} GPUs left idle" if self.use_gpu else ""
        parts = []
        for node in sorted(set(self.bundle_nodes)):
            reps = [r for r, b in enumerate(self.generator_bundles) if self.bundle_nodes[b[0]] == node]
            ranks = [r for r, b in enumerate(self.learner_bundles) if self.bundle_nodes[b] == node]
            what, share = [], ""
            if reps:
                shards = (", ".join(_ranges(self.generator_bundles[r]) for r in reps) if self.gen_tp > 1
                          else _ranges([self.generator_bundles[r][0] for r in reps]))
                tp = f"tensor_parallel_size {self.gen_tp}; " if self.gen_tp > 1 else ""
                what.append(f"generator replica{'s' * (len(reps) > 1)} {_ranges(reps)} "
                            f"({tp}bundle{'s' * (len(reps) * self.gen_tp > 1)} {shards})")
            if ranks:
                share = "sharing those GPUs with " if self.placement == "colocated" and reps else ""
                what.append(f"{share}learner rank{'s' * (len(ranks) > 1)} {_ranges(ranks)} (bundle"
                            f"{'s' * (len(ranks) > 1)} {_ranges([self.learner_bundles[r] for r in ranks])})")
            parts.append(f"node {node}: " + (" " if share else ", ").join(what))
        actor = ", ".join(f"{k}={v:g}" for k, v in self.generator_resources.items())
        note = (" (its engine's TP workers take the shards' GPUs)" if self.use_gpu and self.gen_tp > 1
                else "")
        return (f"{head}: {_count(len(self.bundles), 'bundle')} of {kind}{idle}; " + "; ".join(parts)
                + f". A generator actor asks for {actor} in its first bundle{note}, a learner rank for "
                + ", ".join(f"{k}={v:g}" for k, v in self.learner_resources.items()) + ".")


def plan_placement(*, nodes: list[dict[str, float]], placement: Literal["colocated", "split"],
                   num_generators: int, gen_tp: int, num_learners: int) -> PlacementPlan:
    """Bundles for `num_generators` replicas of `gen_tp` shards and `num_learners` learner ranks on
    `nodes` (each node's Ray resources, e.g. `{"CPU": 16, "GPU": 8}`), or a `ConfigError` that says
    in one paragraph what the run asks for, what the cluster has, why it does not fit, and which
    keys to change.

    GPU rules: one GPU per bundle (with one CPU, so a node holds min(GPUs, CPUs) bundles); each
    replica's shards on one node, first fit in node order (shards being equal-sized groups, first
    fit places as many replicas as any packing could); split: learner ranks fill the GPUs left, node
    0 first; colocated: learner rank i shares bundle i with a generator shard. CPU-only: one CPU
    bundle per actor (generators, then learners), first fit in node order."""
    gpus = tuple(int(n.get("GPU", 0)) for n in nodes)
    cpus = tuple(int(n.get("CPU", 0)) for n in nodes)
    if not any(gpus):
        return _plan_cpu(cpus, placement, num_generators, gen_tp, num_learners)
    slots = [min(g, c) for g, c in zip(gpus, cpus)]   # a GPU bundle also takes one CPU
    layout = _layout(slots, placement, num_generators, gen_tp, num_learners)
    if layout is None:
        raise ConfigError(_no_fit_message(gpus, cpus, placement, num_generators, gen_tp, num_learners))
    gen_nodes, learner_nodes = layout
    bundle_nodes = [n for n in gen_nodes for _ in range(gen_tp)]
    gen_bundles = tuple(tuple(range(r * gen_tp, (r + 1) * gen_tp)) for r in range(num_generators))
    if placement == "split":
        learner_bundles = tuple(range(len(bundle_nodes), len(bundle_nodes) + num_learners))
        bundle_nodes += learner_nodes
        learner_res = {"num_gpus": 1.0, "num_cpus": 1.0}
        gen_res = {"num_gpus": 1.0 if gen_tp == 1 else 0.0, "num_cpus": 1.0}
    else:
        learner_bundles = tuple(range(num_learners))
        learner_res = {"num_gpus": 0.5, "num_cpus": 0.5}
        gen_res = {"num_gpus": 0.5 if gen_tp == 1 else 0.0, "num_cpus": 0.5}
    return PlacementPlan(placement, True, gen_tp, tuple({"GPU": 1.0, "CPU": 1.0} for _ in bundle_nodes),
                         tuple(bundle_nodes), gen_bundles, learner_bundles, gen_res, learner_res, gpus, cpus)


def _plan_cpu(cpus: tuple[int, ...], placement: Literal["colocated", "split"], num_generators: int,
              gen_tp: int, num_learners: int) -> PlacementPlan:
    actors = num_generators + num_learners
    free = list(cpus)
    bundle_nodes = _first_fit(free, 1, actors)
    if bundle_nodes is None:
        raise ConfigError(
            f"Placement does not fit: the run needs {actors} CPUs, one bundle per actor "
            f"({_count(num_generators, 'generator replica')} + {_count(num_learners, 'learner rank')}), "
            f"but the Ray cluster has {sum(cpus)} CPUs and no GPU. Lower generation.num_workers or "
            f"learner.num_workers, or raise cluster.num_cpus (left unset, a local Ray gets at least "
            f"one logical CPU per actor).")
    return PlacementPlan(placement, False, gen_tp, tuple({"CPU": 1.0} for _ in range(actors)),
                         tuple(bundle_nodes), tuple((r,) for r in range(num_generators)),
                         tuple(range(num_generators, actors)), {"num_cpus": 1.0}, {"num_cpus": 1.0},
                         tuple(0 for _ in cpus), cpus)


def _first_fit(free: list[int], size: int, count: int) -> list[int] | None:
    """Node index for each of `count` groups of `size` slots, each group on one node, first fit in
    node order (takes the slots from `free`); None if they do not all fit."""
    out = []
    for _ in range(count):
        node = next((i for i, f in enumerate(free) if f >= size), None)
        if node is None:
            return None
        free[node] -= size
        out.append(node)
    return out


def _layout(slots: list[int], placement: str, num_generators: int, gen_tp: int,
            num_learners: int) -> tuple[list[int], list[int]] | None:
    """(node per generator replica, node per learner rank), or None when it does not fit."""
    if placement == "colocated" and num_generators * gen_tp != num_learners:
        return None
    free = list(slots)
    gen_nodes = _first_fit(free, gen_tp, num_generators)
    if gen_nodes is None:
        return None
    if placement == "colocated":
        return gen_nodes, [n for n in gen_nodes for _ in range(gen_tp)]
    learner_nodes = _first_fit(free, 1, num_learners)
    return None if learner_nodes is None else (gen_nodes, learner_nodes)


def _no_fit_message(gpus: tuple[int, ...], cpus: tuple[int, ...], placement: str, num_generators: int,
                    gen_tp: int, num_learners: int) -> str:
    """One paragraph: asks, has, why, which keys to change (with settings that do fit)."""
    slots = [min(g, c) for g, c in zip(gpus, cpus)]
    gen_gpus = num_generators * gen_tp
    need = gen_gpus + num_learners if placement == "split" else max(gen_gpus, num_learners)
    reps = f"{_count(num_generators, 'generator replica')} x generation.tensor_parallel_size {gen_tp}"
    if placement == "split":
        asks = (f"{reps} = {gen_gpus} GPUs + {_count(num_learners, 'learner rank')} = {need} GPUs "
                f"(cluster.placement=split: generators and learner ranks on GPUs of their own)")
    else:
        asks = (f"{reps} = {gen_gpus} GPUs shared with {_count(num_learners, 'learner rank')} "
                f"(cluster.placement=colocated: each GPU holds one learner rank and one generator shard)")
    has = _cluster_text(gpus)
    short_cpu = [i for i, (g, c) in enumerate(zip(gpus, cpus)) if c < g]
    if short_cpu:
        has += (f", of which {sum(slots)} usable: node{'s' * (len(short_cpu) > 1)} "
                f"{', '.join(map(str, short_cpu))} ha{'ve' if len(short_cpu) > 1 else 's'} fewer CPUs than "
                f"GPUs and each GPU bundle also takes 1 CPU (raise cluster.num_cpus on a local Ray)")
    why = []
    if placement == "colocated" and gen_gpus != num_learners:
        why.append(f"colocated needs generation.num_workers x generation.tensor_parallel_size "
                   f"({num_generators} x {gen_tp} = {gen_gpus}) == learner.num_workers ({num_learners})")
    if gen_tp > max(slots):
        why.append(f"generation.tensor_parallel_size={gen_tp} puts a replica's {gen_tp} shards on one node "
                   f"(they exchange activations every layer, over NVLink) but no node has more than "
                   f"{max(slots)}{' usable' * bool(short_cpu)} GPUs")
    if need > sum(slots):
        why.append(f"the {need} GPUs asked are {need - sum(slots)} more than the {sum(slots)} it has")
    if not why:   # enough GPUs in all, but whole TP groups do not fit on the nodes
        fit = sum(s // gen_tp for s in slots)
        why.append(f"only {fit} replicas of {gen_tp} GPUs fit whole on the nodes "
                   f"({' + '.join(str(s // gen_tp) for s in slots)} per node), not {num_generators}")
    fixes = _suggest(slots, placement, num_generators, gen_tp, num_learners)
    fix = ("; or ".join(fixes) + "; or add GPU nodes") if fixes else "add GPU nodes"
    return (f"Placement does not fit: the run asks for {asks}, but the Ray cluster has {has}: "
            f"{'; and '.join(why)}. Change generation.num_workers, generation.tensor_parallel_size, "
            f"learner.num_workers or cluster.placement so it fits, e.g. {fix}.")


def _suggest(slots: list[int], placement: str, num_generators: int, gen_tp: int,
             num_learners: int) -> list[str]:
    """Up to three nearby settings that fit, as `key=value` overrides."""
    if max(slots) == 0:
        return []
    tp = gen_tp if gen_tp <= max(slots) else 1 << (max(slots).bit_length() - 1)  # a power of 2 that fits
    tp_key = [f"generation.tensor_parallel_size={tp}"] if tp != gen_tp else []
    gens = -(-num_generators * gen_tp // tp)          # as many generator GPUs as asked, at the new TP
    tries: list[tuple[str, int, int]] = []            # (placement, generators, learners)
    if placement == "split":
        tries += [("split", g, num_learners) for g in range(gens, 0, -1)]
        tries += [("split", gens, n) for n in range(num_learners, 0, -1)]
        if gens * tp == num_learners:
            tries.append(("colocated", gens, num_learners))
    else:
        if num_learners % tp == 0:
            tries.append(("colocated", num_learners // tp, num_learners))
        tries += [("colocated", g, g * tp) for g in range(gens, 0, -1)]
        tries.append(("split", gens, num_learners))
    for k in range(1, 8):                             # both roles scaled down together
        tries.append((placement, max(1, gens >> k), max(1, num_learners >> k)))
    out: list[str] = []
    changed: list[set[str]] = []                      # the keys each suggestion changes: one per set
    for p, g, n in tries:
        if _layout(slots, p, g, tp, n) is None:
            continue
        keys = tp_key + [f"generation.num_workers={g}"] * (g != num_generators or bool(tp_key))
        keys += [f"learner.num_workers={n}"] * (n != num_learners)
        keys += [f"cluster.placement={p}"] * (p != placement)
        names = {k.partition("=")[0] for k in keys}
        if keys and names not in changed:
            changed.append(names)
            out.append(" ".join(keys))
        if len(out) == 3:
            break
    return out


def _cluster_text(gpus: tuple[int, ...]) -> str:
    """'1 node x 8 GPUs', '2 nodes x 8 GPUs = 16 GPUs' or '3 nodes with 8 + 8 + 4 = 20 GPUs'."""
    if len(gpus) == 1:
        return f"1 node x {gpus[0]} GPUs"
    if len(set(gpus)) == 1:
        return f"{len(gpus)} nodes x {gpus[0]} GPUs = {sum(gpus)} GPUs"
    return f"{len(gpus)} nodes with {' + '.join(map(str, gpus))} = {sum(gpus)} GPUs"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _ranges(xs) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    xs, out, i = sorted(xs), [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(f"{xs[i]}-{xs[j]}" if j > i else f"{xs[i]}")
        i = j + 1
    return ", ".join(out)


# ---------------------------------------------------------------------------------------------
# Ray


@dataclass(frozen=True)
class Placement:
    """Actor options for each role; apply with `ActorClass.options(**opts).remote(...)`."""

    generator: list[dict[str, Any]]
    learner: list[dict[str, Any]]
    use_gpu: bool
    placement_group: Any = None
    """The one Ray placement group every actor is scheduled in (a vLLM Ray executor takes it)."""
    generator_bundles: list[list[int]] = field(default_factory=list)
    """Per generator replica, the bundle indices of its TP shards in `placement_group` (what vLLM's
    VLLM_RAY_BUNDLE_INDICES names); the generator actor itself sits in the first."""
    learner_bundles: list[int] = field(default_factory=list)
    plan: PlacementPlan | None = None


def place_workers(cfg: ClusterConfig, *, num_generators: int, gen_tp: int, num_learners: int,
                  timeout_s: float = 120.0) -> Placement:
    """Plan the alive Ray nodes (raises `ConfigError` before any actor starts when it does not fit),
    reserve one placement group, and return per-actor scheduling options."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    alive = [n for n in ray.nodes() if n.get("Alive")]
    plan = plan_placement(nodes=[n["Resources"] for n in alive], placement=cfg.placement,
                          num_generators=num_generators, gen_tp=gen_tp, num_learners=num_learners)
    pg = _reserve(plan, [n["NodeID"] for n in alive], timeout_s=timeout_s)
    names = ", ".join(f"{i}={n.get('NodeManagerAddress', '?')}/{n['NodeID'][:8]}" for i, n in enumerate(alive))
    log.info("%s Nodes: %s.", plan.describe(), names)

    def opts(idx: int, base: dict[str, float], *, capture: bool = False) -> dict[str, Any]:
        return {**base, "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=idx, placement_group_capture_child_tasks=capture)}

    # A TP generator's engine starts vLLM's Ray executor from inside the actor: capturing child
    # tasks makes `ray.util.get_current_placement_group()` there return this group
    tp = plan.use_gpu and plan.gen_tp > 1
    return Placement([opts(b[0], plan.generator_resources, capture=tp) for b in plan.generator_bundles],
                     [opts(i, plan.learner_resources) for i in plan.learner_bundles], plan.use_gpu,
                     placement_group=pg, generator_bundles=[list(b) for b in plan.generator_bundles],
                     learner_bundles=list(plan.learner_bundles), plan=plan)


def _reserve(plan: PlacementPlan, node_ids: list[str], *, timeout_s: float) -> Any:
    """One placement group of the plan's bundles, each pinned to its planned node; waits until Ray
    has reserved it."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    # One group, each bundle pinned to its planned node by the node-id label. Plain PACK keeps the
    # bundle count per node but not which bundles share one (2 x 8 GPUs: bundles 0-7 on one node, so
    # TP3 replica 2 = bundles 6-8 would straddle both); STRICT_PACK per node lets Ray pick each
    # group's node (on unequal nodes one group can take the node another needed) and hands vLLM
    # several groups where its Ray executor takes one plus bundle indices.
    pins = [{NODE_ID_LABEL: node_ids[i]} for i in plan.bundle_nodes]
    try:
        pg, pinned = placement_group(list(plan.bundles), strategy="PACK", bundle_label_selector=pins), True
    except TypeError:   # a Ray without bundle label selectors (pyproject allows ray>=2.40)
        log.warning("ray %s cannot pin bundles to nodes; the placement plan's nodes are Ray's choice",
                    ray.__version__)
        pg, pinned = placement_group(list(plan.bundles), strategy="PACK"), False
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ConfigError(
            f"The placement group of {len(plan.bundles)} bundles was not ready after {timeout_s:g} s although "
            f"the cluster's totals fit ({plan.describe()}): other jobs or actors hold those resources. "
            f"Free them (`ray status` lists them) or lower generation.num_workers / learner.num_workers.") from None
    where = placement_group_table(pg)["bundles_to_node_id"]
    straddle = [r for r, shards in enumerate(plan.generator_bundles) if len({where[b] for b in shards}) > 1]
    if not pinned and straddle:
        remove_placement_group(pg)
        raise ConfigError(
            f"ray {ray.__version__} put the tensor-parallel shards of generator replicas {straddle} on more "
            f"than one node (it cannot pin bundles to nodes). Upgrade ray, or set "
            f"generation.tensor_parallel_size=1 with more generation.num_workers.")
    return pg
