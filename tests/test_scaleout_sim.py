"""benchmarks/scaleout_sim.py: the simulated ring is Ray Serve's, and consistent hashing behaves.

Where Ray is installed, the simulation's owner of every key is checked against the real
``ConsistentHashRouter``'s ring walk (its ``_rebuild_ring`` and ``_lookup_ranked_replicas``), and its
replica ids against Ray's generator. Then, on the simulated ring: adding a replica moves only streams
to it, about 1/(n+1) of them; removing one moves only its streams; more vnodes even the load; the
capacity plan's replicas hold their share.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmh3")
BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import scaleout_sim as sim  # noqa: E402

KEYS = 20_000


@pytest.fixture(scope="module")
def key_hashes() -> np.ndarray:
    return sim.hash_keys(sim.stream_keys(KEYS, seed=3))


def _ray_router(vnodes: int, unique_ids: list[str]):
    """Ray's ConsistentHashRouter with just its ring built (no controller, no event loop)."""
    router_mod = pytest.importorskip("ray.serve.experimental.consistent_hash_router")
    from ray.serve._private.common import DeploymentID, ReplicaID

    router = router_mod.ConsistentHashRouter.__new__(router_mod.ConsistentHashRouter)
    router._deployment_id = DeploymentID(name="StreamOwner", app_name="lstminfer")
    router._num_virtual_nodes, router._num_fallback_replicas = vnodes, 0
    replicas = frozenset(ReplicaID(uid, deployment_id=router._deployment_id) for uid in unique_ids)
    router._rebuild_ring(replicas)
    return router_mod, router


def test_ring_constants_are_the_routers():
    router_mod = pytest.importorskip("ray.serve.experimental.consistent_hash_router")
    assert sim.RING_SEED == router_mod.CONSISTENT_HASH_SEED
    assert sim.ROUTER_VNODES == router_mod.DEFAULT_NUM_VIRTUAL_NODES
    for key in ("0", "123456789", "adding_lstm/42", "ü"):
        assert int(sim.hash_keys([key])[0]) == router_mod._hash_bytes(key.encode())


def test_replica_ids_look_like_rays():
    pytest.importorskip("ray")
    from ray._common.utils import RANDOM_STRING_ALPHABET
    from ray.serve._private.utils import get_random_string

    assert sim.REPLICA_ID_ALPHABET == RANDOM_STRING_ALPHABET
    theirs = get_random_string()
    ours = sim.replica_ids(50, random.Random(1))
    assert len(set(ours)) == 50
    assert {len(theirs)} == {len(r) for r in ours} == {sim.REPLICA_ID_LENGTH}
    assert set("".join(ours)) <= set(RANDOM_STRING_ALPHABET)


@pytest.mark.parametrize("vnodes,replicas", [(100, 7), (3, 4)])
def test_owners_match_rays_router(vnodes, replicas):
    ids = sim.replica_ids(replicas, random.Random(vnodes))
    _, router = _ray_router(vnodes, ids)
    keys = sim.stream_keys(500, seed=vnodes)
    ours = sim.Ring(vnodes).owners(ids, sim.hash_keys(keys))
    theirs = [router._lookup_ranked_replicas(k)[0].unique_id for k in keys]
    assert [ids[i] for i in ours] == theirs


