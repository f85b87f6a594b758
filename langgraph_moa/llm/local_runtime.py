"""Whether this machine's llama.cpp build can run the embedded model, asked once and remembered.

A llama.cpp compiled for another CPU (``-march=native``), or one that uses AMX on a virtual
machine whose hypervisor hides AMX tile state, dies with SIGSEGV on its first decode: no Python
exception, no message, the whole process gone. So before the first local model is loaded in a
process, a child process loads it and generates two tokens. A crash there becomes one clear line
(:class:`LocalModelUnusableError`) that says how to rebuild, instead of a dead CLI or server.

The verdict is cached on disk under ``$XDG_CACHE_HOME/langgraph-moa/local-check/``, keyed by the
llama.cpp library (path, size, mtime), the model file, the CPU's model name and flags, and the
Python executable: a rebuild or another machine asks again; a normal start costs one stat per
file. ``MOA_LOCAL_CHECK=0`` skips the check.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from langgraph_moa.errors import LocalModelUnusableError

_REBUILD_HINT = (
    "rebuild llama.cpp for any x86-64 CPU: `make clean && make install` in a checkout, or "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" pip install '
    "--force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.36"
)

# Loads the model as the project does, then evaluates a prompt of several tokens (the batched
# matrix kernels: a one-token prompt never reaches the AMX code that crashes) and decodes a few
# tokens (the one-token kernels).
_CHILD = """
import os, sys
from llama_cpp import Llama
threads = max(1, min(os.cpu_count() or 1, 8))
llama = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=threads, n_threads_batch=threads,
              verbose=False)
prompt = "Check that this machine can run the model: read these words and write a few more. "
llama.create_completion(prompt * 2, max_tokens=4, temperature=0.0)
"""
_CHILD_TIMEOUT_S = 120.0
_lock = threading.Lock()
_verdicts: dict[str, str | None] = {}  # key -> None (runs) or the reason it does not


def compiled_cpu_features() -> dict[str, bool]:
    """The CPU features the installed llama.cpp was compiled to use (``AVX2``, ``AVX512``...)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    features: dict[str, bool] = {}
    for part in info.replace("\n", "|").split("|"):
        name, sep, value = part.rpartition("=")
        name = name.strip().rsplit(":", 1)[-1].strip()
        if sep and name and value.strip() in ("0", "1"):
            features[name] = features.get(name, False) or value.strip() == "1"
    return features


def _fingerprint(model_path: Path) -> str:
    spec_root = _llama_cpp_dir()
    parts = [sys.executable, str(model_path)]
    for f in sorted([*spec_root.rglob("*.so*"), model_path]):
        st = f.stat()
        parts.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    parts.append(_cpu_identity())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _llama_cpp_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnusableError("llama_cpp is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return os.uname().machine
    wanted = ("model name", "flags")
    lines = {ln.split(":", 1)[0].strip(): ln for ln in text.splitlines() if ":" in ln}
    return "\n".join(lines.get(k, "") for k in wanted)


def _cache_file(key: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "langgraph-moa" / "local-check" / f"{key}.json"


def _run_child(model_path: Path) -> tuple[str | None, bool]:
    """(None if the child loaded the model and decoded, else why not in one line; whether the
    verdict may be remembered: a timeout on a busy machine is not)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(model_path)],
            capture_output=True,
            text=True,
            timeout=_CHILD_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"it did not answer within {_CHILD_TIMEOUT_S:g}s", False
    if done.returncode == 0:
        return None, True
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return f"it crashed with {name} on this CPU", True
    last = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "")
    return f"it failed: {last.strip()[:200] or f'exit code {done.returncode}'}", True


def check_local_runtime(model_path: Path) -> None:
    """Raise LocalModelUnusableError if llama.cpp cannot run ``model_path`` on this machine."""
    if os.environ.get("MOA_LOCAL_CHECK") == "0":
        return
    key = _fingerprint(model_path)
    with _lock:
        if key not in _verdicts:
            _verdicts[key] = _remembered_or_checked(key, model_path)
    reason = _verdicts[key]
    if reason is None:
        return
    if reason.startswith("it failed"):  # llama.cpp ran and refused the file: not a build issue
        raise LocalModelUnusableError(
            f"the local model {str(model_path)!r} cannot be loaded by llama.cpp "
            f"(is it a GGUF model?): {reason.removeprefix('it failed: ')}"
        )
    raise LocalModelUnusableError(
        f"the embedded model cannot run: llama.cpp was checked loading {model_path.name} and "
        f"{reason}; {_REBUILD_HINT}"
    )


def _remembered_or_checked(key: str, model_path: Path) -> str | None:
    cache = _cache_file(key)
    try:
        return json.loads(cache.read_text(encoding="utf-8"))["reason"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    reason, lasting = _run_child(model_path)
    if not lasting:
        return reason
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"reason": reason, "model": str(model_path)}), "utf-8")
        tmp.replace(cache)
    except OSError:
        pass  # an unwritable cache only means checking again next time
    return reason
