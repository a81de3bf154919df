#!/usr/bin/env bash
# Regenerates every generated file: the TypeScript and Go client code from
# the protos, and the demo's typed params and rows used by the client
# examples (`arcana codegen --config`, from the demo config against a
# throwaway PostgreSQL loaded with the demo schema; no server).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --locked --bin arcana
bash clients/ts/generate.sh
bash clients/go/generate.sh
bash scripts/demo-types.sh .
echo "generated clients/ts/src/gen, clients/go/arcanapb and the demo types"
