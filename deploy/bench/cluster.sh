#!/usr/bin/env bash
# A 3-node RaftMQ cluster on loopback (zones az-a/b/c), a confirmed-publish benchmark against it
# (1 KiB persistent, 1 producer, 1 consumer, 100 confirms in flight), then the same while the
# leader is SIGKILLed mid-run: the longest pause between confirms is the failover stall.
# Usage: deploy/bench/cluster.sh [path/to/raftmq] [seconds]
# With KEEP_LOGS=DIR, the three nodes' logs are copied to DIR at the end.
set -euo pipefail
BIN="${1:-target/release/raftmq}"
SECS="${2:-15}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS"; cp "$WORK"/n*.log "$KEEP_LOGS"/; fi; rm -rf "$WORK"; }
trap cleanup EXIT

PEERS=(--peer 1=127.0.0.1:27001@az-a --peer 2=127.0.0.1:27002@az-b --peer 3=127.0.0.1:27003@az-c)
start() {
  local i=$1 zone=$2
  "$BIN" serve --node-id "$i" --az "$zone" --amqp-listen "127.0.0.1:2567$i" --http-listen "127.0.0.1:2568$i" \
    --raft-listen "127.0.0.1:2700$i" --data-dir "$WORK/n$i" --cluster-secret bench "${PEERS[@]}" \
    >"$WORK/n$i.log" 2>&1 &
  PIDS[$i]=$!
}
start 1 az-a; start 2 az-b; start 3 az-c
for i in 1 2 3; do
  until (echo > "/dev/tcp/127.0.0.1/2567$i") 2>/dev/null; do sleep 0.2; done
done
URIS="amqp://guest:guest@127.0.0.1:25671/%2f,amqp://guest:guest@127.0.0.1:25672/%2f,amqp://guest:guest@127.0.0.1:25673/%2f"
COMMON=(--producers 1 --consumers 1 --size 1024 --persistent --confirm 100 --queue-type quorum)

echo "== steady state, ${SECS}s"
"$BIN" bench --uri "$URIS" "${COMMON[@]}" --duration "$SECS" --queue-prefix steady

leader() {
  for i in 1 2 3; do
    if curl -s "127.0.0.1:2568$i/health" | grep -q '"role":"leader"'; then echo "$i"; return; fi
  done
}
L="$(leader)"
echo "== leader (node $L) SIGKILLed after 5s of a ${SECS}s run"
( sleep 5; kill -9 "${PIDS[$L]}" ) &
KILLER=$!
"$BIN" bench --uri "$URIS" "${COMMON[@]}" --duration "$SECS" --queue-prefix failover
wait "$KILLER"
echo "== after the kill node $(leader) leads; what the survivors logged:"
grep -h "process is gone\|no leader yet" "$WORK"/n*.log || true
