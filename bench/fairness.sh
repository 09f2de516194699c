#!/usr/bin/env bash
# Benchmark (issue 10): fair dispatch between tenants. Tenant A queues BACKLOG exports of A_USERS
# users through the API; then tenant B's synchronous export of 1,000 users runs. Printed per
# orchestrator (in-process, then Temporal with one worker): B's latency alone (the median of
# five) and behind A's queued backlog (the median of five, half a second apart), their ratio
# (target <= 3), the worst of the five, and how many of A's exports were still unfinished when B's
# last completed (B must never wait for A's whole queue). A's backlog counts as queued once its
# newest admitted export's attempt is on the task queue (Temporal mode admits a scope's exports
# max_running at a time: the rest wait as pending rows). B's latency right after A's
# 200 requests were answered is printed apart ("B in A's intake", with its ratio; same target).
# Users and records in PostgreSQL, local
# storage, release builds, 4 export slots (in-process) or activity slots (worker), the default
# USEREXPORT_TENANT_MAX_RUNNING of 2; A's max_unfinished is raised so its whole backlog is taken.
# Needs PostgreSQL on 127.0.0.1:5432 and the temporal CLI.
# Usage: bench/fairness.sh [backlog=200] [a_users=20000]
# BENCH_PROFILE=debug runs debug builds instead of release ones (quicker to build, slower to run).
set -euo pipefail
cd "$(dirname "$0")/.."

