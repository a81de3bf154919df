#!/usr/bin/env bash
# Regenerates every generated file: the TypeScript and Go client code from
# the protos, and the demo's typed params and rows (`arcana codegen`, from a
# running demo server's Describe) used by the client examples.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --locked --bin arcana
bash clients/ts/generate.sh
bash clients/go/generate.sh

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp)
target/debug/arcana demo --listen "127.0.0.1:$port" >"$log" 2>&1 &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 300); do grep -q "Arcana demo serving on" "$log" && break; sleep 0.1; done
server="http://127.0.0.1:$port"
mkdir -p clients/ts/examples clients/go/examples/demotypes
target/debug/arcana codegen --lang ts --server "$server" --token dev-alice --out clients/ts/examples/demo-types.ts
target/debug/arcana codegen --lang go --server "$server" --token dev-alice --package demotypes --out clients/go/examples/demotypes/demotypes.go
gofmt -w clients/go/examples/demotypes/demotypes.go
echo "generated clients/ts/src/gen, clients/go/arcanapb and the demo types"
