"""Throughput, limits, memory and resume cost of `moa relabel`, against the fake upstream.

The fake server runs in a child process, so this process's CPU time is the runner's own.
Prints, each as a ratio to a floor measured in the same run:

1. rows/s at 16 and 64 rows in flight, 3 layers x 6 proposers + aggregator (19 calls per row)
   at a fixed upstream latency, divided by the ideal (rows in flight / the row's critical path,
   4 x latency); CPU ms per LLM call and rows/s per busy core beside it (goal: >= 0.9 at 16).
   A warm-up run of 4 rows comes first (imports, first connections: what a long run pays once),
   and the same rows at 16 in flight go through the plain floor of ``bench_floor.py`` (asyncio +
   ``openai.AsyncOpenAI``, no graph, no cache, no ledger): its rows/s and CPU per call are
   printed beside the runner's, a ratio that the machine's load distorts less;
2. Ray with 2 local workers divided by in-process, at 64 in flight (goal: >= 1.6x);
3. under a requests/min limit: achieved / limit (goal: >= 0.95), requests above the limit's
   allowance in any window (goal: 0) and 429s (goal: 0);
4. peak RSS of a whole run over 10k rows vs 1k rows (a small topology, each in a fresh process;
   goal: flat);
5. resume overhead: the time to skip 10k done rows.

    python bench/bench_relabel.py [--latency 0.5] [--rows 64] [--big 10000] [--skip-ray]
        [--skip-rss] [--ray-rows 256] [--only-ray]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langgraph_moa.batch import parse_limits, relabel
from langgraph_moa.testing.fake_openai import Behavior, FakeOpenAI

LAYERS, WIDTH = 3, 6


def serve(latency: float, reply: Any, urls: Any, stop: Any) -> None:
    with FakeOpenAI() as server:
        server.default = Behavior(latency_s=latency, **({"reply": reply} if reply else {}))
        urls.put(server.base_url)
        stop.wait()


class Upstream:
    """The fake server in a child process. ``reply`` (a module-level function, so that the
    spawned child can import it) writes the answers; by default the fake server's own."""

    def __init__(self, latency: float, reply: Any = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.urls, self.stop = ctx.Queue(), ctx.Event()
        args = (latency, reply, self.urls, self.stop)
        self.proc = ctx.Process(target=serve, args=args, daemon=True)

    def __enter__(self) -> str:
        self.proc.start()
        url = str(self.urls.get(timeout=60))
        os.environ["OPENAI_BASE_URL"] = url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        return url

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(10)


def wide_topology(path: Path) -> Path:
    layers = "".join(
        "  - proposers: ["
        + ", ".join(f"{{name: p{k}, model: 'openai:l{layer}p{k}'}}" for k in range(WIDTH))
        + "]\n"
        for layer in range(LAYERS)
    )
    path.write_text(f"name: wide\nlayers:\n{layers}aggregator: {{model: 'openai:agg'}}\n")
    return path


def small_topology(path: Path) -> Path:
    path.write_text(
        "name: small\nlayers:\n  - proposers: [{model: 'openai:p'}]\n"
        "aggregator: {model: 'openai:agg'}\n"
    )
    return path


def dataset(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for k in range(n):
            row = {"id": f"r{k}", "messages": [{"role": "user", "content": f"Question {k}?"}]}
            f.write(json.dumps(row) + "\n")
    return path


def throughput(tmp: Path, latency: float, rows: int, concurrency: int, **options: Any) -> dict:
    data = dataset(tmp / f"d{concurrency}-{options.get('engine', 'local')}.jsonl", rows)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run = relabel(
        data,
        topology=wide_topology(tmp / "wide.yaml"),
        out=tmp / f"out-{concurrency}-{options.get('engine', 'local')}",
        concurrency=concurrency,
        **options,
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    calls = run.session.calls
    rate = run.session.done / wall
    ideal = concurrency / ((LAYERS + 1) * latency)
    return {
        "rows_per_s": rate,
        "ideal": ideal,
        "ratio": rate / ideal,
        "cpu_ms_per_call": 1000 * cpu / max(calls, 1),
        "rows_per_core_s": rate / max(cpu / wall, 1e-9),
        "calls": calls,
    }


async def floor_rows(rows: int, concurrency: int) -> tuple[float, float]:
    """The same rows through bench_floor's plain asyncio + AsyncOpenAI MoA: (wall, CPU) s."""
    import bench_floor  # the floor's code, shared with bench/bench_floor.py
    import openai

    shape = {
        "layers": [[f"l{layer}p{k}" for k in range(WIDTH)] for layer in range(LAYERS)],
        "aggregator": "agg",
    }
    moa = bench_floor.floor["moa"]
    slots = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI() as client:

        async def one(k: int) -> None:
            async with slots:
                await moa(client, shape, f"Question {k}?")

        await asyncio.gather(*(one(k) for k in range(4)))  # warm-up, as for the runner
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(rows)))
        return time.perf_counter() - wall0, time.process_time() - cpu0


def rate_limited(tmp: Path, rpm: float, requests: int) -> dict:
    with FakeOpenAI() as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        rows = requests // 2
        run = relabel(
            dataset(tmp / "limited.jsonl", rows),
            topology=small_topology(tmp / "small.yaml"),
            out=tmp / "limited",
            concurrency=64,
            rate_limits=parse_limits([str(rpm)]),
        )
        starts = sorted(r.started for r in server.requests)
        refused = sum(1 for r in server.requests if r.status == 429)
    assert run.session.done == rows
    burst = int(max(rpm / 120, 1))  # the bucket's first half second, sent at once
    span = starts[-1] - starts[burst]
    achieved = (len(starts) - 1 - burst) / span * 60  # the steady rate, after that burst
    # a limit of N/min allows at most N in any 60 s window: with a bucket of c = N/120, at most
    # c + (N - 2c) * T / 60 in a window of T seconds, plus c held up on their way (the run is
    # shorter than a minute, so shorter windows are checked)
    excess = 0
    for window in (1.0, 5.0, 10.0):
        size = max(rpm / 120, 1)
        allowed = int(2 * size + (rpm - 2 * size) * window / 60)  # + size: held up on the way
        for k, t in enumerate(starts):
            inside = sum(1 for s in starts[k : k + allowed + 5] if s - t < window)
            excess = max(excess, inside - allowed)
    return {
        "achieved_rpm": achieved,
        "ratio": achieved / rpm,
        "over_limit": excess,
        "refused": refused,
    }


def timed_run(tmp: Path, latency: float, rows: int, engine: str) -> dict:
    """One run at 64 in flight; rows/s over the whole run, and in the steady state (from the
    first row finished to the last: Ray's start, its actors' imports and graph building, left
    out)."""
    finished: list[float] = []
    data = dataset(tmp / f"steady-{engine}.jsonl", rows)
    wall0 = time.perf_counter()
    run = relabel(
        data,
        topology=wide_topology(tmp / "wide.yaml"),
        out=tmp / f"steady-{engine}",
        concurrency=64,
        engine=engine,
        ray_workers=2 if engine == "ray" else None,
        on_record=lambda record: finished.append(time.perf_counter()),
    )
    wall = time.perf_counter() - wall0
    assert run.session.done == rows, run.session
    # the steady state: the middle 80% of the rows (the first rows wait for the start, the
    # last ones finish alone)
    cut = rows // 10
    steady = (rows - 2 * cut - 1) / (finished[-cut - 1] - finished[cut])
    return {"whole": rows / wall, "steady": steady, "wall": wall, "first": finished[0] - wall0}


def ray_vs_local(tmp: Path, latency: float, rows: int) -> None:
    """Ray Data with 2 local actors vs the in-process engine, both at 64 rows in flight, on
    the same rows (256 by default), in the same minutes: over the whole run and in the steady
    state."""
    import ray

    local = timed_run(tmp, latency, rows, "local")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        on_ray = timed_run(tmp, latency, rows, "ray")
    finally:
        ray.shutdown()
    ideal = 64 / ((LAYERS + 1) * latency)
    print(
        f"Ray, 2 workers, 64 in flight, {rows} rows: {on_ray['whole']:.2f} rows/s over the "
        f"whole run = {on_ray['whole'] / local['whole']:.2f}x in-process "
        f"({local['whole']:.2f} rows/s); steady state {on_ray['steady']:.2f} rows/s = "
        f"{on_ray['steady'] / local['steady']:.2f}x in-process ({local['steady']:.2f}), "
        f"{on_ray['steady'] / ideal:.2f} of ideal {ideal:.0f}; first row after "
        f"{on_ray['first']:.1f} s on Ray vs {local['first']:.1f} s in-process"
    )


CHILD = """
import json, resource, sys, time
from langgraph_moa.batch import relabel
data, topo, out = sys.argv[1:4]
t0 = time.perf_counter()
run = relabel(data, topology=topo, out=out, concurrency=64)
wall = time.perf_counter() - t0
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall_s": wall, "done": run.session.done, "skipped": run.session.skipped}))
"""


def child_run(data: Path, topo: Path, out: Path) -> dict:
    found = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(topo), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(found.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rows", type=int, default=64, help="rows per throughput run")
    parser.add_argument("--big", type=int, default=10000, help="rows of the RSS/resume run")
    parser.add_argument("--rpm", type=float, default=1200)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--ray-rows", type=int, default=256, help="rows of the Ray comparison")
    parser.add_argument(
        "--only-ray", action="store_true", help="only the Ray vs in-process comparison"
    )
    parser.add_argument("--skip-rss", action="store_true", help="leave out the 10k-row runs")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-relabel-"))

    print(f"# relabel bench: {LAYERS}x{WIDTH} + aggregator, upstream {args.latency * 1000:.0f} ms")
    if args.only_ray:
        with Upstream(args.latency):
            ray_vs_local(tmp, args.latency, args.ray_rows)
        return
    with Upstream(args.latency):
        (tmp / "warm-up").mkdir()
        throughput(tmp / "warm-up", args.latency, 4, 4)  # imports, first connections
        results = {}
        for concurrency in (16, 64):
            rows = max(args.rows, concurrency * 2)
            r = throughput(tmp, args.latency, rows, concurrency)
            results[concurrency] = r
            print(
                f"in-process, {concurrency:>2} in flight: {r['rows_per_s']:.2f} rows/s = "
                f"{r['ratio']:.2f} of ideal {r['ideal']:.1f}; {r['cpu_ms_per_call']:.2f} ms CPU "
                f"per call; {r['rows_per_core_s']:.2f} rows/s per busy core"
            )
            if concurrency == 16:
                wall, cpu = asyncio.run(floor_rows(rows, concurrency))
                floor_rate, floor_cpu = rows / wall, 1000 * cpu / (rows * (LAYERS * WIDTH + 1))
                print(
                    f"  plain floor, 16 in flight: {floor_rate:.2f} rows/s = "
                    f"{floor_rate / r['ideal']:.2f} of ideal; {floor_cpu:.2f} ms CPU per call; "
                    f"runner / floor: {r['rows_per_s'] / floor_rate:.2f}x rows/s, "
                    f"{r['cpu_ms_per_call'] / floor_cpu:.2f}x CPU per call"
                )
        if not args.skip_ray:
            ray_vs_local(tmp, args.latency, args.ray_rows)

    limited = rate_limited(tmp, args.rpm, 400)
    print(
        f"rate limit {args.rpm:.0f}/min: achieved {limited['achieved_rpm']:.0f}/min = "
        f"{limited['ratio']:.3f} of the limit; {limited['over_limit']:.0f} requests above its "
        f"allowance in any 1/5/10 s window; {limited['refused']} refused (429)"
    )

    if args.skip_rss:
        return
    with Upstream(0.0):
        topo = small_topology(tmp / "small.yaml")
        small = child_run(dataset(tmp / "small.jsonl", args.big // 10), topo, tmp / "rss-small")
        big_data = dataset(tmp / "big.jsonl", args.big)
        big = child_run(big_data, topo, tmp / "rss-big")
        print(
            f"peak RSS: {args.big} rows {big['rss_mb']:.0f} MB vs {args.big // 10} rows "
            f"{small['rss_mb']:.0f} MB = {big['rss_mb'] / small['rss_mb']:.2f}x "
            f"({big['done'] / big['wall_s']:.0f} rows/s, 2 calls per row, no latency)"
        )
        again = child_run(big_data, topo, tmp / "rss-big")
        print(
            f"resume: skipping {again['skipped']} done rows took {again['wall_s']:.2f} s "
            f"({1e6 * again['wall_s'] / max(again['skipped'], 1):.0f} us per row)"
        )


if __name__ == "__main__":
    main()
