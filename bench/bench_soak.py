"""Soak figures for reliability (issue 9), each against its goal, measured in one run against
the fake OpenAI-compatible server:

1. upstream requests still open 1 s after 20 runs are cancelled mid-layer (goal 0);
2. open file descriptors and RSS of a process after 50 and after 500 sync calls
   (``ChatMixtureOfAgents.invoke``; goal: flat);
3. turns kept after 6 concurrent ``moa ask`` on one thread (goal 6 of 6).

    python bench/bench_soak.py [--sync-calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from langchain_core.messages import HumanMessage

from langgraph_moa import Topology, build_graph
from langgraph_moa.testing.fake_openai import FakeOpenAI

TOPOLOGY = {
    "layers": [{"proposers": [{"model": f"openai:p{k}"} for k in range(3)]}],
    "aggregator": {"model": "openai:agg"},
}

SYNC_CALLS = """
import os, sys
from langgraph_moa import ChatMixtureOfAgents, Topology
llm = ChatMixtureOfAgents(topology=Topology.model_validate(eval(sys.argv[1])))

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

done = 0
for target in map(int, sys.argv[2:]):
    while done < target:
        llm.invoke(f"question {done}")
        done += 1
    print(done, len(os.listdir("/proc/self/fd")), round(rss_mib(), 1), flush=True)
"""


async def cancelled_runs(server: FakeOpenAI, runs: int) -> tuple[int, int]:
    for k in range(3):
        server.behave(f"p{k}", latency_s=60)
    graph = build_graph(Topology.model_validate(TOPOLOGY), cache=False)
    tasks = [
        asyncio.ensure_future(graph.ainvoke({"messages": [HumanMessage(f"q{i}")]}))
        for i in range(runs)
    ]
    deadline = time.monotonic() + 60
    while len(server.requests) < 3 * runs and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1.0)
    open_ = [r for r in server.requests if not r.disconnected and r.status == 0]
    for k in range(3):
        server.behave(f"p{k}", latency_s=0)
    return len(open_), len(server.requests)


def sync_soak(server: FakeOpenAI, calls: int) -> list[tuple[int, int, float]]:
    env = dict(os.environ, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench")
    done = subprocess.run(
        [sys.executable, "-c", SYNC_CALLS, repr(TOPOLOGY), "50", str(calls)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    rows = []
    for line in done.stdout.split("\n"):
        if line.strip():
            n, fds, rss = line.split()
            rows.append((int(n), int(fds), float(rss)))
    return rows


def concurrent_asks(server: FakeOpenAI) -> int:
    server.behave("agg", latency_s=0.3)
    with tempfile.TemporaryDirectory() as tmp:
        topology = Path(tmp) / "t.yaml"
        topology.write_text(
            "layers:\n  - proposers: [{model: 'openai:p0'}]\naggregator: {model: 'openai:agg'}\n"
        )
        env = dict(
            os.environ,
            OPENAI_BASE_URL=server.base_url,
            OPENAI_API_KEY="sk-bench",
            MOA_DB=str(Path(tmp) / "threads.sqlite"),
        )
        moa = [sys.executable, "-m", "langgraph_moa.cli", "ask"]
        procs = [
            subprocess.Popen(
                [*moa, f"turn {k}", "-t", str(topology), "--thread", "same", "-q"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for k in range(6)
        ]
        for p in procs:
            p.wait(timeout=300)
        subprocess.run(
            [*moa, "last", "--thread", "same", "-q"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
    seen = [m["content"] for m in server.requests_for("agg")[-1].messages[1:]]
    return len({c for c in seen if c.startswith("turn ")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sync-calls", type=int, default=500)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with FakeOpenAI() as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        still_open, sent = asyncio.run(cancelled_runs(server, args.runs))
        print(
            f"cancelled runs: {args.runs}; upstream requests sent {sent}, still open 1 s after "
            f"the cancel: {still_open} (goal 0)"
        )
        server.reset()
        rows = sync_soak(server, args.sync_calls)
        (n1, fd1, rss1), (n2, fd2, rss2) = rows[0], rows[-1]
        print(
            f"sync calls: after {n1}: {fd1} fds, {rss1:.1f} MiB; after {n2}: {fd2} fds, "
            f"{rss2:.1f} MiB (fds x{fd2 / fd1:.2f}, RSS x{rss2 / rss1:.2f}; goal flat)"
        )
        server.reset()
        kept = concurrent_asks(server)
        print(f"6 concurrent `moa ask` on one thread: {kept} of 6 turns kept (goal 6)")


if __name__ == "__main__":
    main()