def test_a_key_above_every_point_wraps_to_the_first():
    ring = sim.Ring(5)
    ids = sim.replica_ids(3, random.Random(0))
    points = np.concatenate([ring.points(r) for r in ids])
    lowest = ids[int(np.argmin(points)) // 5]
    top = np.array([np.iinfo(np.uint64).max, points.max()], dtype=np.uint64)  # bisect_right: equal goes past
    assert [ids[i] for i in ring.owners(ids, top)] == [lowest, lowest]


def test_fresh_ids_are_the_servers():
    websocket = pytest.importorskip("lstminfer.serve.websocket")
    assert sim.FRESH_ID_BITS == websocket.FRESH_ID_BITS
    keys = sim.stream_keys(1000, seed=0, model="m")
    sids = [int(k.removeprefix("m/")) for k in keys]
    assert len(set(sids)) == 1000 and all(0 <= s < 2**sim.FRESH_ID_BITS for s in sids)
    assert max(sids) > 2**(sim.FRESH_ID_BITS - 2)  # drawn from the whole range
    assert sim.stream_keys(3, seed=0, ids="sequential", model="m") == ["m/0", "m/1", "m/2"]


def test_routing_key_is_the_apps():
    try:
        from lstminfer.ray.moves import routing_key
    except ImportError:
        pytest.skip("lstminfer.ray is not installed here")
    assert sim.routing_key("m", 7) == routing_key("m", 7)


@pytest.mark.parametrize("n", [1, 4, 19])
def test_scale_up_moves_only_to_the_new_replica(key_hashes, n):
    ring = sim.Ring()
    ids = sim.replica_ids(n + 1, random.Random(n))
    before = np.asarray(ids[:n])[ring.owners(ids[:n], key_hashes)]
    after = np.asarray(ids)[ring.owners(ids, key_hashes)]
    moved = before != after
    assert set(after[moved]) == {ids[n]}
    assert np.array_equal(after == ids[n], moved)  # the new replica holds only moved streams
    # Its share of a 100-vnode ring: 1/(n+1) give or take ~10% of it per sigma.
    assert abs(moved.mean() * (n + 1) - 1.0) < 0.4


@pytest.mark.parametrize("n", [2, 5, 20])
def test_scale_down_moves_only_the_removed_replicas_streams(key_hashes, n):
    ring = sim.Ring()
    ids = sim.replica_ids(n, random.Random(100 + n))
    gone = ids[n // 2]
    kept = [r for r in ids if r != gone]
    before = np.asarray(ids)[ring.owners(ids, key_hashes)]
    after = np.asarray(kept)[ring.owners(kept, key_hashes)]
    moved = before != after
    assert np.array_equal(moved, before == gone)
    assert gone not in set(after)
    assert abs(moved.mean() * n - 1.0) < 0.4


def test_shares_are_the_loads_of_many_keys(key_hashes):
    ring = sim.Ring(20)
    ids = sim.replica_ids(6, random.Random(9))
    shares = ring.shares(ids)
    assert shares.sum() == pytest.approx(1.0)
    loads = np.bincount(ring.owners(ids, key_hashes), minlength=6) / len(key_hashes)
    assert np.abs(loads - shares).max() < 0.015  # binomial noise at 20000 keys: sigma < 0.0035


def test_more_vnodes_even_the_load():
    def mean_cv(vnodes: int) -> float:
        ring, rng = sim.Ring(vnodes), random.Random(vnodes)
        return float(np.mean([np.std(s) / np.mean(s) for s in
                              (ring.shares(sim.replica_ids(10, rng)) for _ in range(8))]))

    cvs = [mean_cv(v) for v in (5, 50, 500)]
    assert cvs[0] > cvs[1] > cvs[2]
    assert cvs[2] < 0.1  # ~1/sqrt(500) of a replica's share


def test_simulation_moves_nothing_needlessly():
    result = sim.simulate(streams=3000, max_replicas=12, seed=5, jumps=((2, 4), (10, 5)))
    steps = result["up"] + result["down"] + result["jumps"]
    assert len(result["up"]) == len(result["down"]) == 11 and len(result["jumps"]) == 2
    assert all(s["needless"] == 0 for s in steps)
    assert all(0 < s["moved"] < 1 for s in steps)
    assert 0.7 < np.mean([s["moved"] / s["ideal"] for s in steps]) < 1.3
    assert all(s["balance"]["max_over_mean"] >= 1.0 for s in steps)
    assert result["down"][-1]["balance"]["max_over_mean"] == 1.0  # one replica holds everything


def test_plan_fits_the_busiest_replica(key_hashes):
    rings = sim.RandomRings(trials=3, seed=2)
    p = sim.plan(key_hashes[:5000], per_replica=200, headroom=0.8, rings=rings)
    assert p.replicas_even == 32  # ceil(5000 / 160)
    assert p.replicas > p.replicas_even  # a ring is never perfectly even
    assert p.busiest <= 160 < rings.busiest(p.replicas_even, key_hashes[:5000])
    assert p.imbalance == pytest.approx(p.busiest * p.replicas / 5000)


def test_bad_arguments_are_named():
    with pytest.raises(sim.SimulationError, match="vnodes"):
        sim.Ring(0)
    with pytest.raises(sim.SimulationError, match="headroom"):
        sim.plan(np.zeros(3, dtype=np.uint64), per_replica=10, headroom=1.5)
    with pytest.raises(sim.SimulationError, match="ids"):
        sim.stream_keys(3, 0, ids="uuid")


SMALL_RUN = ["--streams", "2000", "--max-replicas", "10", "--trials", "2", "--sweep-trials", "2",
             "--sweep-vnodes", "50", "--per-replica", "100", "--streams-target", "500"]


def test_command_line_prints_tables(capsys):
    assert sim.main(SMALL_RUN) == 0
    out = capsys.readouterr().out
    assert "| 9 -> 10 |" in out and "| 2 -> 1 |" in out  # the last scale-up and scale-down steps
    assert "| 10 | 50 |" in out and "| 500 | 100 |" in out  # the sweep row and the plan row
    assert out.count("moved needlessly 0") == 2


def test_command_line_json(capsys):
    assert sim.main(SMALL_RUN + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["after"] for s in result["simulation"]["up"]] == list(range(2, 11))
    assert [s["after"] for s in result["simulation"]["down"]] == list(range(9, 0, -1))
    (p,) = result["plans"]
    assert p["busiest"] <= 80 and p["replicas"] >= p["replicas_even"] == 7


def test_command_line_names_a_bad_argument(capsys):
    assert sim.main(["plan", "--headroom", "2", "--streams-target", "10"]) == 2
    assert "headroom" in capsys.readouterr().err


# --- the KubeRay manifest ---------------------------------------------------------------------------

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kuberay" / "rayservice.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(MANIFEST.read_text())


def _serve_config(manifest: dict) -> dict:
    import yaml

    assert isinstance(manifest["spec"]["serveConfigV2"], str)  # KubeRay takes the Serve config as a string
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


def _owner(serve_config: dict) -> dict:
    (deployment,) = [d for d in serve_config["applications"][0]["deployments"] if d["name"] == "StreamOwner"]
    return deployment


def test_manifest_is_a_rayservice_running_the_app(manifest):
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    config = _serve_config(manifest)
    (app,) = config["applications"]
    assert app["import_path"] == "lstminfer.ray:app"
    args = app["args"]
    assert set(args) == {"model", "replicas", "checkpoint_every"}
    assert isinstance(args["replicas"], int) and args["replicas"] >= 1
    assert isinstance(args["checkpoint_every"], int) and args["checkpoint_every"] >= 0
    owner = _owner(config)
    scaling = owner["autoscaling_config"]
    assert owner["num_replicas"] == "auto" and 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    assert owner["ray_actor_options"]["num_cpus"] == 1  # one replica per core: what the benchmark measured


def test_manifest_serve_config_passes_rays_schema(manifest):
    schema = pytest.importorskip("ray.serve.schema")
    schema.ServeDeploySchema.model_validate(_serve_config(manifest))


def test_manifest_cluster_holds_the_most_replicas(manifest):
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    for spec in [head["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]:
        (container,) = spec["containers"]
        assert container["image"] and 8000 in [p["containerPort"] for p in container["ports"]]
    (workers,) = cluster["workerGroupSpecs"]
    cores = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    config = _serve_config(manifest)
    owner = _owner(config)
    ingress = [d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress"]
    ingress_cores = sum(d["num_replicas"] * d["ray_actor_options"]["num_cpus"] for d in ingress)
    # Every replica asks for its cores: the owners at their most and the ingress must fit the workers.
    assert workers["maxReplicas"] * cores > owner["autoscaling_config"]["max_replicas"] + ingress_cores
    assert workers["minReplicas"] * cores >= owner["autoscaling_config"]["min_replicas"] + ingress_cores


def _deployment_names(application) -> set[str]:
    """The names of a bound Serve application's deployments: its ingress and those bound into it."""
    from ray.serve.deployment import Application

    bound = application._bound_deployment
    names = {bound.name}
    for arg in list(bound.init_args) + list(bound.init_kwargs.values()):
        if isinstance(arg, Application):
            names |= _deployment_names(arg)
    return names


def test_manifest_names_the_apps_deployments_and_arguments(manifest, tmp_path):
    try:
        from lstminfer.ray import app
    except ImportError:
        pytest.skip("lstminfer.ray is not installed here")
    pytest.importorskip("ray.serve")
    (config,) = _serve_config(manifest)["applications"]
    args = {**config["args"], "model": f"lstm={tmp_path / 'model.onnx'}"}  # binding opens no model file
    names = _deployment_names(app(args))
    assert {d["name"] for d in config["deployments"]} <= names


def test_manifest_max_replicas_hold_the_planned_load(manifest):
    # The manifest's comment: sized for 10^4 streams of scenario A, float32, at 80% headroom.
    owner = _owner(_serve_config(manifest))
    keys = sim.hash_keys(sim.stream_keys(10_000, seed=1))
    needed = sim.plan(keys, sim.MEASURED_PER_CORE["a-float32"], 0.8, sim.RandomRings(trials=10)).replicas
    assert needed <= owner["autoscaling_config"]["max_replicas"] <= needed * 1.25
