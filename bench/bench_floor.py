"""The MoA engine against a plain-asyncio floor, every figure a ratio measured in this one run.

The floor is a plain ``asyncio`` + ``openai.AsyncOpenAI`` loop (``FLOOR`` below) making the same
calls with the same prompt layout as the graph: layer 1 gets the user's prompt alone, later
layers and the aggregator a system message with the synthesize instruction and the numbered
answers of the layer before; proposers are plain requests, the aggregator's answer streams. It is
the shape of Together's ``advanced-moa.py`` written with one async client, and it runs both
in this process and as a script of its own (``python -c FLOOR``), for the whole-process figure.

The upstream is the fake OpenAI-compatible server in a process of its own, so the CPU measured
here is the client's. Two shapes:

- Together's: 4 proposers x 2 layers + aggregator, per-model latencies 100-400 ms (the
  aggregator is the 400 ms model), so the critical path is 1.2 s;
- 3 layers x 6 proposers + aggregator at zero latency (19 calls), for CPU per LLM call and
  throughput with 32 queries in flight.

Figures (see the README's performance section for the goals):

1. ``moa ask`` upstream view: first request in -> last response out, from the fake server's log,
   over the critical path (the plain script's, alongside);
2. in-process wall / critical path, ``graph.ainvoke`` after a warm-up (the floor's, alongside);
3. whole-process wall of ``moa ask`` over that of the plain script doing the same calls;
4. client CPU per LLM call at zero latency, engine / floor;
5. queries/s with 32 in flight at zero latency, engine / floor;
6. ``moa serve`` requests/s / ideal with 32 streaming clients (the ``bench_serve`` setup).

On a shared machine absolute times drift; the ratios are taken within one run, side by side
(engine and floor alternate where they can).

    python bench/bench_floor.py [--queries 8] [--processes 3] [--zero 30] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bench_serve  # the moa serve throughput setup, shared with bench/bench_serve.py
import openai
from langchain_core.messages import HumanMessage

from langgraph_moa import Topology, build_graph
from langgraph_moa.nodes.prompts import SYNTHESIZE_PROMPT

KEY = "sk-bench-not-a-key"

# Together's advanced-moa.py: 4 reference models, 2 proposer layers, Mixtral aggregates.
TOGETHER_LATENCY = {"qwen2-72b": 0.1, "qwen15-72b": 0.2, "dbrx": 0.3, "mixtral-8x22b": 0.4}
TOGETHER_SHAPE: dict[str, Any] = {
    "layers": [list(TOGETHER_LATENCY)] * 2,
    "aggregator": "mixtral-8x22b",
}
CRITICAL_S = 0.4 + 0.4 + 0.4
# Zero latency: 3 x 6 + aggregator.
ZERO_SHAPE: dict[str, Any] = {
    "layers": [[f"z{layer}-{k}" for k in range(6)] for layer in range(3)],
    "aggregator": "z-agg",
}
ZERO_CALLS = 19
IN_FLIGHT = 32
REPLY_WORDS = 60  # every answer: 60 words (the aggregator's streams as 60 chunks)

# The fake upstream, in its own process. Prints its port; then, for each line "span" on stdin,
# prints {requests, failed, span_s} for the requests since the last "span" (first request in ->
# last response out) and forgets them.
FAKE = """
import json, sys
from langgraph_moa.testing.fake_openai import Behavior, FakeOpenAI

latencies = json.loads(sys.argv[1])
words = int(sys.argv[2])
answer = lambda body, n, k: " ".join(f"w{i}" for i in range(words))
with FakeOpenAI({m: Behavior(latency_s=s, reply=answer) for m, s in latencies.items()}) as fake:
    print(fake.port, flush=True)
    for line in sys.stdin:
        done = list(fake.requests)
        fake.reset()
        span = max(r.finished for r in done) - min(r.started for r in done) if done else 0.0
        failed = sum(1 for r in done if r.status != 200)
        print(json.dumps({"requests": len(done), "failed": failed, "span_s": span}), flush=True)
