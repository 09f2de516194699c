#!/usr/bin/env bash
# Benchmark (issue 3): userexport's export path against what a user would otherwise run.
#   - CSV to local storage through the API   vs  psql \copy (SELECT ...) TO file CSV HEADER
#   - NDJSON to local storage through the API vs  psql \copy (SELECT row_to_json(...)) TO file
#   - gzip CSV to local storage through the API vs  psql \copy (SELECT ...) TO PROGRAM 'gzip > file'
#     (time and file size; gzip's default level, -6)
#   - peak RSS of the exporting process at 100k, 500k and 2M users
#   - CSV to S3 (moto) through the API        vs  \copy to a file, then upload it (boto3)
# Prints medians of RUNS runs and the ratios. Needs PostgreSQL on 127.0.0.1:5432 and moto_server.
# Usage: bench/export-vs-copy.sh [users=500000] [runs=3]
set -euo pipefail
cd "$(dirname "$0")/.."

USERS=${1:-500000}
RUNS=${2:-3}
ADMIN_URL=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=userexport_bench
DB_URL="${ADMIN_URL%/*}/$DB"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/userexport-bench.XXXXXX")
KEY=$(openssl rand -base64 32)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

echo "building release binary"
cargo build --release --locked -p app --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/userexport

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export DATABASE_URL=$DB_URL
$BIN migrate

COLS="id, email, name, status, created_at, updated_at, metadata"
WHERE="tenant_id = 'acme' AND environment_id = 'prod'"

# start_api STORAGE: starts the API on postgres with the given storage; sets API and API_PID.
start_api() {
  local port; port=$(free_port)
  USEREXPORT_LISTEN=127.0.0.1:$port USEREXPORT_API_KEYS="$KEY=acme/prod" USEREXPORT_SYNC_TIMEOUT_MAX_S=600 USEREXPORT_USERS=postgres \
    USEREXPORT_EXPORTS=postgres USEREXPORT_STORAGE=$1 USEREXPORT_DATA_DIR=$WORK/data \
    USEREXPORT_RATE_LIMIT_PER_S=100000 USEREXPORT_RATE_LIMIT_BURST=100000 \
    USEREXPORT_LOG_FORMAT=json RUST_LOG=warn $BIN >"$WORK/api-$port.log" 2>&1 &
  API_PID=$!; PIDS+=("$API_PID"); API=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -sf "$API/readyz" >/dev/null && return; sleep 0.1; done
  echo "API did not start:"; cat "$WORK/api-$port.log"; exit 1
}
stop_api() { kill "$API_PID"; wait "$API_PID" 2>/dev/null || true; }
peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$API_PID/status"; }

# export_once FORMAT [COMPRESSION]: one synchronous export through the API; prints seconds and
# leaves the file's size in $WORK/last-bytes.
export_once() {
  local t0 t1 body
  t0=$(now)
  body=$(curl -sf -X POST "$API/v1/exports/sync?timeout_s=600" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d "{\"format\":\"$1\",\"compression\":\"${2:-none}\"}")
  t1=$(now)
  [ "$(echo "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')" = completed ] \
    || { echo "export failed: $body" >&2; exit 1; }
  echo "$body" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])' >"$WORK/last-bytes"
  python3 -c "print($t1-$t0)"
}

time_cmd() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); python3 -c "print($t1-$t0)"; }

seed() {
  $BIN seed --scope acme/prod --count "$1" >/dev/null
  $BIN seed --scope globex/prod --count 100000 >/dev/null
  psql "$DB_URL" -qc "VACUUM ANALYZE users"
}

