# Sourced by the scripts that fetch pinned files (cuda-toolkit.sh, llama-cpp-tools, run-on-old-glibc,
# vulkan-sdk.sh): one way to download and one way to check a SHA-256, so every pinned file is
# refused the same way when it is not what was pinned. glibc-compat.sh still checks its one wheel itself: its own
# text is part of the name of the folder it builds, and every engine build links against that folder, so editing
# it rebuilds llama.cpp everywhere; it moves to this helper the next time it changes for a reason of its own.

# check_sha256 FILE EXPECTED: returns when FILE's SHA-256 is EXPECTED; otherwise removes FILE (so a later run
# fetches it again instead of trusting it) and exits naming both digests.
check_sha256() {
  local file="$1" expected="$2" actual
  actual="$(sha256sum "$file" | cut -d' ' -f1)"
  if [[ "$actual" != "$expected" ]]; then
    rm -f "$file"
    echo "error: $(basename "$file") has SHA-256 $actual, expected $expected; removed, not used" >&2
    exit 1
  fi
}

# fetch_checked URL FILE EXPECTED: downloads URL to FILE unless it is already there (through FILE.partial, so
# an interrupted download never looks complete), then checks it with check_sha256.
fetch_checked() {
  local url="$1" file="$2" expected="$3"
  if [[ ! -f "$file" ]]; then
    curl -fsSL --retry 3 -o "$file.partial" "$url"
    mv "$file.partial" "$file"
  fi
  check_sha256 "$file" "$expected"
}
