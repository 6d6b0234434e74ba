#!/usr/bin/env bash
# Chaos against real containers: the three-zone cluster of deploy/cluster/docker-compose.yml
# under confirmed publishing from the host (raftmq bench, all three endpoints), while the
# script kills the leader's container, restarts it, freezes a follower (docker pause), and
# cuts the leader off the network. The run fails if any confirmed message is lost (messages
# delivered twice are counted: a consumer whose node died before its acks arrived gets them
# again, flagged redelivered, as at-least-once delivery means). Everything it started (containers, network, volumes, image) is
# removed at the end.
# Usage: deploy/chaos.sh [path/to/raftmq] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(realpath "${1:-target/release/raftmq}")"
SECS="${2:-60}"
PROJECT="raftmq-chaos-$$"
IMAGE="raftmq:chaos-$$"
COMPOSE=(docker-compose -p "$PROJECT" -f deploy/cluster/docker-compose.yml)
export RAFTMQ_IMAGE="$IMAGE" RAFTMQ_CLUSTER_SECRET=chaos
export RAFTMQ_PORT_1=25851 RAFTMQ_PORT_2=25852 RAFTMQ_PORT_3=25853
export RAFTMQ_HTTP_PORT_1=25861 RAFTMQ_HTTP_PORT_2=25862 RAFTMQ_HTTP_PORT_3=25863
OUT="$(mktemp)"

cleanup() {
  "${COMPOSE[@]}" down -v --remove-orphans -t 2 >/dev/null 2>&1 || true
  docker rmi "$IMAGE" >/dev/null 2>&1 || true
  rm -f "$OUT"
}
trap cleanup EXIT

deploy/image.sh "$BIN" "$IMAGE"
"${COMPOSE[@]}" up -d
container() { echo "${PROJECT}_node$1_1"; }
health() { curl -s --max-time 2 "127.0.0.1:2586$1/health" || true; }
leader() {
  for i in 1 2 3; do
    if health "$i" | grep -q '"role":"leader"'; then echo "$i"; return; fi
  done
}
for _ in $(seq 1 300); do [ -n "$(leader)" ] && break; sleep 0.2; done
[ -n "$(leader)" ] || { "${COMPOSE[@]}" logs --tail 30; echo "no leader" >&2; exit 1; }
echo "cluster up; leader: node $(leader)"

URIS="amqp://raftmq:raftmq@127.0.0.1:25851/%2f,amqp://raftmq:raftmq@127.0.0.1:25852/%2f,amqp://raftmq:raftmq@127.0.0.1:25853/%2f"
"$BIN" bench --uri "$URIS" --producers 2 --consumers 1 --size 1024 --persistent --confirm 50 \
  --queue-type quorum --duration "$SECS" --queue-prefix chaos --json > "$OUT" &
BENCH=$!

step() { echo "$(date +%T) $*"; }
sleep 8
L="$(leader)"; step "SIGKILL the leader's container (node $L)"
docker kill "$(container "$L")" >/dev/null
sleep 8
step "start node $L again"; docker start "$(container "$L")" >/dev/null
sleep 8
L="$(leader)"; F=$(( L % 3 + 1 ))
step "freeze follower node $F (docker pause) for 6s"; docker pause "$(container "$F")" >/dev/null
sleep 6; docker unpause "$(container "$F")" >/dev/null
sleep 6
L="$(leader)"; step "cut the leader (node $L) off the network for 8s"
docker network disconnect "${PROJECT}_default" "$(container "$L")"
sleep 8
docker network connect --alias "node$L" "${PROJECT}_default" "$(container "$L")"
step "healed"

wait "$BENCH" || true
python3 - "$OUT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"published {r['published']} confirmed {r['confirmed']} consumed {r['consumed']} "
      f"lost {r['lost']} duplicated {r['duplicated']} reconnects {r['reconnects']} "
      f"longest confirm gap {r['max_confirm_gap_ms']:.0f} ms")
sys.exit(1 if r["lost"] or not r["confirmed"] else 0)
PY
