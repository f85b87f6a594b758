"""What ``moa serve`` costs on top of the graph itself, and how it holds up under load.

Topology: 1 layer of 3 proposers, each answering after a fixed 100 ms, then an aggregator that
answers after 100 ms and streams 30 words: a critical path of 200 ms per request. The upstream
is the fake OpenAI-compatible server, run in a process of its own; the MoA server is another
process (``moa serve``); this script is the client.

(a) Overhead: the same queries, alternately run in this process (``graph.ainvoke``) and sent
    through the server with the openai client (non-streaming); medians, their difference and
    ratio.
(b) Throughput: 32 clients stream answers back to back through the server (max concurrency
    64, so never the limit); requests per second as a ratio to the ideal, 32 / 200 ms. For
    scale, the same 32 concurrent streamed runs in this process (``graph.astream`` with the
    stream modes the server uses, no HTTP in front): the graph's own ceiling on one core.

    python bench/bench_serve.py [--queries 30] [--clients 32] [--per-client 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
from langchain_core.messages import HumanMessage

from langgraph_moa import build_graph
from langgraph_moa.spec.topology import load_topology

PROPOSER_S = 0.1
AGGREGATOR_S = 0.1
CRITICAL_PATH_S = PROPOSER_S + AGGREGATOR_S
MAX_CONCURRENCY = 64
KEY = "sk-bench-not-a-key"

TOPOLOGY = """\
name: bench
layers:
  - proposers: [{model: 'openai:p1'}, {model: 'openai:p2'}, {model: 'openai:p3'}]
aggregator: {model: 'openai:agg'}
"""

# The fake upstream, in its own process: prints its port, serves until stdin closes.
FAKE = f"""
import sys
from langgraph_moa.testing.fake_openai import Behavior, FakeOpenAI

answer = " ".join(f"word{{k}}" for k in range(30))
behaviors = {{f"p{{k}}": Behavior(latency_s={PROPOSER_S}) for k in (1, 2, 3)}}
behaviors["agg"] = Behavior(latency_s={AGGREGATOR_S}, reply=lambda body, n, k: answer)
with FakeOpenAI(behaviors) as server:
    print(server.port, flush=True)
    sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit("moa serve exited during startup")
        try:
            httpx.get(f"{url}/models", timeout=2)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise SystemExit("moa serve did not start") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


async def overhead(url: str, topology_path: Path, queries: int) -> None:
    graph = build_graph(load_topology(topology_path), cache=False)
    client = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0)
    local, served = [], []
    for q in range(queries + 3):  # the first 3 warm up connections and code paths
        prompt = f"question {q}"
        start = time.perf_counter()
        state = await graph.ainvoke({"messages": [HumanMessage(prompt)]})
        in_process = time.perf_counter() - start
        assert state["messages"][-1].content.startswith("word0")
        start = time.perf_counter()
        reply = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": prompt}]
        )
        through_server = time.perf_counter() - start
        assert (reply.choices[0].message.content or "").startswith("word0")
        if q >= 3:
            local.append(in_process)
            served.append(through_server)
    await client.close()
    med_local, med_served = statistics.median(local), statistics.median(served)
    print(f"(a) overhead, {queries} queries, 1 layer x 3 proposers at 100 ms + aggregator 100 ms")
    print(f"    critical path                 {CRITICAL_PATH_S * 1000:7.1f} ms")
    print(f"    in-process graph.ainvoke      {med_local * 1000:7.1f} ms (median)")
    print(f"    through the server (openai)   {med_served * 1000:7.1f} ms (median)")
    print(f"    server overhead               {(med_served - med_local) * 1000:7.1f} ms")
    print(f"    ratio server / in-process     {med_served / med_local:7.3f}")


async def in_process_ceiling(topology_path: Path, clients: int, per_client: int) -> float:
    """Requests per second of the same concurrent streamed runs without the server."""
    graph = build_graph(load_topology(topology_path), cache=False)

    async def one_client(c: int) -> None:
        for r in range(per_client):
            inputs = {"messages": [HumanMessage(f"client {c} request {r}")]}
            async for _ in graph.astream(inputs, stream_mode=["messages", "custom", "values"]):
                pass

    await one_client(-1)  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    return clients * per_client / (time.perf_counter() - start)


async def throughput(
    url: str, clients: int, per_client: int, ceiling: float | None = None
) -> float:
    """32 streaming clients back to back through the server; returns requests/s / ideal."""
    client = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    latencies: list[float] = []
    failures = 0

    async def one_client(c: int) -> None:
        nonlocal failures
        for r in range(per_client):
            start = time.perf_counter()
            try:
                stream = await client.chat.completions.create(
                    model="bench",
                    messages=[{"role": "user", "content": f"client {c} request {r}"}],
                    stream=True,
                )
                text = "".join(
                    [
                        chunk.choices[0].delta.content or ""
                        async for chunk in stream
                        if chunk.choices
                    ]
                )
                assert text.startswith("word0") and text.endswith("word29")
                latencies.append(time.perf_counter() - start)
            except (openai.APIError, AssertionError):
                failures += 1

    await asyncio.gather(*(one_client(c) for c in range(2)))  # warm-up
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    done = len(latencies)
    rps = done / wall
    ideal = min(clients, MAX_CONCURRENCY) / CRITICAL_PATH_S
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    print(f"(b) throughput, {clients} streaming clients x {per_client} requests each")
    print(f"    requests completed            {done} ({failures} failed) in {wall:.2f} s")
    print(f"    requests/second               {rps:7.1f}")
    print(f"    ideal ({clients} / {CRITICAL_PATH_S * 1000:.0f} ms)           {ideal:7.1f}")
    print(f"    ratio to ideal                {rps / ideal:7.3f}")
    if ceiling is not None:
        ratio = ceiling / ideal
        print(f"    in process, no server         {ceiling:7.1f} (ratio to ideal {ratio:.3f})")
        print(f"    server / in-process           {rps / ceiling:7.3f}")
    print(
        f"    latency per request           median {statistics.median(latencies) * 1000:.0f} ms,"
        f" p95 {p95 * 1000:.0f} ms"
    )
    return rps / ideal


def start_server(folder: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """``moa serve`` on the topology files of ``folder`` (and ``extra`` options), once it
    answers; returns the process and its /v1 URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MOA_SERVE_KEYS"}
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "langgraph_moa.cli", "serve"),
            *("--port", str(port), "--topologies", str(folder)),
            *("--max-concurrency", str(MAX_CONCURRENCY)),
            *("--log-level", "warning", "--no-access-log", *extra),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(url, server)
    except BaseException:
        stop(server)
        raise
    return server, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="moa serve --workers")
    args = parser.parse_args()

    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        assert fake.stdout is not None
        fake_url = f"http://127.0.0.1:{int(fake.stdout.readline())}/v1"
        os.environ["OPENAI_BASE_URL"] = fake_url  # for the in-process graph
        os.environ["OPENAI_API_KEY"] = KEY
        with tempfile.TemporaryDirectory() as folder:
            topology_path = Path(folder) / "bench.yaml"
            topology_path.write_text(TOPOLOGY)
            server, url = start_server(
                Path(folder), *(["--workers", str(args.workers)] if args.workers > 1 else [])
            )
            print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
            asyncio.run(overhead(url, topology_path, args.queries))
            ceiling = asyncio.run(in_process_ceiling(topology_path, args.clients, args.per_client))
            asyncio.run(throughput(url, args.clients, args.per_client, ceiling))
    finally:
        if server is not None:
            stop(server)
        if fake.stdin is not None:
            fake.stdin.close()
        stop(fake)


if __name__ == "__main__":
    main()
