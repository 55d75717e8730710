# Sourced by build-llama.sh and build-llama-server.sh: the CMake flags for this CPU, and the
# llama-cpp-python sdist both build from.
# GGML_NATIVE=OFF and the CPU's AVX* features, never AMX (its kernels crash in these VMs).
# Sets: LLAMA_CMAKE_ARGS. Defines: fetch_llama_source PYTHON VERSION DIR (prints the source dir).
_cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
_has() { [[ " $_cpu_flags " == *" $1 "* ]]; }
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
if [[ "$(uname -m)" == x86_64 ]]; then
  _has avx && LLAMA_CMAKE_ARGS+=" -DGGML_AVX=ON"
  _has avx2 && LLAMA_CMAKE_ARGS+=" -DGGML_AVX2=ON"
  _has fma && LLAMA_CMAKE_ARGS+=" -DGGML_FMA=ON"
  _has f16c && LLAMA_CMAKE_ARGS+=" -DGGML_F16C=ON"
  _has bmi2 && LLAMA_CMAKE_ARGS+=" -DGGML_BMI2=ON"
  _has avx_vnni && LLAMA_CMAKE_ARGS+=" -DGGML_AVX_VNNI=ON"
  if _has avx512f && _has avx512bw && _has avx512vl && _has avx512dq; then
    LLAMA_CMAKE_ARGS+=" -DGGML_AVX512=ON"
    _has avx512vbmi && LLAMA_CMAKE_ARGS+=" -DGGML_AVX512_VBMI=ON"
    _has avx512_vnni && LLAMA_CMAKE_ARGS+=" -DGGML_AVX512_VNNI=ON"
    _has avx512_bf16 && LLAMA_CMAKE_ARGS+=" -DGGML_AVX512_BF16=ON"
  fi
fi
# GPU: GEMMA_BUILD=cuda builds ggml's CUDA backend too (the CPU flags above stay, for layers
# left on the CPU); GEMMA_BUILD=auto (the default) does so when nvcc is found and a GPU is
# visible (nvidia-smi lists one): a bare nvcc, as some images ship without a GPU or cuBLAS,
# is not enough. The flags are part of the wheelhouse key, so CPU and CUDA wheels are
# cached apart.
_build=${GEMMA_BUILD:-auto}
if [[ "$_build" == auto ]]; then
  _build=cpu
  if { command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; } \
    && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    _build=cuda
  fi
fi
case "$_build" in
  cpu) ;;
  cuda)
    if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
      export CUDACXX=/usr/local/cuda/bin/nvcc
    fi
    LLAMA_CMAKE_ARGS+=" -DGGML_CUDA=ON"
    ;;
  *) echo "GEMMA_BUILD must be cpu, cuda or auto (got: $_build)" >&2; exit 2 ;;
esac

fetch_llama_source() {
  "$1" -m pip download --no-deps --no-binary :all: -d "$3" "llama-cpp-python==$2" >&2
  tar xzf "$3"/llama_cpp_python-"$2".tar.gz -C "$3"
  echo "$3/llama_cpp_python-$2"
}
