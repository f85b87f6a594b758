#!/usr/bin/env bash
# Build (once) and install a portable llama-cpp-python wheel for the embedded offline model.
#
# Why this script exists: PyPI ships llama-cpp-python only as source, and its default build
# compiles llama.cpp with -march=native (GGML_NATIVE=ON). Such a build can crash with SIGSEGV on
# another CPU, and even on the same CPU under a hypervisor that hides AMX tile state. pip's own
# wheel cache is keyed by version only, so a native wheel built once is served again whatever
# CMAKE_ARGS says. Here the wheel is built with pip's cache off and a fixed x86-64 baseline
# (AVX2/FMA/F16C: every x86-64 CPU since 2013-2015) into a wheelhouse whose directory name is a
# hash of the version, the Python and the flags; it is then installed from that directory only.
#
# Usage: scripts/local-model-wheel.sh PIP    (PIP: the pip of the target environment)
set -euo pipefail
PIP=${1:?usage: local-model-wheel.sh PIP}
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
PY=$("$(dirname "$PIP")/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
KEY=$(printf '%s|%s|%s|%s' "$VERSION" "$PY" "$(uname -m)" "$FLAGS" | sha256sum | cut -c1-16)
ROOT=${MOA_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/langgraph-moa/wheels}
DIR="$ROOT/llama-cpp-python-$VERSION-$PY-$KEY"
if ! ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
    echo "Building llama-cpp-python $VERSION for any x86-64 CPU with AVX2 (once, ~4 min on 2 cores)..." >&2
    mkdir -p "$ROOT"
    TMP=$(mktemp -d "$ROOT/.build.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$PIP" wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -w "$TMP"
    printf '%s\n' "$FLAGS" > "$TMP/FLAGS"
    mkdir -p "$DIR"
    mv "$TMP"/* "$DIR"/
fi
# --only-binary: pip may take llama-cpp-python only as a wheel, and the only wheel is ours.
"$PIP" install --quiet --find-links "$DIR" --only-binary llama-cpp-python "llama-cpp-python==$VERSION"
