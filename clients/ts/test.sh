#!/usr/bin/env bash
# Installs what the TS client's tests need, builds, and runs the Node and
# browser tests against a real `arcana demo` server. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
ROOT=$(cd ../.. && pwd)

step() { printf '\n== %s\n' "$*"; }

step "npm ci"
npm ci --no-audit --no-fund

if [ ! -x /usr/bin/chromium ]; then
  step "installing Debian's chromium"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

if [ ! -x "$ROOT/target/debug/arcana" ] || [ "${ARCANA_REBUILD:-}" = 1 ]; then
  step "building the server"
  (cd "$ROOT" && cargo build --bin arcana)
fi

step "checking that src/gen matches the protos"
./generate.sh
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$ROOT" diff --exit-code -- "$HERE/src/gen"
  if [ -n "$(git -C "$ROOT" status --porcelain -- "$HERE/src/gen")" ]; then
    echo "src/gen has files git does not track: run ./generate.sh and commit" >&2
    exit 1
  fi
fi

step "building"
rm -rf dist dist-test
npx tsc -p tsconfig.json
npx tsc -p tsconfig.test.json

# Runs node's test runner on the given files. Fails when a test failed, was
# skipped or left as todo (neither proves anything), or when none ran.
node_tests() {
  local tap rc=0
  tap="$(mktemp)"
  node --test --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" "$@" || rc=1
  if grep -Eq '^# (skipped|todo) [1-9]' "$tap"; then
    echo "tests were skipped or left as todo:" >&2
    grep -E '# (SKIP|TODO)' "$tap" >&2 || true
    rc=1
  fi
  if ! grep -Eq '^# tests [1-9]' "$tap"; then
    echo "no tests ran: $*" >&2
    rc=1
  fi
  rm -f "$tap"
  return "$rc"
}

status=0
step "web client size (minified + gzipped, with dependencies)"
node scripts/size.mjs || status=1

step "Node tests"
node_tests --test-concurrency=1 dist-test/test/node/*.test.js || status=1

step "package install test"
node_tests dist-test/test/package/*.test.js || status=1

step "browser test (headless Chromium)"
node_tests --test-concurrency=1 dist-test/test/browser/*.test.js || status=1

if [ "$status" = 0 ]; then
  echo "screenshot: $HERE/artifacts/browser.png"
fi
exit "$status"