BACKLOG=${1:-200}
A_USERS=${2:-20000}
B_USERS=1000
ADMIN_URL=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=userexport_bench_fairness
export DATABASE_URL="${ADMIN_URL%/*}/$DB"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/userexport-fairness.XXXXXX")
KEY_A=bench-key-tenant-a-0123456789abcdef
KEY_B=bench-key-tenant-b-0123456789abcdef
PIDS=()
# BENCH_KEEP_LOGS=DIR keeps the API's, the worker's and the server's logs there.
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  [ -z "${BENCH_KEEP_LOGS:-}" ] || cp "$WORK"/*.log "$BENCH_KEEP_LOGS"/ 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
calc() { python3 -c "print($1)"; }
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1].split()))' "$1"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }

PROFILE=${BENCH_PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE
echo "building $PROFILE binaries"
if [ "$PROFILE" = release ]; then cargo build --release --locked -p app -p worker --quiet
else cargo build --locked -p app -p worker --quiet; fi

# Fairness needs the new matcher with fairness on, and one partition so that the few pollers of
# a test see every task (the flags scripts/test-all.sh uses).
TEMPORAL_PORT=$(free_port)
temporal server start-dev --headless --ip 127.0.0.1 --port "$TEMPORAL_PORT" --ui-port "$(free_port)" \
  --dynamic-config-value matching.useNewMatcher=true --dynamic-config-value matching.enableFairness=true \
  --dynamic-config-value matching.numTaskqueueReadPartitions=1 \
  --dynamic-config-value matching.numTaskqueueWritePartitions=1 \
  --log-level error >"$WORK/temporal.log" 2>&1 &
PIDS+=($!)
export TEMPORAL_ADDRESS=127.0.0.1:$TEMPORAL_PORT
for _ in $(seq 300); do temporal operator cluster health --address "$TEMPORAL_ADDRESS" 2>/dev/null | grep -q SERVING && break; sleep 0.2; done

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
$BIN/userexport migrate
echo "seeding $A_USERS users of tenant-a/prod and $B_USERS of tenant-b/prod"
$BIN/userexport seed --scope tenant-a/prod --count "$A_USERS" >/dev/null
$BIN/userexport seed --scope tenant-b/prod --count "$B_USERS" >/dev/null
psql "$DATABASE_URL" -qc "VACUUM ANALYZE users"

export USEREXPORT_USERS=postgres USEREXPORT_EXPORTS=postgres USEREXPORT_STORAGE=local
export USEREXPORT_DATA_DIR=$WORK/data USEREXPORT_MAX_CONCURRENT_EXPORTS=4 RUST_LOG=warn
export USEREXPORT_API_KEYS="$KEY_A=tenant-a/prod,$KEY_B=tenant-b/prod"
export USEREXPORT_TENANTS="[{\"scope\":\"tenant-a/prod\",\"quotas\":{\"max_unfinished\":$((BACKLOG + 10))}}]"
export USEREXPORT_SYNC_TIMEOUT_MAX_S=600
# A queues its backlog in one burst: above the default per-key rate limit, which is not what is measured.
export USEREXPORT_RATE_LIMIT_PER_S=100000 USEREXPORT_RATE_LIMIT_BURST=100000

start_api() { # orchestrator
  local port; port=$(free_port)
  USEREXPORT_ORCHESTRATOR=$1 USEREXPORT_LISTEN=127.0.0.1:$port $BIN/userexport >>"$WORK/api.log" 2>&1 &
  API_PID=$!; PIDS+=("$API_PID"); API=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -sf "$API/readyz" >/dev/null && return; sleep 0.1; done
  echo "API did not start:"; tail -n 20 "$WORK/api.log"; exit 1
}

# b_sync: B's synchronous export (polled on if the wait ends first); prints its latency, up to the
# answer that said `completed`. The clock stops when curl returns: parsing the answer starts a
# Python, which on the loaded machine takes longer than B's export and is not B's latency.
b_sync() {
  local t0 t1 body id status
  t0=$(now)
  body=$(curl -sf -X POST "$API/v1/exports/sync?timeout_s=600" -H "Authorization: Bearer $KEY_B" \
    -H 'Content-Type: application/json' -d '{"format":"csv"}')
  t1=$(now)
  id=$(echo "$body" | field '["id"]'); status=$(echo "$body" | field '["status"]')
  while [ "$status" != completed ]; do
    case $status in failed|cancelled) echo "B's export $status: $body" >&2; exit 1 ;; esac
    sleep 0.02
    body=$(curl -sf "$API/v1/exports/$id" -H "Authorization: Bearer $KEY_B"); t1=$(now)
    status=$(echo "$body" | field '["status"]')
  done
  calc "$t1 - $t0"
}

queue_a() {
  seq "$BACKLOG" | xargs -P 8 -I{} curl -sf -o /dev/null -X POST "$API/v1/exports" \
    -H "Authorization: Bearer $KEY_A" -H 'Content-Type: application/json' -d '{"format":"csv"}'
}

a_unfinished() {
  psql "$DATABASE_URL" -tAc "SELECT count(*) FROM exports WHERE tenant_id = 'tenant-a' AND status IN ('pending', 'running')"
}

# a_queued: waits until A's newest admitted unfinished export has its attempt on the task queue
# (Temporal: its workflow has taken its first workflow task; in-process: at once, the queue is in
# memory). The newest is read again each time: an admitted export may finish meanwhile.
a_queued() {
  [ "$mode" = temporal ] || return 0
  local newest
  for _ in $(seq 300); do
    newest=$(psql "$DATABASE_URL" -tAc "SELECT id FROM exports WHERE tenant_id = 'tenant-a' AND admitted_at IS NOT NULL \
      AND status IN ('pending', 'running') ORDER BY created_at DESC LIMIT 1")
    temporal workflow describe --address "$TEMPORAL_ADDRESS" -w "user-export:tenant-a:prod:$newest" -o json 2>/dev/null \
      | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("pendingActivities") else 1)' && return 0
    sleep 0.1
  done
  echo "A's newest export never reached the task queue" >&2; exit 1
}

printf '\n%-10s %9s %9s %7s %9s %17s %20s\n' mode "B alone" "B behind" ratio "worst" "B in A's intake" \
  "A left when B done"
for mode in inprocess temporal; do
  psql "$DATABASE_URL" -qc "TRUNCATE exports"
  if [ "$mode" = temporal ]; then
    export USEREXPORT_TASK_QUEUE=bench-fairness-$RANDOM
    $BIN/userexport-worker >>"$WORK/worker.log" 2>&1 &
    WORKER_PID=$!; PIDS+=("$WORKER_PID")
  fi
  start_api "$mode"
  b_sync >/dev/null # warm-up: connections, caches, the task queue
  # B alone: the median of five (one sample of a ~50 ms export is mostly noise).
  alone=$(median "$(for _ in 1 2 3 4 5; do b_sync; done)")
  queue_a
  intake=$(b_sync)
  a_queued
  queued=$(a_unfinished)
  # B behind A's queued backlog: the median of five, half a second apart (all five printed).
  samples=$(for i in 1 2 3 4 5; do b_sync; [ "$i" = 5 ] || sleep 0.5; done)
  behind=$(median "$samples")
  worst=$(python3 -c 'import sys; print(max(float(x) for x in sys.argv[1].split()))' "$samples")
  left=$(a_unfinished)
  printf '%-10s %8.3fs %8.3fs %7.2f %8.3fs %8.3fs (%4.1fx) %13s of %s   (behind A: %s)\n' "$mode" "$alone" \
    "$behind" "$(calc "$behind / $alone")" "$worst" "$intake" "$(calc "$intake / $alone")" "$left" "$queued" \
    "$(echo $samples | xargs printf '%.3f ')"
  kill -9 "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true
  if [ "$mode" = temporal ]; then kill -9 "$WORKER_PID" 2>/dev/null || true; wait "$WORKER_PID" 2>/dev/null || true; fi
done
