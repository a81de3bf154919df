#!/usr/bin/env bash
# Fails (showing the diff) when the committed demo types differ from what
# `arcana codegen --config` generates now: run scripts/generate.sh and
# commit the result.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --locked --bin arcana
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/demo-types.sh "$tmp"
status=0
for f in clients/ts/examples/demo-types.ts \
  clients/go/examples/demotypes/demotypes.go \
  clients/swift/Examples/DemoTypes.swift; do
  if ! diff -u "$f" "$tmp/$f"; then
    status=1
  fi
done
if [ "$status" -ne 0 ]; then
  echo "codegen-check: the demo types above are stale; run scripts/generate.sh and commit them" >&2
  exit 1
fi
echo "codegen-check: the demo types are up to date"
