#!/usr/bin/env bash
# Regenerates src/gen from ../../proto with buf and protoc-gen-es (both from npm).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/buf ] || [ ! -x node_modules/.bin/protoc-gen-es ]; then
  npm ci --no-audit --no-fund
fi
node_modules/.bin/buf generate --template buf.gen.yaml
