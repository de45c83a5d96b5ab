# Sourced by the scripts that build stove, so they all build the same engine in the same place:
#   CARGO_TARGET_DIR  outside the clone (llama.cpp is compiled once per machine, not once per checkout)
#   VULKAN_SDK        headers, loader and glslc for ggml's Vulkan module (scripts/vulkan-sdk.sh)
#   linker flags      every engine file links against glibc 2.28's symbol versions (scripts/glibc-compat.sh),
#                     so a file built here starts on systems as old as Debian 10, RHEL 8 and Ubuntu 20.04
#   GGML_RPC          ggml's RPC backend module, for `stove worker` and `--worker`
#   STOVE_FEATURES    the cargo features of the engine every script builds: the Vulkan module, which loads only
#                     where a Vulkan driver is installed, so the same file still runs everywhere else
#   stove_build       the one way the scripts build this machine's engine (below)
# Run scripts/setup.sh first: it installs what the Vulkan build needs.

stove_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stove/target}"
# llama-cpp-sys-2 hard-links its libraries' symlinks into the target folder and fails ("File exists") when an
# earlier build of other features left dangling ones there; stove loads them from the build folder, not there.
find "$CARGO_TARGET_DIR/release" -maxdepth 2 -xtype l -name 'lib*.so*' -delete 2>/dev/null || true
VULKAN_SDK="$("$stove_scripts/vulkan-sdk.sh")"
export VULKAN_SDK

if [[ "$(uname -m)" == x86_64 ]]; then
  glibc_compat="$("$stove_scripts/glibc-compat.sh")"
  # -B: glibc 2.28's start files; -L: its stub libraries, found before the system's; compat.o: the few newer
  # functions. These replace .cargo/config.toml's defaults, so they repeat its static C++ runtime flags.
  # The folder is named after its contents: a new compat.c changes these flags, and stove_build (below) then
  # starts llama.cpp's build over.
  link="-B$glibc_compat -L$glibc_compat $glibc_compat/compat.o"
  export CMAKE_SHARED_LINKER_FLAGS="-static-libstdc++ -Wl,--exclude-libs,ALL -pthread $link"
  # Modules bind to their own definitions first: see .cargo/config.toml.
  export CMAKE_MODULE_LINKER_FLAGS="$CMAKE_SHARED_LINKER_FLAGS -Wl,-Bsymbolic"
  # The build machine's libgcc_s.so.1 refers to newer glibc symbols; the target's own libgcc_s is what runs.
  # Added once: a shell that sources this file again (a script run from one that did) would link compat.o twice.
  case " ${RUSTFLAGS:-} " in
    *" -C link-arg=$glibc_compat/compat.o "*) ;;
    *) export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-B$glibc_compat -C link-arg=-L$glibc_compat \
-C link-arg=$glibc_compat/compat.o -C link-arg=-Wl,--allow-shlib-undefined" ;;
  esac
fi
STOVE_FEATURES="vulkan"
# ggml's RPC backend, one more loadable module (libggml-rpc.so): `stove worker` serves this machine's devices
# with it and `--worker` adds another machine's (src/rpc/). llama-cpp-sys-2 passes GGML_* on to llama.cpp's CMake.
export GGML_RPC=ON

# Every script builds this machine's engine with this: llama-cpp-sys-2 configures llama.cpp's CMake once per
# build folder and keeps the first flags, so llama-build-stamp starts that build over when the flags above
# changed since the last build here; then cargo builds with the engine's features. (A plain `cargo build` in
# the clone builds without the Vulkan module and the glibc 2.28 links: .cargo/config.toml.)
stove_build() {
  "$stove_scripts/llama-build-stamp" "$CARGO_TARGET_DIR"
  cargo build --release --locked --features "$STOVE_FEATURES" "$@"
}
