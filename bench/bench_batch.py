"""The batch engine (``moa relabel --engine batch``) against the fake Batch API, beside the
online engine on the same rows and topology (3 layers x 6 proposers + aggregator, 19 calls a
row), each run in a fresh process; the fake server runs in a process of its own, so a run's CPU
time is the engine's. Prints:

1. CPU per call of the batch engine (its passes over the rows, writing the batch files,
   reading the results, resuming the rows) over ``--rows`` rows, divided by the online engine's
   CPU per call on ``--online-rows`` rows at zero upstream latency (goal: <= 0.25); the time it
   spent waiting on polls is left out (printed beside it);
2. peak RSS of the batch engine at ``--rows`` and at a tenth of it (goal: flat in rows);
3. batches and waves;
4. the cost ratio batch / online at list prices on the same ``--online-rows`` rows (goal:
   <= 0.55), and with ``early_stop`` on layer 1 on a set where half the rows agree: the
   batch run's cost and calls against the online run without early stop.

    python bench/bench_batch.py [--rows 10000] [--online-rows 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_relabel import Upstream

LAYERS, WIDTH = 3, 6
PRICE = "{input_per_mtok: 0.15, output_per_mtok: 0.60}"  # gpt-4o-mini's list price


def reply(body: dict[str, Any], number: int, choice: int) -> str:
    """Rows whose question says "agree" get 42 from every proposer; the others differ."""
    said = json.dumps(body["messages"])
    if "agree" in said:
        return "The answer is 42."
    guess = (len(said) + sum(map(ord, body["model"]))) % 997
    return f"{body['model']} thinks {guess} and more words to make a real answer."


def topology(path: Path, *, early_stop: bool) -> Path:
    layers = ""
    for layer in range(LAYERS):
        names = ", ".join(f"{{name: p{k}, model: 'openai:l{layer}p{k}'}}" for k in range(WIDTH))
        layers += f"  - proposers: [{names}]\n"
        if early_stop and layer == 0:
            layers += "    early_stop: {agreement: 1.0, extract: number}\n"
    models = [f"l{layer}p{k}" for layer in range(LAYERS) for k in range(WIDTH)] + ["agg"]
    prices = "".join(f"  'openai:{m}': {PRICE}\n" for m in models)
    path.write_text(
        f"name: wide\nlayers:\n{layers}aggregator: {{model: 'openai:agg'}}\nprices:\n{prices}"
    )
    return path


def rows(path: Path, n: int, *, agree_every: int = 0) -> Path:
    with path.open("w") as f:
        for k in range(n):
            agree = " agree" if agree_every and k % agree_every == 0 else ""
            question = f"Question {k}{agree}: explain something in a few sentences."
            f.write(
                json.dumps({"id": f"r{k}", "messages": [{"role": "user", "content": question}]})
            )
            f.write("\n")
    return path


def child(args: argparse.Namespace) -> None:
    """One run in this fresh process; prints its figures as JSON."""
    from langgraph_moa.batch import relabel

    waited = 0.0
    start_cpu, start = time.process_time(), time.perf_counter()
    sleeping = [0.0]
    if args.engine == "batch":
        import asyncio

        real_sleep = asyncio.sleep

        async def counted_sleep(delay: float, result: Any = None) -> Any:
            t0 = time.perf_counter()
            try:
                return await real_sleep(delay, result)
            finally:
                sleeping[0] += time.perf_counter() - t0

        asyncio.sleep = counted_sleep  # type: ignore[assignment]
    options: dict[str, Any] = {"concurrency": 16}
    if args.engine == "batch":
        options |= {"engine": "batch", "poll_s": 0.2}
    run = relabel(args.data, topology=args.topology, out=args.out, **options)
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
    waited = sleeping[0]
    totals = run.totals
    calls = sum(r["calls"] for r in run.records())
    print(
        json.dumps(
            {
                "cpu_s": cpu,
                "wall_s": wall,
                "waited_s": waited,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "calls": calls,
                "done": totals["done"],
                "failed": totals["failed"],
                "cost_usd": run.cost_usd,
                "batch": run.manifest.batch,
            }
        )
    )


def run_child(engine: str, data: Path, topo: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", engine, str(data), str(topo), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--online-rows", type=int, default=300)
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "DATA", "TOPOLOGY", "OUT"))
    args = parser.parse_args()
    if args.child:
        engine, data, topo, out = args.child
        child(argparse.Namespace(engine=engine, data=data, topology=topo, out=out))
        return
    print(f"load before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp, Upstream(0.0, reply):
        folder = Path(tmp)
        plain = topology(folder / "plain.yaml", early_stop=False)
        stopping = topology(folder / "stop.yaml", early_stop=True)
        small = rows(folder / "small.jsonl", args.online_rows)
        online = run_child("local", small, plain, folder / "online")
        batch_small = run_child("batch", small, plain, folder / "batch-small")
        tenth = rows(folder / "tenth.jsonl", max(args.rows // 10, 1))
        batch_tenth = run_child("batch", tenth, plain, folder / "batch-tenth")
        big = rows(folder / "big.jsonl", args.rows)
        batch_big = run_child("batch", big, plain, folder / "batch-big")
        half = rows(folder / "half.jsonl", args.online_rows, agree_every=2)
        online_half = run_child("local", half, plain, folder / "online-half")
        batch_stop = run_child("batch", half, stopping, folder / "batch-stop")
    online_cpu = online["cpu_s"] / online["calls"]
    busy = batch_big["cpu_s"]
    batch_cpu = busy / batch_big["calls"]
    print(
        f"1. CPU per call: batch {batch_cpu * 1e3:.3f} ms over {args.rows} rows "
        f"({batch_big['calls']} calls, wall {batch_big['wall_s']:.1f}s of which "
        f"{batch_big['waited_s']:.1f}s waiting on polls); online {online_cpu * 1e3:.3f} ms over "
        f"{args.online_rows} rows -> ratio {batch_cpu / online_cpu:.3f} (goal <= 0.25)"
    )
    print(
        f"2. peak RSS: {batch_tenth['rss_mb']:.0f} MB at {max(args.rows // 10, 1)} rows, "
        f"{batch_big['rss_mb']:.0f} MB at {args.rows} rows "
        f"(ratio {batch_big['rss_mb'] / batch_tenth['rss_mb']:.2f}; goal: flat)"
    )
    store = (batch_big["batch"] or {}).get("store", {})
    print(
        f"3. {store.get('waves')} waves, batches {store.get('batches')}, "
        f"requests {store.get('requests')}"
    )
    ratio = batch_small["cost_usd"] / online["cost_usd"]
    print(
        f"4. cost at list prices over {args.online_rows} rows: batch ${batch_small['cost_usd']:.4f}"
        f" / online ${online['cost_usd']:.4f} = {ratio:.3f} (goal <= 0.55); half the rows "
        f"agreeing, batch with early stop ${batch_stop['cost_usd']:.4f} ({batch_stop['calls']} "
        f"calls) / online without ${online_half['cost_usd']:.4f} ({online_half['calls']} calls) "
        f"= {batch_stop['cost_usd'] / online_half['cost_usd']:.3f}"
    )
    for name, found in (("online", online), ("batch", batch_small), ("batch-stop", batch_stop)):
        assert found["failed"] == 0, (name, found)


if __name__ == "__main__":
    main()
