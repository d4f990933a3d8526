#!/usr/bin/env bash
# `make run-nats`: nats-server (JetStream + MQTT, deploy/nats-server.conf), one worker and one
# edge on this machine. Ctrl-C (or SIGTERM) stops the edge, then the worker, then nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
mkdir -p tidegate-data/nats
export TIDEGATE_MODE=nats
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}

pids=()
stop() {
  # Reverse order: the edge stops publishing before the worker drains, the worker acks before
  # nats-server goes away.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null || true
  done
}
trap stop EXIT INT TERM

"$VENV/bin/nats-server" -c deploy/nats-server.conf &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:8222/healthz >/dev/null 2>&1 && break
  sleep 0.1
done
"$VENV/bin/tidegate" worker &
pids+=($!)
"$VENV/bin/tidegate" serve --mode nats &
pids+=($!)
wait "${pids[-1]}"
