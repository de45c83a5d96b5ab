#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, fetches the default model, then runs
# formatting and lint checks and every test (unit, integration, browser) against the real model.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
source scripts/build-env.sh
export STOVE_TEST_MODEL="$(scripts/fetch-model.sh)"

cargo fmt --check
stove_build
cargo clippy --release --locked --all-targets --features "$STOVE_FEATURES" -- -D warnings
cargo test --release --locked --features "$STOVE_FEATURES"

# The release script builds for 40 minutes and is not run here; its plan is: every file of the set is listed.
plan="$(scripts/release --dry-run)"
# The version is the one the release script read from Cargo.toml (its plan's first line), not read twice.
version="$(head -1 <<<"$plan" | sed -n 's/^stove \(.*\) release into .*/\1/p')"
for file in "stove-$version-linux-x86_64" "stove-$version-linux-aarch64" "stove-$version-windows-x86_64.exe" \
  "smollm2-135m-instruct-$version.stove" SHA256SUMS SHA256SUMS.sig stove-release.pub RELEASE-NOTES.md; do
  grep -q -- "  $file " <<<"$plan" || { echo "scripts/release --dry-run does not list $file:"; echo "$plan"; exit 1; } >&2
done
