#!/usr/bin/env bash
# Compiles the CUDA sources with this machine's nvcc, warnings as errors (CI calls this; nothing
# here needs a GPU). Device code for a few architectures is enough to catch a broken kernel;
# set HGAD_CHECK_ARCHS to override (default: sm_87 Jetson Orin, sm_90, and the newest this nvcc
# knows as PTX).
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
  echo "check_cuda_build: no nvcc found (set NVCC=...)" >&2
  exit 1
fi
"$NVCC" --version | tail -n 2
newest=$("$NVCC" --list-gpu-arch | sed -n 's/^compute_//p' | sort -n | tail -n 1)
ARCHS=${HGAD_CHECK_ARCHS:-"87 90"}
gencode=()
for a in $ARCHS; do gencode+=(-gencode "arch=compute_${a},code=sm_${a}"); done
gencode+=(-gencode "arch=compute_${newest},code=compute_${newest}")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
pyinc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
pybind=$(python -c "import pybind11; print(pybind11.get_include())")
set -x
# the kernel translation unit: device + host code, every warning an error
"$NVCC" -std=c++17 -O3 -DWITH_CUDA -Icsrc "${gencode[@]}" \
  -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
  -c csrc/gmm/gmm_cuda.cu -o "$out/gmm_cuda.o"
# the host files that see WITH_CUDA compile too (the dispatcher's CUDA branch)
g++ -std=c++17 -O2 -fopenmp -Wall -Wextra -Werror -DWITH_CUDA -Icsrc -I"$pyinc" -I"$pybind" \
  -c csrc/bindings.cpp -o "$out/bindings.o"
g++ -std=c++17 -O2 -fopenmp -Wall -Wextra -Werror -Icsrc -c csrc/gmm/gmm_cpu.cpp -o "$out/gmm_cpu.o"
set +x
echo "check_cuda_build: OK (sm_${ARCHS// /, sm_} + compute_${newest} PTX)"
