"""A capacity model of aiml on a Ray cluster: replicas needed, model loads, routing p99.

A discrete-event simulation, fed with per-replica figures measured on this machine
(``bench/batching.py``, ``bench/cluster.py``; defaults below, each an option): Poisson
arrivals, a Zipf mix over the registered models, each request routed as Ray Serve's
multiplexed router does (to the least-loaded replica that holds the model when one has a
free slot, else to the least-loaded replica, which loads the model, evicting its least
recently used one). For each replica count it reports utilisation, loads per hour and the
p50/p99 time a request spends before its first token beyond the engine's own prefill
(routing + queueing + loading); the first count meeting ``--p99-target-s`` is the answer.

    .venv/bin/python -m bench.capacity --nodes 10 --models 200
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class Replica:
    slots: int
    capacity: int
    busy: int = 0
    queue: list[tuple[float, int, str]] = field(default_factory=list)
    models: OrderedDict[str, None] = field(default_factory=OrderedDict)
    ready_at: dict[str, float] = field(default_factory=dict)


def simulate(args: argparse.Namespace, replicas: int, seed: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    weights = [1 / (rank**args.zipf) for rank in range(1, args.models + 1)]
    names = [f"model-{i}" for i in range(args.models)]
    pool = [Replica(args.slots, args.models_per_replica) for _ in range(replicas)]
    service_s = args.tokens / (args.replica_tok_s / args.slots)  # one sequence's share
    events: list[tuple[float, int, str, int]] = []
    t = 0.0
    n = 0
    while t < args.hours * 3600:
        t += rng.expovariate(args.rate)
        heapq.heappush(events, (t, n, "arrive", -1))
        n += 1
    arrivals: dict[int, float] = {}
    waits: list[float] = []
    loads = 0
    busy_s = 0.0
    models = rng.choices(names, weights, k=n)

    def start(r: int, now: float, request: int, model: str) -> None:
        nonlocal busy_s
        replica = pool[r]
        replica.busy += 1
        begin = max(now, replica.ready_at.get(model, now))
        waits.append(begin - arrivals[request] + args.route_s)
        busy_s += service_s
        heapq.heappush(events, (begin + service_s, request, "done", r))

    while events:
        now, request, kind, r = heapq.heappop(events)
        if kind == "arrive":
            arrivals[request] = now
            model = models[request]
            holders = [i for i, rep in enumerate(pool) if model in rep.models]
            free = [i for i in holders if pool[i].busy < pool[i].slots]
            if free:
                r = min(free, key=lambda i: pool[i].busy)
            else:
                r = min(range(replicas), key=lambda i: pool[i].busy + len(pool[i].queue))
            replica = pool[r]
            if model in replica.models:
                replica.models.move_to_end(model)
            else:
                loads += 1
                if len(replica.models) >= replica.capacity:
                    replica.models.popitem(last=False)
                replica.models[model] = None
                replica.ready_at[model] = now + args.load_s
            if replica.busy < replica.slots:
                start(r, now, request, model)
            else:
                replica.queue.append((now, request, model))
        else:
            replica = pool[r]
            replica.busy -= 1
            if replica.queue:
                _, waiting, model = replica.queue.pop(0)
                start(r, now, waiting, model)
    waits.sort()
    return {
        "replicas": replicas,
        "utilisation": busy_s / (replicas * args.slots * args.hours * 3600),
        "loads_per_hour": loads / args.hours,
        "p50_s": waits[len(waits) // 2],
        "p99_s": waits[int(len(waits) * 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--replicas-per-node", type=int, default=1)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--slots", type=int, default=8, help="AIML_LLAMACPP_PARALLEL")
    parser.add_argument(
        "--replica-tok-s", type=float, default=70.0, help="aggregate tok/s at --slots"
    )
    parser.add_argument("--models-per-replica", type=int, default=4)
    parser.add_argument("--load-s", type=float, default=1.0, help="a cached model's load time")
    parser.add_argument("--route-s", type=float, default=0.004, help="a handle call's cost")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--p99-target-s", type=float, default=5.0)
    args = parser.parse_args()
    most = args.nodes * args.replicas_per_node
    print(f"{args.models} models, Zipf s={args.zipf}, {args.rate} req/s of {args.tokens} tokens, "
          f"replica {args.replica_tok_s} tok/s x {args.slots} slots, {args.models_per_replica} "
          f"models per replica, load {args.load_s} s")  # fmt: skip
    print(f"{'replicas':>8} {'util':>6} {'loads/h':>8} {'p50 s':>7} {'p99 s':>7}")
    chosen = None
    for replicas in range(1, most + 1):
        row = simulate(args, replicas)
        print(f"{replicas:>8} {row['utilisation']:>6.2f} {row['loads_per_hour']:>8.0f} "
              f"{row['p50_s']:>7.3f} {row['p99_s']:>7.2f}")  # fmt: skip
        if chosen is None and row["p99_s"] <= args.p99_target_s and row["utilisation"] < 0.8:
            chosen = replicas
    print(f"replicas needed for p99 <= {args.p99_target_s} s: {chosen or f'more than {most}'}")


if __name__ == "__main__":
    main()
