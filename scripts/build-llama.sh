#!/usr/bin/env bash
# Build llama-cpp-python from source into a local wheelhouse, once per CPU feature set.
#
# Why: a plain `pip install llama-cpp-python` compiles with -march=native, which turns on
# ggml's AMX kernels on Sapphire Rapids CPUs; in these VMs they crash (SIGSEGV in
# ggml_backend_amx_mul_mat). We build with GGML_NATIVE=OFF and the CPU's AVX* features, never
# AMX. pip's own wheel cache ignores CMAKE_ARGS, so the result is kept in a wheelhouse keyed by
# the flags, and installed from there.
#
# Usage: scripts/build-llama.sh PYTHON  -> prints the wheel's path on stdout
set -euo pipefail
PY=${1:?usage: build-llama.sh PYTHON}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/llama-flags.sh"
args="$LLAMA_CMAKE_ARGS -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
# One source patch: llamafile's sgemm serves only batches of 2+ rows and leaves a lone
# decoding sequence to ggml's vec_dot; the two round differently, so a request's greedy output
# would change when others are batched beside it. Patched, sgemm serves every batch size
# (measured here: 8 sequences decode ~25% faster than with llamafile off; 1 sequence ~8% slower)
# unless GEMMA_SGEMM_ONE_ROW=0 is in the environment (the worker's fast mode sets it).
PATCH_ID="sgemm-all-n-v2"
key=$(printf '%s %s %s' "$VERSION" "$args" "$PATCH_ID" | sha256sum | cut -c1-12)
house=${GEMMA_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-worker/wheels}/$key
wheel=$(ls "$house"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [[ -z "$wheel" ]]; then
  echo "building llama-cpp-python $VERSION from source (about 5 minutes on 2 cores)..." >&2
  echo "  CMAKE_ARGS=$args" >&2
  tmp=$(mktemp -d)
  src=$(fetch_llama_source "$PY" "$VERSION" "$tmp")
  "$PY" - "$src/vendor/llama.cpp/ggml/src/ggml-cpu/llamafile/sgemm.cpp" <<'PATCH'
import sys
path = sys.argv[1]
text = open(path).read()
old = """    // only enable sgemm for prompt processing
#if !defined(__MMA__)
    if (n < 2)
        return false;
#endif
"""
new = """    // gemma-worker: sgemm for every batch size (batch-invariant), unless GEMMA_SGEMM_ONE_ROW=0
#if !defined(__MMA__)
    static const bool one_row = [] {
        const char * env = getenv("GEMMA_SGEMM_ONE_ROW");
        return env == NULL || atoi(env) != 0;
    }();
    if (n < 2 && !one_row)
        return false;
#endif
"""
if text.count(old) != 1:
    sys.exit("build-llama.sh: sgemm.cpp is not the expected version; cannot patch")
open(path, "w").write("#include <cstdlib>\n" + text.replace(old, new))
PATCH
  CMAKE_ARGS="$args" "$PY" -m pip wheel --no-deps --no-cache-dir -w "$tmp/out" "$src" >&2
  mkdir -p "$house"
  mv "$tmp"/out/llama_cpp_python-*.whl "$house"/
  rm -rf "$tmp"
  wheel=$(ls "$house"/llama_cpp_python-"$VERSION"-*.whl | head -n1)
fi
echo "$wheel"
