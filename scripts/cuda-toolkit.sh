#!/usr/bin/env bash
# Prepares a CUDA 13.0 toolkit for building ggml's CUDA module and prints its folder. Nothing is installed into
# the system and no GPU is needed: the toolkit is assembled from NVIDIA's own wheels on PyPI (nvcc, cicc, the
# headers, the runtime and cuBLAS), SHA-256 pinned and cached. Idempotent, and offline once cached.
#
#   scripts/cuda-toolkit.sh          # -> ~/.cache/stove/cuda-13.0
#
# Why 13.0: it is the CUDA that PyPI ships a whole compiler for (the 12.x nvcc wheels hold only ptxas), and a
# module built with 13.0 runs on every driver of the 580 series and newer (CUDA's minor-version compatibility).
# CUDA 13 supports Turing (RTX 20, GTX 16) and newer; older NVIDIA cards, and older drivers, are served by the
# Vulkan module every engine carries.
#
# The wheels unpack into one tree laid out like the toolkit (bin, include, lib, nvvm). Added to it: lib64
# (nvcc's profile looks there), the unversioned names a link asks for (libcudart.so), and lib/stubs/libcuda.so,
# a stand-in named libcuda.so.1 to link against (each function returns CUDA_ERROR_STUB_LIBRARY), where CMake
# looks for the toolkit's own stub (the wheels carry none): the real libcuda.so.1 comes with the NVIDIA driver.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/checked-download.sh"

VERSION="13.0"
# name==version sha256, one wheel each
WHEELS=(
  "nvidia-cuda-nvcc==13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia-nvvm==13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia-cuda-crt==13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia-cuda-runtime==13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-cccl==13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
  "nvidia-cublas==13.0.2.14 0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c"
)

if [[ "$(uname -m)" != x86_64 ]]; then
  echo "error: scripts/cuda-toolkit.sh prepares x86-64 Linux builds only" >&2
  exit 1
fi
toolkit="${STOVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stove}/cuda-$VERSION"
if [[ -f "$toolkit/done" ]]; then
  echo "$toolkit"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching the CUDA $VERSION toolkit from NVIDIA's wheels on PyPI (about 530 MB) ..." >&2
for wheel in "${WHEELS[@]}"; do
  requirement="${wheel% *}"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
    --dest "$work/wheels" "$requirement" >&2
done
for wheel in "${WHEELS[@]}"; do
  requirement="${wheel% *}" expected="${wheel#* }"
  name="${requirement%%==*}" version="${requirement#*==}"
  file="$(ls "$work/wheels/${name//-/_}-$version-"*.whl)"
  check_sha256 "$file" "$expected"
  python3 -m zipfile -e "$file" "$work/unpacked"
done

tree="$work/unpacked/nvidia/cu13"
chmod +x "$tree"/bin/* "$tree"/nvvm/bin/*
ln -s lib "$tree/lib64"
# The names a link asks for (-lcudart, -lcublas); the wheels carry only the versioned files.
for library in cudart cublas cublasLt; do
  ln -s "lib$library.so.13" "$tree/lib/lib$library.so"
done
# The stub defines every driver function cuda.h declares (under the names the macros there give them, e.g.
# cuMemGetInfo_v2), so that a module calling them records libcuda.so.1 as needed; the linker drops a library
# that defines nothing the module uses.
mkdir -p "$tree/lib/stubs"
cc -E -P -I "$tree/include" "$tree/include/cuda.h" | grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' |
  sed -E 's/.*(cu[A-Za-z0-9_]+) *\(/int \1(void) { return 34; }/' | sort -u >"$work/stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tree/lib/stubs/libcuda.so" "$work/stub.c"

# A quick check that the compiler works before anything relies on it.
echo '__global__ void twice(float *x) { x[threadIdx.x] *= 2; } int main() { return 0; }' >"$work/check.cu"
"$tree/bin/nvcc" -arch=compute_75 -o "$work/check" "$work/check.cu" >&2

rm -rf "$toolkit"
mkdir -p "$(dirname "$toolkit")"
mv "$tree" "$toolkit"
touch "$toolkit/done"
echo "$toolkit"
