"""A/B of reserve batching: ``.venv/bin/python -m bench.batching_ab``.

Starts the embedded stack once (as bench.run does), then two more
``cycles serve`` processes on its database, one with CYCLES_RESERVE_BATCHING
off and one with it on, and measures them in turns (the order alternating
from round to round, so drift on a shared machine hits both alike): HTTP
reserves on one shared tenant budget and on independent agent budgets at 50
connections, and one connection for latency. Each cell reports requests per
second, latency, the CPU time the database and the measured server spent per
request, and the ledger check of bench.run. Prints a table per round and the
median and range of each figure; --json writes the raw results.

``--switch settle`` compares settle batching (CYCLES_SETTLE_BATCHING) instead,
reserve batching on in both servers, on the lifecycle cells (a reserve, then
its commit) at 50 connections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.demos.sandbox import Target, cycles_serve, throwaway_server
from bench.run import HTTP_AGENTS, Stack, ledger_mismatches, provision, say, wrk

# shape/connections[/mode]; AB_CELLS=shared/200,independent/50/lifecycle picks others.
DEFAULT_CELLS = {"reserve": "shared/50,independent/50,shared/1",
                 "settle": "shared/50/lifecycle,independent/50/lifecycle"}
# The setting each --switch turns off and on.
SWITCHES = {"reserve": "CYCLES_RESERVE_BATCHING", "settle": "CYCLES_SETTLE_BATCHING"}


def cells(switch: str) -> tuple[tuple[str, int, str], ...]:
    return tuple((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "reserve")
                 for parts in (cell.split("/") for cell in os.environ.get(
                     "AB_CELLS", DEFAULT_CELLS[switch]).split(",")))


@contextlib.contextmanager
def extra_server(stack: Stack, batching: bool, workers: int, switch: str = "reserve") -> Iterator[Stack]:
    """`cycles serve` on the stack's database (no embedded cluster of its own)."""
    env = {**os.environ, "CYCLES_DATABASE_URL": stack.conninfo, "CYCLES_WORKERS": str(workers),
           "CYCLES_LOG_LEVEL": "warning", "CYCLES_ADMIN_API_KEY": stack.target.admin_key,
           "CYCLES_RESERVE_BATCHING": "true", SWITCHES[switch]: "true" if batching else "false"}
    with cycles_serve(env, stack.base_dir / f"server-{'on' if batching else 'off'}-{time.monotonic_ns()}.log") as (
            base_url, pid):
        yield Stack(Target(base_url, stack.target.admin_key, stack.target.data_dir, False, pid))


def cell(stack: Stack, keys: dict[str, str], shape: str, connections: int, seconds: int,
         mode: str = "reserve") -> dict[str, Any]:
    tenant = "http-ind" if shape == "independent" else "http-shared"
    result = wrk(stack, keys[tenant], tenant, HTTP_AGENTS, mode, connections, seconds)
    result["ledger_mismatches"] = ledger_mismatches(stack, tenant)
    return {name: result[name] for name in (
        "rps", "p50_us", "p99_us", "non_2xx", "socket_errors", "db_cpu_ms", "server_cpu_ms", "ledger_mismatches")}


def summary(runs: list[dict[str, Any]], name: str) -> str:
    values = [run[name] for run in runs]
    scale = 1000 if name.endswith("_us") else 1
    median = statistics.median(values) / scale
    return f"{median:.2f} ({min(values) / scale:.2f}-{max(values) / scale:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="reserve",
                        help="the batching compared: reserves (default) or commits and releases")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    with throwaway_server(workers=1) as target:
        stack = Stack(target)
        keys = provision(stack)
        with extra_server(stack, False, args.workers, args.switch) as off, \
                extra_server(stack, True, args.workers, args.switch) as on:
            variants = {"off": off, "on": on}
            for round_number in range(args.rounds):
                order = ["off", "on"] if round_number % 2 == 0 else ["on", "off"]
                for shape, connections, mode in cells(args.switch):
                    for variant in order:
                        say(f"round {round_number + 1}: {mode} {shape} x{connections} batching {variant}")
                        result = cell(variants[variant], keys, shape, connections, args.seconds, mode)
                        results.setdefault(f"{mode} {shape}/{connections}/{variant}", []).append(result)
                        print(f"{round_number + 1} {mode} {shape:>11} x{connections:<3} {variant:>3} "
                              f"{result['rps']:8.1f}/s p50 {result['p50_us'] / 1000:7.2f} ms "
                              f"p99 {result['p99_us'] / 1000:7.2f} ms db {result['db_cpu_ms']:.3f} "
                              f"server {result['server_cpu_ms']:.3f} ms/req non-2xx {result['non_2xx']} "
                              f"mismatches {result['ledger_mismatches']}", flush=True)
    print("\ncell | batching | req/s | p50 ms | p99 ms | db CPU ms/req | server CPU ms/req | non-2xx | mismatches")
    print("---|---|---|---|---|---|---|---|---")
    for name, runs in results.items():
        cell_name, variant = name.rsplit("/", 1)
        print(f"{cell_name} | {variant} | {summary(runs, 'rps')} | {summary(runs, 'p50_us')} | "
              f"{summary(runs, 'p99_us')} | {summary(runs, 'db_cpu_ms')} | {summary(runs, 'server_cpu_ms')} | "
              f"{sum(run['non_2xx'] for run in runs)} | {sum(run['ledger_mismatches'] for run in runs)}")
    print("\nmedian (min-max) over rounds", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