"""

# The floor: plain asyncio + AsyncOpenAI, Together's shape. SYNTHESIZE is filled in below with
# the graph's own instruction, so both send the same bytes.
FLOOR = """
import asyncio, json, sys
import openai

SYNTHESIZE = SYNTHESIZE_TEXT


def messages_for(prompt, references):
    if not references:
        return [{"role": "user", "content": prompt}]
    listed = "\\n".join(f"{i}. {t.strip()}" for i, t in enumerate(references, 1))
    system = SYNTHESIZE.format(references=listed)
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


async def propose(client, model, prompt, references):
    reply = await client.chat.completions.create(
        model=model, messages=messages_for(prompt, references), temperature=0.7,
        max_completion_tokens=512,
    )
    return reply.choices[0].message.content or ""


async def aggregate(client, model, prompt, references, out):
    stream = await client.chat.completions.create(
        model=model, messages=messages_for(prompt, references), temperature=0.7,
        max_completion_tokens=512, stream=True, stream_options={"include_usage": True},
    )
    parts = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            if out is not None:
                out.write(parts[-1])
                out.flush()
    return "".join(parts)


async def moa(client, shape, prompt, out=None):
    references = []
    for layer in shape["layers"]:
        references = await asyncio.gather(
            *(propose(client, m, prompt, references) for m in layer)
        )
    return await aggregate(client, shape["aggregator"], prompt, references, out)


async def main(shape, prompt):
    async with openai.AsyncOpenAI() as client:
        await moa(client, shape, prompt, sys.stdout)
    sys.stdout.write("\\n")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2]))
""".replace("SYNTHESIZE_TEXT", repr(SYNTHESIZE_PROMPT))

floor: dict[str, Any] = {"__name__": "floor"}
exec(compile(FLOOR, "<floor>", "exec"), floor)


def topology_of(shape: dict[str, Any], name: str) -> Topology:
    return Topology.model_validate(
        {
            "name": name,
            "layers": [
                {"proposers": [{"model": f"openai:{m}"} for m in layer]}
                for layer in shape["layers"]
            ],
            "aggregator": {"model": f"openai:{shape['aggregator']}"},
        }
    )


class Upstream:
    """The fake server process."""

    def __init__(self) -> None:
        latencies = dict(TOGETHER_LATENCY)
        latencies |= {m: 0.0 for layer in ZERO_SHAPE["layers"] for m in layer}
        latencies[ZERO_SHAPE["aggregator"]] = 0.0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE, json.dumps(latencies), str(REPLY_WORDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/v1"

    def span(self) -> dict[str, Any]:
        """The requests since the last call: how many, how many failed, first in -> last out."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("span\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        bench_serve.stop(self.proc)  # type: ignore[arg-type]


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- 1-3: Together's shape, in process and as whole processes --------------------------------
async def in_process(upstream: Upstream, queries: int) -> tuple[float, float]:
    """Median wall per query / critical path: (engine, floor), alternating, after a warm-up."""
    graph = build_graph(topology_of(TOGETHER_SHAPE, "together"))
    client = openai.AsyncOpenAI()
    engine, plain = [], []
    for q in range(queries + 1):
        start = time.perf_counter()
        state = await graph.ainvoke({"messages": [HumanMessage(f"in-process question {q}")]})
        took = time.perf_counter() - start
        assert not state["degraded"]
        start = time.perf_counter()
        await floor["moa"](client, TOGETHER_SHAPE, f"in-process question {q}")
        if q:  # the first of each is the warm-up
            engine.append(took)
            plain.append(time.perf_counter() - start)
    await client.close()
    upstream.span()
    return median(engine) / CRITICAL_S, median(plain) / CRITICAL_S


