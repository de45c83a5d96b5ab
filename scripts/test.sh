#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, fetches the default model, then runs
# formatting and lint checks and every test (unit, integration, browser) against the real model.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
# Builds are cached outside the clone, so llama.cpp is compiled once per machine, not once per checkout.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stove/target}"
export STOVE_TEST_MODEL="$(scripts/fetch-model.sh)"

cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked
