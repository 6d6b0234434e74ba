#!/usr/bin/env bash
# An active/standby pair on one shared directory, a confirmed-publish benchmark against both
# endpoints (1 KiB persistent, 1 producer, 1 consumer, 100 confirms in flight), and the active
# SIGKILLed mid-run: the longest pause between confirms is the failover time as a client sees
# it (death, takeover, replay, reconnect, first confirm).
# Usage: deploy/bench/standby.sh [path/to/raftmq] [seconds]
set -euo pipefail
BIN="${1:-target/release/raftmq}"
SECS="${2:-15}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

start() {
  local i=$1
  "$BIN" serve --node-id "$i" --shared-dir "$WORK/shared" --amqp-listen "127.0.0.1:2569$i" \
    --http-listen "127.0.0.1:2570$i" >>"$WORK/n$i.log" 2>&1 &
  PIDS[$i]=$!
}
start 1
until (echo > /dev/tcp/127.0.0.1/25691) 2>/dev/null; do sleep 0.1; done
start 2
until curl -s 127.0.0.1:25702/health | grep -q '"role":"standby"'; do sleep 0.1; done
URIS="amqp://guest:guest@127.0.0.1:25691/%2f,amqp://guest:guest@127.0.0.1:25692/%2f"
COMMON=(--producers 1 --consumers 1 --size 1024 --persistent --confirm 100)

echo "== steady state on the active, ${SECS}s"
"$BIN" bench --uri "$URIS" "${COMMON[@]}" --duration "$SECS" --queue-prefix steady

echo "== the active SIGKILLed after 5s of a ${SECS}s run"
( sleep 5; kill -9 "${PIDS[1]}" ) &
"$BIN" bench --uri "$URIS" "${COMMON[@]}" --duration "$SECS" --queue-prefix failover
curl -s 127.0.0.1:25702/health; echo