def processes(upstream: Upstream, runs: int, folder: Path) -> dict[str, float]:
    """``moa ask`` and the plain script as fresh processes, alternating."""
    topology = folder / "together.yaml"
    topology.write_text(json.dumps(topology_of(TOGETHER_SHAPE, "together").model_dump()))
    floor_script = folder / "floor.py"
    floor_script.write_text(FLOOR)
    env = dict(os.environ, MOA_DB=str(folder / "threads.sqlite"))
    # As installed: compiled bytecode is cached (in a folder of this run's, so nothing is written
    # beside the sources), whatever PYTHONDONTWRITEBYTECODE says; an untimed run of each, first,
    # writes it. Without this, an environment with PYTHONDONTWRITEBYTECODE=1 recompiles the
    # package's own modules on every start, which no installed copy does.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    walls: dict[str, list[float]] = {"moa": [], "plain": []}
    spans: dict[str, list[float]] = {"moa": [], "plain": []}
    for r in range(-1, runs):
        prompt = f"process question {r}"
        commands = {
            "moa": [sys.executable, "-m", "langgraph_moa.cli", "ask", prompt, "-t", str(topology)],
            "plain": [sys.executable, str(floor_script), json.dumps(TOGETHER_SHAPE), prompt],
        }
        for name, command in commands.items():
            start = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            wall = time.perf_counter() - start
            log = upstream.span()
            if done.returncode or log["failed"] or log["requests"] != 9:
                raise SystemExit(f"{name} failed: {done.stderr[-2000:]} {log}")
            assert done.stdout.startswith("w0 w1"), done.stdout[:200]
            if r >= 0:  # -1: the untimed run that writes the bytecode cache
                spans[name].append(log["span_s"])
                walls[name].append(wall)
    return {
        "moa_wall": median(walls["moa"]),
        "plain_wall": median(walls["plain"]),
        "moa_span": median(spans["moa"]) / CRITICAL_S,
        "plain_span": median(spans["plain"]) / CRITICAL_S,
    }


# --- 4-5: zero latency, CPU per call and 32 in flight -----------------------------------------
async def cpu_per_call(one: Callable[[str], Awaitable[Any]], queries: int) -> tuple[float, float]:
    """(client CPU ms per LLM call, wall ms per query) over ``queries`` sequential queries."""
    for q in range(3):
        await one(f"warm-up {q}")
    cpu, wall = time.process_time(), time.perf_counter()
    for q in range(queries):
        await one(f"cpu question {q}")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / (queries * ZERO_CALLS) * 1000, wall / queries * 1000


async def in_flight(one: Callable[[str], Awaitable[Any]], per_worker: int) -> float:
    """Queries per second with IN_FLIGHT queries running at once."""

    async def worker(w: int) -> None:
        for q in range(per_worker):
            await one(f"worker {w} question {q}")

    await asyncio.gather(*(worker(-w - 1) for w in range(4)))  # warm-up
    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(IN_FLIGHT)))
    return IN_FLIGHT * per_worker / (time.perf_counter() - start)


