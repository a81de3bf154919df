#!/usr/bin/env bash
# Runs the Go client's tests against a real Arcana demo server. From a fresh
# machine: builds the server when target/debug/arcana is missing, then runs
# `go test ./...` here (the tests start and stop the server themselves),
# failing when any test was skipped.
# Extra arguments go to `go test` (e.g. ./test.sh -run Reconnect -v).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

bin="${ARCANA_BIN:-$root/target/debug/arcana}"
if [[ ! -x "$bin" ]]; then
  echo "building the server (cargo build --bin arcana)..."
  (cd "$root" && cargo build --bin arcana)
  bin="$root/target/debug/arcana"
fi
export ARCANA_BIN="$bin"

# Some tests write to the demo database with psql. Debian keeps PostgreSQL's
# binaries under /usr/lib/postgresql/<version>/bin, off PATH; without any,
# the client is installed.
if ! command -v psql >/dev/null; then
  for d in /usr/lib/postgresql/*/bin; do
    if [[ -x "$d/psql" ]]; then PATH="$d:$PATH"; fi
  done
  export PATH
fi
if ! command -v psql >/dev/null; then
  echo "installing psql (postgresql-client)..."
  sudo=""
  if [[ "$(id -u)" != 0 ]]; then sudo=sudo; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y postgresql-client
fi

cd "$here"
go vet ./...
# Verbose, so skipped tests show up: a skipped test proves nothing, so any
# skip fails the run.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
go test -count=1 -v "$@" ./... 2>&1 | tee "$log"
if grep -E '^[[:space:]]*--- SKIP' "$log"; then
  echo "Go tests were skipped (listed above): a test must run or fail" >&2
  exit 1
fi
