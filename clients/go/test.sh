#!/usr/bin/env bash
# Runs the Go client's tests against a real Arcana demo server. From a fresh
# machine: builds the server when target/debug/arcana is missing, then runs
# `go test ./...` here (the tests start and stop the server themselves).
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

cd "$here"
go vet ./...
go test -count=1 "$@" ./...
