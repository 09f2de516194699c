#!/usr/bin/env bash
# Benchmark (issue 10): EXPORTS exports from TENANTS tenants requested at once, over HTTP and
# signed NATS events (30 %), with 10 % duplicates (same Idempotency-Key or event ID), on
# PostgreSQL records and local storage, in-process and in Temporal mode. Five tenants have a
# quota of QUOTA unfinished exports, so some of their requests are answered 429.
# Checks, per mode: every accepted request ends completed exactly once (records = distinct
# accepted keys, all completed, duplicates answered with the same export), one file per completed
# export and nothing else in the storage (no staging file, no losing attempt's object), 429s where the
# quota was exceeded. Prints GET /v1/exports/{id} latency under the load (target p99 < 50 ms).
# Needs PostgreSQL on 127.0.0.1:5432, NATS JetStream (TEST_NATS_URL or nats://127.0.0.1:4222)
# and the temporal CLI.
# Usage: bench/load.sh [exports=1000] [tenants=50] [users_per_tenant=200]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARGO_TARGET_DIR:-target}/release

EXPORTS=${1:-1000}
TENANTS=${2:-50}
USERS=${3:-200}
QUOTA=8
ADMIN_URL=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
NATS_URL=${TEST_NATS_URL:-nats://127.0.0.1:4222}
DB=userexport_bench_load
export DATABASE_URL="${ADMIN_URL%/*}/$DB"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/userexport-load.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }
sql() { psql "$DATABASE_URL" -tAc "$1"; }
fail() { echo "FAILED: $*"; exit 1; }

echo "building release binaries"
cargo build --release --locked -p app -p worker -p loadgen --quiet

TEMPORAL_PORT=$(free_port)
temporal server start-dev --headless --ip 127.0.0.1 --port "$TEMPORAL_PORT" --ui-port "$(free_port)" \
  --log-level error >"$WORK/temporal.log" 2>&1 &
PIDS+=($!)
export TEMPORAL_ADDRESS=127.0.0.1:$TEMPORAL_PORT
for _ in $(seq 300); do temporal operator cluster health --address "$TEMPORAL_ADDRESS" 2>/dev/null | grep -q SERVING && break; sleep 0.2; done

# 128-bit random keys and secrets, as production needs; five tenants get a small quota.
python3 - "$TENANTS" "$QUOTA" "$WORK" <<'EOF'
import json, secrets, sys
n, quota, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
tenants = [{"scope": f"t{i:02d}/prod", "key": secrets.token_urlsafe(24), "secret": secrets.token_urlsafe(24)} for i in range(n)]
json.dump(tenants, open(f"{work}/tenants.json", "w"))
directory = [{"scope": t["scope"], "webhook_secret": t["secret"], **({"quotas": {"max_unfinished": quota}} if i < 5 else {})}
             for i, t in enumerate(tenants)]
open(f"{work}/directory.json", "w").write(json.dumps(directory))
open(f"{work}/keys", "w").write(",".join(f"{t['key']}={t['scope']}" for t in tenants))
EOF
export USEREXPORT_TENANTS=$(cat "$WORK/directory.json") USEREXPORT_API_KEYS=$(cat "$WORK/keys")
export USEREXPORT_USERS=postgres USEREXPORT_EXPORTS=postgres USEREXPORT_STORAGE=local RUST_LOG=warn
export USEREXPORT_NATS_URL=$NATS_URL

start() { # MODE: API (and worker) on a fresh database and a fresh stream
  local port; port=$(free_port)
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
  $BIN/userexport migrate
  for i in $(seq 0 $((TENANTS - 1))); do
    $BIN/userexport seed --scope "$(printf 't%02d/prod' "$i")" --count "$USERS" >/dev/null
  done
  export USEREXPORT_DATA_DIR=$WORK/data-$1 USEREXPORT_NATS_STREAM=LOADBENCH_$1_$$
  export USEREXPORT_NATS_SUBJECT=loadbench.$1.$$.requested USEREXPORT_NATS_DLQ_SUBJECT=loadbench.$1.$$.dlq
  export USEREXPORT_NATS_CONSUMER=loadbench-$1
  USEREXPORT_ORCHESTRATOR=$1 USEREXPORT_LISTEN=127.0.0.1:$port $BIN/userexport >"$WORK/api-$1.log" 2>&1 &
  PIDS+=($!); API=http://127.0.0.1:$port
  if [ "$1" = temporal ]; then
    $BIN/userexport-worker >"$WORK/worker.log" 2>&1 &
    PIDS+=($!)
  fi
  for _ in $(seq 200); do curl -sf "$API/readyz" >/dev/null && return; sleep 0.1; done
  echo "API did not start:"; tail -n 20 "$WORK/api-$1.log"; exit 1
}

