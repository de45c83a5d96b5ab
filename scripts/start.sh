#!/usr/bin/env bash
# From a fresh clone to a chat page: installs what is missing, fetches the default model (SmolLM2-135M-Instruct),
# builds stove, packs dist/SmolLM2-135M-Instruct.stove and starts it. Extra arguments go to the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
model="$(scripts/fetch-model.sh)"
scripts/bundle.sh "$model" dist/SmolLM2-135M-Instruct.stove
exec dist/SmolLM2-135M-Instruct.stove "$@"
