"""Scale-out on paper: Ray Serve's consistent-hash ring simulated exactly, and the replicas a load needs.

``lstminfer serve --ray`` routes every chunk of a sequence to the replica that owns it through Ray's
``ray.serve.experimental.consistent_hash_router.ConsistentHashRouter`` (``num_virtual_nodes=100``,
``num_fallback_replicas=0``). This script rebuilds that ring the way the router does, with numpy:

* each replica puts ``vnodes`` points on a 64-bit ring, at ``mmh3.hash64(f"{unique_id}:{i}",
  seed=0xF9B4CA77)`` (low 64 bits, unsigned); ``unique_id`` is what Ray's controller gives a new
  replica: 8 random characters from ``[a-z0-9]`` (``ray.serve._private.utils.get_random_string``),
  drawn here from a seeded generator;
* a stream's routing key is ``f"{model}/{sequence_id}"`` (the session id ``lstminfer.ray`` sets),
  hashed the same way; its owner is the replica of the first ring point strictly above it
  (``bisect_right``), wrapping past the last point to the first;
* sequence ids are those ``lstminfer serve`` gives a new WebSocket stream: ``secrets.randbits(53)``
  (``--ids fresh``), or ``0..S-1`` as a client numbering its own sequences (``--ids sequential``).

It reports, for scale-up 1 -> N one replica at a time, scale-down N -> 1 (Ray stops a replica of
its choosing: a random one here), and jumps (2 -> 4, 10 -> 20, ...): the load imbalance (max and
p99 replica load over the mean, the coefficient of variation) and the fraction of streams that move
(against the ideal: the share that must move for the new count to be even), plus the streams that
moved between two replicas that both stayed (0 on a consistent-hash ring: a moved stream always
comes from a removed replica or goes to an added one). A vnode sweep shows what the router's 100
points per replica buy, and ``plan`` turns streams per replica (measured by ``serve_load.py``) into
the replicas a load needs, with the imbalance of random rings of that size.

    python benchmarks/scaleout_sim.py                      # the tables, markdown
    python benchmarks/scaleout_sim.py --json               # the same, one JSON object
    python benchmarks/scaleout_sim.py plan --per-replica 480 --streams-target 1000 10000 100000
"""
from __future__ import annotations

import argparse
import json
import math
import random
import string
import sys
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

RING_SEED = 0xF9B4CA77  # ray.serve.experimental.consistent_hash_router.CONSISTENT_HASH_SEED
ROUTER_VNODES = 100  # the num_virtual_nodes lstminfer.ray passes to the router
REPLICA_ID_ALPHABET = string.ascii_lowercase + string.digits  # ray._common.utils.RANDOM_STRING_ALPHABET
REPLICA_ID_LENGTH = 8  # ray.serve._private.utils.get_random_string's default
FRESH_ID_BITS = 53  # lstminfer.serve.websocket.FRESH_ID_BITS: a new stream's id
DEFAULT_MODEL = "adding_lstm"  # the served model's name is part of the routing key
JUMPS = ((1, 2), (2, 4), (4, 8), (10, 20), (50, 100), (20, 10), (100, 50))
SWEEP_VNODES = (50, 100, 200, 500)
SWEEP_REPLICAS = (10, 100)

# Streams per replica measured by benchmarks/serve_load.py --search, one core (benchmarks/RESULTS.md).
MEASURED_PER_CORE = {
    "a-float32": 480,  # scenario A: LSTM H=256, T=1 every 20 ms, lstminfer serve float32
    "a-int8": 576,  # scenario A, --quantize int8
    "b-float32": 232,  # scenario B: 2-layer LSTM H=256, T=10 every 100 ms (median of 3 searches)
    "b-int8": 480,  # scenario B, --quantize int8 (median of 3)
}


class SimulationError(Exception):
    """A bad argument, or mmh3 missing."""


def _hash64():
    """mmh3.hash64 (Ray Serve's dependency, as its router uses it), or a clear error."""
    try:
        import mmh3
    except ImportError:
        raise SimulationError("scaleout_sim needs mmh3 (installed with ray[serve]; or: pip install mmh3)") from None
    return mmh3.hash64


def hash_keys(keys: Iterable[str]) -> np.ndarray:
    """Each key's ring position, as the router computes it: low 64 bits of mmh3.hash64, unsigned."""
    hash64 = _hash64()
    return np.fromiter((hash64(k.encode(), seed=RING_SEED, signed=False)[0] for k in keys), dtype=np.uint64)


