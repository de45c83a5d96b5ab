#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, fetches the default model, then runs
# formatting and lint checks and every test (unit, integration, browser) against the real model.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
# Builds are cached outside the clone, so llama.cpp is compiled once per machine, not once per checkout.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stove/target}"
# llama-cpp-sys-2 hard-links its libraries' symlinks into the target folder and fails ("File exists") when an
# earlier build of other features left dangling ones there; stove loads them from the build folder, not there.
find "$CARGO_TARGET_DIR/release" -maxdepth 2 -xtype l -name 'lib*.so*' -delete 2>/dev/null || true
export STOVE_TEST_MODEL="$(scripts/fetch-model.sh)"

cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
cargo test --release --locked
