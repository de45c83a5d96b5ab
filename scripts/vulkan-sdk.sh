#!/usr/bin/env bash
# Prepares what building ggml's Vulkan module needs and prints a folder to use as VULKAN_SDK: Vulkan headers
# new enough for llama.cpp (it uses VK_EXT_layer_settings, headers >= 1.3.261), the system's Vulkan loader
# library and glslc. Debian 12's headers (1.3.239) are too old, so when the system's are, the headers come from
# Debian 13's libvulkan-dev package (headers only: nothing is installed into the system), SHA-256 checked and
# cached. Idempotent, and offline once cached. setup.sh installs glslc, spirv-headers and libvulkan1 first.
#
#   scripts/vulkan-sdk.sh          # -> ~/.cache/stove/vulkan-sdk/1.4.309
#   scripts/vulkan-sdk.sh windows  # -> ~/.cache/stove/vulkan-sdk/1.4.309-windows, for the mingw-w64 cross build
#
# For Windows the folder is laid out as the LunarG SDK is (Include, Lib, Bin): the same headers, this machine's
# glslc, and an import library for the Vulkan loader (vulkan-1.dll, which every Vulkan driver on Windows
# installs) made with mingw-w64's dlltool from the core commands the headers declare.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/checked-download.sh"
system="${1:-linux}"

VERSION="1.4.309"
DEB_URL="http://deb.debian.org/debian/pool/main/v/vulkan-loader/libvulkan-dev_1.4.309.0-1_amd64.deb"
DEB_SHA256="8d329d465e16168afff58b1bd0dd6db46aac2cc3f56054a481b25a04e90b345a"
# ggml-vulkan needs VK_EXT_layer_settings, added in Vulkan-Headers 1.3.261.
MIN_HEADER_VERSION=261

sdk="${STOVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stove}/vulkan-sdk/$VERSION"

header_version() { sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\)$/\1/p' "$1" 2>/dev/null; }
vulkan_minor() { sed -n 's/^#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, \([0-9]*\),.*/\1/p' "$1" 2>/dev/null; }

loader="$(PATH="$PATH:/sbin:/usr/sbin" ldconfig -p | sed -n 's/.*libvulkan\.so\.1 (.*) => \(.*\)/\1/p' | head -1)"
glslc="$(command -v glslc || true)"
if [[ -z "$loader" || -z "$glslc" ]]; then
  echo "error: the Vulkan build needs libvulkan.so.1 and glslc (apt-get install libvulkan1 glslc spirv-headers," \
    "or run scripts/setup.sh)" >&2
  exit 1
fi

# Headers already on the system that are new enough need nothing fetched.
system_header=/usr/include/vulkan/vulkan_core.h
if [[ -f "$system_header" ]] &&
  { [[ "$(vulkan_minor "$system_header")" -gt 3 ]] || [[ "$(header_version "$system_header")" -ge $MIN_HEADER_VERSION ]]; }; then
  include=/usr/include
else
  include="$sdk/include"
  if [[ ! -f "$include/vulkan/vulkan.hpp" ]]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "fetching Vulkan headers $VERSION (Debian 13's libvulkan-dev) ..." >&2
    fetch_checked "$DEB_URL" "$work/headers.deb" "$DEB_SHA256"
    dpkg-deb -x "$work/headers.deb" "$work/root"
    mkdir -p "$sdk"
    rm -rf "$include"
    mv "$work/root/usr/include" "$include"
  fi
fi

if [[ "$system" == windows ]]; then
  windows_sdk="$sdk-windows"
  # Include: the Vulkan headers, and the SPIR-V headers (spirv-headers), which the cross compiler does not look
  # for in /usr/include.
  [[ -L "$windows_sdk/Include" ]] && rm "$windows_sdk/Include"
  mkdir -p "$windows_sdk/Include" "$windows_sdk/Lib" "$windows_sdk/Bin"
  ln -sfn "$include/vulkan" "$windows_sdk/Include/vulkan"
  ln -sfn "$include/vk_video" "$windows_sdk/Include/vk_video"
  ln -sfn /usr/include/spirv "$windows_sdk/Include/spirv"
  ln -sfn "$glslc" "$windows_sdk/Bin/glslc"
  if [[ ! -f "$windows_sdk/Lib/libvulkan-1.a" ]]; then
    # The loader exports every core command (vkCreateInstance, vkCmdDraw, ...); extension commands end in their
    # vendor's capitals (KHR, EXT) and are reached through vkGet*ProcAddr.
    {
      echo "LIBRARY vulkan-1.dll"
      echo "EXPORTS"
      sed -n 's/^VKAPI_ATTR [^(]* VKAPI_CALL \(vk[A-Za-z0-9]*[a-z0-9]\)(.*/\1/p' "$include/vulkan/vulkan_core.h" | sort -u
    } > "$windows_sdk/Lib/vulkan-1.def"
    x86_64-w64-mingw32-dlltool -d "$windows_sdk/Lib/vulkan-1.def" -l "$windows_sdk/Lib/libvulkan-1.a.partial"
    mv "$windows_sdk/Lib/libvulkan-1.a.partial" "$windows_sdk/Lib/libvulkan-1.a"
  fi
  echo "$windows_sdk"
  exit 0
fi

# FindVulkan looks in $VULKAN_SDK/include, lib and bin; the loader and glslc are the system's.
mkdir -p "$sdk/lib" "$sdk/bin"
[[ "$include" == "$sdk/include" ]] || ln -sfn "$include" "$sdk/include"
ln -sfn "$loader" "$sdk/lib/libvulkan.so"
ln -sfn "$glslc" "$sdk/bin/glslc"
echo "$sdk"
