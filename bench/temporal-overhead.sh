#!/usr/bin/env bash
# Benchmark (issue 4): N tiny exports through API -> Temporal -> worker against N bare
# one-activity workflows on the same Temporal server, measured by one process
# (crates/worker/benches/temporal_overhead.rs). Starts a dev server, a worker and the API (release
# builds, PostgreSQL records, local storage) on free ports and stops them afterwards.
# Usage: bench/temporal-overhead.sh [n=200] [concurrency=8]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release

N=${1:-200}
C=${2:-8}
ADMIN_URL=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=userexport_bench_temporal
export DATABASE_URL="${ADMIN_URL%/*}/$DB"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/userexport-tbench.XXXXXX")
KEY=$(openssl rand -base64 32)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "building release binaries and the benchmark"
cargo build --release --locked -p app -p worker --quiet
cargo bench --locked -p worker --bench temporal_overhead --no-run --quiet

TEMPORAL_PORT=$(free_port)
temporal server start-dev --headless --ip 127.0.0.1 --port "$TEMPORAL_PORT" --ui-port "$(free_port)" \
  --log-level error >"$WORK/temporal.log" 2>&1 &
PIDS+=($!)
export TEMPORAL_ADDRESS=127.0.0.1:$TEMPORAL_PORT
for _ in $(seq 300); do temporal operator cluster health --address "$TEMPORAL_ADDRESS" 2>/dev/null | grep -q SERVING && break; sleep 0.2; done

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
$BIN/userexport seed --scope acme/prod --count 10 2>/dev/null   # tiny exports

export USEREXPORT_USERS=postgres USEREXPORT_EXPORTS=postgres USEREXPORT_STORAGE=local
export USEREXPORT_DATA_DIR=$WORK/data USEREXPORT_TASK_QUEUE=bench-exports RUST_LOG=warn
USEREXPORT_MAX_CONCURRENT_EXPORTS=$((C * 2)) $BIN/userexport-worker >"$WORK/worker.log" 2>&1 &
PIDS+=($!)
API_PORT=$(free_port)
USEREXPORT_ORCHESTRATOR=temporal USEREXPORT_API_KEYS="$KEY=acme/prod" USEREXPORT_LISTEN=127.0.0.1:$API_PORT \
  USEREXPORT_RATE_LIMIT_PER_S=100000 USEREXPORT_RATE_LIMIT_BURST=100000 \
  $BIN/userexport >"$WORK/api.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$API_PORT/readyz" >/dev/null && break; sleep 0.1; done

RUST_BACKTRACE=0 cargo bench --locked -p worker --bench temporal_overhead --quiet -- \
  --temporal "$TEMPORAL_ADDRESS" --api "http://127.0.0.1:$API_PORT" --key "$KEY" -n "$N" -c "$C" || {
  echo "--- API log"; tail -n 20 "$WORK/api.log"; echo "--- worker log"; tail -n 20 "$WORK/worker.log"; exit 1; }
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
