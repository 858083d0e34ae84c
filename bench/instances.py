"""One server instance against two on the same database: ``.venv/bin/python -m bench.instances``.

Starts the embedded stack (as bench.run does), then two more ``cycles serve``
processes on its database, and measures HTTP reserves at 50 connections in
turns: all 50 on one instance, then 25 on each instance at the same time
(two wrk processes). Figures per round: reserves per second (summed over
the instances), p50 and p99 (the worse instance's), non-2xx responses, and
the ledger check of bench.run after each cell. On a machine whose cores
are already busy with one instance, a second adds availability (either can
die, docs/deployment.md), not throughput: this says how much it costs.
"""

from __future__ import annotations

import argparse
import statistics
import threading
from typing import Any

from app.demos.sandbox import throwaway_server
from bench.batching_ab import extra_server
from bench.run import HTTP_AGENTS, Stack, ledger_mismatches, provision, say, wrk

CONNECTIONS = 50


def run_on(stacks: list[Stack], keys: dict[str, str], shape: str, seconds: int) -> dict[str, Any]:
    """CONNECTIONS split evenly over the instances, all loaded at once."""
    tenant = "http-ind" if shape == "independent" else "http-shared"
    results: list[dict[str, Any]] = []

    def load(stack: Stack) -> None:
        results.append(wrk(stack, keys[tenant], tenant, HTTP_AGENTS, "reserve", CONNECTIONS // len(stacks), seconds))

    threads = [threading.Thread(target=load, args=(stack,)) for stack in stacks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "rps": sum(result["rps"] for result in results),
        "p50_ms": max(result["p50_us"] for result in results) / 1000,
        "p99_ms": max(result["p99_us"] for result in results) / 1000,
        "non_2xx": sum(result["non_2xx"] + result["socket_errors"] for result in results),
        "ledger_mismatches": ledger_mismatches(stacks[0], tenant),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="granian workers per instance")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    with throwaway_server(workers=1) as target:
        stack = Stack(target)
        keys = provision(stack)
        with extra_server(stack, True, args.workers) as first, extra_server(stack, True, args.workers) as second:
            variants = {"one instance": [first], "two instances": [first, second]}
            for round_number in range(args.rounds):
                order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
                for shape in ("independent", "shared"):
                    for variant in order:
                        say(f"round {round_number + 1}: {shape}, {variant}")
                        result = run_on(variants[variant], keys, shape, args.seconds)
                        results.setdefault(f"{shape}|{variant}", []).append(result)
    print(f"\nbudgets | instances | reserves/s | p50 ms | p99 ms | non-2xx | ledger mismatches  "
          f"(50 connections, median (min-max) of {args.rounds} rounds of {args.seconds} s)")
    print("---|---|---|---|---|---|---")
    for name, runs in results.items():
        shape, variant = name.split("|")

        def spread(field: str, runs: list[dict[str, Any]] = runs) -> str:
            values = [run[field] for run in runs]
            return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"

        print(f"{shape} | {variant} | {spread('rps')} | {spread('p50_ms')} | {spread('p99_ms')} | "
              f"{sum(run['non_2xx'] for run in runs)} | {sum(run['ledger_mismatches'] for run in runs)}")


if __name__ == "__main__":
    main()
