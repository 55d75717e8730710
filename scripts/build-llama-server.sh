#!/usr/bin/env bash
# Build llama.cpp's C++ llama-server from the llama.cpp that llama-cpp-python vendors, with the
# same CPU flags as build-llama.sh (scripts/llama-flags.sh), unpatched: the yardstick that
# bench/compare_llama_server.py runs beside the worker. Built once, cached by version and flags.
#
# Usage: scripts/build-llama-server.sh PYTHON  -> prints the binary's path on stdout
set -euo pipefail
PY=${1:?usage: build-llama-server.sh PYTHON}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/llama-flags.sh"
args="$LLAMA_CMAKE_ARGS -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF"
args+=" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF"
args+=" -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF"
key=$(printf 'server %s %s' "$VERSION" "$args" | sha256sum | cut -c1-12)
dir=${XDG_CACHE_HOME:-$HOME/.cache}/gemma-worker/llama-server/$key
bin="$dir/llama-server"
if [[ ! -x "$bin" ]]; then
  echo "building llama-server from llama-cpp-python $VERSION's llama.cpp (about 10 minutes)..." >&2
  echo "  cmake $args" >&2
  tmp=$(mktemp -d)
  src=$(fetch_llama_source "$PY" "$VERSION" "$tmp")/vendor/llama.cpp
  # shellcheck disable=SC2086  # args is a list of flags
  gen=(); command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
  cmake -S "$src" -B "$tmp/build" "${gen[@]}" $args >&2
  cmake --build "$tmp/build" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$dir"
  cp "$tmp/build/bin/llama-server" "$bin"
  rm -rf "$tmp"
fi
echo "$bin"