for mode in inprocess temporal; do
  echo; echo "== $mode: $EXPORTS exports from $TENANTS tenants ($USERS users each), HTTP and NATS, with duplicates =="
  start "$mode"
  $BIN/loadgen --api "$API" --nats "$NATS_URL" --subject "$USEREXPORT_NATS_SUBJECT" \
    --stream "$USEREXPORT_NATS_STREAM" --consumer "$USEREXPORT_NATS_CONSUMER" --tenants "$WORK/tenants.json" \
    --exports "$EXPORTS" --duplicates $((EXPORTS / 10)) --out "$WORK/$mode.json" >"$WORK/$mode.out"
  S=$WORK/$mode.json
  records=$(sql "SELECT count(*) FROM exports")
  completed=$(sql "SELECT count(*) FROM exports WHERE status = 'completed'")
  http_records=$(sql "SELECT count(*) FROM exports WHERE idempotency_key NOT LIKE 'event:%'")
  event_records=$(sql "SELECT count(*) FROM exports WHERE idempotency_key LIKE 'event:%'")
  twice=$(sql "SELECT count(*) FROM (SELECT 1 FROM exports GROUP BY tenant_id, idempotency_key HAVING count(*) > 1) d")
  files=$(find "$USEREXPORT_DATA_DIR" -type f | wc -l)
  # Staging files of unfinished uploads are `{object}#{digits}`; finished objects are named per
  # attempt, so a losing attempt's object would show as one file too many.
  stray=$(find "$USEREXPORT_DATA_DIR" -type f -name '*#*' | wc -l)
  accepted=$(field '["http_keys_accepted"]' <"$S")
  echo "HTTP answers $(field '["http_answers"]' <"$S"), problems $(field '["problems"]' <"$S")"
  echo "NATS events published $(field '["nats_published"]' <"$S"); records from events $event_records"
  echo "records $records: completed $completed; HTTP keys accepted $accepted, HTTP records $http_records; keys recorded twice $twice"
  echo "files $files (stray $stray); sent in $(field '["sent_s"]' <"$S") s, all terminal after $(field '["total_s"]' <"$S") s"
  echo "GET /v1/exports/{id} under load: $(field '["get_samples"]' <"$S") samples $(field '["get_statuses"]' <"$S"), \
p50 $(field '["get_ms"]["p50"]' <"$S") ms, p99 $(field '["get_ms"]["p99"]' <"$S") ms (target < 50), max $(field '["get_ms"]["max"]' <"$S") ms"
  [ "$completed" = "$records" ] || fail "$((records - completed)) exports did not complete"
  [ "$http_records" = "$accepted" ] || fail "HTTP records $http_records != accepted keys $accepted"
  [ "$twice" = 0 ] || fail "a key was recorded twice"
  [ "$(field '["http_keys_with_two_ids"]' <"$S")" = 0 ] || fail "a duplicate was answered with another export"
  [ "$files" = "$completed" ] && [ "$stray" = 0 ] || fail "files $files (stray $stray) for $completed completed exports"
  [ "$event_records" -gt 0 ] || fail "no export came from a NATS event"
  quota_429=$(field '["problems"].get("https://userexport.dev/problems/quota-exceeded", 0)' <"$S")
  [ "$quota_429" -gt 0 ] || fail "no request was refused by the $QUOTA-export quota of tenants t00..t04"
  echo "checks passed: every accepted request completed exactly once, one file each, nothing stray"
  for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; done; wait "${PIDS[@]:1}" 2>/dev/null || true
  PIDS=("${PIDS[0]}")
done
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
