#!/usr/bin/env bash
# Runs every test: formatting and lints, the Rust unit and end-to-end tests
# (real PostgreSQL, real gRPC), the grpcurl smoke test, and each client's
# tests against the real server. Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v grpcurl >/dev/null && [ ! -x "$(go env GOPATH)/bin/grpcurl" ]; then
  echo "installing grpcurl"
  go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
fi

# The cluster tests need nats-server; install it once, before they start
# in parallel.
bash scripts/nats.sh install >/dev/null

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo build --locked --bin arcana
cargo test --locked
bash scripts/grpcurl-smoke.sh
# Each client's script fails when one of its tests was skipped.
for client in clients/go clients/ts; do
  echo "== $client"
  bash "$client/test.sh"
done

echo "== generated code is current"
bash scripts/generate.sh
git diff --exit-code -- clients/ts/src/gen clients/go/arcanapb clients/ts/examples/demo-types.ts clients/go/examples/demotypes clients/swift/Examples/DemoTypes.swift \
  || { echo "generated code is out of date: run scripts/generate.sh and commit"; exit 1; }
(cd clients/ts && npx tsc -p examples --noEmit)
echo "all tests passed"
