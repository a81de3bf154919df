#!/usr/bin/env bash
# Writes the demo's generated types under DIR (the repository root, or a
# scratch folder to compare with it): TypeScript, Go and Swift, from
# demo/arcana.toml against a throwaway PostgreSQL loaded with
# demo/schema.sql. Needs target/debug/arcana built.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: demo-types.sh DIR}
arcana="$root/target/debug/arcana"
gen() {
  "$arcana" codegen --config "$root/demo/arcana.toml" --schema "$root/demo/schema.sql" "$@"
}
gen --lang ts --out "$out/clients/ts/examples/demo-types.ts"
gen --lang go --package demotypes --out "$out/clients/go/examples/demotypes/demotypes.go"
gofmt -w "$out/clients/go/examples/demotypes/demotypes.go"
gen --lang swift --out "$out/clients/swift/Examples/DemoTypes.swift"
