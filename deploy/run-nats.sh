#!/usr/bin/env bash
# `make run-nats`: nats-server (JetStream + MQTT, the secure config `tidegate nats setup` writes
# into tidegate-data/nats-broker on the first run), one worker and one edge on this machine.
# Ports: NATS_PORT, NATS_MQTT_PORT, NATS_MONITOR_PORT, and NATS_AUTH (`users`, the default, or
# `jwt`: operator mode) are used when the config is first written; delete
# tidegate-data/nats-broker to write a new one. Ctrl-C (or SIGTERM) stops the edge,
# then the worker, then nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BROKER=tidegate-data/nats-broker
export TIDEGATE_MODE=nats
export NATS_BROKER_DIR=$PWD/$BROKER

if [[ ! -f $BROKER/env.json ]]; then
  mkdir -p tidegate-data
  # The services' passwords are printed once: keep them next to the config, mode 0600.
  (umask 077 && "$VENV/bin/tidegate" nats setup --dir "$BROKER" --port "${NATS_PORT:-4222}" \
    --mqtt-port "${NATS_MQTT_PORT:-1883}" --monitor-port "${NATS_MONITOR_PORT:-8222}" \
    --auth "${NATS_AUTH:-users}" >"$BROKER.env.json.tmp" && mv "$BROKER.env.json.tmp" "$BROKER/env.json")
fi
# `KEY=value` lines of one role's environment.
role_env() { "$VENV/bin/python" -c 'import json, sys
for k, v in json.load(open(sys.argv[1]))[sys.argv[2]].items(): print(f"{k}={v}")' "$BROKER/env.json" "$1"; }
monitor_port=$("$VENV/bin/python" -c 'import json, sys
print(json.load(open(sys.argv[1]))["monitor_port"])' "$BROKER/broker.json")

pids=()
stop() {
  # Reverse order: the edge stops publishing before the worker drains, the worker acks before
  # nats-server goes away.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null || true
  done
}
trap stop EXIT INT TERM

"$VENV/bin/nats-server" -c "$BROKER/nats-server.conf" &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$monitor_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
mapfile -t worker_env < <(role_env worker_env)
env "${worker_env[@]}" "$VENV/bin/tidegate" worker &
pids+=($!)
mapfile -t edge_env < <(role_env edge_env)
env "${edge_env[@]}" "$VENV/bin/tidegate" serve --mode nats &
pids+=($!)
wait "${pids[-1]}"
