#!/usr/bin/env bash
# Builds the stove engine in release mode and packs a GGUF into one executable under dist/.
#
#   scripts/bundle.sh MODEL.gguf [OUT] [-- DEFAULT ARGS...]
#   scripts/bundle.sh ~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf dist/qwen.stove -- --ctx-size 8192
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
model="$1"; shift
name="$(basename "$model" .gguf)"
out="dist/${name%%.Q[0-9]*}.stove"
if [[ $# -gt 0 && "$1" != "--" ]]; then out="$1"; shift; fi

source scripts/build-env.sh
stove_build >&2
mkdir -p "$(dirname "$out")"
"$CARGO_TARGET_DIR/release/stove" pack --model "$model" -o "$out" "$@"
