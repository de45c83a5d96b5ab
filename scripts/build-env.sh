# Sourced by the scripts that build stove, so they all build the same engine in the same place:
#   CARGO_TARGET_DIR  outside the clone (llama.cpp is compiled once per machine, not once per checkout)
#   VULKAN_SDK        headers, loader and glslc for ggml's Vulkan module (scripts/vulkan-sdk.sh)
#   STOVE_FEATURES    the cargo features of the engine every script builds: the Vulkan module, which loads only
#                     where a Vulkan driver is installed, so the same file still runs everywhere else
# Run scripts/setup.sh first: it installs what the Vulkan build needs.

stove_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stove/target}"
# llama-cpp-sys-2 hard-links its libraries' symlinks into the target folder and fails ("File exists") when an
# earlier build of other features left dangling ones there; stove loads them from the build folder, not there.
find "$CARGO_TARGET_DIR/release" -maxdepth 2 -xtype l -name 'lib*.so*' -delete 2>/dev/null || true
VULKAN_SDK="$("$stove_scripts/vulkan-sdk.sh")"
export VULKAN_SDK
STOVE_FEATURES="vulkan"