async def zero_latency(upstream: Upstream, queries: int) -> dict[str, float]:
    graph = build_graph(topology_of(ZERO_SHAPE, "zero"))
    client = openai.AsyncOpenAI()

    async def engine(prompt: str) -> None:
        state = await graph.ainvoke({"messages": [HumanMessage(prompt)]})
        assert not state["degraded"]

    async def plain(prompt: str) -> None:
        await floor["moa"](client, ZERO_SHAPE, prompt)

    out: dict[str, float] = {}
    # alternate, twice each, keeping the lower CPU figure of each (the machine is shared)
    for _ in range(2):
        for name, one in (("engine", engine), ("floor", plain)):
            cpu, wall = await cpu_per_call(one, queries)
            if cpu < out.get(f"{name}_cpu", float("inf")):
                out[f"{name}_cpu"], out[f"{name}_wall"] = cpu, wall
    per_worker = max(2, queries // 8)
    out["engine_qps"] = await in_flight(engine, per_worker)
    out["floor_qps"] = await in_flight(plain, per_worker)
    await client.close()
    log = upstream.span()
    assert log["failed"] == 0, log
    return out


# --- 6: moa serve -------------------------------------------------------------------------------
def serve_throughput(workers: int, per_client: int) -> float:
    """``moa serve`` requests/s over the ideal with 32 streaming clients."""
    fake = subprocess.Popen(
        [sys.executable, "-c", bench_serve.FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    server: subprocess.Popen[bytes] | None = None
    saved = os.environ.get("OPENAI_BASE_URL")
    try:
        assert fake.stdout is not None
        os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{int(fake.stdout.readline())}/v1"
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "bench.yaml").write_text(bench_serve.TOPOLOGY)
            extra = ["--workers", str(workers)] if workers > 1 else []
            server, url = bench_serve.start_server(Path(folder), *extra)
            return asyncio.run(bench_serve.throughput(url, IN_FLIGHT, per_client))
    finally:
        if saved is not None:
            os.environ["OPENAI_BASE_URL"] = saved
        if server is not None:
            bench_serve.stop(server)
        if fake.stdin is not None:
            fake.stdin.close()
        bench_serve.stop(fake)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=8, help="in-process queries, Together")
    parser.add_argument("--processes", type=int, default=3, help="moa ask / script processes")
    parser.add_argument("--zero", type=int, default=30, help="zero-latency queries for CPU")
    parser.add_argument("--workers", type=int, default=1, help="moa serve --workers")
    parser.add_argument("--per-client", type=int, default=6, help="moa serve requests/client")
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()

    upstream = Upstream()
    os.environ["OPENAI_BASE_URL"] = upstream.url
    os.environ["OPENAI_API_KEY"] = KEY
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, Python "
        f"{sys.version.split()[0]}; every ratio below is from this run"
    )
    try:
        with tempfile.TemporaryDirectory() as folder:
            proc = processes(upstream, args.processes, Path(folder))
        engine_wall, floor_wall = asyncio.run(in_process(upstream, args.queries))
        zero = asyncio.run(zero_latency(upstream, args.zero))
    finally:
        upstream.close()
    served = None if args.skip_serve else serve_throughput(args.workers, args.per_client)

    rows = [
        (
            "upstream view / critical path (1.2 s), `moa ask`",
            f"{proc['plain_span']:.3f}",
            f"{proc['moa_span']:.3f}",
            "<= 1.010",
        ),
        (
            "in-process wall / critical path (warm)",
            f"{floor_wall:.3f}",
            f"{engine_wall:.3f}",
            "<= 1.010",
        ),
        (
            "whole process wall, `moa ask` vs plain script",
            f"{proc['plain_wall']:.2f} s",
            f"{proc['moa_wall']:.2f} s ({proc['moa_wall'] / proc['plain_wall']:.2f}x)",
            "<= 1.2x",
        ),
        (
            "client CPU per LLM call, zero latency, 3x6 + aggregator",
            f"{zero['floor_cpu']:.2f} ms",
            f"{zero['engine_cpu']:.2f} ms ({zero['engine_cpu'] / zero['floor_cpu']:.2f}x)",
            "<= 1.3x",
        ),
        (
            f"queries/s with {IN_FLIGHT} in flight, zero latency, 3x6 + aggregator",
            f"{zero['floor_qps']:.1f}",
            f"{zero['engine_qps']:.1f} ({zero['engine_qps'] / zero['floor_qps']:.2f})",
            ">= 0.85",
        ),
    ]
    if served is not None:
        workers = f", --workers {args.workers}" if args.workers > 1 else ""
        rows.append(
            (
                f"`moa serve` requests/s / ideal, {IN_FLIGHT} clients{workers}",
                "1",
                f"{served:.3f}",
                "",
            )
        )
    print()
    print("| figure | floor (plain asyncio) | langgraph-moa | goal |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(
        f"zero latency, one query at a time: {zero['engine_wall']:.1f} ms/query "
        f"(floor {zero['floor_wall']:.1f} ms)"
    )


if __name__ == "__main__":
    main()
