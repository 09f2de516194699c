#!/usr/bin/env bash
# Benchmark (issue 9): what an export interrupted by a lost worker keeps. USERS users in
# PostgreSQL, Temporal mode (heartbeat timeout 5 s), gzip CSV, release builds, for local storage
# and for S3 (moto):
#   uninterrupted  the export on one worker (wall W)
#   no checkpoints the same with USEREXPORT_CHECKPOINTS=false: what checkpointing costs (W / W_off)
#   killed         the same with the worker SIGKILLed at 70 % and a new worker started at once:
#                  wall K; detection delay D (kill -> the next attempt shows on the record: the
#                  heartbeat timeout and the retry wait); rows read twice (rows recorded when
#                  killed - the row the next attempt resumed from; the record lags the stream by
#                  at most one progress write, 500 ms); ratio (K - D) / W (target <= 1.2).
# The file of the killed run must have the uninterrupted run's SHA-256 and size.
# Needs PostgreSQL on 127.0.0.1:5432, the temporal CLI and moto_server.
# Usage: bench/resume.sh [users=2000000]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release

USERS=${1:-2000000}
ADMIN_URL=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=userexport_bench_resume
export DATABASE_URL="${ADMIN_URL%/*}/$DB"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/userexport-resume.XXXXXX")
KEY=$(openssl rand -base64 32)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }

echo "building release binaries"
cargo build --release --locked -p app -p worker --quiet

TEMPORAL_PORT=$(free_port)
temporal server start-dev --headless --ip 127.0.0.1 --port "$TEMPORAL_PORT" --ui-port "$(free_port)" \
  --log-level error >"$WORK/temporal.log" 2>&1 &
PIDS+=($!)
export TEMPORAL_ADDRESS=127.0.0.1:$TEMPORAL_PORT
for _ in $(seq 300); do temporal operator cluster health --address "$TEMPORAL_ADDRESS" 2>/dev/null | grep -q SERVING && break; sleep 0.2; done

MOTO_PORT=$(free_port)
python3 scripts/moto_server.py -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
export USEREXPORT_S3_BUCKET=bench
for _ in $(seq 50); do curl -sf "$AWS_ENDPOINT_URL/" >/dev/null && break; sleep 0.2; done
curl -sf -X PUT "$AWS_ENDPOINT_URL/bench" >/dev/null

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
$BIN/userexport migrate
echo "seeding $USERS users"
$BIN/userexport seed --scope acme/prod --count "$USERS" >/dev/null
psql "$DATABASE_URL" -qc "VACUUM ANALYZE users"

export USEREXPORT_USERS=postgres USEREXPORT_EXPORTS=postgres USEREXPORT_DATA_DIR=$WORK/data
export USEREXPORT_HEARTBEAT_TIMEOUT_S=5 USEREXPORT_RETRY_INITIAL_INTERVAL_MS=200 RUST_LOG=info,tower_http=warn

WORKER_PID=
start_worker() { # [extra env...]
  env "$@" $BIN/userexport-worker >>"$WORK/worker.log" 2>&1 &
  WORKER_PID=$!; PIDS+=("$WORKER_PID")
}
start_api() {
  local port; port=$(free_port)
  USEREXPORT_ORCHESTRATOR=temporal USEREXPORT_API_KEYS="$KEY=acme/prod" USEREXPORT_LISTEN=127.0.0.1:$port \
    USEREXPORT_RATE_LIMIT_PER_S=100000 USEREXPORT_RATE_LIMIT_BURST=100000 \
    $BIN/userexport >>"$WORK/api.log" 2>&1 &
  API_PID=$!; PIDS+=("$API_PID"); API=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -sf "$API/readyz" >/dev/null && return; sleep 0.1; done
  echo "API did not start:"; tail -n 20 "$WORK/api.log"; exit 1
}
get() { curl -sf "$API/v1/exports/$1" -H "Authorization: Bearer $KEY"; }
request() {
  curl -sf -X POST "$API/v1/exports" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"format":"csv","compression":"gzip"}' | field '["id"]'
}
# wait_done ID: polls until the export is terminal; fails unless completed.
wait_done() {
  local body status
  while :; do
    body=$(get "$1"); status=$(echo "$body" | field '["status"]')
    case $status in completed) echo "$body" >"$WORK/last.json"; return ;; failed|cancelled) echo "export $status: $body"; exit 1 ;; esac
    sleep 0.05
  done
}

# run_once: one uninterrupted export; prints its wall and leaves the record in $WORK/last.json.
run_once() {
  local t0 id; t0=$(now); id=$(request); wait_done "$id"; calc "$(now) - $t0"
}

# run_killed: an export whose worker is SIGKILLed at 70 %; a new worker starts at once. Sets K,
# D, ROWS_AT_KILL and RESUMED (not in a subshell: it replaces the worker).
run_killed() {
  local t0 id body pct rows_at_kill t_kill t_next
  t0=$(now); id=$(request)
  while :; do
    body=$(get "$id"); pct=$(echo "$body" | field '["progress"]["percent"] or 0')
    [ "$pct" -ge 70 ] && break
    [ "$(echo "$body" | field '["status"]')" = completed ] && { echo "finished before 70 %"; exit 1; }
    sleep 0.02
  done
  kill -9 "$WORKER_PID"; t_kill=$(now)
  rows_at_kill=$(echo "$body" | field '["progress"]["rows_written"]')
  start_worker
  while :; do
    body=$(get "$id")
    [ "$(echo "$body" | field '["attempt"]')" -ge 2 ] && break
    sleep 0.02
  done
  t_next=$(now)
  wait_done "$id"
  K=$(calc "$(now) - $t0"); D=$(calc "$t_next - $t_kill"); ROWS_AT_KILL=$rows_at_kill
  RESUMED=$(field '["resumed_from_row"]' <"$WORK/last.json")
}

for storage in local s3; do
  echo; echo "== $storage storage, $USERS users, gzip CSV =="
  export USEREXPORT_STORAGE=$storage
  start_api
  start_worker
  w=$(run_once); sha=$(field '["sha256"]' <"$WORK/last.json"); size=$(field '["bytes"]' <"$WORK/last.json")
  kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true
  start_worker USEREXPORT_CHECKPOINTS=false
  w_off=$(run_once)
  kill "$WORKER_PID"; wait "$WORKER_PID" 2>/dev/null || true
  start_worker
  run_killed
  [ "$(field '["sha256"]' <"$WORK/last.json")" = "$sha" ] && [ "$(field '["bytes"]' <"$WORK/last.json")" = "$size" ] \
    || { echo "the killed run's file differs from the uninterrupted one"; exit 1; }
  kill "$WORKER_PID" "$API_PID"; wait "$WORKER_PID" "$API_PID" 2>/dev/null || true
  printf 'uninterrupted      %6.2f s  (%s bytes, sha256 %s)\n' "$w" "$size" "${sha:0:16}"
  printf 'no checkpoints     %6.2f s  checkpoint cost %s (target <= 1.05)\n' "$w_off" "$(calc "round($w / $w_off, 3)")"
  printf 'killed at 70 %%     %6.2f s  detection %.2f s  resumed from row %s of %s recorded at the kill\n' "$K" "$D" "$RESUMED" "$ROWS_AT_KILL"
  printf '                   rows read twice %s  ratio (killed - detection) / uninterrupted %s (target <= 1.2)\n' \
    "$(calc "max(0, $ROWS_AT_KILL - $RESUMED)")" "$(calc "round(($K - $D) / $w, 3)")"
  echo "                   same SHA-256 and size as the uninterrupted file"
done
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
