#!/usr/bin/env bash
# Generates Sources/Arcana/Generated from proto/arcana/v1. Needs a Swift 6
# toolchain (to build the two plugins when they are not on PATH) and either
# npx or Go (to run the buf CLI). The output is not committed.
set -euo pipefail

BUF_VERSION=1.75.0

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

need_build=()
command -v protoc-gen-swift >/dev/null 2>&1 || need_build+=(protoc-gen-swift)
command -v protoc-gen-grpc-swift-2 >/dev/null 2>&1 || need_build+=(protoc-gen-grpc-swift-2)
if ((${#need_build[@]})); then
  if ! command -v swift >/dev/null 2>&1; then
    echo "error: ${need_build[*]} not on PATH and no Swift toolchain to build them" >&2
    exit 1
  fi
  # Both plugins are products of this package's dependencies (swift-protobuf
  # and grpc-swift-protobuf), so they match the pinned runtime versions.
  for product in "${need_build[@]}"; do
    swift build -c release --product "$product"
  done
  export PATH="$(swift build -c release --show-bin-path):$PATH"
fi

if command -v npx >/dev/null 2>&1; then
  buf=(npx --yes "@bufbuild/buf@$BUF_VERSION")
elif command -v go >/dev/null 2>&1; then
  buf=(go run "github.com/bufbuild/buf/cmd/buf@v$BUF_VERSION")
elif command -v buf >/dev/null 2>&1; then
  buf=(buf)
else
  echo "error: the buf CLI is needed (npx, go, or buf on PATH)" >&2
  exit 1
fi

rm -rf Sources/Arcana/Generated
mkdir -p Sources/Arcana/Generated
"${buf[@]}" generate "$root/proto" --template buf.gen.yaml
ls Sources/Arcana/Generated