echo; echo "== $USERS users (plus 100000 of another tenant), $RUNS runs each, medians =="
seed "$USERS"
start_api local
copy_csv=$(for _ in $(seq "$RUNS"); do time_cmd psql "$DB_URL" -qc "\\copy (SELECT $COLS FROM users WHERE $WHERE ORDER BY id) TO '$WORK/copy.csv' WITH (FORMAT csv, HEADER)"; done | median)
ours_csv=$(for _ in $(seq "$RUNS"); do export_once csv; done | median)
copy_nd=$(for _ in $(seq "$RUNS"); do time_cmd psql "$DB_URL" -qc "\\copy (SELECT row_to_json(u) FROM (SELECT $COLS FROM users WHERE $WHERE ORDER BY id) u) TO '$WORK/copy.ndjson'"; done | median)
ours_nd=$(for _ in $(seq "$RUNS"); do export_once ndjson; done | median)
copy_gz=$(for _ in $(seq "$RUNS"); do time_cmd psql "$DB_URL" -qc "\\copy (SELECT $COLS FROM users WHERE $WHERE ORDER BY id) TO PROGRAM 'gzip > $WORK/copy.csv.gz' WITH (FORMAT csv, HEADER)"; done | median)
ours_gz=$(for _ in $(seq "$RUNS"); do export_once csv gzip; done | median)
size_gz=$(stat -c %s "$WORK/copy.csv.gz"); ours_size_gz=$(cat "$WORK/last-bytes")
rss_local=$(peak_rss_mib)
stop_api
printf 'CSV    psql \\copy %6.2fs   userexport %6.2fs   ratio %s (target <= 1.25)\n' "$copy_csv" "$ours_csv" "$(ratio "$ours_csv" "$copy_csv")"
printf 'NDJSON COPY json   %6.2fs   userexport %6.2fs   ratio %s (target <= 1.25)\n' "$copy_nd" "$ours_nd" "$(ratio "$ours_nd" "$copy_nd")"
printf 'CSV gzip \\copy|gzip %6.2fs   userexport %6.2fs   ratio %s (target <= 1.0)\n' "$copy_gz" "$ours_gz" "$(ratio "$ours_gz" "$copy_gz")"
printf '         gzip -6 file %d bytes, userexport file %d bytes: size ratio %s (target <= 1.10)\n' "$size_gz" "$ours_size_gz" "$(ratio "$ours_size_gz" "$size_gz")"
printf 'peak RSS of the API process after %d exports of %d users: %s MiB (target < 64)\n' $((RUNS * 2)) "$USERS" "$rss_local"

echo; echo "== peak RSS against size (one CSV export per fresh process) =="
for n in 100000 500000 2000000; do
  seed "$n"
  start_api local
  export_once csv >/dev/null
  printf '%8d users: peak RSS %s MiB\n' "$n" "$(peak_rss_mib)"
  stop_api
done
seed "$USERS"

echo; echo "== S3 (moto) =="
MOTO_PORT=$(free_port)
python3 scripts/moto_server.py -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
export AWS_ENDPOINT_URL=http://127.0.0.1:$MOTO_PORT AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
export USEREXPORT_S3_BUCKET=bench
for _ in $(seq 50); do curl -sf "$AWS_ENDPOINT_URL/" >/dev/null && break; sleep 0.2; done
curl -sf -X PUT "$AWS_ENDPOINT_URL/bench" >/dev/null
start_api s3
ours_s3=$(for _ in $(seq "$RUNS"); do export_once csv; done | median)
rss_s3=$(peak_rss_mib)
stop_api
upload() {
  psql "$DB_URL" -qc "\\copy (SELECT $COLS FROM users WHERE $WHERE ORDER BY id) TO '$WORK/copy.csv' WITH (FORMAT csv, HEADER)"
  python3 -c "import boto3,sys; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').upload_file(sys.argv[1], 'bench', 'baseline.csv')" "$WORK/copy.csv"
}
base_s3=$(for _ in $(seq "$RUNS"); do time_cmd upload; done | median)
bytes=$(stat -c %s "$WORK/copy.csv")
printf 'CSV to S3: copy+upload %6.2fs   userexport %6.2fs (%.1f MiB/s)   ratio %s (target <= 1.2)   peak RSS %s MiB\n' \
  "$base_s3" "$ours_s3" "$(python3 -c "print($bytes/1048576/$ours_s3)")" "$(ratio "$ours_s3" "$base_s3")" "$rss_s3"
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
