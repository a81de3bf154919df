#!/usr/bin/env bash
# Smoke test of the README's grpcurl tour against `arcana demo`: reflection
# (list, describe), a live subscription over Connect, and a mutation whose
# diff reaches that subscription.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
GRPCURL=${GRPCURL:-$(command -v grpcurl || echo "$(go env GOPATH)/bin/grpcurl")}
ARCANA=${ARCANA:-$root/target/debug/arcana}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
work=$(mktemp -d)
"$ARCANA" demo --listen "$addr" >"$work/demo.out" 2>"$work/demo.err" &
demo=$!
cleanup() { kill -INT "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  grep -q "Arcana demo serving on" "$work/demo.out" 2>/dev/null && break
  kill -0 "$demo" 2>/dev/null || { cat "$work/demo.err"; echo "demo exited"; exit 1; }
  sleep 0.1
done
fail() { echo "grpcurl smoke: $*"; exit 1; }
auth=(-H 'authorization: Bearer dev-alice')

"$GRPCURL" -plaintext "$addr" list >"$work/list"
grep -q '^arcana.v1.ArcanaService$' "$work/list" || fail "list lacks arcana.v1.ArcanaService: $(cat "$work/list")"
grep -q '^grpc.health.v1.Health$' "$work/list" || fail "list lacks health"
"$GRPCURL" -plaintext "$addr" describe arcana.v1.ArcanaService >"$work/describe"
grep -q 'rpc Connect' "$work/describe" || fail "describe lacks Connect"
"$GRPCURL" -plaintext "${auth[@]}" "$addr" arcana.v1.ArcanaService/Describe >"$work/registry"
grep -q '"project_tasks"' "$work/registry" || fail "Describe lacks project_tasks"

# Subscribe and keep the stream open while a mutation lands.
"$GRPCURL" -plaintext "${auth[@]}" -max-time 6 \
  -d '{"request_id": 1, "subscribe": {"graph": "project_tasks", "params": {"project_id": {"int": 1}}}}' \
  "$addr" arcana.v1.ArcanaService/Connect >"$work/stream" 2>&1 &
sub=$!
for _ in $(seq 1 100); do grep -q '"snapshot"' "$work/stream" 2>/dev/null && break; sleep 0.05; done
grep -q '"snapshot"' "$work/stream" || fail "no snapshot: $(cat "$work/stream")"
"$GRPCURL" -plaintext "${auth[@]}" \
  -d '{"mutation": "create_task", "params": {"project_id": {"int": 1}, "title": {"string": "Smoke test task"}}}' \
  "$addr" arcana.v1.ArcanaService/Mutate >"$work/mutate"
grep -q '"id"' "$work/mutate" || fail "Mutate returned no id: $(cat "$work/mutate")"
for _ in $(seq 1 100); do grep -q 'Smoke test task' "$work/stream" 2>/dev/null && break; sleep 0.05; done
grep -q 'Smoke test task' "$work/stream" || fail "the diff did not reach the subscriber: $(cat "$work/stream")"
kill "$sub" 2>/dev/null || true
echo "grpcurl smoke: list, describe, subscribe and mutate OK"