def replica_ids(count: int, rng: random.Random) -> list[str]:
    """``count`` replica unique ids as Ray's controller makes them (8 of [a-z0-9]), distinct."""
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        rid = "".join(rng.choices(REPLICA_ID_ALPHABET, k=REPLICA_ID_LENGTH))
        if rid not in seen:
            seen.add(rid)
            ids.append(rid)
    return ids


def routing_key(model: str, sid: int | str) -> str:
    """The session id lstminfer.ray gives the router for sequence ``sid`` of ``model``
    (``lstminfer.ray.moves.routing_key``)."""
    return f"{model}/{sid}"


def stream_keys(count: int, seed: int, ids: str = "fresh", model: str = DEFAULT_MODEL) -> list[str]:
    """Routing keys of ``count`` streams of ``model``: fresh 53-bit sequence ids, or 0..count-1."""
    if ids == "sequential":
        return [routing_key(model, i) for i in range(count)]
    if ids != "fresh":
        raise SimulationError(f"--ids is 'fresh' or 'sequential', got {ids!r}")
    rng = random.Random(seed)
    sids: set[int] = set()
    while len(sids) < count:
        sids.add(rng.getrandbits(FRESH_ID_BITS))
    return [routing_key(model, s) for s in sorted(sids)]


class Ring:
    """Ray's ring over a changing set of replicas; vnode hashes computed once per replica id."""

    def __init__(self, vnodes: int = ROUTER_VNODES):
        if vnodes < 1:
            raise SimulationError(f"vnodes must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        self._points: dict[str, np.ndarray] = {}

    def points(self, replica: str) -> np.ndarray:
        """The replica's ring positions: hash of f"{unique_id}:{i}" for i < vnodes."""
        pts = self._points.get(replica)
        if pts is None:
            pts = self._points[replica] = hash_keys(f"{replica}:{i}" for i in range(self.vnodes))
        return pts

    def owners(self, replicas: Sequence[str], key_hashes: np.ndarray) -> np.ndarray:
        """Index into ``replicas`` of each key's owner: the first point strictly above it, wrapping."""
        if not replicas:
            raise SimulationError("a ring needs at least one replica")
        points = np.concatenate([self.points(r) for r in replicas])
        owner = np.repeat(np.arange(len(replicas)), self.vnodes)
        order = np.argsort(points, kind="stable")
        slot = np.searchsorted(points[order], key_hashes, side="right")
        slot[slot == len(points)] = 0  # past the last point: the first one's
        return owner[order][slot]

    def shares(self, replicas: Sequence[str]) -> np.ndarray:
        """Each replica's fraction of the hash space: the arcs [previous point, its point) it owns."""
        if len(replicas) == 1:
            return np.ones(1)
        points = np.concatenate([self.points(r) for r in replicas])
        owner = np.repeat(np.arange(len(replicas)), self.vnodes)
        order = np.argsort(points, kind="stable")
        ordered = points[order]
        arcs = np.diff(ordered, prepend=ordered[-1])  # uint64 arrays wrap: the first arc spans the top
        return np.bincount(owner[order], weights=arcs.astype(np.float64) / 2.0**64, minlength=len(replicas))


@dataclass
class Balance:
    replicas: int
    mean: float
    max_over_mean: float
    p99_over_mean: float
    min_over_mean: float
    cv: float  # stddev / mean of the replicas' loads


def balance(loads: np.ndarray) -> Balance:
    """The imbalance of per-replica loads."""
    mean = float(loads.mean())
    return Balance(len(loads), mean, float(loads.max()) / mean, float(np.percentile(loads, 99)) / mean,
                   float(loads.min()) / mean, float(loads.std()) / mean)


@dataclass
class Step:
    before: int
    after: int
    moved: float  # fraction of all streams whose replica changed
    ideal: float  # the least that must move for the new count to be even
    needless: int  # streams moved between two replicas that both stayed (0 on a consistent ring)
    balance: Balance


def _step(before: list[str], after: list[str], own_before: np.ndarray, own_after: np.ndarray,
          loads_after: np.ndarray) -> Step:
    """Streams moved from ``before``'s owners to ``after``'s, and which of them did not need to."""
    ids_before = np.asarray(before)[own_before]
    ids_after = np.asarray(after)[own_after]
    moved = ids_before != ids_after
    stayed = sorted(set(before) & set(after))
    needless = int(np.count_nonzero(moved & np.isin(ids_before, stayed) & np.isin(ids_after, stayed)))
    n, m = len(before), len(after)
    ideal = (m - n) / m if m > n else (n - m) / n
    return Step(n, m, float(moved.mean()), ideal, needless, balance(loads_after))


def simulate(streams: int = 100_000, max_replicas: int = 100, vnodes: int = ROUTER_VNODES, seed: int = 0,
             ids: str = "fresh", jumps: Sequence[tuple[int, int]] = JUMPS, model: str = DEFAULT_MODEL) -> dict:
    """Scale-up 1 -> max one at a time, scale-down max -> 1 (a random replica each time), and jumps."""
    if streams < 1 or max_replicas < 2:
        raise SimulationError(f"need streams >= 1 and max_replicas >= 2, got {streams}, {max_replicas}")
    rng = random.Random(seed)
    keys = hash_keys(stream_keys(streams, seed, ids, model))
    ring = Ring(vnodes)
    pool = replica_ids(max_replicas, rng)  # scale-up adds them in this order

    def route(members: list[str]) -> tuple[np.ndarray, np.ndarray]:
        own = ring.owners(members, keys)
        return own, np.bincount(own, minlength=len(members))

    up: list[Step] = []
    members = pool[:1]
    own, _ = route(members)
    for n in range(2, max_replicas + 1):
        grown = pool[:n]
        own_next, loads = route(grown)
        up.append(_step(members, grown, own, own_next, loads))
        members, own = grown, own_next

    down: list[Step] = []
    while len(members) > 1:
        shrunk = list(members)
        shrunk.pop(rng.randrange(len(shrunk)))
        own_next, loads = route(shrunk)
        down.append(_step(members, shrunk, own, own_next, loads))
        members, own = shrunk, own_next

    jumped: list[Step] = []
    for n, m in jumps:
        if max(n, m) > max_replicas:
            continue
        start = pool[:n]
        # Up: m - n new replicas (fresh ids); down: a random n - m of them stop.
        end = start + replica_ids(m - n, rng) if m > n else rng.sample(start, m)
        own_a, _ = route(start)
        own_b, loads = route(end)
        jumped.append(_step(start, end, own_a, own_b, loads))
    return {"streams": streams, "vnodes": vnodes, "seed": seed, "ids": ids,
            "up": [asdict(s) for s in up], "down": [asdict(s) for s in down], "jumps": [asdict(s) for s in jumped]}


def vnode_sweep(streams: int = 100_000, replicas: Sequence[int] = SWEEP_REPLICAS,
                vnodes: Sequence[int] = SWEEP_VNODES, trials: int = 10, seed: int = 0, ids: str = "fresh",
                model: str = DEFAULT_MODEL) -> list[dict]:
    """Max/mean and CV of the stream loads over ``trials`` random rings per (replicas, vnodes)."""
    keys = hash_keys(stream_keys(streams, seed, ids, model))
    rows = []
    for n in replicas:
        for v in vnodes:
            rng = random.Random(seed * 1_000_003 + n * 1009 + v)
            ring = Ring(v)
            maxes, cvs = [], []
            for _ in range(trials):
                members = replica_ids(n, rng)
                b = balance(np.bincount(ring.owners(members, keys), minlength=n))
                maxes.append(b.max_over_mean)
                cvs.append(b.cv)
            rows.append({"replicas": n, "vnodes": v, "trials": trials, "max_over_mean_mean": float(np.mean(maxes)),
                         "max_over_mean_worst": float(np.max(maxes)), "cv_mean": float(np.mean(cvs))})
    return rows


# --- capacity ---------------------------------------------------------------------------------------


class RandomRings:
    """``trials`` deployments, each a sequence of replica ids as Ray would create them; a ring of n
    replicas is the first n of one (ids and their vnode hashes made once, shared across n)."""

    def __init__(self, vnodes: int = ROUTER_VNODES, trials: int = 10, seed: int = 0):
        if trials < 1:
            raise SimulationError(f"trials must be >= 1, got {trials}")
        self.ring = Ring(vnodes)
        self._rngs = [random.Random(seed * 7919 + t) for t in range(trials)]
        self._ids: list[list[str]] = [[] for _ in range(trials)]

    def busiest(self, replicas: int, key_hashes: np.ndarray) -> int:
        """Streams on the busiest of ``replicas``, the worst of the rings: a deployment gets its ring
        (its replicas' random ids) at random, and a plan must hold on a bad draw too."""
        worst = 0
        for rng, ids in zip(self._rngs, self._ids):
            if len(ids) < replicas:
                ids += replica_ids(replicas - len(ids), rng)  # fresh ids; a repeat is 1 in 36^8
            loads = np.bincount(self.ring.owners(ids[:replicas], key_hashes), minlength=replicas)
            worst = max(worst, int(loads.max()))
        return worst


@dataclass
class Plan:
    streams: int
    per_replica: float  # measured streams one replica holds in real time
    headroom: float  # fraction of it planned for
    replicas_even: int  # if the ring were perfectly even
    replicas: int  # the fewest whose busiest replica holds at most per_replica * headroom
    busiest: int  # streams on that busiest replica (worst ring)
    imbalance: float  # busiest over the mean


def plan(key_hashes: np.ndarray, per_replica: float, headroom: float = 0.8,
         rings: RandomRings | None = None) -> Plan:
    """The fewest replicas whose busiest one (the worst of the random rings) holds at most
    ``per_replica * headroom`` of the streams ``key_hashes``."""
    streams = len(key_hashes)
    if streams < 1 or per_replica <= 0 or not 0 < headroom <= 1:
        raise SimulationError(f"need streams >= 1, per_replica > 0, 0 < headroom <= 1; got "
                              f"{streams}, {per_replica}, {headroom}")
    rings = rings or RandomRings()
    budget = per_replica * headroom
    even = max(1, math.ceil(streams / budget))
    tried: dict[int, int] = {}

    def busiest(n: int) -> int:
        if n not in tried:
            tried[n] = rings.busiest(n, key_hashes)
        return tried[n]

    hi = even
    for _ in range(8):  # the imbalance changes slowly with n: a few fixed-point steps find one that fits
        if busiest(hi) <= budget:
            break
        hi = max(hi + 1, math.ceil(hi * busiest(hi) / budget * 1.02))
    while busiest(hi) > budget:
        hi += max(1, hi // 20)
    lo = even - 1  # does not fit (or is 0): bisect for the fewest that does, the busiest load being
    while hi - lo > 1:  # all but monotone in n (a random ring of n is not a subset of one of n + 1)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if busiest(mid) <= budget else (mid, hi)
    n = hi
    return Plan(streams, per_replica, headroom, even, n, busiest(n), busiest(n) * n / streams)


# --- output -----------------------------------------------------------------------------------------

SHOWN = (1, 2, 3, 4, 5, 8, 10, 16, 20, 32, 50, 64, 99, 100)  # replica counts whose step is a table row
STEP_HEAD = ("| step | moved | ideal | moved needlessly | max/mean | p99/mean | min/mean | CV |\n"
             "|---|---|---|---|---|---|---|---|")


def _step_row(s: dict) -> str:
    b = s["balance"]
    return (f"| {s['before']} -> {s['after']} | {s['moved']:.4f} | {s['ideal']:.4f} | {s['needless']} | "
            f"{b['max_over_mean']:.3f} | {b['p99_over_mean']:.3f} | {b['min_over_mean']:.3f} | {b['cv']:.3f} |")


def _moved_summary(name: str, steps: list[dict]) -> str:
    ratios = [s["moved"] / s["ideal"] for s in steps]
    return (f"all {len(steps)} {name} steps: moved/ideal {min(ratios):.2f}-{max(ratios):.2f} "
            f"(mean {np.mean(ratios):.2f}), moved needlessly {sum(s['needless'] for s in steps)}")


def simulation_markdown(sim: dict) -> str:
    """The scale-up, scale-down and jump tables (load after each step; moved: fraction of all streams)."""
    out = [f"Ray's ConsistentHashRouter ring, {sim['vnodes']} vnodes per replica, {sim['streams']} streams "
           f"({sim['ids']} ids), seed {sim['seed']}; balance after the step, moved = fraction of all streams.",
           "", "Scale-up, one replica at a time (some of the rows):", "", STEP_HEAD]
    out += [_step_row(s) for s in sim["up"] if s["after"] in SHOWN]
    out += ["", "Scale-down, a random replica stopped each time (some of the rows):", "", STEP_HEAD]
    out += [_step_row(s) for s in sim["down"] if s["after"] in SHOWN]
    out += ["", "Jumps:", "", STEP_HEAD] + [_step_row(s) for s in sim["jumps"]]
    out += ["", f"{_moved_summary('scale-up', sim['up'])}; {_moved_summary('scale-down', sim['down'])}."]
    return "\n".join(out)


def sweep_markdown(sweep: list[dict], streams: int) -> str:
    out = [f"Vnodes per replica ({sweep[0]['trials']} random rings each, {streams} streams):", "",
           "| replicas | vnodes | max/mean (mean of rings) | max/mean (worst ring) | CV |", "|---|---|---|---|---|"]
    out += [f"| {r['replicas']} | {r['vnodes']} | {r['max_over_mean_mean']:.3f} | {r['max_over_mean_worst']:.3f} | "
            f"{r['cv_mean']:.3f} |" for r in sweep]
    return "\n".join(out)


def plan_markdown(plans: list[Plan], trials: int) -> str:
    out = [f"Replicas needed: the busiest replica (worst of {trials} random rings) holds at most "
           "per-replica x headroom streams.", "",
           "| streams | per replica | headroom | replicas if even | replicas (ring) | busiest/mean | "
           "busiest replica's streams |", "|---|---|---|---|---|---|---|"]
    out += [f"| {p.streams} | {p.per_replica:g} | {p.headroom:g} | {p.replicas_even} | {p.replicas} | "
            f"{p.imbalance:.3f} | {p.busiest} |" for p in plans]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("sim", "plan", "all"), default="all",
                        help="sim: the ring tables; plan: replicas for --streams-target; all: both (default)")
    parser.add_argument("--streams", type=int, default=100_000, help="streams simulated (default 10^5)")
    parser.add_argument("--max-replicas", type=int, default=100)
    parser.add_argument("--vnodes", type=int, default=ROUTER_VNODES, help="vnodes per replica (the router's: 100)")
    parser.add_argument("--sweep-vnodes", type=int, nargs="*", default=list(SWEEP_VNODES),
                        help="vnode counts compared at 10 and 100 replicas (none: no sweep)")
    parser.add_argument("--ids", choices=("fresh", "sequential"), default="fresh",
                        help="sequence ids: lstminfer serve's fresh 53-bit ids, or 0..S-1")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="served model name (part of the routing key)")
    parser.add_argument("--trials", type=int, default=10, help="random rings per plan (the worst one counts)")
    parser.add_argument("--sweep-trials", type=int, default=30, help="random rings per vnode sweep point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-replica", type=float, action="append",
                        help=f"streams one replica holds (repeatable); default the measured "
                             f"{', '.join(f'{k}={v}' for k, v in MEASURED_PER_CORE.items())}")
    parser.add_argument("--headroom", type=float, default=0.8, help="fraction of --per-replica planned for")
    parser.add_argument("--streams-target", type=int, nargs="+", default=[10**3, 10**4, 10**5, 10**6],
                        help="loads to plan for (streams)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of markdown")
    args = parser.parse_args(argv)
    sim, sweep, plans = None, [], []
    try:
        if args.mode in ("sim", "all"):
            sim = simulate(args.streams, args.max_replicas, args.vnodes, args.seed, args.ids, model=args.model)
            sweep_at = [n for n in SWEEP_REPLICAS if n <= args.max_replicas]
            if args.sweep_vnodes and sweep_at:
                sweep = vnode_sweep(args.streams, sweep_at, args.sweep_vnodes, args.sweep_trials, args.seed, args.ids,
                                    args.model)
        if args.mode in ("plan", "all"):
            rings = RandomRings(args.vnodes, args.trials, args.seed)
            targets = {s: hash_keys(stream_keys(s, args.seed + 1, args.ids, args.model))
                       for s in args.streams_target}
            per_replica = args.per_replica or sorted(set(MEASURED_PER_CORE.values()))
            plans = [plan(targets[s], p, args.headroom, rings) for p in per_replica for s in args.streams_target]
    except SimulationError as e:
        print(f"scaleout_sim: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"simulation": sim, "vnode_sweep": sweep, "plans": [asdict(p) for p in plans]}))
        return 0
    parts = [simulation_markdown(sim)] if sim else []
    parts += [sweep_markdown(sweep, args.streams)] if sweep else []
    parts += [plan_markdown(plans, args.trials)] if plans else []
    print("\n\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
