#!/usr/bin/env bash
# Prepares a folder that makes this machine's compilers link for glibc 2.28 (Debian 10, RHEL 8, Ubuntu 20.04
# and newer), and prints it. The engine is built here against a newer glibc, whose libc.so hands every
# symbol its newest version (stat@GLIBC_2.33, pthread_create@GLIBC_2.34, …), so a file built here would refuse
# to start on an older system. Linking against this folder instead binds each symbol to the version glibc 2.28
# has:
#   - stub libc.so.6, libm.so.6, libpthread.so.0, … holding exactly glibc 2.28's symbols and versions, with
#     libc_nonshared.a and the start files (Scrt1.o, crti.o, crtn.o) of that version, all made by zig's
#     glibc support (the `ziglang` wheel from PyPI, SHA-256 pinned; used only to produce these files: the
#     compilers stay this machine's gcc and rustc, the C++ runtime stays its static libstdc++);
#   - compat.o (scripts/glibc-compat/compat.c): the handful of newer functions that code compiled here still
#     refers to, written with glibc 2.28's.
# Idempotent, and offline once cached. scripts/build-env.sh passes the folder to the linkers, and
# scripts/build-engine to the aarch64 cross linkers.
#
#   scripts/glibc-compat.sh          # -> ~/.cache/stove/glibc-2.28-<hash of compat.c and this script>
#   scripts/glibc-compat.sh aarch64  # -> ~/.cache/stove/glibc-2.28-aarch64-<hash>, for the cross build
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC="2.28"
ZIG_WHEEL="ziglang==0.13.0"
ZIG_FILE="ziglang-0.13.0-py3-none-manylinux_2_12_x86_64.manylinux2010_x86_64.musllinux_1_1_x86_64.whl"
ZIG_SHA256="3ce0c9f16547e5d61b32e0d226926e9a2552ef4b91fccf7ab5ea1a623a77824b"

# The build machine must be x86-64 (the zig wheel is); the target is x86-64 or 64-bit ARM.
if [[ "$(uname -m)" != x86_64 ]]; then
  echo "error: scripts/glibc-compat.sh runs on x86-64 only" >&2
  exit 1
fi
arch="${1:-x86_64}"
case "$arch" in
  x86_64) loader="ld-linux-x86-64.so.2" cc=(cc) suffix="" ;;
  aarch64) loader="ld-linux-aarch64.so.1" cc=(aarch64-linux-gnu-gcc) suffix="-aarch64" ;;
  *) echo "usage: scripts/glibc-compat.sh [x86_64|aarch64]" >&2; exit 2 ;;
esac
cache="${STOVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stove}"
# A new compat.c or script makes a new folder, so a build never links a stale copy.
version="$(cat scripts/glibc-compat/compat.c scripts/glibc-compat.sh | sha256sum | cut -c1-12)"
out="$cache/glibc-$GLIBC$suffix-$version"
if [[ -f "$out/done" ]]; then
  echo "$out"
  exit 0
fi

zig_dir="$cache/zig-0.13.0"
if [[ ! -x "$zig_dir/ziglang/zig" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "fetching $ZIG_WHEEL from PyPI (for its glibc $GLIBC stubs) ..." >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_12_x86_64 \
    --dest "$work" "$ZIG_WHEEL" >&2
  actual="$(sha256sum "$work/$ZIG_FILE" | cut -d' ' -f1)"
  if [[ "$actual" != "$ZIG_SHA256" ]]; then
    echo "error: $ZIG_FILE has SHA-256 $actual, expected $ZIG_SHA256; not using it" >&2
    exit 1
  fi
  rm -rf "$zig_dir.partial"
  python3 -m zipfile -e "$work/$ZIG_FILE" "$zig_dir.partial"
  chmod +x "$zig_dir.partial/ziglang/zig"
  rm -rf "$zig_dir"
  mv "$zig_dir.partial" "$zig_dir"
fi

# Linking a small program for $arch-linux-gnu.2.28 makes zig build its stubs and start
# files; its verbose link lines say where they are.
stage="$(mktemp -d)"
trap 'rm -rf "$stage" "${work:-}"' EXIT
echo 'int main(void) { return 0; }' >"$stage/main.c"
export ZIG_GLOBAL_CACHE_DIR="$cache/zig-cache"
links="$("$zig_dir/ziglang/zig" cc -target "$arch-linux-gnu.$GLIBC" -o "$stage/main" "$stage/main.c" -v 2>&1 | grep ld.lld)"
file_in_link() { tr ' ' '\n' <<<"$links" | grep "/$1\$" | head -1; }
mkdir -p "$stage/out"
for file in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libutil.so.1 libc_nonshared.a Scrt1.o crti.o crtn.o; do
  path="$(file_in_link "$file")"
  [[ -n "$path" ]] || { echo "error: zig's link line names no $file" >&2; exit 1; }
  cp "$path" "$stage/out/$file"
done
cp "$(dirname "$(file_in_link libc.so.6)")/libld.so.2" "$stage/out/$loader"
cp "$stage/out/Scrt1.o" "$stage/out/crt1.o"

# `-lc`, `-lm`, … find these scripts first and so link the stubs.
cd "$stage/out"
echo "GROUP ( $out/libc.so.6 $out/libc_nonshared.a AS_NEEDED ( $out/$loader ) )" >libc.so
for pair in m:libm.so.6 pthread:libpthread.so.0 dl:libdl.so.2 rt:librt.so.1 util:libutil.so.1; do
  echo "GROUP ( $out/${pair#*:} )" >"lib${pair%%:*}.so"
done
cd - >/dev/null
"${cc[@]}" -O2 -fPIC -Wall -Wextra -Werror -c scripts/glibc-compat/compat.c -o "$stage/out/compat.o"
touch "$stage/out/done"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$stage/out" "$out"
echo "$out"
