#!/usr/bin/env bash
# Regenerates clients/go/arcanapb from proto/arcana/v1. The output is committed;
# CI can run this script and then `git diff --exit-code clients/go/arcanapb`.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.6
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1
BUF_VERSION=1.75.0

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# Pinned plugins in a private bin directory, so a different version elsewhere
# on PATH cannot change the output.
bin="$here/.bin"
mkdir -p "$bin"
want="$PROTOC_GEN_GO_VERSION $PROTOC_GEN_GO_GRPC_VERSION"
if [[ ! -x "$bin/protoc-gen-go" || ! -x "$bin/protoc-gen-go-grpc" || "$(cat "$bin/versions" 2>/dev/null)" != "$want" ]]; then
  GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
  echo "$want" > "$bin/versions"
fi
export PATH="$bin:$PATH"

# buf: the npm package, or the Go module when npx is not available.
if command -v npx >/dev/null 2>&1; then
  buf=(npx --yes "@bufbuild/buf@$BUF_VERSION")
else
  buf=(go run "github.com/bufbuild/buf/cmd/buf@v$BUF_VERSION")
fi

rm -f "$here"/arcanapb/*.pb.go
cd "$here"
"${buf[@]}" generate "$root/proto" --template "$here/buf.gen.yaml"
echo "generated: $(ls arcanapb/*.pb.go | tr '\n' ' ')"
