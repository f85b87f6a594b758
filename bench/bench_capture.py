"""What the pass-through hop of ``moa serve --capture`` adds to a request.

The upstream is the fake OpenAI-compatible server in a process of its own, answering at once;
``moa serve --capture DIR`` is another process; this script is the client (one httpx client,
keep-alive, requests one after the other). The same chat request, alternately sent to the
upstream directly and to ``capture/openai:gpt-x`` through the server, non-streamed then
streamed: medians, the difference (the added milliseconds; goal < 5 ms) and the ratio. Every
exchange through the server is captured (sampling rate 1), so the row's writing is included.

    python bench/bench_capture.py [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench_serve import free_port, stop, wait_until_up  # this folder's (run as a script)

KEY = "sk-bench-not-a-key"
GOAL_MS = 5.0
SERVE = [sys.executable, "-m", "langgraph_moa.cli", "serve"]

FAKE = """
import sys
from langgraph_moa.testing.fake_openai import FakeOpenAI

with FakeOpenAI() as server:
    print(server.port, flush=True)
    sys.stdin.read()
"""


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    if body.get("stream"):
        with client.stream("POST", url, json=body) as response:
            response.raise_for_status()
            for _ in response.iter_bytes():
                pass
    else:
        client.post(url, json=body).raise_for_status()
    return time.perf_counter() - start


def measure(direct: str, served: str, requests: int, stream: bool) -> tuple[float, float]:
    messages = [
        {"role": "system", "content": "You answer questions about physics."},
        {"role": "user", "content": "Why is the sky blue? " * 20},
    ]
    upstream = {"model": "gpt-x", "messages": messages, "stream": stream}
    through = {**upstream, "model": "capture/openai:gpt-x"}
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(headers=headers, timeout=30) as client:
        for _ in range(20):  # warm both paths (connections, first-call imports)
            timed(client, direct, upstream)
            timed(client, served, through)
        plain, hop = [], []
        for _ in range(requests):
            plain.append(timed(client, direct, upstream))
            hop.append(timed(client, served, through))
    return statistics.median(plain), statistics.median(hop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        assert fake.stdout is not None
        upstream = f"http://127.0.0.1:{int(fake.stdout.readline())}/v1"
        port = free_port()
        with tempfile.TemporaryDirectory() as folder:
            env = dict(os.environ, OPENAI_BASE_URL=upstream, OPENAI_API_KEY=KEY)
            env.pop("MOA_SERVE_KEYS", None)
            server = subprocess.Popen(
                [*SERVE, "--port", str(port), "--capture", folder, "--log-level", "warning"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            base = f"http://127.0.0.1:{port}"
            wait_until_up(f"{base}/v1", server)
            print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
            print(f"{args.requests} requests each way, one after the other, captured at rate 1")
            for stream in (False, True):
                plain, hop = measure(
                    f"{upstream}/chat/completions",
                    f"{base}/v1/chat/completions",
                    args.requests,
                    stream,
                )
                added = (hop - plain) * 1000
                kind = "streamed" if stream else "whole"
                print(f"  {kind:8} upstream directly        {plain * 1000:7.2f} ms (median)")
                print(f"  {kind:8} through moa serve        {hop * 1000:7.2f} ms (median)")
                verdict = "within" if added < GOAL_MS else "ABOVE"
                print(
                    f"  {kind:8} added by the hop         {added:7.2f} ms ({verdict} the "
                    f"{GOAL_MS:g} ms goal)"
                )
                print(f"  {kind:8} ratio hop / direct       {hop / plain:7.2f}")
            stop(server)  # its queued rows are written before it exits
            rows = sum(
                len(p.read_text().splitlines()) for p in Path(folder).glob("capture-*.jsonl")
            )
            print(f"  rows captured: {rows} (of {2 * (20 + args.requests)} sent)")
    finally:
        if server is not None:
            stop(server)
        if fake.stdin is not None:
            fake.stdin.close()
        fake.wait(timeout=15)


if __name__ == "__main__":
    main()
