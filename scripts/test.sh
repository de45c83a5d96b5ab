#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, fetches the default model, then runs
# formatting and lint checks and every test (unit, integration, browser) against the real model.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
source scripts/build-env.sh
export STOVE_TEST_MODEL="$(scripts/fetch-model.sh)"

cargo fmt --check
cargo clippy --release --locked --all-targets --features "$STOVE_FEATURES" -- -D warnings
cargo test --release --locked --features "$STOVE_FEATURES"
